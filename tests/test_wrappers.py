import os
import signal

import numpy as np
import pytest

import tools
import wrappers


def _config(**kwargs):
  config = dict(
      task='dmc_walker_walk', action_repeat=2, time_limit=20, parallel='none',
      eval_rotation=0.0, eval_noise_std=0.0, eval_shift=0, eval_color=0.0,
      eval_camera=0.0, eval_dynamic=False)
  config.update(kwargs)
  return tools.AttrDict(config)


def test_worker_renders_real_task_with_normalized_actions():
  saved = []
  env = wrappers.make_async_env(_config(), 'train env')
  env = wrappers.RewardObs(wrappers.Collect(env, [saved.append]))
  try:
    space = env.action_space
    assert space.shape == (6,)
    np.testing.assert_array_equal(space.minimum, -1)
    np.testing.assert_array_equal(space.maximum, 1)
    obs = env.reset()
    assert obs['image'].shape == (64, 64, 3) and obs['image'].dtype == np.uint8
    assert obs['image'].std() > 0  # A real rendered frame, not a blank one.
    dones, images = [], [obs['image']]
    for _ in range(10):
      obs, reward, done, _ = env.step(np.ones(6, np.float32))
      dones.append(done)
      images.append(obs['image'])
      assert np.isfinite(reward) and obs['reward'] == np.float32(reward)
    # time_limit 20 with action repeat 2 is 10 agent steps.
    assert dones == [False] * 9 + [True]
    assert not all(np.array_equal(images[0], x) for x in images[1:])
    (episode,) = saved
    assert len(episode['reward']) == 11
    np.testing.assert_array_equal(episode['action'][0], 0)
    np.testing.assert_array_equal(episode['action'][1:], 1)
    assert episode['reward'].dtype == np.float32
  finally:
    env.close()


@pytest.mark.parametrize('task, message', [
    ('dmc_walker_fly', 'Unknown task dmc_walker_fly'),
    ('atari_pong', 'only DeepMind Control')])
def test_unknown_task_is_a_clear_error(task, message):
  env = wrappers.make_async_env(_config(task=task), 'check env')
  try:
    with pytest.raises(wrappers.EnvError, match=message):
      _ = env.action_space
  finally:
    env.close()


def test_domains_with_underscores_load_and_the_seed_fixes_initial_states():
  frames = {}
  for name, seed in (('a', 1), ('b', 1), ('c', 2)):
    env = wrappers.make_async_env(
        _config(task='dmc_point_mass_easy'), 'train env', seed=seed)
    try:
      assert env.action_space.shape == (2,)
      frames[name] = [env.reset()['image'] for _ in range(2)]
    finally:
      env.close()
  np.testing.assert_array_equal(frames['a'], frames['b'])
  assert not np.array_equal(frames['a'][0], frames['c'][0])
  assert not np.array_equal(frames['a'][0], frames['a'][1])


class _Recorder:
  """A stand-in environment: records the actions it receives."""

  def __init__(self, low, high):
    from dm_env import specs
    self.action_space = specs.BoundedArray(
        (len(low),), np.float32, np.array(low), np.array(high))
    self.actions = []

  def reset(self):
    return {}

  def step(self, action):
    self.actions.append(np.array(action))
    return {}, 1.0, False, {}


def test_normalized_actions_map_to_the_bounds_and_unbounded_pass_through():
  env = _Recorder([0.0, -2.0, -np.inf], [10.0, 2.0, np.inf])
  normalized = wrappers.NormalizeActions(env)
  space = normalized.action_space
  # As upstream: an unbounded dimension is offered as [-1, 1] (the actor's
  # range) and passed through unchanged.
  np.testing.assert_array_equal(space.minimum, -1)
  np.testing.assert_array_equal(space.maximum, 1)
  normalized.step(np.array([-1.0, 1.0, 7.0]))
  normalized.step(np.array([0.0, 0.5, -3.0]))
  np.testing.assert_allclose(env.actions, [[0, 2, 7], [5, 1, -3]])


def test_time_limit_ends_the_episode_with_discount_one():
  env = wrappers.TimeLimit(_Recorder([-1.0], [1.0]), 3)
  env.reset()
  steps = [env.step(np.zeros(1)) for _ in range(3)]
  assert [done for _, _, done, _ in steps] == [False, False, True]
  assert steps[-1][3]['discount'] == 1.0  # A time-out, not a terminal state.


