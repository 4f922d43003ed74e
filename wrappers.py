"""Environments. Nothing here imports TensorFlow: rendering with llvmpipe in a
process that has TensorFlow loaded crashes, so every rendering environment
lives in a worker process started with `spawn` (see Async)."""

import contextlib
import functools
import multiprocessing
import os
import signal
import sys
import traceback

import numpy as np

GL_HINT = (
    'install the GL libraries (apt-get install libegl1 libegl-mesa0 libgl1 '
    'libosmesa6, done by install.sh) or pick another backend with '
    'MUJOCO_GL=osmesa')


class DeepMindControl:

  def __init__(self, name, size=(64, 64), camera=None, seed=None):
    os.environ.setdefault('MUJOCO_GL', 'egl')
    try:
      from dm_control import suite
    except Exception as e:
      raise RuntimeError(
          f'Loading dm_control with MUJOCO_GL={os.environ["MUJOCO_GL"]} '
          f'failed ({type(e).__name__}: {e}); {GL_HINT}.') from None
    # Domains may contain underscores (point_mass, humanoid_CMU); upstream's
    # short name cup stands for ball_in_cup.
    tasks = {f'{"cup" if d == "ball_in_cup" else d}_{t}': (d, t)
             for d, t in suite.ALL_TASKS}
    if name not in tasks:
      known = ', '.join('dmc_' + x for x in tasks)
      raise ValueError(f'Unknown task dmc_{name}; choose from: {known}.')
    domain, task = tasks[name]
    # The seed fixes the sequence of initial states (upstream left it open).
    self._env = suite.load(domain, task, task_kwargs=dict(random=seed))
    self._size = size
    if camera is None:
      camera = dict(quadruped=2).get(domain, 0)
    self._camera = camera
    try:
      self.render()
    except Exception as e:
      raise RuntimeError(
          f'Rendering with MUJOCO_GL={os.environ["MUJOCO_GL"]} failed '
          f'({type(e).__name__}: {e}); {GL_HINT}.') from None

  @property
  def observation_space(self):
    from dm_env import specs
    spaces = {k: specs.Array(v.shape, np.float32, k)
              for k, v in self._env.observation_spec().items()}
    spaces['image'] = specs.BoundedArray(
        self._size + (3,), np.uint8, 0, 255, 'image')
    return spaces

  @property
  def action_space(self):
    return self._env.action_spec()

  def step(self, action, render=True):
    # render=False skips the image of a step whose observation is dropped
    # (ActionRepeat): a 64x64 frame costs ~100x the physics step here.
    ts = self._env.step(action)
    info = dict(discount=np.float32(ts.discount))
    return self._observe(ts, render), ts.reward or 0.0, ts.last(), info

  def reset(self):
    return self._observe(self._env.reset())

  def _observe(self, ts, render=True):
    obs = dict(ts.observation)
    if render:
      obs['image'] = self.render()
    return obs

  @property
  def physics(self):
    return self._env.physics

  @property
  def camera(self):
    return self._camera

  def render(self):
    return self._env.physics.render(*self._size, camera_id=self._camera)


class Wrapper:
  """Forwards everything it does not define to the wrapped environment."""

  def __init__(self, env):
    self._env = env

  def __getattr__(self, name):
    return getattr(self._env, name)


class ActionRepeat(Wrapper):
  """Repeats each action `amount` times (fewer at the end of an episode) and
  sums the rewards."""

  def __init__(self, env, amount):
    super().__init__(env)
    self._amount = amount

  def step(self, action):
    # Only the observation after the last repeat is seen, so only it renders.
    total = 0.0
    for index in range(self._amount):
      last = index == self._amount - 1
      obs, reward, done, info = self._env.step(action, render=last)
      total += reward
      if done:
        break
    if 'image' not in obs:
      obs['image'] = self._env.render()
    return obs, total, done, info


class NormalizeActions(Wrapper):
  """Exposes every bounded action dimension as [-1, 1]."""

  def __init__(self, env):
    super().__init__(env)
    space = env.action_space
    low, high = np.broadcast_to(space.minimum, space.shape), np.broadcast_to(
        space.maximum, space.shape)
    self._mask = np.logical_and(np.isfinite(low), np.isfinite(high))
    self._low = np.where(self._mask, low, -1)
    self._high = np.where(self._mask, high, 1)

  @property
  def action_space(self):
    from dm_env import specs
    low = np.where(self._mask, -np.ones_like(self._low), self._low)
    high = np.where(self._mask, np.ones_like(self._low), self._high)
    return specs.BoundedArray(low.shape, np.float32, low, high, 'action')

  def step(self, action):
    original = (action + 1) / 2 * (self._high - self._low) + self._low
    original = np.where(self._mask, original, action)
    return self._env.step(original)


