"""Plots learning curves (test return against env steps, mean and a shaded
std band over seeds) per task and preset, and the ablation figure in the
layout of the paper's Figure 5, as PNG, with the paper's numbers at 100K and
500K steps as reference markers.

  python plotting.py --root sweeps/paper --out sweeps/paper/plots

Scores files in upstream Dreamer's format (a JSON list of {task, method, seed,
xs, ys}): add a run's test returns (ours or upstream's: both write
metrics.jsonl), then plot each method's mean and per-seed curves:

  python plotting.py --scores scores/cpu_proxy.json --add RUN --method dreamer --seed 0
  python plotting.py --scores scores/cpu_proxy.json --out docs/cpu_proxy.png

With --root, also performance profiles (fraction of runs above each score,
with stratified-bootstrap bands) at 100K and 500K steps; tables.py prints the
matching aggregates (IQM, P(IDM > Dreamer)).

IDM's diagnostics (evaluator, weights, constraint, derived memory) and the
actor's entropy and value loss over runs (a Dreamer run, ours or upstream's,
plots the last two):

  python plotting.py --diagnostics RUN [RUN ...] --out docs/diagnostics.png

--save FILE also writes their curves to a small JSON file, which --diagnostics
reads in place of run folders once the logdirs are gone.

What the robustness suite shows the agent, per task, kind and level:

  python plotting.py --perturbations dmc_walker_walk dmc_cartpole_swingup --out docs/perturbations.png
"""

import argparse
import collections
import io
import json
import pathlib
import sys

import numpy as np

import tables

STYLE = {
    'idm': ('IDM', 'tab:red'), 'dreamer': ('Dreamer', 'tab:blue'),
    'idm_no_evaluator': ('IDM w/o EVA', 'tab:orange'),
    'idm_no_derived': ('IDM w/o DM', 'tab:green'),
    'idm_evaluator_only': ('IDM w/o CST and DM', 'tab:purple'),
    'dreamer_doubled_batch': ('Doubled-Dreamer', 'tab:gray'),
    'upstream_dreamer': ('upstream Dreamer', 'black'),
    tables.FROZEN: ('upstream Dreamer, noise frozen by the shim', 'tab:brown'),
    'dreamer_shared_noise': ("Dreamer, upstream's RSSM sampler", 'tab:cyan'),
}
ABLATIONS = tuple(STYLE)
# For methods STYLE does not know: colours none of its methods use.
SPARE_COLORS = ('tab:pink', 'tab:olive', 'gold', 'navy', 'magenta', 'teal')


def styles(methods):
  """Label and colour of each method. Methods without a STYLE entry get
  spare colours in turn, so no two lines of a figure share one (matplotlib's
  default cycle starts with Dreamer's blue)."""
  spare = iter(SPARE_COLORS * len(methods))
  return {m: STYLE[m] if m in STYLE else (m, next(spare)) for m in methods}


def band(seeds):
  """Steps, mean and std over the seeds that reached each step."""
  values = collections.defaultdict(list)
  for curve in seeds.values():
    for step, value in curve:
      values[step].append(value)
  steps = np.array(sorted(values))
  mean = np.array([np.mean(values[s]) for s in steps])
  std = np.array([np.std(values[s]) for s in steps])
  return steps, mean, std


