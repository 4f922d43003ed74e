"""Evaluates the checkpoint of a run: N test episodes with the policy's mode,
without perturbation and with each perturbation asked for. Writes
<logdir>/eval_<step>.json and prints a summary.

  python evaluate.py --logdir logdir/walker_walk/idm --episodes 10 --rotation 5

With --suite, the robustness suite: every perturbation kind at each level in
[0, 1] (default the Distracting Control Suite's 0.1, 0.2, 0.3) and none, N
episodes per cell, all cells from the same initial states. Writes
robustness_<step>.json (every episode's return), .md (mean and 95% CI) and
.png; a suite that was cut off resumes without rerunning finished cells.

  python evaluate.py --logdir logdir/walker_walk/idm --suite --episodes 10
"""

import argparse
import functools
import json
import pathlib
import sys
import time

import numpy as np

import dreamer_idm
import tables
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


def run_episodes(agent, config, perturb, episodes, callback=None):
  """Returns of N test episodes under one perturbation, from the initial
  states of the run's test environment (the same for every perturbation)."""
  settings = dict(config, **{f'eval_{k}': v for k, v in perturb.items()})
  returns = []
  def record(episode):
    returns.append(float(episode['reward'].sum()))
    if callback:
      callback(returns)
  env = wrappers.Collect(wrappers.make_async_env(
      tools.AttrDict(settings), 'eval env', test=True,
      seed=config.seed * 1000 + 500), [record])
  try:
    tools.simulate(functools.partial(agent.act, training=False), [env],
                   episodes=episodes)
  finally:
    env.close()
  return returns


def episode_progress(label, done_before, episodes, total, start, log):
  """A callback that logs each finished episode with the count and an ETA."""
  def progress(returns):
    finished = done_before + len(returns)
    rate = (time.time() - start) / finished
    log(f'[{label}] episode {len(returns)}/{episodes} return '
        f'{returns[-1]:.1f} | {finished}/{total} episodes | {rate:.1f} '
        f's/episode | ETA {tools.format_duration(rate * (total - finished))}')
  return progress


def evaluate(logdir, episodes, perturbations, log=print):
  agent, config, checkpoint = load_agent(logdir)
  results = []
  total, start = len(perturbations) * episodes, time.time()
  for index, perturb in enumerate(perturbations):
    name = ' '.join(f'{k}={v:g}' for k, v in perturb.items() if v) or 'none'
    progress = episode_progress(
        f'perturbation {index + 1}/{len(perturbations)} {name}',
        index * episodes, episodes, total, start, log)
    returns = run_episodes(agent, config, perturb, episodes, progress)
    results.append(dict(
        perturbation=perturb, returns=returns, mean=float(np.mean(returns)),
        std=float(np.std(returns))))
  report = dict(
      logdir=str(config.logdir), task=config.task, step=checkpoint['step'],
      episodes=episodes, results=results)
  filename = config.logdir / f'eval_{checkpoint["step"]}.json'
  tools.atomic_write(filename, json.dumps(report, indent=1).encode('utf-8'))
  return report, filename


def check_suite(kinds, levels, episodes):
  """One clear line for each kind of bad input."""
  for kind in kinds:
    if kind not in wrappers.SUITE:
      raise tools.ConfigError(
          f'Unknown perturbation kind {kind!r}; choose from '
          f'{", ".join(wrappers.SUITE)}.')
  for level in levels:
    if not 0 < level <= 1:
      raise tools.ConfigError(
          f'--levels must lie in (0, 1] (none is always run), got {level}.')
  if episodes < 1:
    raise tools.ConfigError(f'--episodes must be at least 1, got {episodes}.')


def suite_cells(kinds, levels, dynamic):
  """(kind, level, settings) of every cell, none first."""
  cells = [('none', 0.0, dict(wrappers.NONE))]
  for kind in kinds:
    for level in levels:
      cells.append((kind, level, dict(
          wrappers.NONE, dynamic=dynamic and kind in ('color', 'camera'),
          **wrappers.SUITE[kind](level))))
  return cells


