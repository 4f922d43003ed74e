import concurrent.futures
import datetime
import io
import json
import os
import pathlib
import pickle
import re
import shutil
import subprocess
import time
import uuid
import warnings
import zipfile

# Keras 2 through tf_keras: must be set before TensorFlow is first imported.
os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
# oneDNN kernels: without them TensorFlow 2.21 on this kind of CPU runs the
# decoder's transposed convolutions about 8x slower.
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '1')

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_probability as tfp  # noqa: E402
import tf_keras  # noqa: E402
from tf_keras import mixed_precision as prec  # noqa: E402


class AttrDict(dict):
  """A dict whose keys read and write as attributes: config.batch_size."""

  def __getattr__(self, name):
    try:
      return self[name]
    except KeyError:
      raise AttributeError(name) from None

  def __setattr__(self, name, value):
    self[name] = value


class Module(tf.Module):
  """A tf.Module whose layers are made on first use, looked up by name."""

  def get(self, name, ctor, *args, **kwargs):
    layers = self.__dict__.setdefault('_layers_by_name', {})
    if name not in layers:
      layers[name] = ctor(*args, **kwargs)
    return layers[name]

  def mlp(self, x, layers, units, act, outputs):
    """Dense layers h0..h{layers-1} of `units`, then a linear `hout`."""
    for index in range(layers):
      x = self.get(f'h{index}', tf_keras.layers.Dense, units, act)(x)
    return self.get('hout', tf_keras.layers.Dense, outputs)(x)


# Config: named blocks of configs.yaml merged left to right, then --key value.

class ConfigError(ValueError):
  pass


class NonFiniteError(RuntimeError):
  """Too many updates in a row had a non-finite gradient."""


def load_presets(path):
  import ruamel.yaml
  return ruamel.yaml.YAML(typ='safe', pure=True).load(pathlib.Path(path).read_text())


def parse_value(key, text, default):
  """Parses a command line string to the type of the key's default."""
  if isinstance(default, bool):
    if text not in ('True', 'False'):
      raise ConfigError(f'--{key} expects True or False, got {text!r}.')
    return text == 'True'
  if isinstance(default, int):
    try:
      number = float(text)
    except ValueError:
      raise ConfigError(f'--{key} expects an integer, got {text!r}.') from None
    if not np.isfinite(number) or number != int(number):
      raise ConfigError(f'--{key} expects an integer, got {text!r}.')
    return int(number)
  if isinstance(default, float):
    try:
      return float(text)
    except ValueError:
      raise ConfigError(f'--{key} expects a number, got {text!r}.') from None
  return text  # Strings, and keys whose default is None.


def check_value(key, value, default, origin):
  """Checks a value from a preset against the type of the key's default."""
  if default is None or value is None:
    return value
  if isinstance(default, bool):
    if not isinstance(value, bool):
      raise ConfigError(
          f'{origin}: {key} must be True or False, got {value!r}.')
    return value
  if isinstance(default, (int, float)):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      raise ConfigError(f'{origin}: {key} must be a number, got {value!r}.')
    if isinstance(default, int):
      if value != int(value):
        raise ConfigError(f'{origin}: {key} must be an integer, got {value!r}.')
      return int(value)
    return float(value)
  if isinstance(default, str) and not isinstance(value, str):
    return str(value)
  return value


def make_config(presets, names, overrides):
  """Merges the named presets left to right, then applies --key value pairs.

  The first preset, usually `defaults`, defines every key and its type.
  """
  for name in names:
    if name not in presets:
      raise ConfigError(
          f'Unknown preset {name!r}; choose from {", ".join(presets)} '
          f'(see configs.yaml).')
  base = presets[names[0]]
  config = AttrDict()
  for name in names:
    for key, value in (presets[name] or {}).items():
      if key not in base:
        raise ConfigError(
            f'Preset {name!r} sets unknown key {key!r}; every key must be '
            f'defined in preset {names[0]!r} (configs.yaml).')
      config[key] = check_value(key, value, base[key], f'preset {name!r}')
  if len(overrides) % 2:
    raise ConfigError(
        f'Expected --key value pairs, got a lone {overrides[-1]!r}.')
  for flag, text in zip(overrides[::2], overrides[1::2]):
    if not flag.startswith('--'):
      raise ConfigError(f'Expected --key value pairs, got {flag!r}.')
    key = flag[2:].replace('-', '_')
    if key not in config:
      close = [k for k in config if key in k or k in key][:3]
      hint = f' Did you mean {", ".join("--" + k for k in close)}?' if close else ''
      raise ConfigError(f'Unknown config key --{key}.{hint}')
    config[key] = parse_value(key, text, base[key])
  return config


