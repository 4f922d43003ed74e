"""Prints the paper's Table 1 (test images rotated) and Table 2 (plain) from a
sweep root laid out as <root>/<task>/<preset>/<seed>/metrics.jsonl: mean ± std
over seeds at the evaluation nearest to 100K and 500K env steps (of two equally
near, the earlier), beside the paper's numbers, as Markdown and CSV. Runs
without an evaluation within --tolerance steps of a target are shown as
missing, never guessed.

  python tables.py --root sweeps/paper --out sweeps/paper/tables
"""

import argparse
import csv
import io
import json
import pathlib
import sys

import numpy as np

PAPER = pathlib.Path(__file__).parent / 'scores' / 'paper_tables.json'
TASKS = (
    'walker_walk', 'walker_run', 'hopper_stand', 'cartpole_swingup',
    'cheetah_run', 'finger_spin')
PRESETS = (
    'idm', 'dreamer', 'idm_no_evaluator', 'idm_no_derived',
    'idm_evaluator_only', 'dreamer_doubled_batch')
TARGETS = {'100k': 100_000, '500k': 500_000}
# Table 1 is scored on rotated test images, Table 2 on plain ones.
TABLES = {
    'table1': ('table1_with_image_uncertainty', 'test_perturbed/return',
               'Table 1: with image uncertainty (test images rotated)'),
    'table2': ('table2_without_uncertainty', 'test/return',
               'Table 2: without uncertainty'),
}


def load_curve(filename, key):
  """Returns sorted (step, value) pairs of one metric; skips broken lines."""
  points = {}
  for line in pathlib.Path(filename).read_text().splitlines():
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      continue  # A line cut by a crash.
    if key in record:
      points[int(record['step'])] = float(record[key])
  return sorted(points.items())


def load_runs(root, key):
  """{(task, preset): {seed: [(step, value), ...]}} for every run found."""
  runs = {}
  for filename in sorted(pathlib.Path(root).glob('*/*/*/metrics.jsonl')):
    seed_dir = filename.parent
    task, preset = seed_dir.parent.parent.name, seed_dir.parent.name
    task = task[4:] if task.startswith('dmc_') else task
    curve = load_curve(filename, key)
    if curve:
      runs.setdefault((task, preset), {})[seed_dir.name] = curve
  return runs


def value_at(curve, target, tolerance):
  """(step, value) of the evaluation nearest to the target step; of two
  equally near, the earlier, which has not used more env steps than the
  target (upstream evaluates at 5K + 10K k: the 100K score is the 95K one)."""
  step, value = min(curve, key=lambda p: (abs(p[0] - target), p[0]))
  if abs(step - target) > tolerance:
    return None
  return step, value


def score(runs, task, preset, target, tolerance):
  """Mean, std (over seeds, ddof 0), seed count and the evaluation steps
  used, or None if missing."""
  points = [value_at(c, target, tolerance)
            for c in runs.get((task, preset), {}).values()]
  points = [p for p in points if p is not None]
  if not points:
    return None
  values = [v for _, v in points]
  steps = ' '.join(str(s) for s in sorted({s for s, _ in points}))
  return float(np.mean(values)), float(np.std(values)), len(values), steps


def build(root, tolerance, paper=None):
  paper = paper or json.loads(PAPER.read_text())
  rows = []
  for table, (paper_key, metric, _) in TABLES.items():
    runs = load_runs(root, metric)
    presets = [p for p in PRESETS if any(k[1] == p for k in runs)]
    presets += sorted({k[1] for k in runs} - set(presets))
    for label, target in TARGETS.items():
      for preset in presets or ['idm', 'dreamer']:
        for task in TASKS:
          result = score(runs, task, preset, target, tolerance)
          rows.append(dict(
              table=table, step=label, source='ours', method=preset,
              task=task, mean=result and result[0], std=result and result[1],
              seeds=result[2] if result else 0,
              eval_steps=result[3] if result else ''))
      for method in ('idm', 'dreamer', 'drq'):
        for task in TASKS:
          mean, std = paper[paper_key][task][method][label]
          rows.append(dict(
              table=table, step=label, source='paper', method=method,
              task=task, mean=mean, std=std, seeds=5, eval_steps=''))
  return rows


def markdown(rows):
  lines = []
  for table, (_, _, title) in TABLES.items():
    lines.append(f'### {title}\n')
    for label in TARGETS:
      lines.append(f'{label.upper()} env steps\n')
      lines.append('| method | ' + ' | '.join(TASKS) + ' |')
      lines.append('| --- ' * (len(TASKS) + 1) + '|')
      selected = [r for r in rows if r['table'] == table and r['step'] == label]
      methods = []
      for r in selected:
        if (r['source'], r['method']) not in methods:
          methods.append((r['source'], r['method']))
      for source, method in methods:
        cells = []
        for task in TASKS:
          (r,) = [x for x in selected if (x['source'], x['method'], x['task'])
                  == (source, method, task)]
          if r['mean'] is None:
            cells.append('missing')
          else:
            seeds = f' ({r["seeds"]})' if source == 'ours' else ''
            cells.append(f'{r["mean"]:.1f} ± {r["std"]:.1f}{seeds}')
        name = f'{method} (ours)' if source == 'ours' else f'{method} (paper)'
        lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
      used = sorted({s for r in selected for s in r['eval_steps'].split()},
                    key=int)
      if used:
        lines.append(f'\nOurs evaluated at env steps {", ".join(used)}.')
      lines.append('')
  lines.append('Ours: mean ± std over seeds (seed count in parentheses) at the '
               'evaluation nearest to the step (of two equally near, the '
               'earlier); paper: its reported mean ± spread over 5 seeds.')
  return '\n'.join(lines) + '\n'


def to_csv(rows):
  stream = io.StringIO()
  writer = csv.DictWriter(stream, list(rows[0].keys()), lineterminator='\n')
  writer.writeheader()
  writer.writerows(rows)
  return stream.getvalue()


def main(argv):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--root', required=True)
  parser.add_argument('--tolerance', type=int, default=10_000,
                      help='max distance in env steps to the target step')
  parser.add_argument('--out', help='folder for tables.md and tables.csv')
  args = parser.parse_args(argv)
  if not pathlib.Path(args.root).is_dir():
    print(f'Error: no sweep root at {args.root}; pass the --root that '
          f'sweep.py or your runs wrote to.', file=sys.stderr)
    return 2
  rows = build(args.root, args.tolerance)
  text = markdown(rows)
  print(text)
  if args.out:
    import tools
    out = pathlib.Path(args.out)
    tools.atomic_write(out / 'tables.md', text.encode('utf-8'))
    tools.atomic_write(out / 'tables.csv', to_csv(rows).encode('utf-8'))
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
