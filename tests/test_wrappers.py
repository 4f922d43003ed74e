import os
import signal

import numpy as np
import pytest

import tools
import wrappers


def _config(**kwargs):
  config = dict(
      task='dmc_walker_walk', action_repeat=2, time_limit=20, parallel='none')
  return tools.AttrDict(config, **kwargs)


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


def test_unknown_task_is_a_clear_error():
  env = wrappers.make_async_env(_config(task='dmc_walker_fly'), 'check env')
  try:
    with pytest.raises(wrappers.EnvError, match='Unknown task dmc_walker_fly'):
      _ = env.action_space
  finally:
    env.close()
  env = wrappers.make_async_env(_config(task='atari_pong'), 'check env')
  try:
    with pytest.raises(wrappers.EnvError, match='only DeepMind Control'):
      _ = env.action_space
  finally:
    env.close()


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
