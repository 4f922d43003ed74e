import collections
import contextlib
import functools
import os
import pathlib
import re
import subprocess
import sys
import textwrap

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
# oneDNN kernels: without them TensorFlow 2.21 on this kind of CPU runs the
# decoder's transposed convolutions about 8x slower.
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '1')

sys.path.append(str(pathlib.Path(__file__).parent))

CONFIGS = pathlib.Path(__file__).parent / 'configs.yaml'


def help_text(path=CONFIGS):
  """--help: every preset with its comment, then every key of `defaults` with
  its default and comment, grouped as configs.yaml groups them. Read from the
  file's text, so that --help needs neither TensorFlow nor a YAML library."""
  width = 100
  presets, groups = [], []
  comment, preset = [], None
  for line in path.read_text().splitlines():
    text = line.strip()
    indent = len(line) - len(line.lstrip())
    if not text:
      comment = []
    elif indent == 0 and text.startswith('#'):
      comment.append(text.lstrip('# '))
    elif indent == 0:
      preset = text.rstrip(':')
      presets.append((preset, ' '.join(comment)))
      comment = []
    elif preset != 'defaults':
      continue
    elif text.startswith('#') and indent == 2:
      groups.append((text.lstrip('# '), []))
    elif text.startswith('#'):  # A key's comment, continued.
      key, value, note = groups[-1][1][-1]
      groups[-1][1][-1] = (key, value, f'{note} {text.lstrip("# ")}')
    else:
      key, _, rest = text.partition(':')
      value, _, note = rest.partition('#')
      groups[-1][1].append((key, value.strip(), note.strip()))
  out = [
      'Usage: python3 dreamer_idm.py [--configs PRESET ...] [--key value ...]',
      '',
      *textwrap.wrap(
          '--configs merges presets left to right over `defaults`; then each '
          '--key value overrides one key, parsed to the type of its default. '
          'Rerun the same command with the same --logdir to resume.', width),
      '', 'Presets (configs.yaml):']
  indent = ' ' * 26
  for name, note in presets:
    out += textwrap.wrap(note or '-', width, initial_indent=f'  {name:23} ',
                         subsequent_indent=indent)
  out += ['', 'Keys and their defaults:']
  for title, keys in groups:
    out.append(f'  {title}')
    for key, value, note in keys:
      flag = f'--{key} {value}'
      if len(flag) > 30:
        out.append(f'    {flag}')
        flag = ''
      out += textwrap.wrap(note or '-', width,
                           initial_indent=f'    {flag:31} ',
                           subsequent_indent=' ' * 36)
  return '\n'.join(out)


if __name__ == '__main__' and {'-h', '--help'} & set(sys.argv[1:]):
  print(help_text())  # Before TensorFlow loads: it takes seconds.
  sys.exit(0)


# TensorFlow's C++ start-up lines (absl's preamble, oneDNN and CUDA-not-found
# notes) would greet every start; anything else it prints gets through.
STARTUP_NOISE = re.compile(
    r'All log messages before absl::InitializeLog|^I\d{4} |'
    r'oneDNN custom operations are on|Could not find cuda drivers|'
    r'failed call to cuInit|This TensorFlow binary is optimized|'
    r'To enable the following instructions|TF-TRT Warning|'
    r'Unable to register cu\w+ factory')


# Forwards the lines that are not start-up noise, as they come. It ignores
# Ctrl-C, which reaches the whole process group, and ends when its input does.
_FILTER = (
    'import re, signal, sys\n'
    'signal.signal(signal.SIGINT, signal.SIG_IGN)\n'
    'noise = re.compile(sys.argv[1])\n'
    'for line in sys.stdin.buffer:\n'
    '  if not noise.search(line.decode("utf-8", "replace")):\n'
    '    sys.stdout.buffer.write(line)\n'
    '    sys.stdout.buffer.flush()\n')


@contextlib.contextmanager
def quiet_startup():
  """Filters TensorFlow's start-up lines from stderr while it imports. The
  filter is a process of its own, so a crash inside the import (an abort,
  an illegal instruction) still gets its last lines through."""
  if sys.stderr is not None:
    sys.stderr.flush()
  try:
    saved = os.dup(2)
  except OSError:  # No stderr to filter.
    yield
    return
  try:
    filter_ = subprocess.Popen(
        [sys.executable, '-I', '-c', _FILTER, STARTUP_NOISE.pattern],
        stdin=subprocess.PIPE, stdout=saved, stderr=saved)
  except OSError:
    os.close(saved)
    yield
    return
  os.dup2(filter_.stdin.fileno(), 2)
  try:
    yield
  finally:
    if sys.stderr is not None:
      sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)
    filter_.stdin.close()
    try:
      filter_.wait(timeout=5)
    except subprocess.TimeoutExpired:  # A stuck filter never blocks training.
      filter_.kill()


with quiet_startup():
  import numpy as np
  import tensorflow as tf
  from tensorflow_probability import distributions as tfd
  from tf_keras import mixed_precision as prec

  import models
  import tools
  import wrappers