def test_missing_gl_is_a_clear_error(monkeypatch):
  # No display here, so GLFW cannot create a context: the same failure as a
  # machine without the EGL libraries.
  monkeypatch.setenv('MUJOCO_GL', 'glfw')
  env = wrappers.make_async_env(_config(), 'train env')
  try:
    with pytest.raises(wrappers.EnvError, match='MUJOCO_GL=glfw failed.*apt-get'):
      _ = env.action_space
  finally:
    env.close()


def test_dead_worker_is_reported():
  env = wrappers.make_async_env(_config(), 'train env')
  try:
    env.reset()
    os.kill(env._process.pid, signal.SIGKILL)
    with pytest.raises(wrappers.EnvError, match='died with exit code -9'):
      env.step(np.zeros(6, np.float32))
  finally:
    env.close()


def test_rotation_by_zero_is_the_identity_and_otherwise_changes_the_frame():
  random = np.random.RandomState(0)
  image = random.randint(0, 255, (64, 64, 3)).astype(np.uint8)
  same = wrappers.rotate(image.astype(np.float32), 0.0)
  np.testing.assert_array_equal(np.round(same).astype(np.uint8), image)
  rotated = wrappers.rotate(image.astype(np.float32), 5.0)
  assert rotated.shape == image.shape
  assert np.abs(rotated - image).mean() > 10
  assert np.all(rotated[0, 0] == 0)  # The corner comes from outside: black.


class _Frames:
  action_space = None

  def __init__(self):
    self.image = np.full((64, 64, 3), 200, np.uint8)

  def reset(self):
    return {'image': self.image.copy()}

  def step(self, action):
    return {'image': self.image.copy()}, 0.0, False, {}


def test_perturbations_keep_shape_and_dtype_and_zero_is_off():
  off = wrappers.PerturbImage(_Frames(), 0.0, 0.0, 0, seed=0)
  np.testing.assert_array_equal(off.reset()['image'], _Frames().image)
  for kwargs in (dict(rotation=5.0), dict(noise_std=10.0), dict(shift=4)):
    env = wrappers.PerturbImage(_Frames(), **kwargs, seed=0)
    frames = [env.reset()['image']] + [
        env.step(None)[0]['image'] for _ in range(5)]
    for frame in frames:
      assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8
    assert any(not np.array_equal(f, _Frames().image) for f in frames)
    # A new draw every step.
    assert any(not np.array_equal(frames[1], f) for f in frames[2:])


def test_only_test_environments_are_perturbed():
  config = _config(eval_rotation=30.0, eval_noise_std=0.0, eval_shift=0)
  corners = {}
  for test in (False, True):
    env = wrappers.make_async_env(config, 'env', test=test, seed=0)
    try:
      frames = [env.reset()['image']]
      frames += [env.step(np.zeros(6, np.float32))[0]['image'] for _ in range(9)]
    finally:
      env.close()
    corners[test] = [int(np.all(f[0, 0] == 0) or np.all(f[-1, -1] == 0))
                     for f in frames]
  assert sum(corners[False]) == 0  # Training frames: never rotated.
  assert sum(corners[True]) >= 7   # Test frames: black rotated-in corners.


class _CountingEnv:
  """Steps a counter; the image shows the step it was rendered at."""

  def __init__(self, done_at=None):
    self.steps = self.renders = 0
    self._done_at = done_at

  def step(self, action, render=True):
    self.steps += 1
    obs = {'position': np.float32(self.steps)}
    if render:
      obs['image'] = self.render()
    return obs, 1.0, self.steps == self._done_at, {}

  def render(self):
    self.renders += 1
    return np.full((2, 2, 3), self.steps, np.uint8)


def test_action_repeat_renders_only_the_observation_it_returns():
  env = _CountingEnv()
  obs, reward, done, _ = wrappers.ActionRepeat(env, 3).step(0)
  assert (env.steps, env.renders, reward, done) == (3, 1, 3.0, False)
  assert obs['image'][0, 0, 0] == 3 and obs['position'] == 3
  # An episode that ends early still returns the image of its last state.
  env = _CountingEnv(done_at=2)
  obs, reward, done, _ = wrappers.ActionRepeat(env, 3).step(0)
  assert (env.steps, env.renders, reward, done) == (2, 1, 2.0, True)
  assert obs['image'][0, 0, 0] == 2


