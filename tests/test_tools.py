import pickle
import warnings
import zipfile

import numpy as np
import pytest
import tensorflow as tf

import tools


def test_lambda_return_matches_hand_computation():
  reward = np.array([1.0, 2.0, 3.0], np.float32)
  value = np.array([0.5, 1.5, 2.5], np.float32)
  bootstrap, pcont, lam = 4.0, 0.9, 0.8
  # Backwards: R_t = r_t + g * ((1 - lam) * v_{t+1} + lam * R_{t+1}).
  r2 = 3.0 + 0.9 * 4.0
  r1 = 2.0 + 0.9 * ((1 - lam) * 2.5 + lam * r2)
  r0 = 1.0 + 0.9 * ((1 - lam) * 1.5 + lam * r1)
  returns = tools.lambda_return(
      tf.constant(reward), tf.constant(value), pcont,
      tf.constant(bootstrap), lam, axis=0)
  np.testing.assert_allclose(returns.numpy(), [r0, r1, r2], rtol=1e-6)


def test_lambda_return_with_a_discount_per_step():
  # pcont_t discounts what follows step t: a terminal step (0) cuts it off.
  reward = tf.constant([1.0, 2.0, 3.0])
  value = tf.constant([0.5, 1.5, 2.5])
  pcont = tf.constant([0.9, 0.5, 0.0])
  lam = 0.8
  r2 = 3.0 + 0.0 * 4.0
  r1 = 2.0 + 0.5 * ((1 - lam) * 2.5 + lam * r2)
  r0 = 1.0 + 0.9 * ((1 - lam) * 1.5 + lam * r1)
  returns = tools.lambda_return(reward, value, pcont, tf.constant(4.0), lam, 0)
  np.testing.assert_allclose(returns.numpy(), [r0, r1, r2], rtol=1e-6)


def test_lambda_return_extremes_and_batch_axis():
  reward = tf.constant([[1.0, 1.0, 1.0], [0.0, 2.0, 0.0]])  # batch x time
  value = tf.constant([[5.0, 6.0, 7.0], [1.0, 1.0, 1.0]])
  bootstrap = tf.constant([10.0, 3.0])
  mc = tools.lambda_return(reward, value, 0.5, bootstrap, 1.0, axis=1)
  np.testing.assert_allclose(
      mc.numpy()[:, 0], [1 + 0.5 + 0.25 + 0.125 * 10, 0 + 1 + 0 + 0.125 * 3])
  td = tools.lambda_return(reward, value, 0.5, bootstrap, 0.0, axis=1)
  np.testing.assert_allclose(td.numpy()[0], [1 + 3, 1 + 3.5, 1 + 5])


def test_static_scan_matches_cumsum_and_reverse():
  x = tf.constant([1.0, 2.0, 3.0, 4.0])
  forward = tools.static_scan(lambda a, b: a + b, x, tf.constant(0.0))
  backward = tools.static_scan(
      lambda a, b: a + b, x, tf.constant(0.0), reverse=True)
  np.testing.assert_allclose(forward.numpy(), [1, 3, 6, 10])
  np.testing.assert_allclose(backward.numpy(), [10, 9, 7, 4])


PRESETS = {
    'defaults': {'a': 1, 'b': 2.0, 'flag': False, 'name': 'x', 'steps': 10},
    'one': {'a': 3, 'name': 'one'},
    'two': {'a': 4, 'b': 5.0},
}


def test_config_merges_left_to_right_then_overrides():
  config = tools.make_config(PRESETS, ['defaults', 'one', 'two'], [])
  assert (config.a, config.b, config.name) == (4, 5.0, 'one')
  config = tools.make_config(PRESETS, ['defaults', 'two', 'one'], [])
  assert (config.a, config.b, config.name) == (3, 5.0, 'one')
  config = tools.make_config(
      PRESETS, ['defaults', 'two'],
      ['--a', '7', '--flag', 'True', '--b', '1e-3', '--steps', '5e3'])
  assert config.a == 7 and isinstance(config.a, int)
  assert config.flag is True and config.b == 1e-3 and config.steps == 5000