tf.get_logger().setLevel('ERROR')


class Dreamer(tools.Module):

  def __init__(self, config, datadir, actspace, writer, logger):
    self._c = config
    self._actspace = actspace
    self._actdim = actspace.shape[0]
    self._writer = writer
    self._logger = logger
    # Without a datadir the agent only acts (evaluate.py, figure1.py): no
    # dataset and no build-time update; its variables come from a checkpoint.
    self._step = count_steps(datadir, config) if datadir else 0
    self._should_pretrain = tools.Once()
    self._should_train = tools.Every(config.train_every)
    self._should_log = tools.Every(config.log_every)
    self._metrics = collections.defaultdict(list)
    self._updates = 0
    self._skipped = 0  # Updates skipped in this logging window.
    self._skipped_in_a_row = 0
    self._float = prec.global_policy().compute_dtype
    self._dataset = iter(load_dataset(datadir, config)) if datadir else None
    # XLA compiles the whole update once; variables stay variables.
    self._traces = 0
    self.train = tf.function(
        self._update, autograph=False, jit_compile=use_jit(config.jit))
    self._build_model()

  @property
  def step(self):
    return self._step

  def __call__(self, obs, reset, state=None, training=True):
    # Like upstream, evaluation calls train too when an update is due: the
    # first evaluation follows the pretraining updates.
    if self._should_train(self._step):
      log = self._should_log(self._step)
      n = self._c.pretrain if self._should_pretrain() else self._c.train_steps
      for _ in range(n):
        self.train_step(next(self._dataset))
      if log:
        self._write_summaries()
    return self.act(obs, reset, state, training)

  def act(self, obs, reset, state=None, training=True):
    """The policy alone, never training: for evaluating a checkpoint."""
    if state is not None and reset.any():
      mask = tf.cast(1 - reset, self._float)[:, None]
      state = tf.nest.map_structure(lambda x: x * mask, state)
    obs = {'image': obs['image']}
    amount = self._exploration_amount(training)
    action, state = self.policy(
        obs, state, training, tf.constant(amount, tf.float32))
    if training:
      self._metrics['expl_amount'].append(amount)
      self._step += len(reset) * self._c.action_repeat
    return action, state

  @tf.function(autograph=False)
  def policy(self, obs, state, training, amount):
    # The state carries the latent and the last action between env steps.
    batch = tf.shape(obs['image'])[0]
    latent, action = state if state is not None else (
        self._dynamics.initial(batch),
        tf.zeros((batch, self._actdim), self._float))
    embed = self._encode(preprocess(obs, self._c))
    latent, _ = self._dynamics.obs_step(latent, action, embed)
    dist = self._actor(self._dynamics.get_feat(latent))
    action = dist.sample() if training else dist.mode()
    action = tf.cast(
        self._exploration(action, amount, training), self._float)
    return action, (latent, action)

  def train_step(self, data):
    metrics = {k: float(v) for k, v in self.train(data).items()}
    self._updates += 1
    # tools.Adam skipped each group whose gradient norm is not finite; the
    # groups it applied keep their metrics.
    for key, value in metrics.items():
      if np.isfinite(value):
        self._metrics[key].append(value)
    skipped = [k[:-len('_grad_norm')] for k, v in metrics.items()
               if k.endswith('_grad_norm') and not np.isfinite(v)]
    if skipped:
      self._skip_update(skipped)
    else:
      self._skipped_in_a_row = 0

  def _skip_update(self, groups):
    self._skipped += 1
    self._skipped_in_a_row += 1
    limit = self._c.skip_limit
    # float16's loss scale overflows now and then by design (the optimizer
    # then halves it): only a streak is worth a warning there.
    if self._float != 'float16' or self._skipped_in_a_row >= 10:
      print(f'Warning: update skipped at step {self._step}: non-finite '
            f'gradient in {", ".join(groups)} ({self._skipped_in_a_row} in a '
            f'row; the run stops at {limit}).', flush=True)
    if self._skipped_in_a_row >= limit:
      raise tools.NonFiniteError(
          f'{limit} updates in a row had a non-finite gradient '
          f'({", ".join(groups)}) at step {self._step}; stopped with the last '
          f'checkpoint intact. Check the episodes for NaN or inf or lower the '
          f'learning rates, then rerun to resume.')

  def _update(self, data):
    # Runs once per trace: a second trace means a changed input signature.
    self._traces += 1
    if self._traces > 1:
      print(f'Warning: the train step was traced again (trace {self._traces})'
            f'; each trace costs seconds. Input: {data}', flush=True)
    # Batches arrive as stored (uint8 images): a quarter of the memory of
    # float32 while they wait in the prefetch buffer.
    return self._train(preprocess(data, self._c))

  def _train(self, data):
    with tf.GradientTape() as model_tape:
      embed = self._encode(data)
      post, prior = self._dynamics.observe(embed, data['action'])
      feat = self._dynamics.get_feat(post)
      image_pred = self._decode(feat)
      # Mean log-likelihoods of what the model reconstructs and predicts.
      likes = tools.AttrDict(
          image=tf.reduce_mean(
              image_pred.log_prob(tf.cast(data['image'], tf.float32))),
          reward=tf.reduce_mean(self._reward(feat).log_prob(data['reward'])))
      if self._c.pcont:
        target = self._c.discount * data['discount']
        likes.pcont = self._c.pcont_scale * tf.reduce_mean(
            self._pcont(feat).log_prob(target))
      prior_dist = self._dynamics.get_dist(prior)
      post_dist = self._dynamics.get_dist(post)
      div = models.kl_loss(post_dist, prior_dist, self._c.free_nats)
      model_loss = self._c.kl_scale * div - sum(likes.values())
      idm_metrics = {}
      if self._c.constraint:
        penalty, idm_metrics = self._decoding_constraint(post, image_pred)
        model_loss += penalty

    with tf.GradientTape() as actor_tape:
      imag_feat, imag_states, imag_actions, start = self._imagine_ahead(post)
      reward = self._reward(imag_feat).mode()
      value = self._value(imag_feat).mode()
      pcont = (self._pcont(imag_feat).mean() if self._c.pcont
               else tf.fill(tf.shape(reward), self._c.discount))
      # States 0..H-2 carry loss; the value of the last one bootstraps.
      returns = tools.lambda_return(
          reward[:-1], value[:-1], pcont[:-1], bootstrap=value[-1],
          lambda_=self._c.disclam, axis=0)
      # Weight of position j: the product of pcont before it (1, g, g^2...).
      discount = tf.stop_gradient(
          tf.math.cumprod(pcont[:-1], 0, exclusive=True))
      weights = None
      if self._c.evaluator:
        weights = self._reliability_weights(imag_states, imag_actions)
      actor_loss = models.actor_loss(returns, discount, weights)

    with tf.GradientTape() as value_tape:
      value_pred = self._value(imag_feat)[:-1]
      target = tf.stop_gradient(returns)
      value_loss = models.value_loss(value_pred, target, discount, weights)

    if self._c.evaluator:
      real, fake = models.overshoot_triples(
          self._dynamics, post, data['action'], self._c.evaluator_horizon)
      with tf.GradientTape() as evaluator_tape:
        evaluator_loss, metrics = self._evaluator_loss(real, fake)
      idm_metrics.update(metrics)
      idm_metrics.update(self._weight_metrics(
          weights, self._c.derived_copies))

    model_norm = self._model_opt(model_tape, model_loss)
    actor_norm = self._actor_opt(actor_tape, actor_loss)
    value_norm = self._value_opt(value_tape, value_loss)
    if self._c.evaluator:
      idm_metrics['evaluator_grad_norm'] = self._evaluator_opt(
          evaluator_tape, evaluator_loss)
    if self._c.derived_copies:
      idm_metrics.update(self._derived_metrics(returns, start))

    metrics = dict(
        model_grad_norm=model_norm, value_grad_norm=value_norm,
        actor_grad_norm=actor_norm,
        prior_ent=tf.reduce_mean(prior_dist.entropy()),
        post_ent=tf.reduce_mean(post_dist.entropy()),
        div=div, model_loss=model_loss, value_loss=value_loss,
        actor_loss=actor_loss,
        action_ent=tf.reduce_mean(self._actor(feat).entropy()),
        **idm_metrics)
    for name, logprob in likes.items():
      metrics[name + '_loss'] = -logprob
    return metrics

  def _decoding_constraint(self, post, image_pred):
    # R2S2 (Sec. 3): decode only z'; the mean of z is the image loss's.
    noisy = models.perturb_state(
        post, self._c.derived_noise_h, self._c.derived_noise_s)
    penalty, kl = models.decoding_constraint(
        self._decode, None, self._dynamics.get_feat(noisy),
        self._c.constraint_scale, self._c.constraint_margin,
        mean=image_pred.mean())
    h_outside = tf.cast(tf.abs(noisy['deter']) > 1, tf.float32)
    return penalty, dict(
        constraint_kl=tf.reduce_mean(kl), constraint_penalty=penalty,
        constraint_over_margin=tf.reduce_mean(
            tf.cast(kl > self._c.constraint_margin, tf.float32)),
        constraint_h_outside=tf.reduce_mean(h_outside))

  def _reliability_weights(self, states, actions):
    # Eq. 4 over the 14 loss positions j: (state j, its action, state j + 1).
    # actions[j + 1] is the action taken in imagined state j.
    prev = {k: v[:-1] for k, v in states.items()}
    nxt = {k: v[1:] for k, v in states.items()}
    log_real = self._evaluator.log_prob_real(prev, actions[1:], nxt)
    return models.reliability_weights(log_real)

  def _evaluator_loss(self, real, fake):
    # Eq. 3: binary cross-entropy, real triples against overshoot triples.
    log_real = tf.nn.log_softmax(self._evaluator(*real))
    log_fake = tf.nn.log_softmax(self._evaluator(*fake))
    loss = -tf.reduce_mean(log_real[..., 1]) - tf.reduce_mean(log_fake[..., 0])
    return loss, dict(
        evaluator_loss=loss,
        evaluator_real_prob=tf.reduce_mean(tf.exp(log_real[..., 1])),
        evaluator_fake_prob=tf.reduce_mean(tf.exp(log_fake[..., 1])))

  def _weight_metrics(self, weights, copies):
    count = tf.cast(tf.size(weights), tf.float32)
    metrics = dict(
        weight_max_rel=tf.reduce_max(weights) * count,
        weight_min_rel=tf.reduce_min(weights) * count,
        weight_ess=1 / tf.reduce_sum(tf.square(weights)) / count)
    if copies:
      # The weights sum to one; derived trajectories follow the originals.
      # 1 / (1 + K) would mean the evaluator trusts both kinds alike.
      originals = weights.shape[1] // (1 + copies)
      metrics['weight_derived_share'] = tf.reduce_sum(weights[:, originals:])
    return metrics

  def _derived_metrics(self, returns, start):
    originals = returns.shape[1] // (1 + self._c.derived_copies)
    return dict(
        imag_return_original=tf.reduce_mean(returns[:, :originals]),
        imag_return_derived=tf.reduce_mean(returns[:, originals:]),
        derived_h_outside=tf.reduce_mean(tf.cast(
            tf.abs(start['deter'][originals:]) > 1, tf.float32)))

  def _build_model(self):
    c = self._c
    acts = dict(elu=tf.nn.elu, relu=tf.nn.relu, swish=tf.nn.swish,
                leaky_relu=tf.nn.leaky_relu)
    act = acts[c.dense_act]
    # World model: encoder, dynamics, decoder and heads on the features.
    self._encode = models.ConvEncoder(c.cnn_depth, acts[c.cnn_act])
    self._dynamics = models.RSSM(
        c.stoch_size, c.deter_size, c.deter_size,
        shared_noise=c.shared_rssm_noise)
    self._decode = models.ConvDecoder(c.cnn_depth, acts[c.cnn_act])
    self._reward = models.DenseDecoder((), 2, c.num_units, act=act)
    model_modules = [self._encode, self._dynamics, self._decode, self._reward]
    if c.pcont:
      self._pcont = models.DenseDecoder((), 3, c.num_units, 'binary', act=act)
      model_modules.append(self._pcont)
    # Behavior: value and actor.
    self._value = models.DenseDecoder((), 3, c.num_units, act=act)
    self._actor = models.ActionDecoder(
        self._actdim, 4, c.num_units, c.action_dist,
        init_std=c.action_init_std, act=act)
    Optimizer = functools.partial(
        tools.Adam, wd=c.weight_decay, clip=c.grad_clip,
        wdpattern=c.weight_decay_pattern)
    self._model_opt = Optimizer('model', model_modules, c.model_lr)
    self._value_opt = Optimizer('value', [self._value], c.value_lr)
    self._actor_opt = Optimizer('actor', [self._actor], c.actor_lr)
    self._modules_to_save = model_modules + [self._value, self._actor]
    self._optimizers = [self._model_opt, self._value_opt, self._actor_opt]
    if self._c.evaluator:
      self._evaluator = models.TrajectoryEvaluator(
          self._c.evaluator_layers, self._c.evaluator_units, act)
      self._evaluator_opt = Optimizer(
          'evaluator', [self._evaluator], self._c.evaluator_lr)
      self._modules_to_save.append(self._evaluator)
      self._optimizers.append(self._evaluator_opt)
    self._build_variables()
    if self._dataset is not None:
      self.train(next(self._dataset))  # Traces the update once.

  def _build_variables(self):
    # Every variable is created eagerly on a one-step batch, so that
    # tf.function traces the update once instead of twice.
    image = tf.zeros([1, 1, 64, 64, 3], self._float)
    action = tf.zeros([1, 1, self._actdim], self._float)
    post, _ = self._dynamics.observe(self._encode({'image': image}), action)
    feat = self._dynamics.get_feat(post)
    heads = [self._decode, self._reward, self._value, self._actor]
    heads += [self._pcont] if self._c.pcont else []
    for head in heads:
      head(feat)
    if self._c.evaluator:
      state = {k: v[:, 0] for k, v in post.items()}
      self._evaluator(state, action[:, 0], state)
    for optimizer in self._optimizers:
      optimizer.build()

  def checkpoint_variables(self):
    variables = [v for m in self._modules_to_save for v in m.variables]
    variables += [v for opt in self._optimizers for v in opt.variables]
    return variables

  def _loss_scale_state(self):
    return {k: v for opt in self._optimizers
            for k, v in opt.loss_scale_state.items()}

  def save(self, filename, **fields):
    tools.save_checkpoint(
        filename, self.checkpoint_variables(), self._step, self._c,
        self._loss_scale_state(), **fields)

  def load(self, checkpoint, filename):
    tools.load_variables(
        checkpoint, self.checkpoint_variables(), filename,
        self._loss_scale_state())
    # Checkpoints without a format number that know `shared_rssm_noise` were
    # written after the evaluator fix, those without it before.
    fmt = checkpoint.get(
        'format', 2 if 'shared_rssm_noise' in checkpoint['config'] else 1)
    if self._c.evaluator and fmt < 2:
      print(f'Warning: {filename} predates the evaluator judging sampled '
            f'latents; its evaluator learned on prior means and now goes on '
            f'with sampled ones (a new --logdir starts clean).',
            file=sys.stderr)
    self._should_pretrain()

  def _exploration_amount(self, training):
    if not training:
      return self._c.eval_noise
    amount = self._c.expl_amount
    if self._c.expl_decay:
      amount *= 0.5 ** (self._step / self._c.expl_decay)
    if self._c.expl_min:
      amount = max(self._c.expl_min, amount)
    return amount

  def _exploration(self, action, amount, training):
    if not training and not self._c.eval_noise:
      return action  # Upstream's evaluation without noise, for every expl.
    if self._c.expl == 'additive_gaussian':
      noisy = tfd.Normal(tf.cast(action, tf.float32), amount).sample()
      return tf.where(amount > 0, tf.clip_by_value(noisy, -1, 1), action)
    if self._c.expl == 'completely_random':
      return tf.random.uniform(tf.shape(action), -1, 1)
    raise NotImplementedError(self._c.expl)

  def _imagine_ahead(self, post):
    if self._c.pcont:  # The last step may be terminal: start before it.
      post = {k: v[:, :-1] for k, v in post.items()}
    # Every posterior state of the batch starts a trajectory.
    start = {k: tf.reshape(v, [-1, *v.shape[2:]]) for k, v in post.items()}
    # Derived memory (Eq. 2): K noisy copies of every start, imagined in the
    # same batch with the same policy and prior.
    start = models.derive_memory(
        start, self._c.derived_copies, self._c.derived_noise_h,
        self._c.derived_noise_s)
    policy = lambda state: self._actor(
        tf.stop_gradient(self._dynamics.get_feat(state))).sample()
    def step(prev, _):
      action = policy(prev[0])
      return self._dynamics.img_step(prev[0], action), action
    # The actions are kept for the evaluator: actions[j] led to states[j].
    # float32, as the actor samples them.
    noop = tf.zeros([tf.shape(start['deter'])[0], self._actdim], tf.float32)
    states, actions = tools.static_scan(
        step, tf.range(self._c.horizon), (start, noop))
    imag_feat = self._dynamics.get_feat(states)
    return imag_feat, states, actions, start

  @tf.function(autograph=False)
  def _openl_video(self, data):
    # Truth, model (5 observed frames, then open-loop prior) and error.
    data = preprocess(data, self._c)
    embed = self._encode(data)
    truth = tf.cast(data['image'][:6], tf.float32) + 0.5
    post, _ = self._dynamics.observe(embed[:6, :5], data['action'][:6, :5])
    recon = self._decode(self._dynamics.get_feat(post)).mode()
    init = {k: v[:, -1] for k, v in post.items()}
    prior = self._dynamics.imagine(data['action'][:6, 5:], init)
    openl = self._decode(self._dynamics.get_feat(prior)).mode()
    model = tf.concat([recon + 0.5, openl + 0.5], 1)
    error = (model - truth + 1) / 2
    return tf.concat([truth, model, error], 2)

  @tf.function(autograph=False)
  def _perturbation_image(self, data, noise_h=None, noise_s=None):
    # Like the paper's Figure 1: truth, decoded z, decoded perturbed z'.
    data = preprocess({k: v[:1, :8] for k, v in data.items()}, self._c)
    post, _ = self._dynamics.observe(self._encode(data), data['action'])
    noisy = models.perturb_state(
        post, self._c.derived_noise_h if noise_h is None else noise_h,
        self._c.derived_noise_s if noise_s is None else noise_s)
    recon = self._decode(self._dynamics.get_feat(post)).mode()
    perturbed = self._decode(self._dynamics.get_feat(noisy)).mode()
    rows = [tf.cast(data['image'], tf.float32), recon, perturbed]
    rows = [tf.concat(tf.unstack(x[0] + 0.5), 1) for x in rows]
    grid = tf.concat(rows, 0)
    return tf.cast(tf.clip_by_value(grid, 0, 1) * 255, tf.uint8)

  def _write_summaries(self):
    metrics = {k: float(np.mean(v)) for k, v in self._metrics.items()}
    metrics['skipped_updates'] = self._skipped
    self._metrics.clear()
    self._skipped = 0
    self._logger.write(self._step, metrics, self._updates)
    self._updates = 0
    if self._c.log_images:
      video = self._openl_video(next(self._dataset)).numpy()
      with self._writer.as_default():
        tools.video_summary(
            'agent/openl', np.clip(video, 0, 1), self._step,
            self._c.logdir / 'images')
      grid = self._perturbation_image(next(self._dataset)).numpy()
      with self._writer.as_default():
        tf.summary.image('agent/perturbed', grid[None], self._step)
      tools.atomic_write(
          self._c.logdir / 'images' / f'perturbed_{self._step}.png',
          tf.io.encode_png(grid).numpy())


