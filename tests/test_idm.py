import types

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_probability import distributions as tfd

import bench
import dreamer_idm
import models
import tools

tfkl = tf.keras.layers


def _toy_decoder(seed=0):
  # A linear decoder to a 2x2x1 image: small enough to compute by hand.
  matrix = np.random.RandomState(seed).normal(0, 1, (3, 4)).astype(np.float32)
  decode = lambda feat: tfd.Independent(tfd.Normal(
      tf.reshape(feat @ matrix, tf.concat([tf.shape(feat)[:-1], [2, 2, 1]], 0)),
      1), 3)
  return decode, matrix


def test_constraint_matches_hand_computation():
  decode, matrix = _toy_decoder()
  feat = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 2.0, 1.0]], np.float32)
  noisy = feat + np.array([[0.1, 0, 0], [0, 1.0, 0], [2.0, 0, -1.0]], np.float32)
  kl = 0.5 * np.sum(np.square(noisy @ matrix - feat @ matrix), -1)
  margin = float(np.median(kl))  # Some states inside the margin, some over.
  expected = 2.0 * np.mean(np.maximum(0, kl - margin))
  assert expected > 0 and np.any(kl < margin)
  penalty, got_kl = models.decoding_constraint(
      decode, tf.constant(feat), tf.constant(noisy), 2.0, margin)
  np.testing.assert_allclose(got_kl.numpy(), kl, rtol=1e-5)
  np.testing.assert_allclose(penalty.numpy(), expected, rtol=1e-5)
  # Inside the margin the penalty is exactly zero.
  penalty, _ = models.decoding_constraint(
      decode, tf.constant(feat), tf.constant(noisy), 2.0, float(kl.max()) + 1)
  assert penalty.numpy() == 0.0


def test_constraint_is_zero_without_noise_on_real_decoder():
  tf.random.set_seed(0)
  decoder = models.ConvDecoder(depth=4)
  state = dict(
      stoch=tf.random.normal((4, 3)), deter=tf.random.normal((4, 5)),
      mean=tf.zeros((4, 3)), std=tf.ones((4, 3)))
  same = models.perturb_state(state, 0.0, 0.0)
  feat = tf.concat([state['stoch'], state['deter']], -1)
  penalty, kl = models.decoding_constraint(
      decoder, feat, tf.concat([same['stoch'], same['deter']], -1), 1.0, 0.0)
  assert penalty.numpy() == 0.0 and np.all(kl.numpy() == 0.0)
  noisy = models.perturb_state(state, 0.5, 0.5)
  penalty, kl = models.decoding_constraint(
      decoder, feat, tf.concat([noisy['stoch'], noisy['deter']], -1), 1.0, 0.0)
  assert np.all(kl.numpy() > 0) and penalty.numpy() > 0


def test_constraint_gradient_skips_the_original_branch():
  decode, _ = _toy_decoder()
  feat = tf.Variable([[1.0, 2.0, 3.0]])
  noisy = tf.Variable([[2.0, 0.0, 3.0]])
  with tf.GradientTape(persistent=True) as tape:
    penalty, _ = models.decoding_constraint(decode, feat, noisy, 1.0, 0.0)
  assert penalty.numpy() > 0
  assert tape.gradient(penalty, feat) is None
  assert np.any(tape.gradient(penalty, noisy).numpy() != 0)


def _start(batch=6, stoch=3, deter=4, seed=0):
  random = np.random.RandomState(seed)
  normal = lambda *s: tf.constant(random.normal(0, 1, s).astype(np.float32))
  return dict(
      mean=normal(batch, stoch), std=0.1 + tf.abs(normal(batch, stoch)),
      stoch=normal(batch, stoch), deter=tf.tanh(normal(batch, deter)))


