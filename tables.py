"""Prints the paper's Table 1 (test images rotated) and Table 2 (plain) from a
sweep root laid out as <root>/<task>/<preset>/<seed>/metrics.jsonl: mean ± std
over seeds at the evaluation nearest to 100K and 500K env steps (of two equally
near, the earlier), beside the paper's numbers, as Markdown and CSV. Runs
without an evaluation within --tolerance steps of a target are shown as
missing, never guessed.

  python tables.py --root sweeps/paper --out sweeps/paper/tables

From a scores file in upstream's format (the CPU-scale check), the test return
of every run at matched steps, whether each run learns by the check's bar and
whether each method does as a whole (its seeds' mean first evaluation against
their mean end):

  python tables.py --scores scores/cpu_proxy.json

and with --until, the same for runs cut at a smaller budget: only their
evaluations at or before that env step count (a 75K run judged at 37.5K):

  python tables.py --scores scores/cpu_proxy75.json --until 37500

and with --spans, each run's test return over spans of env steps, as below:

  python tables.py --scores scores/cpu_proxy.json --spans 20000 38000

From run folders or a file written by `plotting.py --diagnostics ... --save`,
each logged diagnostic (action entropy, value loss, IDM's metrics) per run over
spans of env steps, as mean (min to max):

  python tables.py --diagnostics scores/cpu_proxy75_diagnostics.json \
      --spans 20000 35000 45000 55000 65000 75000
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


# Aggregate statistics over tasks and seeds (Agarwal et al. 2021, "Deep RL at
# the edge of the statistical precipice"). rliable 1.2.0 installs but does not
# import beside pandas 3 (its arch dependency fails), so SciPy's bootstrap,
# which resamples each sample on its own: one sample per task makes it the
# same stratified bootstrap. Scores are returns / 1000, DMC's maximum.
MAX_RETURN = 1000.0


def iqm(*tasks, axis=-1):
  """Interquartile mean of all runs of all tasks: the mean of the middle 50%
  (25% cut at each end, as scipy.stats.trim_mean and rliable)."""
  from scipy import stats
  return stats.trim_mean(np.concatenate(tasks, axis=axis), 0.25, axis=axis)


def mean(*tasks, axis=-1):
  """The mean over tasks of each task's mean (rliable's), so a task with
  more seeds weighs no more than another."""
  return np.mean([np.mean(t, axis=axis) for t in tasks], axis=0)


def improvement(*tasks, axis=-1):
  """P(X > Y), ties counting half, averaged over tasks: the first half of
  `tasks` are X's runs per task, the second half Y's, in the same order."""
  assert axis == -1
  half = len(tasks) // 2
  per_task = []
  for x, y in zip(tasks[:half], tasks[half:]):
    x, y = x[..., :, None], y[..., None, :]
    per_task.append(np.mean((x > y) + 0.5 * (x == y), axis=(-2, -1)))
  return np.mean(per_task, axis=0)


def profile(taus):
  """Performance profile at thresholds `taus`: the fraction of runs scoring
  above each, averaged over tasks (each task weighs the same)."""
  taus = np.asarray(taus)
  def statistic(*tasks, axis=-1):
    assert axis == -1
    fractions = np.mean(
        [np.mean(x[..., :, None] > taus, axis=-2) for x in tasks], axis=0)
    return np.moveaxis(fractions, -1, 0)  # Thresholds first, as bootstrap asks.
  return statistic


def t_interval(returns):
  """The mean of `returns` (one cell's episodes, or seeds' end values) and the
  half-width of its 95% t-interval (None for a single value)."""
  from scipy import stats
  returns = np.asarray(returns, float)
  if len(returns) < 2:
    return float(returns.mean()), None
  half = stats.t.ppf(0.975, len(returns) - 1) * stats.sem(returns)
  return float(returns.mean()), float(half)


def interval(tasks, statistic, reps=2000, seed=0):
  """The statistic and its 95% stratified-bootstrap percentile interval over
  a list of per-task run arrays; no interval (None) when a task has a
  single run, which a bootstrap cannot resample."""
  tasks = [np.asarray(t, float) for t in tasks]
  value = statistic(*tasks)
  if min(len(t) for t in tasks) < 2:
    return value, None
  from scipy import stats
  result = stats.bootstrap(
      tasks, statistic, n_resamples=reps, paired=False, vectorized=True,
      method='percentile', random_state=seed)
  low, high = result.confidence_interval
  return value, (low, high)


def task_scores(runs, preset, target, tolerance, tasks=TASKS):
  """{task: normalized scores over seeds} at the target step."""
  scores = {}
  for task in tasks:
    points = [value_at(c, target, tolerance)
              for c in runs.get((task, preset), {}).values()]
    values = [p[1] / MAX_RETURN for p in points if p is not None]
    if values:
      scores[task] = np.array(values)
  return scores


def aggregates(runs, presets, target, tolerance):
  """Per preset: IQM and mean with intervals over its tasks and seeds; and
  P(IDM > Dreamer) over the tasks both have."""
  rows = {}
  for preset in presets:
    scores = task_scores(runs, preset, target, tolerance)
    if scores:
      rows[preset] = dict(
          tasks=len(scores), runs=sum(len(s) for s in scores.values()),
          iqm=interval(list(scores.values()), iqm),
          mean=interval(list(scores.values()), mean))
  idm = task_scores(runs, 'idm', target, tolerance)
  dreamer = task_scores(runs, 'dreamer', target, tolerance)
  common = [t for t in idm if t in dreamer]
  pair = None
  if common:
    pair = dict(tasks=len(common), value=interval(
        [idm[t] for t in common] + [dreamer[t] for t in common], improvement))
  return rows, pair


def _estimate(value, ci, digits=3, single='a task has 1 seed'):
  if ci is None:
    return f'{value:.{digits}f} (no CI: {single})'
  return f'{value:.{digits}f} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]'


def _t_estimate(values):
  value, half = t_interval(values)
  return f'{value:.0f} (1 seed)' if half is None else f'{value:.0f} ± {half:.0f}'


def aggregate_markdown(root, tolerance):
  """The aggregate table of each paper table and target, as Markdown."""
  lines = ['### Aggregates over tasks and seeds (Agarwal et al. 2021)\n',
           'Scores are returns / 1000. IQM: mean of the middle 50% of all '
           'runs; brackets: 95% stratified-bootstrap percentile interval '
           '(2,000 resamples, seeds resampled within each task).\n']
  for _, metric, title in TABLES.values():
    runs = load_runs(root, metric)
    presets = list(dict.fromkeys(
        [p for p in PRESETS if any(k[1] == p for k in runs)] +
        sorted({k[1] for k in runs})))
    for label, target in TARGETS.items():
      rows, pair = aggregates(runs, presets, target, tolerance)
      if not rows:
        continue
      lines.append(f'{title.split(":")[0]}, {label.upper()} env steps\n')
      lines.append('| method | tasks | runs | IQM | mean |')
      lines.append('| --- | --- | --- | --- | --- |')
      for preset, row in rows.items():
        lines.append(f'| {preset} | {row["tasks"]} | {row["runs"]} | '
                     f'{_estimate(*row["iqm"])} | {_estimate(*row["mean"])} |')
      if pair:
        lines.append(f'\nP(IDM > Dreamer) over {pair["tasks"]} tasks: '
                     f'{_estimate(*pair["value"], digits=2)}.')
      lines.append('')
  return '\n'.join(lines) + '\n'


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


# The CPU-scale check's bar for "learns": the end return (mean of the last
# LAST_EVALS test returns, since each point is one episode) at least
# LEARN_RATIO x the first evaluation and LEARN_GAIN higher.
LAST_EVALS, LEARN_RATIO, LEARN_GAIN = 3, 1.5, 100
# Upstream's runs under the shim whose TensorFlow global seed froze upstream's
# RSSM noise over time (REPRODUCING, "The shim's global seed froze ...").
FROZEN = 'upstream_dreamer_frozen_noise'


def bar(first, end):
  """The check's bar on a first return and an end return."""
  first, end = float(first), float(end)
  return dict(first=first, end=end, ratio=end / first, gain=end - first,
              learns=end >= LEARN_RATIO * first and end - first >= LEARN_GAIN)