@pytest.mark.parametrize('names, overrides, message', [
    (['defaults', 'nope'], [], "Unknown preset 'nope'"),
    (['defaults'], ['--c', '1'], 'Unknown config key --c'),
    (['defaults'], ['--a', 'seven'], '--a expects an integer'),
    (['defaults'], ['--a', '1.5'], '--a expects an integer'),
    (['defaults'], ['--a', 'nan'], '--a expects an integer'),
    (['defaults'], ['--a', 'inf'], '--a expects an integer'),
    (['defaults'], ['--flag', 'yes'], '--flag expects True or False'),
    (['defaults'], ['--b', 'x'], '--b expects a number'),
    (['defaults'], ['--a'], 'Expected --key value pairs'),
    (['defaults'], ['a', '1'], 'Expected --key value pairs'),
])
def test_config_errors(names, overrides, message):
  with pytest.raises(tools.ConfigError, match=message):
    tools.make_config(PRESETS, names, overrides)


def test_config_preset_errors():
  presets = dict(PRESETS, bad={'zzz': 1}, wrong={'flag': 3}, text={'a': 'x'})
  with pytest.raises(tools.ConfigError, match="sets unknown key 'zzz'"):
    tools.make_config(presets, ['defaults', 'bad'], [])
  with pytest.raises(tools.ConfigError, match='flag must be True or False'):
    tools.make_config(presets, ['defaults', 'wrong'], [])
  with pytest.raises(tools.ConfigError, match='a must be a number'):
    tools.make_config(presets, ['defaults', 'text'], [])


def _episode(length, seed=0):
  random = np.random.RandomState(seed)
  return {
      'image': random.randint(0, 255, (length, 64, 64, 3)).astype(np.uint8),
      'action': random.uniform(-1, 1, (length, 2)).astype(np.float32),
      'reward': random.uniform(0, 1, length).astype(np.float32),
      'discount': np.ones(length, np.float32)}


def test_episodes_roundtrip_and_corrupt_files_are_skipped(tmp_path):
  good = tools.save_episodes(tmp_path, [_episode(20)])[0]
  assert tools.count_episodes(tmp_path) == (1, 19)
  (tmp_path / '20200101T000000-bad-30.npz').write_bytes(b'not a zip file')
  data = (good.read_bytes())[:300]
  (tmp_path / '20200101T000000-trunc-30.npz').write_bytes(data)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    chunks = tools.load_episodes(tmp_path, 5, length=10, seed=1)
    chunks = [next(chunks) for _ in range(5)]
  messages = ' '.join(str(w.message) for w in caught)
  assert 'bad-30.npz' in messages and 'trunc-30.npz' in messages
  assert len(caught) == 2  # Each broken file is reported once.
  original = np.load(good)['reward']
  for chunk in chunks:
    assert chunk['image'].shape == (10, 64, 64, 3)
    start = int(np.flatnonzero(original == chunk['reward'][0])[0])
    np.testing.assert_array_equal(chunk['reward'], original[start:start + 10])
  assert not list(tmp_path.glob('.*.tmp'))


def test_the_dataset_signature_comes_from_the_first_usable_episode(tmp_path):
  (tmp_path / '20200101T000000-bad-30.npz').write_bytes(b'not a zip file')
  with pytest.raises(RuntimeError, match='No usable episodes of length >= 10'):
    tools.first_episode_index(tmp_path, 10)
  tools.save_episodes(tmp_path, [_episode(6), _episode(12, seed=1)])
  index = tools.first_episode_index(tmp_path, 10)  # Skips the 6-row one.
  assert {k: (v[1], v[2]) for k, v in index.items()} == {
      'image': (np.uint8, (12, 64, 64, 3)), 'action': (np.float32, (12, 2)),
      'reward': (np.float32, (12,)), 'discount': (np.float32, (12,))}


def test_sampling_reaches_every_episode_uniformly_from_disk(tmp_path):
  episodes = [dict(_episode(12, seed), reward=np.full(12, seed, np.float32))
              for seed in range(40)]
  tools.save_episodes(tmp_path, episodes)
  chunks = tools.load_episodes(tmp_path, 100, length=5, seed=0)
  counts = np.zeros(40)
  for _ in range(4000):
    chunk = next(chunks)
    (episode,) = set(chunk['reward'].astype(int))
    counts[episode] += 1
    start = np.flatnonzero(
        (episodes[episode]['action'] == chunk['action'][0]).all(1))[0]
    for key in ('image', 'action'):
      np.testing.assert_array_equal(
          chunk[key], episodes[episode][key][start: start + 5])
  # Uniform over episodes: 100 expected each, binomial std 9.9.
  assert counts.min() > 60 and counts.max() < 140