def test_derived_memory_batch_and_zero_noise():
  start = _start()
  out = models.derive_memory(start, 2, 0.0, 0.0)
  assert out['deter'].shape == (18, 4)
  for key in start:  # The originals come first, untouched.
    np.testing.assert_array_equal(out[key][:6].numpy(), start[key].numpy())
  for copy in (1, 2):  # Zero noise: the same h and the same N(mu_s, sigma_s).
    rows = slice(6 * copy, 6 * copy + 6)
    for key in ('deter', 'mean', 'std'):
      np.testing.assert_array_equal(out[key][rows].numpy(), start[key].numpy())
  assert models.derive_memory(start, 0, 0.5, 0.5) is start


def test_derived_memory_widens_the_std_additively():
  start = _start(batch=1, stoch=2, deter=2)
  copies = 20000
  out = models.derive_memory(start, copies, 0.3, 0.5)
  std = out['std'][1:].numpy()
  np.testing.assert_allclose(std, np.tile(start['std'].numpy() + 0.5, (copies, 1)))
  sample_std = (out['stoch'][1:] - out['mean'][1:]).numpy().std(0)
  np.testing.assert_allclose(sample_std, start['std'].numpy()[0] + 0.5, rtol=0.03)
  deter_std = (out['deter'][1:] - start['deter']).numpy().std(0)
  np.testing.assert_allclose(deter_std, [0.3, 0.3], rtol=0.03)


def test_evaluator_outputs_probabilities_and_learns_separable_toy():
  evaluator = models.TrajectoryEvaluator(2, 32)
  random = np.random.RandomState(0)
  def states(sign, n=64):
    stoch = sign + 0.3 * random.normal(0, 1, (n, 3)).astype(np.float32)
    return dict(stoch=tf.constant(stoch), deter=tf.constant(
        random.normal(0, 1, (n, 4)).astype(np.float32)))
  action = tf.zeros((64, 2))
  real, fake = (states(1), action, states(1)), (states(-1), action, states(-1))
  prob = tf.exp(evaluator.log_prob_real(*real)).numpy()
  assert np.all((prob > 0) & (prob < 1))
  optimizer = tf.keras.optimizers.Adam(1e-2)
  losses = []
  for _ in range(60):
    with tf.GradientTape() as tape:
      loss = -tf.reduce_mean(evaluator.log_prob_real(*real)) - tf.reduce_mean(
          tf.math.log1p(-tf.exp(evaluator.log_prob_real(*fake))))
    grads = tape.gradient(loss, evaluator.variables)
    optimizer.apply_gradients(zip(grads, evaluator.variables))
    losses.append(float(loss))
  # Chance level is 2 log 2 = 1.39 nats; the toy is separable.
  assert losses[0] > 0.5 and losses[-1] < 0.1


def _toy_states(random, n, prior_made, shift=0.0):
  # h ~ N(0, 1). A prior-made mean of s is a function of h, as in img_step; a
  # posterior mean also saw the image (u ~ N(0, 1)) and has a narrow std.
  # Both give s | h the same distribution, N(f(h), 1 + 0.1^2): a perfect
  # model. `shift` plants a model error in the prior-made samples.
  matrix = np.random.RandomState(1).normal(0, 1, (4, 3))
  deter = random.normal(0, 1, (n, 4))
  base = np.tanh(deter @ matrix)
  if prior_made:
    mean, std = base, np.sqrt(1 + 0.1 ** 2)
  else:
    mean, std = base + random.normal(0, 1, (n, 3)), 0.1
  stoch = mean + std * random.normal(0, 1, (n, 3)) + shift
  const = lambda x: tf.constant(x, tf.float32)
  return dict(mean=const(mean), std=const(std + 0 * mean),
              stoch=const(stoch), deter=const(deter))