def learning_check(ys):
  """First evaluation, end return, ratio, gain and the bar's verdict."""
  return bar(ys[0], np.mean(ys[-LAST_EVALS:]))


def _p_value(p):
  # Two decimals, but two significant digits below 0.1 where they matter.
  return f'{p:.2g}' if p < 0.1 else f'{p:.2f}'


def _ends_markdown(x, y, x_ends, y_ends):
  """P(x end > y end) with its bootstrap interval, and whether the ends could
  differ by chance: the Mann-Whitney U test, whose U / (n m) is that P."""
  from scipy import stats
  value = interval([x_ends, y_ends], improvement)
  p = stats.mannwhitneyu(x_ends, y_ends).pvalue
  return (f'P({x} end > {y} end): '
          f'{_estimate(*value, digits=2, single="1 seed")}; Mann-Whitney U '
          f'test, two-sided: p = {_p_value(p)}.')


def _learners_markdown(x, y, x_learns, y_learns):
  """Could the two programs' counts of seeds that learn differ by chance?
  Fisher's exact test on the 2 x 2 table of learns / not, two-sided."""
  from scipy import stats
  table = [[sum(x_learns), len(x_learns) - sum(x_learns)],
           [sum(y_learns), len(y_learns) - sum(y_learns)]]
  p = stats.fisher_exact(table).pvalue
  return (f'Seeds that learn: {x} {table[0][0]} of {len(x_learns)}, {y} '
          f'{table[1][0]} of {len(y_learns)}; Fisher\'s exact test, '
          f'two-sided: p = {_p_value(p)}.')