def plot(runs, presets, paper, filename, title):
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  tasks = [t for t in tables.TASKS if any((t, p) in runs for p in presets)]
  if not tasks:
    return None
  cols = min(3, len(tasks))
  rows = (len(tasks) + cols - 1) // cols
  fig, axes = plt.subplots(
      rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
  style = styles(presets)
  for ax, task in zip(axes.flat, tasks):
    for preset in presets:
      if (task, preset) not in runs:
        continue
      label, color = style[preset]
      steps, mean, std = band(runs[(task, preset)])
      ax.plot(steps, mean, label=label, color=color)
      ax.fill_between(steps, mean - std, mean + std, alpha=0.2, color=color)
    for method, marker in (('idm', 'o'), ('dreamer', 's')):
      if paper and method in paper.get(task, {}) and method in presets:
        _, color = STYLE[method]
        for label, target in tables.TARGETS.items():
          mean, std = paper[task][method][label]
          ax.errorbar(target, mean, yerr=std, fmt=marker, color=color,
                      mfc='white', capsize=3,
                      label=f'{STYLE[method][0]} (paper)' if label == '100k'
                      else None)
    ax.set_title(task)
    ax.set_xlabel('env steps')
    ax.set_ylabel('test return')
    ax.grid(alpha=0.3)
  for ax in list(axes.flat)[len(tasks):]:
    ax.axis('off')
  axes.flat[0].legend(fontsize=8)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  return _save(fig, filename)


def _save(fig, filename):
  import matplotlib.pyplot as plt
  stream = io.BytesIO()
  fig.savefig(stream, dpi=100, format='png')
  plt.close(fig)
  import tools  # Here, not at the top: it loads TensorFlow.
  tools.atomic_write(filename, stream.getvalue())
  return filename


def run_scores(logdir, method, seed, task=None):
  """A run's test returns as one entry of upstream's scores format."""
  logdir = pathlib.Path(logdir)
  if task is None:
    config = logdir / 'config.yaml'
    if not config.exists():
      raise ValueError(f'{logdir} has no config.yaml (upstream runs have '
                       f'none); pass --task.')
    import ruamel.yaml
    task = ruamel.yaml.YAML(typ='safe').load(config.read_text())['task']
  curve = tables.load_curve(logdir / 'metrics.jsonl', 'test/return')
  if not curve:
    raise ValueError(f'{logdir}/metrics.jsonl has no test/return yet.')
  return dict(task=task, method=method, seed=int(seed),
              xs=[int(x) for x, _ in curve], ys=[y for _, y in curve])


def add_scores(filename, entry):
  """Adds the entry to a scores file, replacing its task, method and seed."""
  filename = pathlib.Path(filename)
  entries = json.loads(filename.read_text()) if filename.exists() else []
  key = lambda e: (e['task'], e['method'], e['seed'])
  entries = sorted([e for e in entries if key(e) != key(entry)] + [entry],
                   key=key)
  import tools
  text = '[\n' + ',\n'.join(json.dumps(e) for e in entries) + '\n]\n'
  tools.atomic_write(filename, text.encode('utf-8'))
  return entries


def plot_scores(entries, filename):
  """Per task: each method's mean over seeds (bold) and every seed (thin)."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  tasks = sorted({e['task'] for e in entries})
  fig, axes = plt.subplots(
      1, len(tasks), figsize=(5.5 * len(tasks), 3.8), squeeze=False)
  style = styles(sorted({e['method'] for e in entries}))
  for ax, task in zip(axes.flat, tasks):
    methods = collections.defaultdict(list)
    for entry in entries:
      if entry['task'] == task:
        methods[entry['method']].append(entry)
    for method, runs in methods.items():
      label, color = style[method]
      steps, mean, _ = band({r['seed']: list(zip(r['xs'], r['ys']))
                             for r in runs})
      ax.plot(steps, mean, color=color, lw=2,
              label=f'{label} ({len(runs)} seed'
              f'{"s" if len(runs) > 1 else ""})')
      for run in runs:
        ax.plot(run['xs'], run['ys'], color=color, lw=0.8, alpha=0.4)
    ax.set_title(task)
    _label(ax, 'env steps', 'test return')
  fig.tight_layout()
  return _save(fig, filename)


def _label(ax, xlabel, ylabel):
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)


def plot_profiles(runs, presets, target, tolerance, filename, title=''):
  """Performance profiles (Agarwal et al. 2021): the fraction of runs whose
  score (return / 1000) at the target step exceeds tau, with its 95%
  stratified-bootstrap band, per preset."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  taus = np.linspace(0, 1, 101)
  fig, ax = plt.subplots(figsize=(5.0, 3.6))
  drawn = False
  style = styles(presets)
  for preset in presets:
    scores = tables.task_scores(runs, preset, target, tolerance)
    if not scores:
      continue
    value, ci = tables.interval(list(scores.values()), tables.profile(taus))
    label, color = style[preset]
    ax.plot(taus, value, color=color, label=f'{label} ({len(scores)} tasks)')
    if ci is not None:
      ax.fill_between(taus, ci[0], ci[1], alpha=0.2, color=color)
    drawn = True
  if not drawn:
    plt.close(fig)
    return None
  ax.set_title(f'{title + ", " if title else ""}'
               f'{target // 1000}K env steps', fontsize=10)
  _label(ax, 'normalized score tau (return / 1000)',
         'fraction of runs with score > tau')
  fig.tight_layout()
  return _save(fig, filename)


def plot_robustness(report, filename):
  """A robustness suite: mean return and 95% CI against level, per kind;
  level 0 is the unperturbed cell."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  none = [c for c in report['cells'] if c['kind'] == 'none']
  fig, ax = plt.subplots(figsize=(5.5, 3.8))
  kinds = dict.fromkeys(c['kind'] for c in report['cells'] if c['kind'] != 'none')
  for index, kind in enumerate(kinds):
    cells = none + sorted((c for c in report['cells'] if c['kind'] == kind),
                          key=lambda c: c['level'])
    stats = [tables.t_interval(c['returns']) for c in cells]
    ax.errorbar([c['level'] for c in cells], [m for m, _ in stats],
                yerr=[h or 0 for _, h in stats], marker='o', capsize=3,
                color=f'C{index}', label=kind)
  mode = 'dynamic' if report['dynamic'] else 'static'
  ax.set_title(f'{report["task"]} at step {report["step"]} ({mode})',
               fontsize=10)
  _label(ax, 'perturbation level (0 = none)',
         f'test return ({report["episodes"]} episodes, 95% CI)')
  fig.tight_layout()
  return _save(fig, filename)


def plot_perturbations(tasks, filename, levels=(0.1, 0.2, 0.3)):
  """The first test frame of each task, as the agent sees it (64 x 64),
  under every robustness-suite kind at each level."""
  import functools
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  import wrappers
  columns = [('none', 0, {})] + [
      (kind, level, wrappers.SUITE[kind](level))
      for kind in wrappers.SUITE for level in levels]
  fig, axes = plt.subplots(len(tasks), len(columns), squeeze=False,
                           figsize=(1.1 * len(columns), 1.25 * len(tasks)))
  for row, task in enumerate(tasks):
    for col, (kind, level, settings) in enumerate(columns):
      # Rendering lives in a worker: this process may have TensorFlow.
      env = wrappers.Async(functools.partial(
          wrappers.make_env, task, 2, 1000, perturb=settings, seed=0),
          'none')
      try:
        axes[row, col].imshow(env.reset()['image'])
      finally:
        env.close()
      axes[row, col].set_xticks([])
      axes[row, col].set_yticks([])
      if row == 0:
        axes[row, col].set_title(f'{kind} {level:g}' if level else kind,
                                 fontsize=7)
    axes[row, 0].set_ylabel(task.replace('dmc_', ''), fontsize=7)
  fig.tight_layout(pad=0.3)
  return _save(fig, filename)


# (title, metric keys, log scale) of each diagnostics panel.
DIAGNOSTICS = (
    ('evaluator P(real)', ('evaluator_real_prob', 'evaluator_fake_prob'),
     False),
    ('weight ESS / count', ('weight_ess',), False),
    ('relative weight (max, min)', ('weight_max_rel', 'weight_min_rel'), True),
    ('weight share of derived', ('weight_derived_share',), False),
    ('constraint KL (nats)', ('constraint_kl',), False),
    ('states over the margin', ('constraint_over_margin',), False),
    ('imagined return', ('imag_return_original', 'imag_return_derived'),
     False),
    # Not IDM's: the actor's collapse onto one action that decides whether a
    # CPU-scale run learns, and the critic's fit (README, "Does it learn?").
    # Dreamer runs, ours or upstream's, log these two.
    ('action entropy', ('action_ent',), False),
    ('value loss', ('value_loss',), False),
)


def load_diagnostics(paths):
  """{run name: {metric: [(step, value), ...]}} of IDM's metrics and the test
  return, from run folders (metrics.jsonl) or from a file written by --save,
  which keeps the curves once the logdirs are gone."""
  keys = [k for _, panel, _ in DIAGNOSTICS for k in panel] + ['test/return']
  runs = {}
  for path in map(pathlib.Path, paths):
    if path.is_file():
      for name, curves in json.loads(path.read_text()).items():
        runs[name] = {k: [tuple(p) for p in v] for k, v in curves.items()}
      continue
    if not (path / 'metrics.jsonl').exists():
      raise ValueError(f'{path} is neither a run folder with metrics.jsonl '
                       f'nor a file written by --diagnostics ... --save.')
    runs['/'.join(path.parts[-2:])] = {
        k: tables.load_curve(path / 'metrics.jsonl', k) for k in keys}
  if not diagnostics_panels(runs):
    raise ValueError(f'no run logged any of {", ".join(keys[:-1])}: pass IDM '
                     'or Dreamer run folders, or a file written by --save.')
  return runs


def diagnostics_panels(runs):
  """The panels of DIAGNOSTICS that at least one run logged: a Dreamer run
  has no IDM metrics, so its plot keeps the entropy and value loss only."""
  return [panel for panel in DIAGNOSTICS if any(
      curves.get(key) for curves in runs.values() for key in panel[1])]


def plot_diagnostics(runs, filename):
  """IDM's metrics against env steps, one line per run and metric."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  panels = diagnostics_panels(runs)
  cols = min(4, len(panels))
  rows = (len(panels) + cols - 1) // cols
  fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows),
                           squeeze=False)
  styles = ('-', '--', ':')
  for ax, (title, keys, log) in zip(axes.flat, panels):
    for index, (name, curves) in enumerate(runs.items()):
      for key, style in zip(keys, styles):
        if curves.get(key):
          steps, values = zip(*curves[key])
          ax.plot(steps, values, style, color=f'C{index}', lw=1,
                  label=f'{name} {key}' if len(keys) > 1 else name)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel('env steps')
    if log:
      ax.set_yscale('log')
    ax.grid(alpha=0.3)
    if ax.lines:
      ax.legend(fontsize=6)
  for ax in list(axes.flat)[len(panels):]:
    ax.axis('off')
  fig.tight_layout()
  return _save(fig, filename)