class Logger:
  """Writes metrics.jsonl and TensorBoard and prints one progress line."""

  def __init__(self, config, writer, datadir):
    self._c = config
    self._writer = writer
    self._datadir = datadir
    self._filename = config.logdir / 'metrics.jsonl'
    self._timer = tools.Timer()
    self._last_step = None
    self.returns = {}

  def scalars(self, step, metrics):
    tools.append_jsonl(self._filename, {'step': int(step), **metrics})
    if self._c.log_scalars:
      with self._writer.as_default():
        for key, value in metrics.items():
          prefix = '' if '/' in key else 'agent/'
          tf.summary.scalar(prefix + key, value, step)

  def write(self, step, metrics, updates):
    duration = self._timer.reset()
    if self._last_step is not None:
      metrics['fps'] = (step - self._last_step) / duration
      metrics['updates_per_sec'] = updates / duration
    self._last_step = step
    self.scalars(step, metrics)
    self._writer.flush()
    self.progress(step, metrics)

  def progress(self, step, metrics):
    episodes, _ = tools.count_episodes(self._datadir)
    fps = metrics.get('fps')
    # The last collection overshoots `steps` by up to an episode: no time left.
    left = max(0, self._c.steps - step)
    eta = tools.format_duration(left / fps) if fps else '-'
    fmt = lambda value, spec: '-' if value is None else format(value, spec)
    print(
        f'[{step}/{self._c.steps} {100 * step / self._c.steps:.1f}%] '
        f'episodes {episodes} | '
        f'train return {fmt(self.returns.get("train"), ".1f")} | '
        f'test return {fmt(self.returns.get("test"), ".1f")} | '
        f'{fmt(metrics.get("updates_per_sec"), ".2f")} updates/s | '
        f'{fmt(fps, ".1f")} env steps/s | ETA {eta}', flush=True)