def _spread_markdown(points, steps, x, y):
  """The CPU check's first bar: at each matched step, is x's mean within
  y's seeds' spread, and which of x's seeds fall under y's lowest?"""
  lines = ['', f'| env steps | {y}: min to max | {x}: mean | {x} mean is | '
           f'{x} seeds under {y} min |', '| --- ' * 5 + '|']
  for i, step in enumerate(steps):
    values = {m: {seed: p[i][1] for (method, seed), p in points.items()
                  if method == m and p[i]} for m in (x, y)}
    if not values[x] or not values[y]:
      continue
    low, high = min(values[y].values()), max(values[y].values())
    mean = np.mean(list(values[x].values()))
    where = 'below' if mean < low else 'above' if mean > high else 'within'
    under = ', '.join(f'{seed} ({v:.1f})' for seed, v in values[x].items()
                      if v < low)
    lines.append(f'| {step // 1000}K | {low:.0f} to {high:.0f} | {mean:.0f} '
                 f'| {where} | {under} |')
  return lines


def _rank(method):
  # Upstream, ours, then the presets: first place wins (PRESETS repeats ours).
  order = {m: i for i, m in enumerate(dict.fromkeys(
      ('upstream_dreamer', FROZEN, 'dreamer', 'idm') + PRESETS))}
  return order.get(method, len(order)), method