def _without_tensorflow(code):
  """Runs code in a fresh interpreter: rendering cannot share a process with
  TensorFlow, which the test process has loaded."""
  import subprocess
  import sys
  import textwrap
  result = subprocess.run(
      [sys.executable, '-c', textwrap.dedent(code)], capture_output=True,
      text=True, cwd=os.path.dirname(os.path.dirname(__file__)),
      env=dict(os.environ, MUJOCO_GL=os.environ.get('MUJOCO_GL', 'egl')))
  assert result.returncode == 0, result.stderr


def test_scene_perturbations_at_zero_render_identical_frames():
  # The wrapper at level 0 against the plain environment, frame by frame.
  _without_tensorflow('''
      import numpy as np
      import wrappers
      def frames(env):
        images = [env.reset()['image']]
        for _ in range(8):
          images.append(env.step(np.full(6, 0.5), render=True)[0]['image'])
        return np.array(images)
      plain = frames(wrappers.DeepMindControl('walker_walk', seed=3))
      for dynamic in (False, True):
        env = wrappers.PerturbScene(
            wrappers.DeepMindControl('walker_walk', seed=3), color=0.0,
            camera=0.0, dynamic=dynamic, seed=1)
        zero = frames(env)
        assert zero.tobytes() == plain.tobytes(), dynamic
      # A tiny level changes the colours a tiny bit: materials' colours are
      # moved, not replaced by the geoms' default grey.
      env = wrappers.PerturbScene(
          wrappers.DeepMindControl('walker_walk', seed=3), color=1e-3, seed=1)
      assert np.abs(frames(env).astype(int) - plain).mean() < 1
      # Level 0.3: visibly different frames; static colours stay within the
      # level of the originals and are drawn anew at each reset.
      env = wrappers.PerturbScene(
          wrappers.DeepMindControl('walker_walk', seed=3), color=0.3, seed=1)
      model = env.physics.model
      original = model.mat_rgba[:, :3].copy()
      alpha = model.mat_rgba[:, 3].copy()
      colored = frames(env)
      assert np.abs(colored.astype(int) - plain).mean() > 5
      first = model.mat_rgba[:, :3].copy()
      assert 0 < np.abs(first - original).max() <= 0.3 + 1e-6
      env.step(np.zeros(6))
      np.testing.assert_array_equal(model.mat_rgba[:, :3], first)
      env.reset()
      assert np.abs(model.mat_rgba[:, :3] - first).max() > 0.05
      assert np.abs(model.mat_rgba[:, :3] - original).max() <= 0.3 + 1e-6
      np.testing.assert_array_equal(model.mat_rgba[:, 3], alpha)
  ''')