def preprocess(obs, config):
  """Images to [-0.5, 0.5] and actions in the compute dtype; rewards float32,
  optionally squashed by tanh."""
  dtype = prec.global_policy().compute_dtype
  out = dict(obs, image=tf.cast(obs['image'], dtype) / 255.0 - 0.5)
  if 'action' in obs:
    out['action'] = tf.cast(obs['action'], dtype)
  if 'reward' in obs:
    reward = tf.cast(obs['reward'], tf.float32)
    out['reward'] = tf.tanh(reward) if config.clip_rewards == 'tanh' else reward
  return out


def count_steps(datadir, config):
  return tools.count_episodes(datadir)[1] * config.action_repeat


def load_dataset(directory, config):
  """Batches of batch_size random chunks of batch_length steps, rescanning
  the directory for new episodes every train_steps chunks. Sampling runs in
  the background while the agent trains; `Dreamer.train` preprocesses."""
  length = config.batch_length
  # The signature from the first usable episode's index: the generator below
  # indexes every episode itself, so this one does not.
  index = tools.first_episode_index(directory, length)
  signature = {key: tf.TensorSpec((length, *shape[1:]), dtype)
               for key, (_, dtype, shape) in index.items()}
  chunks = tf.data.Dataset.from_generator(
      lambda: tools.load_episodes(
          directory, config.train_steps, length, config.dataset_balance,
          config.seed),
      output_signature=signature)
  return chunks.batch(config.batch_size, drop_remainder=True).prefetch(2)