def scores_markdown(entries, every=5_000, tolerance=1_000):
  """Per task: test return of each run at every `every` env steps (the
  evaluation within `tolerance` steps, else blank), then the learning check."""
  lines = []
  key = lambda e: (*_rank(e['method']), e['seed'])
  for task in sorted({e['task'] for e in entries}):
    runs = sorted([e for e in entries if e['task'] == task], key=key)
    last = max(max(e['xs']) for e in runs)
    steps = list(range(every, last + 1, every))
    points = {(e['method'], e['seed']): [
        value_at(list(zip(e['xs'], e['ys'])), step, tolerance)
        for step in steps] for e in runs}
    lines += [f'### {task}\n',
              '| run | ' + ' | '.join(f'{s // 1000}K' for s in steps) + ' |',
              '| --- ' * (len(steps) + 1) + '|']
    for e in runs:
      cells = [f'{p[1]:.0f}' if p else ''
               for p in points[(e['method'], e['seed'])]]
      lines.append(f'| {e["method"]} {e["seed"]} | ' + ' | '.join(cells) + ' |')
    lines += ['', f'| run | evaluations | first | end (mean of last '
              f'{LAST_EVALS}) | end / first | end - first | learns |',
              '| --- ' * 7 + '|']
    for e in runs:
      c = learning_check(e['ys'])
      lines.append(
          f'| {e["method"]} {e["seed"]} | {len(e["ys"])} to '
          f'{max(e["xs"]) // 1000}K | {c["first"]:.0f} | {c["end"]:.0f} | '
          f'{c["ratio"]:.2f} | {c["gain"]:+.0f} | '
          f'{"yes" if c["learns"] else "no"} |')
    # Per method: how many seeds pass the bar, and the seeds' end values with
    # a t-interval of their mean: a bootstrap's stays inside the seeds' range,
    # far too narrow for three or four seeds. Last, the bar applied to the
    # method as a whole: its seeds' mean first evaluation against their mean
    # end.
    lines += ['', '| method | seeds that learn | end: mean ± 95% t-interval | '
              'end: min to max | mean first to mean end: learns |',
              '| --- ' * 5 + '|']
    ends, learned = {}, {}
    for method in sorted({e['method'] for e in runs}, key=_rank):
      checks = [learning_check(e['ys']) for e in runs if e['method'] == method]
      ends[method] = [c['end'] for c in checks]
      learned[method] = [c['learns'] for c in checks]
      whole = bar(np.mean([c['first'] for c in checks]), np.mean(ends[method]))
      lines.append(
          f'| {method} | {sum(learned[method])} of {len(checks)} '
          f'| {_t_estimate(ends[method])} | '
          f'{min(ends[method]):.0f} to {max(ends[method]):.0f} | '
          f'{whole["first"]:.0f} to {whole["end"]:.0f} ({whole["ratio"]:.2f} x, '
          f'{whole["gain"]:+.0f}): {"yes" if whole["learns"] else "no"} |')
    # Each program against the one it extends, seed by seed end values; the
    # runs of upstream under the shim that froze its RSSM noise against both.
    for x, y in (('dreamer', 'upstream_dreamer'), ('idm', 'dreamer'),
                 ('upstream_dreamer', FROZEN), ('dreamer', FROZEN)):
      if x in ends and y in ends:
        lines.append('\n' + _ends_markdown(x, y, ends[x], ends[y]))
        lines.append(_learners_markdown(x, y, learned[x], learned[y]))
        lines += _spread_markdown(points, steps, x, y)
    lines.append('')
  lines.append(f'Learns: end >= {LEARN_RATIO} x first and end - first >= '
               f'{LEARN_GAIN}.')
  return '\n'.join(lines) + '\n'


def cut(entries, until):
  """Each run as if it had stopped at env step `until`: its evaluations at
  or before it; runs with none are left out."""
  runs = []
  for e in entries:
    keep = [i for i, x in enumerate(e['xs']) if x <= until]
    if keep:
      runs.append(dict(e, xs=[e['xs'][i] for i in keep],
                       ys=[e['ys'][i] for i in keep]))
  return runs


def _number(value):
  digits = 2 if abs(value) < 10 else 1 if abs(value) < 100 else 0
  return f'{value:.{digits}f}'


def spans_markdown(runs, edges):
  """Per metric a run logged: its mean (min to max) in each span of env steps
  between consecutive edges, lower edge in, upper out, but the last span
  holds both. What the docs say of a diagnostic over a stretch of a run."""
  spans = list(zip(edges[:-1], edges[1:]))
  inside = lambda step, i: spans[i][0] <= step and (
      step < spans[i][1] or (i == len(spans) - 1 and step == spans[i][1]))
  lines = []
  metrics = dict.fromkeys(k for curves in runs.values() for k in curves)
  for metric in metrics:
    if not any(curves.get(metric) for curves in runs.values()):
      continue
    lines += [f'### {metric}\n', '| run | ' + ' | '.join(
        f'{lo / 1000:g}K-{hi / 1000:g}K' for lo, hi in spans) + ' |',
        '| --- ' * (len(spans) + 1) + '|']
    for name, curves in runs.items():
      cells = []
      for i in range(len(spans)):
        values = [v for step, v in curves.get(metric, []) if inside(step, i)]
        cells.append(f'{_number(np.mean(values))} ({_number(min(values))} to '
                     f'{_number(max(values))})' if values else '')
      lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
    lines.append('')
  return '\n'.join(lines)