def test_camera_levels_move_the_pose_by_the_stated_amounts():
  config = _config(eval_camera=0.3)
  env = wrappers.make_async_env(config, 'env', test=True, seed=0)
  bound = np.pi / 2 * 0.3
  zero = dict(yaw=0.0, pitch=0.0, roll=0.0, zoom=1.0)
  try:
    draws = []
    for _ in range(12):
      env.reset()
      offsets = env.access('offsets')
      base, base_matrix = env.call('camera_pose', zero)
      position, matrix = env.call('camera_pose')
      base_matrix, matrix = base_matrix.reshape(3, 3), matrix.reshape(3, 3)
      # The pivot: where the original and the moved view axes (-z) meet.
      forward, new_forward = -base_matrix[:, 2], -matrix[:, 2]
      (along, back), *_ = np.linalg.lstsq(
          np.stack([forward, -new_forward], 1), position - base, rcond=None)
      pivot = base + along * forward
      miss = np.linalg.norm(position + back * new_forward - pivot)
      assert miss < 1e-3  # Still looking at the same point.
      before, after = base - pivot, position - pivot
      zoom = np.linalg.norm(after) / np.linalg.norm(before)
      yaw = np.arctan2(after[1], after[0]) - np.arctan2(before[1], before[0])
      elevation = lambda v: np.arcsin(v[2] / np.linalg.norm(v))  # noqa: E731
      pitch = elevation(after) - elevation(before)
      # Roll: about the view axis, against the same pose unrolled.
      unrolled_position, unrolled = env.call(
          'camera_pose', dict(offsets, roll=0.0))
      unrolled = unrolled.reshape(3, 3)
      np.testing.assert_allclose(unrolled_position, position, atol=1e-12)
      roll = np.arctan2(
          np.dot(np.cross(unrolled[:, 0], matrix[:, 0]), unrolled[:, 2]),
          np.dot(unrolled[:, 0], matrix[:, 0]))
      assert abs(zoom - offsets['zoom']) < 1e-3
      assert 1 - 0.15 <= zoom <= 1 + 0.45
      assert abs((yaw - offsets['yaw'] + np.pi) % (2 * np.pi) - np.pi) < 1e-3
      assert abs(yaw) <= bound + 1e-6 and abs(pitch) <= bound + 1e-6
      assert elevation(after) >= -1e-6  # Never below the point it looks at.
      assert abs(roll - offsets['roll']) < 1e-6
      assert abs(pitch - offsets['pitch']) < 1e-6  # + raises the camera.
      draws.append((abs(yaw), abs(pitch), abs(roll), zoom))
    draws = np.array(draws)
    # The draws use the range: each offset comes near its bound.
    assert draws[:, 0].max() > 0.6 * bound and draws[:, 2].max() > 0.6 * bound
    assert draws[:, 3].max() > 1.25 and draws[:, 3].min() < 0.95
    # Static: the same offsets all episode; dynamic drifts within the bounds.
    env.step(np.zeros(6, np.float32))
    np.testing.assert_array_equal(env.access('offsets')['yaw'], offsets['yaw'])
  finally:
    env.close()
  env = wrappers.make_async_env(
      _config(eval_camera=0.3, eval_dynamic=True), 'env', test=True, seed=0)
  try:
    env.reset()
    yaws = [env.access('offsets')['yaw']]
    for _ in range(9):
      env.step(np.zeros(6, np.float32))
      yaws.append(env.access('offsets')['yaw'])
    assert len(set(yaws)) == 10 and max(np.abs(yaws)) <= bound
    # A step with std 3% of the bound: small next to the range.
    assert np.abs(np.diff(yaws)).max() < 0.15 * bound
  finally:
    env.close()
  # A fixed camera stays fixed all episode (cartpole's camera does not
  # track): the pose is the same however the cart moves.
  env = wrappers.make_async_env(
      _config(task='dmc_cartpole_balance', eval_camera=0.3), 'env', test=True,
      seed=0)
  try:
    env.reset()
    poses = [env.call('camera_pose')]
    for _ in range(9):  # time_limit 20: 10 steps.
      env.step(np.ones(1, np.float32))
      poses.append(env.call('camera_pose'))
    for position, matrix in poses[1:]:
      np.testing.assert_array_equal(position, poses[0][0])
      np.testing.assert_array_equal(matrix, poses[0][1])
  finally:
    env.close()


def test_training_frames_are_untouched_by_a_perturbed_test_episode():
  # Training envs of a config with every perturbation on render exactly what
  # an env without any renders, also after a perturbed test episode.
  config = _config(eval_color=0.3, eval_camera=0.3, eval_dynamic=True,
                   eval_rotation=5.0)
  train = wrappers.make_async_env(config, 'train env', seed=0)
  plain = wrappers.make_async_env(_config(), 'plain env', seed=0)
  test = wrappers.make_async_env(config, 'test env', test=True, seed=0)
  try:
    before = train.reset()['image']
    np.testing.assert_array_equal(before, plain.reset()['image'])
    test_frames = [test.reset()['image']]
    for _ in range(9):
      test_frames.append(test.step(np.zeros(6, np.float32))[0]['image'])
    action = np.full(6, 0.3, np.float32)
    np.testing.assert_array_equal(
        train.step(action)[0]['image'], plain.step(action)[0]['image'])
    # The test episode did run perturbed: its first frame is not the
    # training env's (same seed, same initial state).
    assert np.abs(test_frames[0].astype(int) - before).mean() > 5
  finally:
    for env in (train, plain, test):
      env.close()