def suite(logdir, episodes, kinds, levels, dynamic, log=print):
  check_suite(kinds, levels, episodes)
  agent, config, checkpoint = load_agent(logdir)
  step = checkpoint['step']
  name = f'robustness_{step}{"_dynamic" if dynamic else ""}'
  filename = config.logdir / f'{name}.json'
  report = dict(logdir=str(config.logdir), task=config.task, step=step,
                episodes=episodes, dynamic=dynamic, policy='mode', cells=[])
  if filename.exists():
    report = json.loads(filename.read_text())
    if report['episodes'] != episodes:
      raise tools.ConfigError(
          f'{filename} holds a suite of {report["episodes"]} episodes per '
          f'cell; pass --episodes {report["episodes"]} to resume it, or move '
          f'the file to start anew.')
  done = {(c['kind'], c['level']) for c in report['cells']}
  todo = [c for c in suite_cells(kinds, levels, dynamic)
          if (c[0], c[1]) not in done]
  if done:
    log(f'Resuming {filename.name}: {len(done)} cells done, '
        f'{len(todo)} to run.')
  total, start = len(todo) * episodes, time.time()
  for index, (kind, level, settings) in enumerate(todo):
    progress = episode_progress(
        f'cell {index + 1}/{len(todo)} {kind} {level:g}', index * episodes,
        episodes, total, start, log)
    returns = run_episodes(agent, config, settings, episodes, progress)
    report['cells'].append(
        dict(kind=kind, level=level, settings=settings, returns=returns))
    # Each finished cell is kept at once: a cut-off suite resumes after it.
    tools.atomic_write(filename, json.dumps(report, indent=1).encode('utf-8'))
  import plotting
  table = robustness_table(report)
  tools.atomic_write(filename.with_suffix('.md'), table.encode('utf-8'))
  plotting.plot_robustness(report, filename.with_suffix('.png'))
  return report, filename, table


def robustness_table(report):
  """Kinds x levels, mean ± 95% CI half-width over episodes, as Markdown."""
  cells = {(c['kind'], c['level']): c for c in report['cells']}
  kinds = list(dict.fromkeys(c['kind'] for c in report['cells']
                             if c['kind'] != 'none'))
  levels = sorted({c['level'] for c in report['cells'] if c['kind'] != 'none'})
  def text(cell):
    if cell is None:
      return 'not run'
    mean, half = tables.t_interval(cell['returns'])
    return f'{mean:.1f}' if half is None else f'{mean:.1f} ± {half:.1f}'
  none = text(cells.get(('none', 0.0)))
  mode = 'dynamic' if report['dynamic'] else 'static'
  lines = [
      f'Robustness of {report["task"]} at step {report["step"]}: '
      f'{report["episodes"]} episodes per cell with the policy\'s mode, '
      f'{mode} colour and camera; mean ± 95% CI (t) over episodes.', '',
      '| kind | none | ' + ' | '.join(f'{x:g}' for x in levels) + ' |',
      '| --- ' * (len(levels) + 2) + '|']
  for kind in kinds:
    lines.append(f'| {kind} | {none} | ' + ' | '.join(
        text(cells.get((kind, x))) for x in levels) + ' |')
  lines.append('')
  settings = lambda kind: ', '.join(
      describe(wrappers.SUITE[kind](x)) for x in levels)
  lines.append('Settings per level: ' + '; '.join(
      f'{kind} {settings(kind)}' for kind in kinds) + '.')
  return '\n'.join(lines) + '\n'


def describe(settings):
  ((key, value),) = settings.items()
  units = dict(rotation='°', noise_std=' std', shift=' px', color='',
               camera='')
  return f'{value:g}{units[key]}'


def _action_space(config):
  env = wrappers.make_async_env(config, 'check env')
  try:
    return env.action_space
  finally:
    env.close()


class _Parser(argparse.ArgumentParser):

  def error(self, message):
    raise tools.ConfigError(f'{message} (see python evaluate.py --help).')


def main(argv):
  parser = _Parser(description=__doc__.splitlines()[0])
  parser.add_argument('--logdir', required=True)
  parser.add_argument('--episodes', type=int, default=10)
  parser.add_argument('--rotation', type=float, nargs='*', default=[],
                      help='max angles in degrees, one evaluation each')
  parser.add_argument('--noise_std', type=float, nargs='*', default=[])
  parser.add_argument('--shift', type=int, nargs='*', default=[])
  parser.add_argument('--suite', action='store_true',
                      help='run the robustness suite')
  parser.add_argument('--kinds', nargs='+', default=list(wrappers.SUITE),
                      help='with --suite: perturbation kinds')
  parser.add_argument('--levels', type=float, nargs='+',
                      default=[0.1, 0.2, 0.3], help='with --suite: levels')
  parser.add_argument('--dynamic', action='store_true',
                      help='with --suite: colour and camera drift in episodes')
  args = parser.parse_args(argv)
  if args.suite:
    # A kind or level named twice runs once.
    kinds = list(dict.fromkeys(args.kinds))
    levels = list(dict.fromkeys(args.levels))
    _, filename, table = suite(
        args.logdir, args.episodes, kinds, levels, args.dynamic)
    print(table)
    print(f'Wrote {filename} and its .md and .png.')
    return
  if args.episodes < 1:
    raise tools.ConfigError(
        f'--episodes must be at least 1, got {args.episodes}.')
  perturbations = [dict(wrappers.NONE)]
  for key in ('rotation', 'noise_std', 'shift'):
    perturbations += [
        dict(wrappers.NONE, **{key: v}) for v in getattr(args, key) if v]
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