def summarize_episode(episode, config, datadir, writer, logger, prefix):
  episodes, steps = tools.count_episodes(datadir)
  length = (len(episode['reward']) - 1) * config.action_repeat
  ret = float(episode['reward'].sum())
  logger.returns[prefix] = ret
  print(f'{prefix.title()} episode of length {length} with return {ret:.1f}.')
  step = steps * config.action_repeat
  logger.scalars(step, {
      f'{prefix}/return': ret, f'{prefix}/length': length // config.action_repeat,
      'episodes': episodes})
  if prefix.startswith('test') and config.log_images:
    with writer.as_default():
      tools.video_summary(f'sim/{prefix}/video', episode['image'][None], step)


def perturbed(config):
  """Whether any test-time perturbation is on (eval_dynamic alone is not)."""
  return any(config[f'eval_{key}'] for key in wrappers.PERTURBATIONS
             if key != 'dynamic')


def make_env(config, writer, logger, prefix, datadir, store, index=0):
  # Only the test_perturbed envs see the eval_* perturbations.
  # Both test envs share a seed: plain and perturbed episodes start alike.
  env = wrappers.make_async_env(
      config, f'{prefix} env', test=(prefix == 'test_perturbed'),
      seed=config.seed * 1000 + index + (0 if prefix == 'train' else 500))
  callbacks = []
  if store:
    callbacks.append(lambda ep: tools.save_episodes(datadir, [ep]))
  callbacks.append(lambda ep: summarize_episode(
      ep, config, datadir, writer, logger, prefix))
  env = wrappers.Collect(env, callbacks)
  env = wrappers.RewardObs(env)
  return env