class TimeLimit(Wrapper):
  """Ends the episode after `duration` steps; a time-out keeps discount 1."""

  def __init__(self, env, duration):
    super().__init__(env)
    self._duration = duration
    self._remaining = None

  def step(self, action):
    assert self._remaining is not None, 'Reset the environment first.'
    obs, reward, done, info = self._env.step(action)
    self._remaining -= 1
    if self._remaining <= 0:
      info.setdefault('discount', np.float32(1.0))
      done, self._remaining = True, None
    return obs, reward, done, info

  def reset(self):
    self._remaining = self._duration
    return self._env.reset()


class Collect(Wrapper):
  """Records transitions and hands each finished episode to the callbacks.

  Row t holds o_t, the action that led to it (zeros at reset) and its reward.
  Floats are stored as float32 whatever the training precision.
  """

  def __init__(self, env, callbacks=None):
    super().__init__(env)
    self._callbacks = list(callbacks or ())
    self._rows = None

  def step(self, action, blocking=True):
    promise = self._env.step(action, blocking=False)
    def receive():
      obs, reward, done, info = promise()
      obs = _to_storage(obs)
      discount = info.get('discount', 1.0 - float(done))
      self._rows.append(dict(
          obs, action=action, reward=reward, discount=discount))
      if done:
        episode = {key: _to_storage([row[key] for row in self._rows])
                   for key in self._rows[0]}
        info['episode'] = episode
        for callback in self._callbacks:
          callback(episode)
      return obs, reward, done, info
    return receive() if blocking else receive

  def reset(self, blocking=True):
    promise = self._env.reset(blocking=False)
    def receive():
      obs = _to_storage(promise())
      noop = np.zeros(self._env.action_space.shape, np.float32)
      self._rows = [dict(obs, action=noop, reward=0.0, discount=1.0)]
      return obs
    return receive() if blocking else receive


def _to_storage(value):
  """float32 for floats, int32 for signed integers, uint8 and bool kept."""
  if isinstance(value, dict):
    return {key: _to_storage(item) for key, item in value.items()}
  value = np.asarray(value)
  if value.dtype.kind == 'f':
    return value.astype(np.float32)
  if value.dtype.kind == 'i':
    return value.astype(np.int32)
  if value.dtype in (np.uint8, np.bool_):
    return value
  raise NotImplementedError(f'Cannot store values of type {value.dtype}.')


class RewardObs(Wrapper):
  """Adds the last reward to the observation, as float32."""

  def step(self, action, blocking=True):
    promise = self._env.step(action, blocking=False)
    def receive():
      obs, reward, done, info = promise()
      obs['reward'] = np.float32(reward)
      return obs, reward, done, info
    return receive() if blocking else receive

  def reset(self, blocking=True):
    promise = self._env.reset(blocking=False)
    def receive():
      obs = promise()
      obs['reward'] = np.float32(0.0)
      return obs
    return receive() if blocking else receive


class PerturbImage(Wrapper):
  """Test-time image uncertainty: rotation by an angle drawn uniformly from
  [-rotation, +rotation] degrees (the paper's Table 1 uses 5), Gaussian pixel
  noise with std `noise_std` (0-255 units) and a random translation of up to
  `shift` pixels, each drawn anew every step. Same size and dtype; the border
  is filled with black. Zero switches a perturbation off."""

  def __init__(self, env, rotation=0.0, noise_std=0.0, shift=0, seed=None):
    super().__init__(env)
    self._rotation = rotation
    self._noise_std = noise_std
    self._shift = shift
    self._random = _stream(seed, 'image')

  def step(self, action):
    obs, reward, done, info = self._env.step(action)
    return self._perturb(obs), reward, done, info

  def reset(self):
    return self._perturb(self._env.reset())

  def _perturb(self, obs):
    from scipy import ndimage
    image = obs['image'].astype(np.float32)
    if self._rotation:
      image = rotate(image, self._random.uniform(
          -self._rotation, self._rotation))
    if self._shift:
      offset = self._random.randint(-self._shift, self._shift + 1, 2)
      image = ndimage.shift(image, (*offset, 0), order=0, mode='constant')
    if self._noise_std:
      image += self._random.normal(0, self._noise_std, image.shape)
    if self._rotation or self._shift or self._noise_std:
      obs = dict(obs, image=np.clip(np.round(image), 0, 255).astype(np.uint8))
    return obs