def _train_toy_evaluator(shift, steps=300, batch=256):
  """Trains an evaluator on fresh real (posterior) and fake (prior-made)
  triples each step; returns its loss and mean P(real) on held-out ones."""
  random = np.random.RandomState(0)
  triples = lambda n, prior_made, shift=0.0: (
      _toy_states(random, n, prior_made),
      tf.constant(random.normal(0, 1, (n, 2)), tf.float32),
      _toy_states(random, n, prior_made, shift))
  evaluator = models.TrajectoryEvaluator(2, 64)
  evaluator(*triples(1, False))
  optimizer = tf.keras.optimizers.Adam(1e-3)
  @tf.function
  def update(real, fake):
    with tf.GradientTape() as tape:
      loss = -tf.reduce_mean(evaluator.log_prob_real(*real)) - tf.reduce_mean(
          tf.math.log1p(-tf.exp(evaluator.log_prob_real(*fake))))
    grads = tape.gradient(loss, evaluator.variables)
    optimizer.apply_gradients(zip(grads, evaluator.variables))
  for _ in range(steps):
    update(triples(batch, False), triples(batch, True, shift))
  real = tf.exp(evaluator.log_prob_real(*triples(8192, False))).numpy()
  fake = tf.exp(evaluator.log_prob_real(*triples(8192, True, shift))).numpy()
  return -np.log(real).mean() - np.log1p(-fake).mean(), real.mean(), fake.mean()


def test_evaluator_judges_the_sampled_latent_not_the_priors_mean(monkeypatch):
  chance = 2 * np.log(2)
  # A perfect model: the evaluator cannot do better than chance (measured:
  # loss 1.3896, P(real) 0.497 on real and 0.496 on fake triples).
  loss, real, fake = _train_toy_evaluator(shift=0.0)
  assert abs(loss - chance) < 0.02 and abs(real - fake) < 0.03
  # A planted model error is detected (measured: 1.225, 0.584 / 0.430).
  loss, real, fake = _train_toy_evaluator(shift=0.5)
  assert loss < chance - 0.1 and real - fake > 0.1
  # The old features, [mean of s, h], tell prior-made states apart even for
  # the perfect model (measured: 0.307, 0.887 / 0.095).
  monkeypatch.setattr(models.RSSM, 'get_feat', staticmethod(
      lambda state: tf.concat([state['mean'], state['deter']], -1)))
  loss, real, fake = _train_toy_evaluator(shift=0.0)
  assert loss < 1.0 and real - fake > 0.5