def setup_precision(precision):
  """auto: mixed float16 with a GPU; float32 on a CPU, where it measured
  fastest (bfloat16 convolutions without native support run ~15x slower)."""
  policies = {'16': 'mixed_float16', 'bf16': 'mixed_bfloat16', '32': 'float32'}
  if precision not in ('auto', *policies):
    raise tools.ConfigError(
        f'--precision must be auto, 16, bf16 or 32, got {precision!r}.')
  if precision == 'auto':
    precision = '16' if tf.config.list_physical_devices('GPU') else '32'
  prec.set_global_policy(policies[precision])
  return policies[precision]


def use_jit(jit):
  """auto: XLA with a GPU only; on a CPU it measured slower (its
  convolutions do not use oneDNN)."""
  if jit == 'auto':
    return bool(tf.config.list_physical_devices('GPU'))
  return jit == 'on'


CHOICES = dict(
    dense_act=('elu', 'relu', 'swish', 'leaky_relu'),
    cnn_act=('elu', 'relu', 'swish', 'leaky_relu'),
    action_dist=('tanh_normal',), expl=('additive_gaussian', 'completely_random'),
    clip_rewards=('none', 'tanh'), parallel=('none', 'process'),
    jit=('auto', 'on', 'off'))


def check_config(config):
  for key, choices in CHOICES.items():
    if config[key] not in choices:
      raise tools.ConfigError(
          f'--{key} must be one of {", ".join(choices)}, got {config[key]!r}.')
  for key in ('eval_rotation', 'eval_noise_std', 'eval_shift'):
    if config[key] < 0:
      raise tools.ConfigError(f'--{key} must be 0 (off) or more, got {config[key]}.')
  for key in ('eval_color', 'eval_camera'):
    if not 0 <= config[key] <= 1:
      raise tools.ConfigError(
          f'--{key} must be a level in [0, 1] (0 = off), got {config[key]}.')
  for key in ('envs', 'batch_size', 'batch_length', 'action_repeat',
              'eval_every', 'train_every'):
    if config[key] < 1:
      raise tools.ConfigError(f'--{key} must be at least 1, got {config[key]}.')
  if config.horizon < 2:
    raise tools.ConfigError(
        f'--horizon must be at least 2 (the losses use the returns of all '
        f'but the last imagined step), got {config.horizon}.')
  if config.derived_copies < 0:
    raise tools.ConfigError(
        f'--derived_copies must be 0 or more, got {config.derived_copies}.')
  if config.evaluator and config.batch_length < config.evaluator_horizon + 2:
    raise tools.ConfigError(
        f'--evaluator_horizon {config.evaluator_horizon} needs --batch_length '
        f'of at least {config.evaluator_horizon + 2}, got '
        f'{config.batch_length}; lower the horizon or lengthen the batch.')


