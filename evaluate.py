"""Evaluates the checkpoint of a run: N test episodes with the policy's mode,
without perturbation and with each perturbation asked for. Writes
<logdir>/eval_<step>.json and prints a summary.

  python evaluate.py --logdir logdir/walker_walk/idm --episodes 10 --rotation 5
"""

import argparse
import functools
import json
import pathlib
import sys

import numpy as np

import dreamer_idm
import tools
import wrappers


def load_agent(logdir):
  """The agent of a run, restored from its checkpoint, with its config."""
  logdir = pathlib.Path(logdir).expanduser()
  checkpoint_path = logdir / 'variables.pkl'
  if not checkpoint_path.exists():
    raise tools.ConfigError(
        f'No checkpoint in {logdir} (variables.pkl); train with '
        f'dreamer_idm.py --logdir {logdir} first.')
  checkpoint = tools.read_checkpoint(checkpoint_path)
  config = tools.AttrDict(dreamer_idm.parse_args(['--configs', 'defaults']))
  config.update(checkpoint['config'])
  config.logdir = logdir
  dreamer_idm.setup_precision(str(config.precision))
  space = _action_space(config)
  import tensorflow as tf
  agent = dreamer_idm.Dreamer(
      config, None, space, tf.summary.create_noop_writer(), None)
  agent.load(checkpoint, checkpoint_path)
  return agent, config, checkpoint


def evaluate(logdir, episodes, perturbations):
  agent, config, checkpoint = load_agent(logdir)
  logdir = config.logdir
  results = []
  for perturb in perturbations:
    settings = dict(config, eval_rotation=perturb['rotation'],
                    eval_noise_std=perturb['noise_std'],
                    eval_shift=perturb['shift'])
    returns = []
    env = wrappers.Collect(wrappers.make_async_env(
        tools.AttrDict(settings), 'eval env', test=True, seed=config.seed),
        [lambda ep: returns.append(float(ep['reward'].sum()))])
    try:
      tools.simulate(functools.partial(agent.act, training=False), [env],
                     episodes=episodes)
    finally:
      env.close()
    results.append(dict(
        perturbation=perturb, returns=returns, mean=float(np.mean(returns)),
        std=float(np.std(returns))))
  report = dict(
      logdir=str(logdir), task=config.task, step=checkpoint['step'],
      episodes=episodes, results=results)
  filename = logdir / f'eval_{checkpoint["step"]}.json'
  tools.atomic_write(filename, json.dumps(report, indent=1).encode('utf-8'))
  return report, filename


def _action_space(config):
  env = wrappers.make_async_env(config, 'check env')
  try:
    return env.action_space
  finally:
    env.close()


def main(argv):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--logdir', required=True)
  parser.add_argument('--episodes', type=int, default=10)
  parser.add_argument('--rotation', type=float, nargs='*', default=[],
                      help='max angles in degrees, one evaluation each')
  parser.add_argument('--noise_std', type=float, nargs='*', default=[])
  parser.add_argument('--shift', type=int, nargs='*', default=[])
  args = parser.parse_args(argv)
  none = dict(rotation=0.0, noise_std=0.0, shift=0)
  perturbations = [none]
  for key in ('rotation', 'noise_std', 'shift'):
    perturbations += [dict(none, **{key: v}) for v in getattr(args, key) if v]
  report, filename = evaluate(args.logdir, args.episodes, perturbations)
  print(f'{report["task"]} at step {report["step"]}, '
        f'{report["episodes"]} episodes each:')
  for result in report['results']:
    active = {k: v for k, v in result['perturbation'].items() if v} or 'none'
    print(f'  perturbation {active}: return {result["mean"]:.1f} '
          f'± {result["std"]:.1f}')
  print(f'Wrote {filename}.')


if __name__ == '__main__':
  try:
    main(sys.argv[1:])
  except (tools.ConfigError, wrappers.EnvError) as e:
    print(f'Error: {e}', file=sys.stderr)
    sys.exit(2)