def test_overshoot_triples_are_open_loop_from_the_real_starts():
  tf.random.set_seed(0)
  rssm = models.RSSM(stoch=3, deter=5, hidden=8)
  embed = tf.random.normal((2, 7, 6))
  action = tf.random.uniform((2, 7, 2), -1, 1)
  post, prior = rssm.observe(embed, action)
  (rprev, ract, rnext), (fprev, fact, fnext) = models.overshoot_triples(
      rssm, post, action, 2)
  starts = 7 - 2 - 1  # Windows t..t+3 that fit the 7 steps.
  assert rprev['deter'].shape == (3, 2 * starts, 5) and ract.shape == (3, 8, 2)
  np.testing.assert_array_equal(ract.numpy(), fact.numpy())
  # Both begin at the same posterior states, and the real triples follow the
  # posterior with the action that joined each pair of rows.
  for key in post:
    np.testing.assert_array_equal(fprev[key][0].numpy(), rprev[key][0].numpy())
    flat = tf.reshape(post[key][:, :starts], [2 * starts, -1]).numpy()
    np.testing.assert_array_equal(rprev[key][0].numpy(), flat)
    flat = tf.reshape(post[key][:, 2:2 + starts], [2 * starts, -1]).numpy()
    np.testing.assert_array_equal(rnext[key][1].numpy(), flat)
  flat = tf.reshape(action[:, 2:2 + starts], [2 * starts, -1]).numpy()
  np.testing.assert_array_equal(ract[1].numpy(), flat)
  # The first fake step is the prior from the posterior start (what observe
  # computed as the next prior), then every step builds on the previous fake.
  flat = tf.reshape(prior['deter'][:, 1:1 + starts], [2 * starts, -1]).numpy()
  np.testing.assert_allclose(fnext['deter'][0].numpy(), flat, rtol=1e-5, atol=1e-6)
  for k in (1, 2):
    for key in post:
      np.testing.assert_array_equal(
          fprev[key][k].numpy(), fnext[key][k - 1].numpy())
    step = rssm.img_step({kk: v[k] for kk, v in fprev.items()}, fact[k])
    np.testing.assert_allclose(
        step['deter'].numpy(), fnext['deter'][k].numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(fnext['deter'][k].numpy(), rnext['deter'][k].numpy())


def test_weights_sum_to_one_and_uniform_weights_give_dreamer_losses():
  random = np.random.RandomState(0)
  log_real = tf.constant(np.log(random.uniform(0.01, 1, (14, 20))), tf.float32)
  weights = models.reliability_weights(log_real)
  np.testing.assert_allclose(tf.reduce_sum(weights).numpy(), 1.0, rtol=1e-6)
  ratio = weights.numpy() / np.exp(log_real.numpy())
  np.testing.assert_allclose(ratio, ratio.flat[0], rtol=1e-5)  # Proportional.
  returns = tf.constant(random.normal(0, 5, (14, 20)), tf.float32)
  discount = tf.math.cumprod(tf.fill((14, 20), 0.99), 0, exclusive=True)
  uniform = models.reliability_weights(tf.fill((14, 20), -0.3))
  np.testing.assert_allclose(
      models.actor_loss(returns, discount, uniform).numpy(),
      models.actor_loss(returns, discount).numpy(), rtol=1e-5)
  value = tfd.Independent(tfd.Normal(returns + 0.5, 1), 0)
  target = returns + random.normal(0, 1, (14, 20)).astype(np.float32)
  np.testing.assert_allclose(
      models.value_loss(value, target, discount, uniform).numpy(),
      models.value_loss(value, target, discount).numpy(), rtol=1e-5)
  # Eq. 7: the weighted value loss is sum w * d * 0.5 (v - V)^2 + constant.
  half_square = 0.5 * np.square(returns.numpy() + 0.5 - target.numpy())
  expected = np.sum(weights.numpy() * discount.numpy() * (
      half_square + 0.5 * np.log(2 * np.pi)))
  np.testing.assert_allclose(
      models.value_loss(value, target, discount, weights).numpy(), expected,
      rtol=1e-5)


def test_no_gradient_reaches_the_evaluator_from_actor_or_critic():
  tf.random.set_seed(0)
  evaluator = models.TrajectoryEvaluator(2, 8)
  state = dict(stoch=tf.random.normal((14, 5, 3)),
               deter=tf.random.normal((14, 5, 4)))
  returns = tf.Variable(tf.random.normal((14, 5)))
  evaluator(state, tf.zeros((14, 5, 2)), state)  # Build.
  with tf.GradientTape(persistent=True) as tape:
    weights = models.reliability_weights(
        evaluator.log_prob_real(state, tf.zeros((14, 5, 2)), state))
    actor = models.actor_loss(returns, tf.ones((14, 5)), weights)
    value = models.value_loss(
        tfd.Independent(tfd.Normal(returns, 1), 0), tf.zeros((14, 5)),
        tf.ones((14, 5)), weights)
  for loss in (actor, value):
    assert all(g is None for g in tape.gradient(loss, evaluator.variables))
    assert np.any(tape.gradient(loss, returns).numpy() != 0)


IDM_METRICS = {
    'constraint': {'constraint_kl', 'constraint_penalty',
                   'constraint_over_margin', 'constraint_h_outside'},
    'derived': {'imag_return_original', 'imag_return_derived',
                'derived_h_outside'},
    'evaluator': {'evaluator_loss', 'evaluator_real_prob',
                  'evaluator_fake_prob', 'evaluator_grad_norm',
                  'weight_max_rel', 'weight_min_rel', 'weight_ess'},
    # Logged when both derived memory and the evaluator are on.
    'derived+evaluator': {'weight_derived_share'},
}
PRESETS = {
    'dreamer': (), 'idm': ('constraint', 'derived', 'evaluator'),
    'idm_no_evaluator': ('constraint', 'derived'),
    'idm_no_derived': ('constraint', 'evaluator'),
    'idm_evaluator_only': ('evaluator',), 'dreamer_doubled_batch': (),
}


def _agent(tmp_path, preset, *overrides):
  config = dreamer_idm.parse_args(
      ['--configs', 'defaults', 'dmc', preset, 'debug', '--logdir',
       str(tmp_path), '--time_limit', '40', *overrides])
  dreamer_idm.check_config(config)
  config.logdir = tmp_path
  datadir = tmp_path / 'episodes'
  bench.fake_episodes(datadir, config, 2, count=2)
  space = type('Space', (), {'shape': (2,)})()
  tf.random.set_seed(0)
  agent = dreamer_idm.Dreamer(
      config, datadir, space, tf.summary.create_noop_writer(), None)
  return agent, config


@pytest.mark.parametrize('preset', list(PRESETS))
def test_presets_switch_exactly_their_parts(preset):
  for names in ([preset], [preset, 'debug']):
    config = dreamer_idm.parse_args(['--configs', 'defaults', 'dmc', *names])
    parts = PRESETS[preset]
    assert config.constraint == ('constraint' in parts)
    assert (config.derived_copies == 1) == ('derived' in parts)
    assert config.evaluator == ('evaluator' in parts)
  config = dreamer_idm.parse_args(['--configs', 'defaults', 'dmc', preset])
  assert config.batch_size == (100 if preset == 'dreamer_doubled_batch' else 50)


# Each part is on in one of these and off in another; `idm` trains end to end.
@pytest.mark.parametrize(
    'preset', ['dreamer', 'idm_no_evaluator', 'idm_evaluator_only'])
def test_agents_log_exactly_the_metrics_of_their_parts(tmp_path, preset):
  parts = PRESETS[preset]
  agent, _ = _agent(tmp_path, preset)
  metrics = agent.train(next(agent._dataset))
  logged = set(metrics) & set().union(*IDM_METRICS.values())
  expected = set().union(*[IDM_METRICS[p] for p in parts]) if parts else set()
  assert logged == expected
  assert all(np.isfinite(float(v)) for v in metrics.values())
  if 'evaluator' in parts:
    assert 0 < float(metrics['evaluator_real_prob']) < 1
    assert float(metrics['weight_min_rel']) <= 1 <= float(
        metrics['weight_max_rel'])
    assert 0 < float(metrics['weight_ess']) <= 1


def test_idm_agent_imagination_and_checkpoint(tmp_path, capsys):
  agent, config = _agent(tmp_path / 'a', 'idm', '--derived_copies', '2')
  # The imagination batch is (1 + K) times the posterior start states.
  data = dreamer_idm.preprocess(next(agent._dataset), config)
  post, _ = agent._dynamics.observe(agent._encode(data), data['action'])
  feat, states, actions, start = agent._imagine_ahead(post)
  starts = config.batch_size * config.batch_length
  assert feat.shape[:2] == (config.horizon, 3 * starts)
  assert actions.shape == (config.horizon, 3 * starts, 2)
  np.testing.assert_array_equal(
      start['deter'][:starts].numpy(),
      tf.reshape(post['deter'], [starts, -1]).numpy())
  # The checkpoint holds the evaluator and its optimizer.
  agent.train(next(agent._dataset))
  agent.save(tmp_path / 'variables.pkl')
  checkpoint = tools.read_checkpoint(tmp_path / 'variables.pkl')
  other, _ = _agent(tmp_path / 'b', 'idm', '--derived_copies', '2')
  before = [v.numpy() for v in other._evaluator.variables]
  other.load(checkpoint, tmp_path / 'variables.pkl')
  mine = list(agent._evaluator.variables) + agent._evaluator_opt.variables
  theirs = list(other._evaluator.variables) + other._evaluator_opt.variables
  assert len(agent._evaluator_opt.variables) > 1
  for a, b in zip(mine, theirs):
    np.testing.assert_array_equal(a.numpy(), b.numpy())
  assert any(not np.array_equal(x, v.numpy())
             for x, v in zip(before, other._evaluator.variables))
  with pytest.raises(tools.ConfigError, match='evaluator: True -> False'):
    tools.check_checkpoint_config(
        checkpoint, dict(config, evaluator=False), 'variables.pkl')
  # A checkpoint from before the evaluator judged sampled latents loads with
  # a warning; a current one without.
  assert checkpoint['format'] == 2
  assert 'predates' not in capsys.readouterr().err
  other.load(dict(checkpoint, format=1), tmp_path / 'variables.pkl')
  # Without a format number, the config tells: `shared_rssm_noise` came
  # with the fix.
  old = {k: v for k, v in checkpoint.items() if k != 'format'}
  other.load(old, tmp_path / 'variables.pkl')
  assert capsys.readouterr().err.count(
      'predates the evaluator judging sampled latents') == 1
  older = dict(old, config={
      k: v for k, v in old['config'].items() if k != 'shared_rssm_noise'})
  other.load(older, tmp_path / 'variables.pkl')
  assert 'predates' in capsys.readouterr().err


def test_evaluator_horizon_must_fit_the_batch():
  config = dreamer_idm.parse_args(
      ['--configs', 'defaults', 'idm', '--batch_length', '10'])
  with pytest.raises(tools.ConfigError, match='needs --batch_length of at least 17'):
    dreamer_idm.check_config(config)


def test_idm_trains_logs_checkpoints_and_resumes(tmp_path):
  from test_dreamer import _records, _train
  logdir = tmp_path / 'idm'
  out = _train(logdir, '--configs', 'defaults', 'dmc', 'idm', 'debug',
               '--steps', '300', '--eval_every', '150')
  assert 'Prefill dataset with 100 steps.' in out
  records = _records(logdir)
  keys = set().union(*records)
  expected = set().union(*IDM_METRICS.values()) | {'skipped_updates'}
  assert expected <= keys, expected - keys
  shares = [r['weight_derived_share'] for r in records
            if 'weight_derived_share' in r]
  assert all(0 < share < 1 for share in shares)
  assert all(r['skipped_updates'] == 0 for r in records
             if 'skipped_updates' in r)
  assert list((logdir / 'images').glob('perturbed_*.png'))
  checkpoint = tools.read_checkpoint(logdir / 'variables.pkl')
  assert checkpoint['step'] == 300 and checkpoint['config']['evaluator']
  # Evaluated at 100 and 300, the first step past 250 on the grid of 150.
  assert (checkpoint['evaluated_at'], checkpoint['eval_anchor']) == (300, 250)
  # Resumed with a finer grid (50 from 250): 300 is evaluated already and
  # 350 is due next, so collection comes first, then the end.
  out = _train(logdir, '--configs', 'defaults', 'dmc', 'idm', 'debug',
               '--steps', '400', '--eval_every', '50')
  assert 'Prefill dataset with 0 steps.' in out
  assert 'Resumed from checkpoint at step 300; 300 env steps stored.' in out
  assert out.index('Start collection.') < out.index('Start evaluation.')
  assert out.count('Start evaluation.') == 1
  assert tools.read_checkpoint(logdir / 'variables.pkl')['step'] == 400
  assert [r['step'] for r in _records(logdir) if 'test/return' in r] == [
      100, 300, 400]
  out = subprocess_error(logdir)
  assert 'evaluator: True -> False' in out


def subprocess_error(logdir):
  import subprocess
  import sys
  result = subprocess.run(
      [sys.executable, 'dreamer_idm.py', '--configs', 'defaults', 'dmc',
       'dreamer', 'debug', '--logdir', str(logdir)],
      cwd=dreamer_idm.CONFIGS.parent, capture_output=True, text=True,
      timeout=300)
  assert result.returncode == 2
  return result.stderr


def test_evaluation_trains_when_due_and_act_never_trains(tmp_path):
  # Upstream's loop: the first evaluation after prefill follows pretraining.
  agent, config = _agent(tmp_path, 'dreamer', '--expl', 'completely_random')
  updates = []
  agent.train_step = updates.append
  agent._should_log = lambda step: False
  obs = {'image': np.zeros((1, 64, 64, 3), np.uint8)}
  reset = np.array([True])
  step = agent.step  # The stored episodes' steps.
  agent.act(obs, reset, None, training=False)
  assert updates == []
  agent(obs, reset, None, training=False)
  assert len(updates) == config.pretrain and agent.step == step
  agent(obs, reset, None, training=False)  # Same step: nothing due.
  assert len(updates) == config.pretrain
  # Evaluation keeps the policy's action, also with completely random
  # exploration; training acts at random and logs the exploration amount.
  action = tf.constant([[0.5, -0.2]])
  amount = tf.constant(0.0)
  np.testing.assert_array_equal(
      agent._exploration(action, amount, training=False), action)
  actions = [agent.act(obs, reset, None)[0].numpy() for _ in range(3)]
  assert not np.allclose(actions[0], actions[1])
  assert np.all(np.abs(actions) <= 1)
  assert agent.step == step + 3 * config.action_repeat
  assert agent._metrics['expl_amount'] == [config.expl_amount] * 3


def test_a_non_finite_update_is_skipped_counted_and_stops_the_run(
    tmp_path, capsys):
  agent, _ = _agent(tmp_path, 'idm', '--skip_limit', '3', '--log_images',
                    'False')
  logged = []
  agent._logger = types.SimpleNamespace(
      write=lambda step, metrics, updates: logged.append(metrics))
  data = {k: v.numpy() for k, v in next(agent._dataset).items()}
  bad = dict(data, action=data['action'].copy())
  bad['action'][0, 3, 0] = np.nan  # Reaches every loss through the RSSM.
  values = lambda: [v.numpy() for v in agent.checkpoint_variables()]
  before = values()
  agent.train_step(bad)
  # Weights, Adam's statistics and its step counters: all unchanged.
  assert all(np.array_equal(a, b) for a, b in zip(before, values()))
  out = capsys.readouterr().out
  assert ('Warning: update skipped at step' in out and
          'non-finite gradient in model, value, actor, evaluator (1 in a row; '
          'the run stops at 3)' in out)
  agent.train_step(data)  # A finite update applies and resets the streak.
  assert not all(np.array_equal(a, b) for a, b in zip(before, values()))
  agent.train_step(bad)
  agent._write_summaries()
  assert logged[-1]['skipped_updates'] == 2
  # Non-finite values are not averaged in.
  assert all(np.isfinite(v) for v in logged[-1].values())
  agent.train_step(bad)
  with pytest.raises(tools.NonFiniteError, match='3 updates in a row'):
    agent.train_step(bad)


def test_evaluator_loss_is_eq3_by_hand():
  # A stand-in evaluator that returns the logits it is given, [fake, real].
  agent = types.SimpleNamespace(_evaluator=lambda state, action, nxt: state)
  real = tf.constant([[0.0, 2.0], [1.0, 0.0]])
  fake = tf.constant([[3.0, 0.0], [0.0, 0.5]])
  loss, metrics = dreamer_idm.Dreamer._evaluator_loss(
      agent, (real, None, None), (fake, None, None))
  p_real = lambda x: np.exp(x[:, 1]) / np.exp(x).sum(1)
  expected = -np.log(p_real(real.numpy())).mean() - np.log(
      1 - p_real(fake.numpy())).mean()
  assert float(loss) == pytest.approx(expected, rel=1e-6)
  assert float(metrics['evaluator_real_prob']) == pytest.approx(
      p_real(real.numpy()).mean(), rel=1e-6)
  assert float(metrics['evaluator_fake_prob']) == pytest.approx(
      p_real(fake.numpy()).mean(), rel=1e-6)


def test_weight_and_derived_metrics_by_hand():
  metrics = dreamer_idm.Dreamer._weight_metrics(
      None, tf.constant([[0.5, 0.25, 0.25]]), 0)
  assert float(metrics['weight_max_rel']) == pytest.approx(1.5)
  assert float(metrics['weight_min_rel']) == pytest.approx(0.75)
  # Effective sample size 1 / sum(w^2) = 2.67 of 3.
  assert float(metrics['weight_ess']) == pytest.approx(1 / 0.375 / 3)
  assert 'weight_derived_share' not in metrics
  # Two positions x (2 originals, then 2 derived), K = 1: the derived
  # trajectories hold 0.1 + 0.2 + 0.05 + 0.05 of the weight.
  weights = tf.constant([[0.2, 0.1, 0.1, 0.2], [0.1, 0.2, 0.05, 0.05]])
  metrics = dreamer_idm.Dreamer._weight_metrics(None, weights, 1)
  assert float(metrics['weight_derived_share']) == pytest.approx(0.4)
  agent = types.SimpleNamespace(_c=tools.AttrDict(derived_copies=1))
  returns = tf.constant([[1.0, 3.0, 10.0, 20.0], [1.0, 3.0, 10.0, 20.0]])
  start = {'deter': tf.constant([[2.0], [0.0], [0.5], [-1.5]])}
  metrics = dreamer_idm.Dreamer._derived_metrics(agent, returns, start)
  assert float(metrics['imag_return_original']) == 2.0
  assert float(metrics['imag_return_derived']) == 15.0
  assert float(metrics['derived_h_outside']) == 0.5  # Of the derived only.


def test_exploration_amount_decays_to_its_floor_and_noise_stays_in_bounds():
  config = tools.AttrDict(
      expl='additive_gaussian', expl_amount=0.3, expl_decay=1000,
      expl_min=0.0, eval_noise=0.0)
  agent = types.SimpleNamespace(_c=config, _step=2000)
  amount = lambda training: dreamer_idm.Dreamer._exploration_amount(
      agent, training)
  assert amount(True) == pytest.approx(0.075)  # Two half-lives.
  config.expl_min = 0.1
  assert amount(True) == 0.1
  assert amount(False) == 0.0
  action = tf.constant([[0.99, -0.99, 0.0]] * 2000)
  explore = lambda amount, training: dreamer_idm.Dreamer._exploration(
      agent, action, tf.constant(amount), training).numpy()
  noisy = explore(0.3, True)
  # Clipped to the action bounds: about half of N(0.99, 0.3) lies beyond 1.
  assert np.all(np.abs(noisy) <= 1)
  assert 0.4 < (noisy[:, 0] == 1).mean() < 0.6
  assert 0.4 < (noisy[:, 1] == -1).mean() < 0.6
  assert noisy[:, 2].std() == pytest.approx(0.3, rel=0.1)
  np.testing.assert_array_equal(explore(0.0, True), action)
  np.testing.assert_array_equal(explore(0.0, False), action)
  config.eval_noise = 0.2  # Evaluation noise, as upstream's eval_noise.
  assert explore(0.2, False)[:, 2].std() == pytest.approx(0.2, rel=0.1)


def test_the_seed_fixes_the_initial_weights():
  config = dreamer_idm.parse_args(['--configs', 'dmc', 'idm', 'debug'])
  space = type('Space', (), {'shape': (2,)})()
  def weights(seed):
    tf.keras.utils.set_random_seed(seed)
    agent = dreamer_idm.Dreamer(
        config, None, space, tf.summary.create_noop_writer(), None)
    return [v.numpy() for v in agent.checkpoint_variables()]
  first, again, other = weights(3), weights(3), weights(4)
  assert all(np.array_equal(a, b) for a, b in zip(first, again))
  assert not all(np.array_equal(a, b) for a, b in zip(first, other))