def test_an_episode_deleted_mid_run_is_dropped_not_fatal(tmp_path):
  gone, kept = tools.save_episodes(
      tmp_path, [dict(_episode(12, s), reward=np.full(12, s, np.float32))
                 for s in (0, 1)])
  chunks = tools.load_episodes(tmp_path, 50, length=5, seed=0)
  for _ in range(50):  # Both indexed; this round's reads are done.
    next(chunks)
  gone.unlink()
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    rewards = {int(next(chunks)['reward'][0]) for _ in range(100)}
  assert rewards == {1}
  assert len(caught) == 1 and gone.name in str(caught[0].message)


def test_compressed_episodes_are_rewritten_uncompressed_and_read(tmp_path):
  # Upstream's (and our earlier) format: np.savez_compressed.
  episode = _episode(20)
  filename = tmp_path / '20200101T000000-old-20.npz'
  np.savez_compressed(filename, **episode)
  chunk = next(tools.load_episodes(tmp_path, 1, length=20))
  for key, value in episode.items():
    np.testing.assert_array_equal(chunk[key], value)
  with zipfile.ZipFile(filename) as archive:
    assert {m.compress_type for m in archive.infolist()} == {zipfile.ZIP_STORED}
  assert tools.count_episodes(tmp_path) == (1, 19)


def test_checkpoint_roundtrip_and_incompatible_config(tmp_path):
  variables = [tf.Variable(np.arange(6.0).reshape(2, 3)), tf.Variable(2.0)]
  config = tools.AttrDict(task='dmc_walker_walk', deter_size=200, model_lr=1.0)
  filename = tmp_path / 'variables.pkl'
  tools.save_checkpoint(filename, variables, 1234, config)
  checkpoint = tools.read_checkpoint(filename)
  assert checkpoint['step'] == 1234
  copies = [tf.Variable(tf.zeros_like(v)) for v in variables]
  tools.load_variables(checkpoint, copies, filename)
  np.testing.assert_array_equal(copies[0].numpy(), variables[0].numpy())
  # Learning rates may change between runs, architecture keys may not.
  tools.check_checkpoint_config(checkpoint, dict(config, model_lr=2.0), filename)
  with pytest.raises(tools.ConfigError, match=r'deter_size: 200 -> 100'):
    tools.check_checkpoint_config(
        checkpoint, dict(config, deter_size=100), filename)
  with pytest.raises(tools.ConfigError, match='holds 2 variables, this model 1'):
    tools.load_variables(checkpoint, [tf.Variable(1.0)], filename)
  with pytest.raises(tools.ConfigError, match=r'variable 0 with shape \(2, 3\)'):
    tools.load_variables(
        checkpoint, [tf.Variable(tf.zeros([3, 2])), tf.Variable(1.0)], filename)
  filename.write_bytes(pickle.dumps(checkpoint)[:50])
  with pytest.raises(tools.ConfigError, match='unreadable'):
    tools.read_checkpoint(filename)


def test_float16_checkpoint_keeps_the_dynamic_loss_scale(tmp_path):
  prec = tf.keras.mixed_precision
  def make(policy):
    prec.set_global_policy(policy)
    module = tf.Module()
    module.w = tf.Variable([1.0, 2.0])
    opt = tools.Adam('test', [module], 1e-3)
    opt.build()
    return module, opt
  try:
    module, opt = make('mixed_float16')
    for loss in (lambda w: w[0] * np.inf, lambda w: tf.reduce_sum(w ** 2)):
      with tf.GradientTape() as tape:
        value = loss(module.w)
      opt(tape, value)
    # An overflow halves the scale (2 ** 15 -> 2 ** 14), a good step counts.
    state = opt.loss_scale_state
    assert [float(v) for v in state.values()] == [2 ** 14, 1]
    filename = tmp_path / 'variables.pkl'
    config = dict(task='dmc_walker_walk')
    tools.save_checkpoint(filename, opt.variables, 0, config, state)
    checkpoint = tools.read_checkpoint(filename)
    _, fresh = make('mixed_float16')
    tools.load_variables(
        checkpoint, fresh.variables, filename, fresh.loss_scale_state)
    assert [float(v) for v in fresh.loss_scale_state.values()] == [2 ** 14, 1]
    # Across precisions the same checkpoint loads; float32 has no scale.
    _, single = make('float32')
    assert single.loss_scale_state == {}
    tools.load_variables(checkpoint, single.variables, filename)
    np.testing.assert_array_equal(
        single.variables[1].numpy(), opt.variables[1].numpy())
    tools.save_checkpoint(filename, single.variables, 0, config)
    _, half = make('mixed_float16')
    tools.load_variables(tools.read_checkpoint(filename), half.variables,
                         filename, half.loss_scale_state)
    assert float(half.loss_scale_state['test/loss_scale']) == 2 ** 15
  finally:
    prec.set_global_policy('float32')