def check_logdir(logdir):
  try:
    logdir.mkdir(parents=True, exist_ok=True)
    probe = logdir / f'.write-test-{os.getpid()}'
    probe.write_bytes(b'')
    probe.unlink()
  except OSError as e:
    raise tools.ConfigError(
        f'Cannot write to logdir {logdir} ({e.strerror}); choose a writable '
        f'--logdir.') from None


def main(config):
  config.logdir = pathlib.Path(config.logdir).expanduser()
  check_config(config)
  if config.gpu_growth:
    for gpu in tf.config.list_physical_devices('GPU'):
      tf.config.experimental.set_memory_growth(gpu, True)
  policy = setup_precision(str(config.precision))
  check_logdir(config.logdir)
  checkpoint_path = config.logdir / 'variables.pkl'
  checkpoint = None
  if checkpoint_path.exists():
    checkpoint = tools.read_checkpoint(checkpoint_path)
    tools.check_checkpoint_config(checkpoint, config, checkpoint_path)
  tools.save_config(config, config.logdir / 'config.yaml')
  print(f'Logdir {config.logdir} (precision {policy}, XLA '
        f'{"on" if use_jit(config.jit) else "off"}).', flush=True)
  if config.steps == 0:
    env = wrappers.make_async_env(config, 'check env')
    try:
      _ = env.action_space  # Builds the task in a worker: unknown task, no GL.
    finally:
      env.close()
    print('Dry run: wrote config.yaml and checked the task; not training.')
    return
  # Python's, numpy's and TensorFlow's: Keras draws unseeded initial weights
  # from Python's.
  tf.keras.utils.set_random_seed(config.seed)

  datadir = config.logdir / 'episodes'
  writer = tf.summary.create_file_writer(
      str(config.logdir), max_queue=1000, flush_millis=20000)
  logger = Logger(config, writer, datadir)
  # With a test-time perturbation, every evaluation runs a plain episode
  # (test/return, as upstream) and a perturbed one (test_perturbed/return).
  prefixes = ['test']
  if perturbed(config):
    prefixes.append('test_perturbed')
  train_envs, test_envs = [], {prefix: [] for prefix in prefixes}
  try:
    for index in range(config.envs):
      train_envs.append(make_env(
          config, writer, logger, 'train', datadir, store=True, index=index))
      for prefix in prefixes:
        test_envs[prefix].append(make_env(
            config, writer, logger, prefix, datadir, store=False, index=index))
    actspace = train_envs[0].action_space
    run(config, datadir, writer, logger, train_envs, test_envs, actspace,
        checkpoint, checkpoint_path)
  finally:
    for env in train_envs + sum(test_envs.values(), []):
      env.close()
    writer.flush()