def main(argv):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--root', help='a sweep root: the paper tables')
  parser.add_argument('--scores', help='a scores file: the CPU-scale check')
  parser.add_argument('--tolerance', type=int, default=10_000,
                      help='max distance in env steps to the target step')
  parser.add_argument('--out', help='folder for tables.md and tables.csv')
  parser.add_argument('--diagnostics', nargs='+', metavar='RUN',
                      help='run folders or files written by plotting.py '
                      '--diagnostics ... --save: diagnostics over spans')
  parser.add_argument('--until', type=int, metavar='STEP',
                      help='with --scores: judge each run on its evaluations '
                      'at or before this env step')
  parser.add_argument('--spans', nargs='+', type=int, metavar='STEP',
                      help='with --diagnostics: span edges in env steps '
                      '(default: every 10K to the last step logged); with '
                      '--scores: each run\'s test return over those spans')
  args = parser.parse_args(argv)
  if args.spans and not (args.diagnostics or args.scores):
    print('Error: --spans needs --diagnostics or --scores.', file=sys.stderr)
    return 2
  edges = args.spans
  if edges and (len(edges) < 2 or any(
      b <= a for a, b in zip(edges, edges[1:]))):
    print('Error: --spans needs two or more increasing env steps, e.g. '
          '--spans 20000 35000 75000.', file=sys.stderr)
    return 2
  if args.until is not None and not args.scores:
    print('Error: --until needs --scores.', file=sys.stderr)
    return 2
  if args.diagnostics:
    import plotting  # Here: plotting imports this module.
    try:
      runs = plotting.load_diagnostics(args.diagnostics)
    except ValueError as e:
      print(f'Error: {e}', file=sys.stderr)
      return 2
    if not edges:
      last = max(s for c in runs.values() for v in c.values() for s, _ in v)
      edges = list(range(0, last + 10_000, 10_000))
    print(spans_markdown(runs, edges))
    return 0
  if args.scores:
    if not pathlib.Path(args.scores).is_file():
      print(f'Error: no scores file at {args.scores}.', file=sys.stderr)
      return 2
    entries = json.loads(pathlib.Path(args.scores).read_text())
    if args.until is not None:
      entries = cut(entries, args.until)
      if not entries:
        print(f'Error: no run has an evaluation at or before --until '
              f'{args.until}.', file=sys.stderr)
        return 2
    if edges:
      # Every evaluation in a span counts, not only the last three: a
      # steadier measure of a stretch of a run than the bar's end.
      tasks = len({e['task'] for e in entries}) > 1
      runs = {(f'{e["task"]} ' if tasks else '') + f'{e["method"]} '
              f'{e["seed"]}': {'test/return': list(zip(e['xs'], e['ys']))}
              for e in sorted(entries, key=lambda e: (
                  e['task'], *_rank(e['method']), e['seed']))}
      print(spans_markdown(runs, edges))
    else:
      print(scores_markdown(entries))
    return 0
  if not args.root:
    print('Error: pass --root (a sweep root) or --scores (a scores file).',
          file=sys.stderr)
    return 2
  if not pathlib.Path(args.root).is_dir():
    print(f'Error: no sweep root at {args.root}; pass the --root that '
          f'sweep.py or your runs wrote to.', file=sys.stderr)
    return 2
  rows = build(args.root, args.tolerance)
  text = markdown(rows) + '\n' + aggregate_markdown(args.root, args.tolerance)
  print(text)
  if args.out:
    import tools
    out = pathlib.Path(args.out)
    tools.atomic_write(out / 'tables.md', text.encode('utf-8'))
    tools.atomic_write(out / 'tables.csv', to_csv(rows).encode('utf-8'))
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