class PerturbScene(Wrapper):
  """Test-time scene perturbations of the Distracting Control Suite (Stone et
  al. 2021), at a level in [0, 1] (its easy, medium, hard are 0.1, 0.2, 0.3):

  - color: the RGB of every material moved by up to `color` (on the [0, 1]
    scale), clipped to [0, 1]; also of the geoms whose own colour shows (no
    material, or a colour of their own, which MuJoCo draws over it);
  - camera: the rendering camera turned about the point it looks at by up to
    90 * `camera` degrees of yaw, pitch and roll, and its distance scaled by
    1 - 0.5 * `camera` .. 1 + 1.5 * `camera`. Pitch keeps the camera between
    level with that point and straight above it: its range is cut to that
    (one-sided for a level or a top-down camera) before drawing.

  Offsets are drawn uniformly at each reset and kept for the episode; with
  `dynamic` they also drift at every agent step by a Gaussian step with std
  3% of their bound, clipped to their range (the suite's colour rule, used
  for both). The point the camera turns about is fixed at reset: a tracking
  camera keeps tracking, a fixed one stays fixed. Wraps DeepMindControl
  directly, so it acts before ActionRepeat renders. Physics never sees the
  camera: it is moved for rendering only."""

  # MuJoCo draws a geom's own rgba instead of its material's unless it is
  # this default.
  _DEFAULT_RGBA = (0.5, 0.5, 0.5, 1.0)

  def __init__(self, env, color=0.0, camera=0.0, dynamic=False, seed=None):
    super().__init__(env)
    self._random = _stream(seed, 'scene')
    self._dynamic = dynamic
    model = env.physics.model
    own = (model.geom_matid < 0) | np.any(
        model.geom_rgba != self._DEFAULT_RGBA, axis=1)
    self._geoms = np.flatnonzero(own)
    self._original = dict(mat=model.mat_rgba[:, :3].copy(),
                          geom=model.geom_rgba[self._geoms, :3].copy())
    self._angle = np.pi / 2 * camera
    angle = self._angle
    self._bounds = dict(
        color=(-color, color), yaw=(-angle, angle), pitch=(-angle, angle),
        roll=(-angle, angle), zoom=(1 - 0.5 * camera, 1 + 1.5 * camera))
    self._distance = None
    self.offsets = None

  def step(self, action, render=True):
    obs, reward, done, info = self._env.step(action, render=False)
    if render:
      if self._dynamic:
        self._drift()
      obs['image'] = self.render()
    return obs, reward, done, info

  def reset(self):
    obs = self._env.reset()
    # The pivot's distance and the pitch range, from the episode's first pose.
    data = self.physics.data
    position = data.cam_xpos[self.camera]
    self._distance = np.linalg.norm(position - data.subtree_com[1])
    forward = -data.cam_xmat[self.camera].reshape(3, 3)[:, 2]
    elevation = np.arcsin(np.clip(-forward[2], -1, 1))
    self._bounds['pitch'] = (max(-self._angle, min(0, -elevation)),
                             min(self._angle, max(0, np.pi / 2 - elevation)))
    self.offsets = {key: self._draw(key) for key in self._bounds}
    self._apply_colors()
    obs['image'] = self.render()
    return obs

  def render(self):
    # The camera is moved for this frame only; physics recomputes it anyway.
    data = self.physics.data
    camera = self.camera
    saved = data.cam_xpos[camera].copy(), data.cam_xmat[camera].copy()
    data.cam_xpos[camera], data.cam_xmat[camera] = self.camera_pose()
    try:
      return self._env.render()
    finally:
      data.cam_xpos[camera], data.cam_xmat[camera] = saved

  def camera_pose(self, offsets=None):
    """Position and flattened orientation the camera renders from now, or
    with the given offsets (yaw, pitch, roll in radians; zoom a factor)."""
    offsets = offsets or self.offsets
    data = self.physics.data
    position = data.cam_xpos[self.camera].copy()
    matrix = data.cam_xmat[self.camera].reshape(3, 3).copy()
    if offsets is None:
      return position, matrix.flatten()
    from scipy.spatial.transform import Rotation
    # The pivot: on the view axis (MuJoCo cameras look along -z), as far as
    # the agent's root body was at reset.
    offset = self._distance * matrix[:, 2]
    # Pitch about the camera's horizontal axis, signed so that + raises it.
    axis = matrix[:, 0] * (1.0 if np.cross(matrix[:, 0], offset)[2] >= 0
                           else -1.0)
    turn = (Rotation.from_rotvec([0, 0, offsets['yaw']]) *
            Rotation.from_rotvec(offsets['pitch'] * axis)).as_matrix()
    roll = Rotation.from_rotvec([0, 0, offsets['roll']]).as_matrix()
    # Written as a change to the pose so that zero offsets keep it exactly.
    position = position + (offsets['zoom'] * turn @ offset - offset)
    return position, (turn @ matrix @ roll).flatten()

  def _draw(self, key):
    low, high = self._bounds[key]
    shape = ((len(self._original['mat']) + len(self._geoms), 3)
             if key == 'color' else None)
    return self._random.uniform(low, high, shape)

  def _drift(self):
    for key, (low, high) in self._bounds.items():
      bound = max(abs(low), abs(high)) if key != 'zoom' else (high - low) / 2
      step = self._random.normal(
          0, 0.03 * bound, np.shape(self.offsets[key]) or None)
      self.offsets[key] = np.clip(self.offsets[key] + step, low, high)
    self._apply_colors()

  def _apply_colors(self):
    model = self.physics.model
    count = len(self._original['mat'])
    delta = self.offsets['color']
    model.mat_rgba[:, :3] = np.clip(
        self._original['mat'] + delta[:count], 0, 1)
    model.geom_rgba[self._geoms, :3] = np.clip(
        self._original['geom'] + delta[count:], 0, 1)