def run(config, datadir, writer, logger, train_envs, test_envs, actspace,
        checkpoint, checkpoint_path):
  # Prefill dataset with random episodes.
  step = count_steps(datadir, config)
  prefill = max(0, config.prefill - step)
  print(f'Prefill dataset with {prefill} steps.', flush=True)
  if prefill:
    random = np.random.RandomState(config.seed)
    low, high = actspace.minimum, actspace.maximum
    random_agent = lambda o, d, _: (
        [random.uniform(low, high).astype(np.float32) for _ in d], None)
    tools.simulate(random_agent, train_envs, prefill / config.action_repeat)
    writer.flush()

  # Train and regularly evaluate the agent.
  step = count_steps(datadir, config)
  agent = Dreamer(config, datadir, actspace, writer, logger)
  # Evaluations fall every eval_every env steps from the first one, where
  # upstream's loop puts them (the first collection that reaches each), and
  # at the end. The checkpoint keeps the schedule, so a resumed run evaluates
  # where the uninterrupted run would.
  period = -(-config.eval_every // config.action_repeat) * config.action_repeat
  evaluated_at = anchor = None
  if checkpoint is not None:
    agent.load(checkpoint, checkpoint_path)
    # Checkpoints without the schedule were all written at evaluations.
    evaluated_at = checkpoint.get('evaluated_at', checkpoint['step'])
    anchor = checkpoint.get('eval_anchor', evaluated_at)
    print(f'Resumed from checkpoint at step {checkpoint["step"]}; '
          f'{step} env steps stored.', flush=True)
  print(f'Simulating agent for {max(0, config.steps - step)} steps.', flush=True)
  due = lambda: min(anchor + period, config.steps)
  save = lambda: agent.save(
      checkpoint_path, evaluated_at=evaluated_at, eval_anchor=anchor)
  state = None
  while True:
    evaluate = step != evaluated_at and (anchor is None or step >= due())
    if evaluate:
      print('Start evaluation.', flush=True)
      for envs in test_envs.values():
        tools.simulate(
            functools.partial(agent, training=False), envs, episodes=1)
      writer.flush()
      evaluated_at = step
    # The grid's last point at or before the step. Also without an
    # evaluation: a smaller --eval_every on resume makes the grid finer, and
    # a due step behind the step would leave nothing to collect.
    anchor = step if anchor is None else (
        anchor + (step - anchor) // period * period)
    if evaluate:
      save()
    if step >= config.steps:
      break
    print('Start collection.', flush=True)
    target = due()
    while step < target:
      # A checkpoint after every train_every env steps of whole episodes: a
      # killed run loses little training. The envs carry on between the
      # chunks, so the agent sees what one collection would show it.
      chunk = min(config.train_every, target - step)
      state = None if state is None else (0, 0, *state[2:])
      state = tools.simulate(
          agent, train_envs, -(-chunk // config.action_repeat), state=state)
      step = count_steps(datadir, config)
      save()
  print(f'Finished training at step {step}.', flush=True)


def parse_args(argv):
  """--configs name... merges presets over `defaults`; then --key value
  pairs override."""
  names, rest = ['defaults'], []
  index = 0
  while index < len(argv):
    if argv[index] == '--configs':
      names = []
      index += 1
      while index < len(argv) and not argv[index].startswith('--'):
        names.append(argv[index])
        index += 1
      if not names:
        raise tools.ConfigError('--configs needs at least one preset name.')
    else:
      rest.append(argv[index])
      index += 1
  # Every preset is a change on top of the defaults, which define the keys.
  if 'defaults' in names[1:]:
    raise tools.ConfigError(
        "--configs: 'defaults' must come first (it would undo the presets "
        "before it), or leave it out.")
  names = names if names[0] == 'defaults' else ['defaults', *names]
  presets = tools.load_presets(CONFIGS)
  return tools.make_config(presets, names, rest)


if __name__ == '__main__':
  try:
    main(parse_args(sys.argv[1:]))
  except (tools.ConfigError, tools.NonFiniteError, wrappers.EnvError) as e:
    print(f'Error: {e}', file=sys.stderr)
    sys.exit(2)
  except KeyboardInterrupt:
    print('Interrupted; rerun the same command to resume.', file=sys.stderr)
    sys.exit(130)