def test_adam_clips_the_global_norm_and_decays_weights_decoupled():
  module = tf.Module()
  module.w = tf.Variable(tf.ones([4]), name='w')
  module.b = tf.Variable(tf.ones([2]), name='b')
  opt = tools.Adam('model', [module], 0.1, clip=1.0, wd=0.5, wdpattern='/w')
  opt.build()
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(3 * module.w) + tf.reduce_sum(0 * module.b)
  norm = opt(tape, loss)
  assert float(norm) == pytest.approx(6.0)  # sqrt(4 * 3^2), before clipping.
  # Adam's first moment saw the clipped gradient, 3 / 6 per entry.
  (m,) = [v for v in opt.variables if '/m' in v.name and v.shape == (4,)]
  np.testing.assert_allclose(m.numpy(), 0.1 * 0.5, rtol=1e-6)
  # Decoupled decay: w -= lr * wd * w before Adam's step; b (no match, zero
  # gradient) stays.
  np.testing.assert_allclose(module.w.numpy(), 1 - 0.05 - 0.1, rtol=1e-5)
  np.testing.assert_array_equal(module.b.numpy(), 1.0)


def test_training_windows_reach_the_last_step(tmp_path):
  episode = lambda n: {'reward': np.arange(n, dtype=np.float32)}
  tools.save_episodes(tmp_path / 'a', [episode(12)])
  chunks = tools.load_episodes(tmp_path / 'a', 300, length=10, seed=0)
  starts = {int(next(chunks)['reward'][0]) for _ in range(300)}
  assert starts == {0, 1, 2}  # 12 - 10 + 1 windows; upstream never drew 2.
  tools.save_episodes(tmp_path / 'b', [episode(10)])
  whole = next(tools.load_episodes(tmp_path / 'b', 1, length=10))
  np.testing.assert_array_equal(whole['reward'], np.arange(10))


def test_a_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
  filename = tmp_path / 'variables.pkl'
  variables = [tf.Variable([1.0, 2.0])]
  tools.save_checkpoint(filename, variables, 1, {'task': 'dmc_walker_walk'})
  before = filename.read_bytes()
  def crash(*args):
    raise OSError('disk full')
  monkeypatch.setattr(tools.os, 'replace', crash)
  variables[0].assign([3.0, 4.0])
  with pytest.raises(OSError, match='disk full'):
    tools.save_checkpoint(filename, variables, 2, {'task': 'dmc_walker_walk'})
  assert filename.read_bytes() == before
  assert tools.read_checkpoint(filename)['step'] == 1


def test_every_and_once():
  every = tools.Every(10)
  assert [every(s) for s in (0, 5, 10, 12, 20, 31)] == [
      True, False, True, False, True, True]
  once = tools.Once()
  assert [once(), once(), once()] == [True, False, False]


class _CountingEnv:
  """Episodes of a fixed length; counts the steps of finished episodes, as
  the stored episodes count them."""

  def __init__(self, length):
    self._length, self._t, self.finished = length, 0, 0

  def reset(self, blocking=True):
    self._t = 0
    return lambda: {'t': np.array(0)}

  def step(self, action, blocking=True):
    self._t += 1
    done = self._t >= self._length
    self.finished += self._length if done else 0
    obs = {'t': np.array(self._t)}
    return lambda: (obs, 0.0, done, {})


def test_simulate_in_chunks_makes_the_calls_of_one_collection():
  # The training loop collects in chunks with a checkpoint between them: the
  # envs and the agent's state carry on, so the agent sees the same inputs.
  def run(chunk):
    envs, calls = [_CountingEnv(3), _CountingEnv(5)], []
    def agent(obs, done, state):
      calls.append((obs['t'].tolist(), done.tolist(), state))
      return np.zeros((len(done), 1)), (state or 0) + 1
    state = None
    while sum(env.finished for env in envs) < 20:
      left = 20 - sum(env.finished for env in envs)
      state = None if state is None else (0, 0, *state[2:])
      state = tools.simulate(agent, envs, min(chunk, left), state=state)
    return calls, sum(env.finished for env in envs)
  whole, steps = run(20)
  # Episodes end at calls 3, 5, 6, 9, 10 and 12: 3 + 5 + 3 + 3 + 5 + 3 steps.
  assert steps == 22 and len(whole) == 12
  assert run(4) == (whole, steps) and run(1) == (whole, steps)