def _stream(seed, name):
  """A random state of its own for each perturbation, derived from the env
  seed: the task draws its initial states from that seed itself."""
  if seed is None:
    return np.random.RandomState()
  entropy = [seed, {'image': 1, 'scene': 2}[name]]
  return np.random.RandomState(np.random.SeedSequence(entropy).generate_state(4))


def rotate(image, angle):
  """Rotates an HxWxC image about its center, same size, black border."""
  from scipy import ndimage
  return ndimage.rotate(
      image, angle, axes=(1, 0), reshape=False, order=1, mode='constant')


def make_env(
    task, action_repeat, time_limit, size=(64, 64), perturb=None, seed=None):
  """Builds a rendering environment; runs inside an Async worker. `perturb`
  holds PerturbScene's and PerturbImage's settings, for test environments
  only."""
  suite, name = task.split('_', 1) if '_' in task else (task, '')
  if suite != 'dmc':
    raise ValueError(
        f'Unknown task {task}: only DeepMind Control tasks dmc_<domain>_<task> '
        f'are supported (e.g. dmc_walker_walk).')
  perturb = perturb or {}
  scene = {k: perturb.get(k, 0) for k in ('color', 'camera', 'dynamic')}
  image = {k: perturb.get(k, 0) for k in ('rotation', 'noise_std', 'shift')}
  env = DeepMindControl(name, size, seed=seed)
  if scene['color'] or scene['camera']:
    env = PerturbScene(env, **scene, seed=seed)
  env = ActionRepeat(env, action_repeat)
  env = NormalizeActions(env)
  env = TimeLimit(env, time_limit / action_repeat)
  if any(image.values()):
    env = PerturbImage(env, **image, seed=seed)
  return env


# Test-time perturbations, each the suffix of an eval_* config key.
PERTURBATIONS = ('rotation', 'noise_std', 'shift', 'color', 'camera', 'dynamic')

# The suite's kinds: the test-time settings (eval_* keys without the prefix)
# of each at a level in [0, 1], where 1 is extreme for every kind.
SUITE = {
    # Degrees, the same range as the camera's roll.
    'rotation': lambda level: dict(rotation=90.0 * level),
    # 0-255 units: half the pixel range at level 1.
    'noise': lambda level: dict(noise_std=127.5 * level),
    # Pixels: up to half of the 64-pixel frame at level 1.
    'shift': lambda level: dict(shift=int(round(32 * level))),
    # Distracting Control Suite: colour and camera pose.
    'color': lambda level: dict(color=level),
    'camera': lambda level: dict(camera=level),
}
NONE = dict(rotation=0.0, noise_std=0.0, shift=0, color=0.0, camera=0.0,
            dynamic=False)


