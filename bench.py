"""Times the train update, the policy step and the environment at the sizes of
the chosen presets (full default sizes unless told otherwise) and prints one
JSON object.

  python bench.py                          # defaults, i.e. upstream's sizes
  python bench.py --configs defaults dmc idm   # IDM beside Dreamer, and ratio
  python bench.py --configs defaults debug --updates 5

Each agent is measured in a fresh spawned process, so that its first update
includes the whole build and trace and its peak memory is its own.
"""

import argparse
import json
import multiprocessing
import pathlib
import resource
import statistics
import sys
import tempfile
import time

import numpy as np

import dreamer_idm
import tools
import wrappers


def fake_episodes(directory, config, actdim, count=4):
  # Timing does not depend on what the pixels show.
  random = np.random.RandomState(0)
  length = int(config.time_limit / config.action_repeat) + 1
  episodes = [{
      'image': random.randint(0, 255, (length, 64, 64, 3), np.uint8),
      'action': random.uniform(-1, 1, (length, actdim)).astype(np.float32),
      'reward': random.uniform(0, 1, length).astype(np.float32),
      'discount': np.ones(length, np.float32)} for _ in range(count)]
  tools.save_episodes(directory, episodes)


def measure_env(config, steps):
  env = wrappers.make_async_env(config, 'bench env')
  try:
    space = env.action_space
    random = np.random.RandomState(0)
    env.reset()
    start = time.perf_counter()
    for _ in range(steps):
      action = random.uniform(space.minimum, space.maximum).astype(np.float32)
      if env.step(action)[2]:
        env.reset()
    duration = time.perf_counter() - start
  finally:
    env.close()
  return steps * config.action_repeat / duration


IDM_OFF = dict(constraint=False, derived_copies=0, evaluator=False)


def measure_agent(config, updates, directory):
  import tensorflow as tf
  dreamer_idm.setup_precision(str(config.precision))
  actdim = 6  # Walker's action size.
  fake_episodes(directory, config, actdim)
  space = type('Space', (), {'shape': (actdim,)})()
  writer = tf.summary.create_noop_writer()
  start = time.perf_counter()
  agent = dreamer_idm.Dreamer(config, directory, space, writer, None)
  first = time.perf_counter() - start  # Includes the first train step.
  dataset = agent._dataset
  durations = []
  for _ in range(updates + 2):
    data = next(dataset)
    start = time.perf_counter()
    tf.nest.map_structure(lambda x: x.numpy(), agent.train(data))
    durations.append(time.perf_counter() - start)
  durations = durations[2:]  # Warm-up.
  obs = {'image': np.zeros((config.envs, 64, 64, 3), np.uint8)}
  amount = tf.constant(0.3)
  _, state = agent.policy(obs, None, True, amount)
  policy = []
  for _ in range(110):
    start = time.perf_counter()
    action, state = agent.policy(obs, state, True, amount)
    action.numpy()
    policy.append(time.perf_counter() - start)
  return dict(
      update_seconds=statistics.median(durations),
      update_seconds_all=[round(x, 3) for x in durations],
      first_update_seconds=first,
      policy_step_ms=1000 * statistics.median(policy[10:]),
      peak_memory_gb=resource.getrusage(
          resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2)


def measure_in_process(config, updates, directory):
  context = multiprocessing.get_context('spawn')
  with context.Pool(1) as pool:
    return pool.apply(measure_agent, (config, updates, directory))


def main(argv):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--configs', nargs='+', default=['defaults'])
  parser.add_argument('--updates', type=int, default=10)
  parser.add_argument('--env_steps', type=int, default=200)
  args, rest = parser.parse_known_args(argv)
  config = dreamer_idm.parse_args(['--configs', *args.configs, *rest])
  dreamer_idm.check_config(config)
  policy = dreamer_idm.setup_precision(str(config.precision))
  config.logdir = pathlib.Path(tempfile.mkdtemp(prefix='bench-'))
  config.log_images = False
  result = dict(configs=args.configs, precision=policy)
  result['env_steps_per_sec'] = measure_env(config, args.env_steps)
  result.update(measure_in_process(
      config, args.updates, config.logdir / 'episodes'))
  if any(config[k] != v for k, v in IDM_OFF.items()):
    # The same sizes with every IDM part off: plain Dreamer, for the ratio.
    dreamer = tools.AttrDict(config, **IDM_OFF)
    dreamer.logdir = pathlib.Path(tempfile.mkdtemp(prefix='bench-'))
    result['dreamer'] = measure_in_process(
        dreamer, args.updates, dreamer.logdir / 'episodes')
    result['update_ratio_to_dreamer'] = (
        result['update_seconds'] / result['dreamer']['update_seconds'])
  print(json.dumps(result), flush=True)


if __name__ == '__main__':
  try:
    main(sys.argv[1:])
  except tools.ConfigError as e:
    print(f'Error: {e}', file=sys.stderr)
    sys.exit(2)