def save_config(config, filename):
  import ruamel.yaml
  yaml = ruamel.yaml.YAML(typ='safe', pure=True)
  yaml.default_flow_style = False
  stream = io.StringIO()
  yaml.dump({k: (str(v) if isinstance(v, pathlib.Path) else v)
             for k, v in config.items()}, stream)
  atomic_write(filename, stream.getvalue().encode('utf-8'))


# Files: every write that matters goes to a temporary file and is renamed.

def atomic_write(filename, data):
  filename = pathlib.Path(filename)
  filename.parent.mkdir(parents=True, exist_ok=True)
  temp = filename.with_name(f'.{filename.name}.{uuid.uuid4().hex}.tmp')
  with temp.open('wb') as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(temp, filename)


def append_jsonl(filename, record):
  # One write() of one line on an O_APPEND file: a crash never interleaves.
  line = (json.dumps(record) + '\n').encode('utf-8')
  fd = os.open(filename, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
  try:
    os.write(fd, line)
  finally:
    os.close(fd)


# 2: the trajectory evaluator judges sampled latents (before, prior means).
CHECKPOINT_FORMAT = 2


def save_checkpoint(filename, variables, step, config, optional=None,
                    **fields):
  """`optional` maps names to variables that a run may lack (the loss scale
  of float16): `load_variables` restores those both sides have. `fields` are
  stored as they are (the training loop's evaluation schedule)."""
  payload = dict(fields,
      format=CHECKPOINT_FORMAT, step=int(step),
      config={k: str(v) if isinstance(v, pathlib.Path) else v
              for k, v in config.items()},
      names=[v.name for v in variables],
      values=[v.numpy() for v in variables],
      optional={k: v.numpy() for k, v in (optional or {}).items()})
  atomic_write(filename, pickle.dumps(payload, protocol=4))


def read_checkpoint(filename):
  with pathlib.Path(filename).open('rb') as f:
    try:
      return pickle.load(f)
    except Exception as e:
      raise ConfigError(
          f'Checkpoint {filename} is unreadable ({type(e).__name__}); move it '
          f'away to restart training from the stored episodes.') from None


# Keys a resumed run must share with its checkpoint: those that change the
# shape or meaning of the stored variables, and the seed (resuming another
# seed's run would mix two runs).
CHECKPOINT_KEYS = (
    'task', 'seed', 'deter_size', 'stoch_size', 'num_units', 'dense_act',
    'cnn_act', 'cnn_depth', 'pcont', 'action_dist', 'evaluator',
    'evaluator_layers', 'evaluator_units')


def check_checkpoint_config(checkpoint, config, filename):
  old = checkpoint['config']
  changed = [
      f'{k}: {old.get(k)!r} -> {config[k]!r}' for k in CHECKPOINT_KEYS
      if k in config and old.get(k) != config[k]]
  if changed:
    raise ConfigError(
        f'Checkpoint {filename} comes from an incompatible config '
        f'({"; ".join(changed)}); rerun with the config in '
        f'{pathlib.Path(filename).parent / "config.yaml"} or use a new --logdir.')


def load_variables(checkpoint, variables, filename, optional=None):
  values = checkpoint['values']
  shapes = [tuple(v.shape) for v in variables]
  stored = [tuple(np.shape(v)) for v in values]
  if shapes != stored:
    if len(shapes) != len(stored):
      problem = f'holds {len(stored)} variables, this model {len(shapes)}'
    else:
      index = next(i for i, (a, b) in enumerate(zip(shapes, stored)) if a != b)
      problem = (f'holds variable {index} with shape {stored[index]}, this '
                 f'model {shapes[index]}')
    raise ConfigError(
        f'Checkpoint {filename} {problem}: it does not match this model; '
        f'resume with the config it was written with or use a new --logdir.')
  for var, value in zip(variables, values):
    var.assign(value)
  extra = checkpoint.get('optional', {})
  for name, var in (optional or {}).items():
    if name in extra:
      var.assign(extra[name])


# Episodes: compressed npz files named <time>-<id>-<length>.npz.

def count_episodes(directory):
  """Episodes and transitions (rows minus the reset row) on disk, read from
  the file names alone."""
  rows = [int(path.stem.split('-')[-1])
          for path in pathlib.Path(directory).glob('*.npz')]
  return len(rows), sum(rows) - len(rows)


def save_episodes(directory, episodes):
  # Stored uncompressed, so that load_episodes reads a training window from
  # disk without decompressing the episode (read_window).
  directory = pathlib.Path(directory).expanduser()
  directory.mkdir(parents=True, exist_ok=True)
  stamp = datetime.datetime.now().strftime('%Y%m%dT%H%M%S')
  filenames = []
  for episode in episodes:
    rows = len(episode['reward'])
    filename = directory / f'{stamp}-{uuid.uuid4().hex}-{rows}.npz'
    with io.BytesIO() as f:
      np.savez(f, **episode)
      atomic_write(filename, f.getvalue())
    filenames.append(filename)
  return filenames


def load_episode(filename):
  """Returns the episode as a dict of arrays, or None with a warning."""
  try:
    with pathlib.Path(filename).open('rb') as f, np.load(f) as data:
      episode = {k: data[k] for k in data.keys()}
    lengths = {len(v) for v in episode.values()}
    if len(lengths) != 1:
      raise ValueError(f'keys of different lengths {sorted(lengths)}')
    return episode
  except Exception as e:
    return _corrupt(filename, e)


def episode_index(filename):
  """Where each array of an episode file starts on disk: {key: (offset,
  dtype, shape)}, or None with a warning. A compressed file (upstream's
  format, and ours before) is rewritten uncompressed first, losslessly."""
  try:
    with zipfile.ZipFile(filename) as archive:
      compressed = any(m.compress_type != zipfile.ZIP_STORED
                       for m in archive.infolist())
    if compressed:
      episode = load_episode(filename)
      if episode is None:
        return None
      with io.BytesIO() as f:
        np.savez(f, **episode)
        try:
          atomic_write(filename, f.getvalue())
        except OSError as e:
          warnings.warn(
              f'Skipping episode {filename}: it is compressed and could not '
              f'be rewritten uncompressed ({e}); make its folder writable.',
              stacklevel=2)
          return None
    with zipfile.ZipFile(filename) as archive:
      members = archive.infolist()
    index = {}
    with open(filename, 'rb') as f:
      for member in members:
        # The local header: 30 bytes, then the name and an extra field.
        f.seek(member.header_offset + 26)
        name_size, extra_size = np.frombuffer(f.read(4), '<u2')
        f.seek(member.header_offset + 30 + int(name_size) + int(extra_size))
        major, _ = np.lib.format.read_magic(f)
        read_header = (np.lib.format.read_array_header_1_0 if major == 1
                       else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read_header(f)
        if fortran or dtype.hasobject or not shape:
          raise ValueError(f'{member.filename} is not a C-order array of rows')
        index[member.filename[:-len('.npy')]] = (f.tell(), dtype, shape)
    lengths = {shape[0] for _, _, shape in index.values()}
    if len(lengths) != 1:
      raise ValueError(f'keys of different lengths {sorted(lengths)}')
    end = max(o + d.itemsize * int(np.prod(s)) for o, d, s in index.values())
    if end > pathlib.Path(filename).stat().st_size:
      raise ValueError('the file is shorter than its arrays')
    return index
  except Exception as e:
    return _corrupt(filename, e)


def _corrupt(filename, error):
  warnings.warn(
      f'Skipping corrupt episode file {filename} ({type(error).__name__}: '
      f'{error}); delete it to silence this warning.', stacklevel=3)
  return None


def read_window(filename, index, start, length):
  """Rows start..start+length of every array, read from disk: no more of the
  episode enters memory than the window."""
  window = {}
  for key, (offset, dtype, shape) in index.items():
    row = dtype.itemsize * int(np.prod(shape[1:]))
    data = np.fromfile(filename, dtype, length * row // dtype.itemsize,
                       offset=offset + start * row)
    window[key] = data.reshape((length, *shape[1:]))
  return window


def load_episodes(directory, rescan, length=None, balance=False, seed=0):
  """Yields random fixed-length chunks, rescanning the directory regularly.

  Upstream's sampling (an episode uniformly from every one stored, then a
  window in it), with upstream's episodes held in memory replaced by an index
  of where each array starts on disk: memory stays flat however many
  episodes a run collects, and each window is read from the file."""
  directory = pathlib.Path(directory).expanduser()
  random = np.random.RandomState(seed)
  indices, broken = {}, set()
  # Reads run ahead in threads, in the order drawn: from a disk, one window
  # at a time waits on each read (measured: a cold 50 x 50 batch in 260 ms
  # with one thread, 115 ms with eight).
  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    while True:
      _index_new_episodes(directory, length, indices, broken)
      filenames = list(indices.keys())
      windows = []
      for choice in random.choice(len(filenames), rescan):
        filename = filenames[choice]
        index = indices[filename]
        total = _rows(index)
        if not length:
          windows.append((filename, index, 0, total))
          continue
        available = total - length
        if balance:
          start = min(random.randint(0, total), available)
        else:
          start = int(random.randint(0, available + 1))
        windows.append((filename, index, start, length))
      for window, chunk in zip(windows, pool.map(_try_read_window, windows)):
        filename = window[0]
        if filename in broken:
          continue
        if isinstance(chunk, Exception):
          # Deleted or cut short since it was indexed: drop it, go on.
          _corrupt(filename, chunk)
          del indices[filename]
          broken.add(filename)
          continue
        yield chunk


def _try_read_window(window):
  try:
    return read_window(*window)
  except (OSError, ValueError) as e:
    return e


def _rows(index):
  return next(iter(index.values()))[2][0]


def first_episode_index(directory, length):
  """The index of the first episode of at least `length` rows."""
  directory = pathlib.Path(directory).expanduser()
  for filename in sorted(directory.glob('*.npz')):
    index = episode_index(filename)
    if index is not None and _rows(index) >= length:
      return index
  raise _no_episodes(directory, length)


def _no_episodes(directory, length):
  return RuntimeError(
      f'No usable episodes of length >= {length} in {directory}; '
      f'lower --batch_length or collect longer episodes.')


def _index_new_episodes(directory, length, indices, broken):
  for filename in sorted(directory.glob('*.npz')):
    if filename in indices or filename in broken:
      continue
    index = episode_index(filename)
    if index is None or (length and _rows(index) < length):
      broken.add(filename)
    else:
      indices[filename] = index
  if not indices:
    raise _no_episodes(directory, length)


# Simulation.

def simulate(agent, envs, steps=0, episodes=0, state=None):
  """Runs the agent in the envs until `steps` steps of finished episodes or
  `episodes` episodes; returns a state that continues where this stopped.
  Steps are counted when an episode ends, so only whole episodes count."""
  if state is None:
    state = (0, 0, np.ones(len(envs), bool), np.zeros(len(envs), np.int32),
             [None] * len(envs), None)
  step, episode, done, length, obs, agent_state = state
  while (steps and step < steps) or (episodes and episode < episodes):
    # Reset what finished, all envs at once.
    resets = {i: envs[i].reset(blocking=False) for i in np.flatnonzero(done)}
    for i, promise in resets.items():
      obs[i] = promise()
    batch = {key: np.stack([o[key] for o in obs]) for key in obs[0]}
    action, agent_state = agent(batch, done, agent_state)
    action = np.asarray(action)
    assert len(action) == len(envs)
    promises = [env.step(act, blocking=False) for env, act in zip(envs, action)]
    results = [promise() for promise in promises]
    obs = [result[0] for result in results]
    done = np.array([result[2] for result in results], bool)
    length += 1
    episode += int(done.sum())
    step += int(length[done].sum())
    length[done] = 0
  return (step - steps, episode - episodes, done, length, obs, agent_state)


class Every:
  """True at the first call, then once each time `every` more steps passed."""

  def __init__(self, every):
    self._every = every
    self._next = None

  def __call__(self, step):
    if self._next is None:
      self._next = step + self._every
      return True
    if step < self._next:
      return False
    self._next += self._every
    return True


class Once:
  """True at the first call only."""

  def __init__(self):
    self._done = False

  def __call__(self):
    first, self._done = not self._done, True
    return first


def format_duration(seconds):
  if not np.isfinite(seconds):
    return '?'
  seconds = int(seconds)
  days, seconds = divmod(seconds, 86400)
  text = f'{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}'
  return f'{days}d {text}' if days else text


class Timer:

  def __init__(self):
    self._start = time.time()

  def reset(self):
    now = time.time()
    duration, self._start = now - self._start, now
    return duration


# Summaries.

def video_summary(name, video, step, logdir=None, fps=20):
  """Writes a (B, T, H, W, C) video as a GIF, or as a PNG grid without ffmpeg.

  Returns the path of the file it wrote into logdir, if any.
  """
  if np.issubdtype(video.dtype, np.floating):
    video = np.clip(255 * video, 0, 255).astype(np.uint8)
  B, T, H, W, C = video.shape
  filename = None
  if shutil.which('ffmpeg'):
    frames = video.transpose((1, 2, 0, 3, 4)).reshape((T, H, B * W, C))
    gif = encode_gif(frames, fps)
    summary = tf.compat.v1.Summary()
    image = tf.compat.v1.Summary.Image(height=H, width=B * W, colorspace=C)
    image.encoded_image_string = gif
    summary.value.add(tag=name + '/gif', image=image)
    tf.summary.experimental.write_raw_pb(summary.SerializeToString(), step)
    if logdir:
      filename = pathlib.Path(logdir) / f'{name.replace("/", "_")}_{step}.gif'
      atomic_write(filename, gif)
  else:
    grid = video.transpose((0, 2, 1, 3, 4)).reshape((1, B * H, T * W, C))
    tf.summary.image(name + '/grid', grid, step)
    if logdir:
      filename = pathlib.Path(logdir) / f'{name.replace("/", "_")}_{step}.png'
      atomic_write(filename, tf.io.encode_png(grid[0]).numpy())
  return filename


def encode_gif(frames, fps):
  """Encodes (T, H, W, C) uint8 frames as an animated GIF through ffmpeg,
  with a palette computed from the frames themselves."""
  _, height, width, channels = frames.shape
  rate = f'{fps:.02f}'
  palette = '[0:v]split[a][b];[b]palettegen[p];[a]fifo[a];[a][p]paletteuse'
  cmd = ['ffmpeg', '-y', '-f', 'rawvideo', '-vcodec', 'rawvideo', '-r', rate,
         '-s', f'{width}x{height}',
         '-pix_fmt', 'gray' if channels == 1 else 'rgb24', '-i', '-',
         '-filter_complex', palette, '-r', rate, '-f', 'gif', '-']
  result = subprocess.run(
      cmd, input=np.ascontiguousarray(frames).tobytes(), capture_output=True)
  if result.returncode:
    raise OSError(f'{" ".join(cmd)} failed:\n{result.stderr.decode()}')
  return result.stdout


# Distributions.

class SampleDist:
  """Mean, mode and entropy from `samples` samples, for distributions without
  closed forms (the tanh-Normal actor); the rest is the wrapped one's."""

  name = 'SampleDist'

  def __init__(self, dist, samples=100):
    self._dist, self._samples = dist, samples

  def __getattr__(self, attr):
    return getattr(self._dist, attr)

  def mean(self):
    return tf.reduce_mean(self._dist.sample(self._samples), 0)

  def mode(self):
    # The most likely of the samples, chosen for each row of the batch
    # (upstream chose row 0's best sample for every row).
    draws = self._dist.sample(self._samples)  # samples x batch x actions
    best = tf.argmax(self._dist.log_prob(draws), 0)
    return tf.gather(tf.transpose(draws, [1, 0, 2]), best, batch_dims=1)

  def entropy(self):
    draws = self._dist.sample(self._samples)
    return -tf.reduce_mean(self._dist.log_prob(draws), 0)


class TanhBijector(tfp.bijectors.Tanh):
  """TFP's tanh with an inverse that stays finite at +-1, where float32
  samples of a saturated tanh land."""

  def _inverse(self, y):
    limit = 0.99999997  # The largest float32 below 1.
    inside = tf.clip_by_value(tf.cast(y, tf.float32), -limit, limit)
    return tf.cast(tf.atanh(inside), y.dtype)


def lambda_return(reward, value, pcont, bootstrap, lambda_, axis):
  """TD(lambda) targets along `axis`, computed backwards:
  R_t = r_t + pcont_t ((1 - lambda) v_{t+1} + lambda R_{t+1}), R_T = bootstrap.
  lambda_=1 gives the discounted Monte Carlo return, 0 the one-step target."""
  assert reward.shape.ndims == value.shape.ndims, (reward.shape, value.shape)
  if isinstance(pcont, (int, float)):
    pcont = pcont * tf.ones_like(reward)
  perm = list(range(reward.shape.ndims))
  perm[0], perm[axis] = axis, 0  # A swap: its own inverse.
  time_major = lambda x: tf.transpose(x, perm) if axis else x
  reward, value, pcont = time_major(reward), time_major(value), time_major(pcont)
  if bootstrap is None:
    bootstrap = tf.zeros_like(value[-1])
  next_value = tf.concat([value[1:], bootstrap[None]], 0)
  partial = reward + pcont * next_value * (1 - lambda_)
  returns = static_scan(
      lambda later, now: now[0] + now[1] * lambda_ * later,
      (partial, pcont), bootstrap, reverse=True)
  return time_major(returns)


def static_scan(fn, inputs, start, reverse=False):
  """carry = fn(carry, inputs[t]) over the leading axis; returns the carries
  stacked in input order (also when reverse). Upstream unrolled this in
  Python; one graph loop (tf.scan) traces the train step several times
  faster at the same step time."""
  return tf.scan(fn, inputs, start, reverse=reverse)


class Adam(tf.Module):
  """Adam over a group of modules with global-norm clipping and loss scaling."""

  def __init__(self, name, modules, lr, clip=None, wd=None, wdpattern=r'.*'):
    super().__init__(name=name)
    self._name = name
    self._modules = modules
    self._clip = clip
    self._wd = wd
    self._wdpattern = wdpattern
    self._lr = lr
    # The legacy Keras Adam applies each variable's update as one fused op,
    # like upstream's TF 2.1 optimizer; the new one traces ~15 ops per
    # variable, 1,800 of the update's 4,300 ops.
    self._opt = tf_keras.optimizers.legacy.Adam(lr)
    self._scaling = prec.global_policy().compute_dtype == 'float16'
    if self._scaling:
      self._opt = prec.LossScaleOptimizer(self._opt, dynamic=True)
    self._variables = None

  @property
  def variables(self):
    return list(self._opt.weights)

  @property
  def loss_scale_state(self):
    """float16's dynamic loss scale and its counter by name, else empty:
    kept apart from `variables` so that checkpoints load across precisions."""
    if not self._scaling:
      return {}
    state = self._opt._loss_scale  # tf_keras keeps them here, not in weights.
    return {f'{self._name}/loss_scale': state.current_loss_scale,
            f'{self._name}/loss_scale_steps': state.counter}

  def build(self):
    # Call once the modules have their variables; creates Adam's statistics.
    variables = [module.variables for module in self._modules]
    self._variables = tf.nest.flatten(variables)
    count = sum(int(np.prod(x.shape)) for x in self._variables)
    print(f'Found {count} {self._name} parameters.')
    # Slots, hyperparameters and the step counter, before tf.function runs.
    self._opt._create_all_weights(self._variables)

  def __call__(self, tape, loss):
    # Building here, inside tf.function, would make it trace twice.
    assert self._variables is not None, 'Call build() before the first update.'
    assert len(loss.shape) == 0, loss.shape
    if self._scaling:
      with tape:
        loss = self._opt.get_scaled_loss(loss)
    grads = tape.gradient(loss, self._variables)
    if self._scaling:
      grads = self._opt.get_unscaled_gradients(grads)
    norm = tf.linalg.global_norm(grads)
    if self._clip:
      grads, _ = tf.clip_by_global_norm(grads, self._clip, norm)
    # An update with a non-finite gradient is skipped in every precision: one
    # NaN applied destroys the run. The caller sees it in the returned norm.
    finite = tf.math.is_finite(norm)
    if self._wd:
      # Decoupled weight decay (upstream's scaled the weights by wd itself).
      rate = tf.where(finite, self._lr * self._wd, 0.0)
      for var in self._variables:
        if re.search(self._wdpattern, self._name + '/' + var.name):
          var.assign_sub(tf.cast(rate, var.dtype) * var)
    pairs = list(zip(grads, self._variables))
    if self._scaling:
      # The loss-scale optimizer skips such an update itself and lowers the
      # loss scale.
      self._opt.apply_gradients(pairs)
    else:
      tf.cond(finite, lambda: self._apply(pairs), lambda: tf.constant(False))
    return norm

  def _apply(self, pairs):
    self._opt.apply_gradients(pairs)
    return tf.constant(True)