def main(argv):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--root', help='a sweep root: paper-layout figures')
  parser.add_argument('--scores', help='a scores file (upstream format)')
  parser.add_argument('--add', help='with --scores: a run to add to it')
  parser.add_argument('--method', help='with --add: its method name')
  parser.add_argument('--seed', type=int, help='with --add: its seed')
  parser.add_argument('--task', help='with --add: task, if no config.yaml')
  parser.add_argument('--diagnostics', nargs='+', metavar='RUN',
                      help='IDM or Dreamer run folders, or files written '
                      'by --save')
  parser.add_argument('--save', help='with --diagnostics: also write their '
                      'curves to this JSON file')
  parser.add_argument('--perturbations', nargs='+', metavar='TASK',
                      help='tasks to show under every perturbation')
  parser.add_argument('--out', help='output folder (--root) or PNG file')
  parser.add_argument('--tolerance', type=int, default=10_000,
                      help='with --root: as tables.py --tolerance')
  args = parser.parse_args(argv)
  if args.add:
    if not args.scores or args.method is None or args.seed is None:
      print('Error: --add needs --scores, --method and --seed.',
            file=sys.stderr)
      return 2
    try:
      entry = run_scores(args.add, args.method, args.seed, args.task)
    except (ValueError, FileNotFoundError) as e:
      print(f'Error: {e}', file=sys.stderr)
      return 2
    add_scores(args.scores, entry)
    print(f'Added {entry["method"]} seed {entry["seed"]} on {entry["task"]} '
          f'({len(entry["xs"])} evaluations, last {entry["ys"][-1]:.1f} at '
          f'{entry["xs"][-1]}) to {args.scores}.')
    return 0
  if not args.out and not (args.diagnostics and args.save):
    print('Error: --out is needed to plot.', file=sys.stderr)
    return 2
  if args.scores:
    entries = json.loads(pathlib.Path(args.scores).read_text())
    print(f'Wrote {plot_scores(entries, args.out)}.')
    return 0
  if args.diagnostics:
    try:
      runs = load_diagnostics(args.diagnostics)
    except ValueError as e:
      print(f'Error: {e}', file=sys.stderr)
      return 2
    if args.save:
      import tools
      tools.atomic_write(args.save, json.dumps(runs).encode('utf-8'))
      print(f'Wrote {args.save} ({len(runs)} runs).')
    if args.out:
      print(f'Wrote {plot_diagnostics(runs, args.out)}.')
    return 0
  if args.perturbations:
    print(f'Wrote {plot_perturbations(args.perturbations, args.out)}.')
    return 0
  if not args.root:
    print('Error: pass --root, --scores, --diagnostics or --perturbations.',
          file=sys.stderr)
    return 2
  if not pathlib.Path(args.root).is_dir():
    print(f'Error: no sweep root at {args.root}.', file=sys.stderr)
    return 2
  paper = json.loads(tables.PAPER.read_text())
  out = pathlib.Path(args.out)
  written = []
  for table, (paper_key, metric, _) in tables.TABLES.items():
    title = {'table1': 'rotated test images', 'table2': 'plain test images'}[
        table]
    runs = tables.load_runs(args.root, metric)
    written.append(plot(
        runs, ('idm', 'dreamer'), paper[paper_key],
        out / f'curves_{table}.png', title))
    written.append(plot(
        runs, ABLATIONS, paper[paper_key], out / f'ablations_{table}.png',
        'ablations, ' + title))
    for label, target in tables.TARGETS.items():
      written.append(plot_profiles(
          runs, ABLATIONS, target, args.tolerance,
          out / f'profiles_{table}_{label}.png', title))
  for filename in filter(None, written):
    print(f'Wrote {filename}.')
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
