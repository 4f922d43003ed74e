"""Plots learning curves (test return against env steps, mean and a shaded
std band over seeds) per task and preset, and the ablation figure in the
layout of the paper's Figure 5, as PNG, with the paper's numbers at 100K and
500K steps as reference markers.

  python plotting.py --root sweeps/paper --out sweeps/paper/plots
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
}
ABLATIONS = tuple(STYLE)


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
  for ax, task in zip(axes.flat, tasks):
    for preset in presets:
      if (task, preset) not in runs:
        continue
      label, color = STYLE.get(preset, (preset, None))
      steps, mean, std = band(runs[(task, preset)])
      line, = ax.plot(steps, mean, label=label, color=color)
      ax.fill_between(steps, mean - std, mean + std, alpha=0.2,
                      color=line.get_color())
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
  stream = io.BytesIO()
  fig.savefig(stream, dpi=100, format='png')
  plt.close(fig)
  import tools  # Here, not at the top: it loads TensorFlow.
  tools.atomic_write(filename, stream.getvalue())
  return filename


def main(argv):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--root', required=True)
  parser.add_argument('--out', required=True)
  args = parser.parse_args(argv)
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
  for filename in filter(None, written):
    print(f'Wrote {filename}.')
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