class EnvError(RuntimeError):
  pass


@contextlib.contextmanager
def _hide_main():
  # A spawned child re-runs the parent's __main__ file to unpickle objects
  # defined there. Our main module imports TensorFlow, which must never load
  # in a rendering worker, so the child is told there is no main file.
  main = sys.modules['__main__']
  sys.modules['__main__'] = type(sys)('__main__')
  try:
    yield
  finally:
    sys.modules['__main__'] = main


class Async:
  """Runs an environment in a worker process started with `spawn`.

  blocking=False on step and reset returns a promise, so that several
  workers step at once; with parallel 'none' they are stepped in turn.
  """

  _ACCESS = 1
  _CALL = 2
  _RESULT = 3
  _EXCEPTION = 4
  _CLOSE = 5

  def __init__(self, ctor, parallel='process', name='env'):
    self._parallel = parallel
    self._name = name
    context = multiprocessing.get_context('spawn')
    self._conn, conn = context.Pipe()
    self._process = context.Process(
        target=_worker, args=(ctor, conn), daemon=True)
    with _hide_main():
      self._process.start()
    conn.close()
    self._action_space = None
    self._closed = False

  @property
  def action_space(self):
    if self._action_space is None:
      self._action_space = self.access('action_space')
    return self._action_space

  def access(self, name):
    self._send((self._ACCESS, name))
    return self._receive()

  def call(self, name, *args, blocking=True, **kwargs):
    self._send((self._CALL, (name, args, kwargs)))
    if blocking or self._parallel == 'none':
      result = self._receive()
      return result if blocking else (lambda: result)
    return self._receive

  def step(self, action, blocking=True):
    return self.call('step', action, blocking=blocking)

  def reset(self, blocking=True):
    return self.call('reset', blocking=blocking)

  def close(self):
    if self._closed:
      return
    self._closed = True
    try:
      self._conn.send((self._CLOSE, None))
      self._conn.close()
    except OSError:
      pass  # The worker is already gone.
    self._process.join(5)
    if self._process.is_alive():
      self._process.terminate()
      self._process.join(1)

  def _send(self, message):
    try:
      self._conn.send(message)
    except OSError:
      self._died()

  def _receive(self):
    try:
      message, payload = self._conn.recv()
    except (EOFError, ConnectionResetError, OSError):
      self._died()
    if message == self._EXCEPTION:
      raise EnvError(f'{self._name} worker failed: {payload}')
    if message == self._RESULT:
      return payload
    raise KeyError(f'Received message of unexpected type {message}')

  def _died(self):
    # A worker that failed before our first message left its error behind.
    with contextlib.suppress(EOFError, OSError):
      if self._conn.poll():
        message, payload = self._conn.recv()
        if message == self._EXCEPTION:
          raise EnvError(f'{self._name} worker failed: {payload}')
    self._process.join(1)
    code = self._process.exitcode
    raise EnvError(
        f'{self._name} worker (pid {self._process.pid}) died with exit code '
        f'{code}; episodes already written are kept, rerun the same command '
        f'to resume.')


def _worker(ctor, conn):
  # Ctrl-C is the parent's to handle; it closes the workers.
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  try:
    env = ctor()
    while True:
      try:
        message, payload = conn.recv()
      except EOFError:
        break
      if message == Async._ACCESS:
        conn.send((Async._RESULT, getattr(env, payload)))
      elif message == Async._CALL:
        name, args, kwargs = payload
        conn.send((Async._RESULT, getattr(env, name)(*args, **kwargs)))
      elif message == Async._CLOSE:
        break
      else:
        raise KeyError(f'Received message of unknown type {message}')
  except Exception as e:
    if isinstance(e, (ValueError, RuntimeError)):
      text = str(e)  # Our own one-line errors: unknown task, missing GL.
    else:
      text = ''.join(traceback.format_exception(*sys.exc_info()))
    try:
      conn.send((Async._EXCEPTION, text))
    except OSError:
      pass
  conn.close()


def make_async_env(config, name, parallel=None, test=False, seed=None):
  # Perturbations apply to test environments only; training images never.
  perturb = {key: config[f'eval_{key}'] for key in PERTURBATIONS} if test else None
  ctor = functools.partial(
      make_env, config.task, config.action_repeat, config.time_limit,
      perturb=perturb, seed=seed)
  return Async(ctor, parallel or config.parallel, name)
