import csv
import io
import json

import numpy as np
import pytest

import plotting
import tables


def _write(root, task, preset, seed, records, broken=False):
  folder = root / task / preset / str(seed)
  folder.mkdir(parents=True)
  lines = [json.dumps(r) for r in records]
  if broken:
    lines.append('{"step": 5')  # Cut by a crash.
  (folder / 'metrics.jsonl').write_text('\n'.join(lines) + '\n')


def _curve(points, key='test/return', other=None):
  records = []
  for step, value in points:
    record = {'step': step, key: value}
    if other:
      record[other] = value - 100
    records.append(record)
    records.append({'step': step, 'model_loss': 1.0})
  return records


@pytest.fixture
def root(tmp_path):
  both = dict(other='test_perturbed/return')
  _write(tmp_path, 'walker_walk', 'idm', 0, _curve(
      [(10_000, 1), (98_000, 500), (110_000, 900), (502_000, 800)], **both))
  _write(tmp_path, 'walker_walk', 'idm', 1, _curve(
      [(10_000, 1), (104_000, 600), (496_000, 900)], **both), broken=True)
  _write(tmp_path, 'dmc_walker_walk', 'dreamer', 0, _curve(
      [(10_000, 5), (100_000, 300)], **both))
  return tmp_path


def test_tables_take_the_nearest_evaluation_and_never_guess(root):
  rows = tables.build(root, tolerance=10_000)
  find = lambda **kw: [r for r in rows if all(r[k] == v for k, v in kw.items())]
  (idm,) = find(table='table2', step='100k', source='ours', method='idm',
                task='walker_walk')
  assert idm['mean'] == pytest.approx(550.0) and idm['seeds'] == 2
  assert idm['std'] == pytest.approx(np.std([500, 600]))
  (idm,) = find(table='table2', step='500k', source='ours', method='idm',
                task='walker_walk')
  assert idm['mean'] == pytest.approx(850.0)
  (rotated,) = find(table='table1', step='500k', source='ours', method='idm',
                    task='walker_walk')
  assert rotated['mean'] == pytest.approx(750.0)
  # Dreamer never got near 500K: missing, not its 100K value.
  (dreamer,) = find(table='table2', step='500k', source='ours',
                    method='dreamer', task='walker_walk')
  assert dreamer['mean'] is None and dreamer['seeds'] == 0
  (dreamer,) = find(table='table2', step='100k', source='ours',
                    method='dreamer', task='walker_walk')
  assert dreamer['mean'] == 300.0 and dreamer['std'] == 0.0
  (paper,) = find(table='table1', step='100k', source='paper', method='idm',
                  task='walker_walk')
  assert (paper['mean'], paper['std']) == (527.1, 166)
  assert find(table='table2', step='100k', source='ours', method='idm',
              task='hopper_stand')[0]['mean'] is None
  assert idm['eval_steps'] == '496000 502000'
  text = tables.markdown(rows)
  assert '| idm (ours) | 550.0 ± 50.0 (2) | missing |' in text
  assert 'Ours evaluated at env steps 98000, 100000, 104000.' in text
  assert '| idm (paper) | 630.0 ± 113.0 |' in text
  parsed = list(csv.DictReader(io.StringIO(tables.to_csv(rows))))
  assert len(parsed) == len(rows)


def test_iqm_and_its_stratified_interval_equal_a_hand_computation():
  # Two tasks, two runs each. Pooled: .2 .4 .6 1.0, IQM = (.4 + .6) / 2.
  tasks = [np.array([0.2, 0.6]), np.array([0.4, 1.0])]
  value, (low, high) = tables.interval(tasks, tables.iqm, reps=20000)
  assert value == pytest.approx(0.5)
  # By hand, over the 4 x 4 equally likely resamples (each task's runs drawn
  # within the task): IQM .3 (3/16), .4 (2/16), .5 (5/16), .6 (3/16),
  # .8 (3/16); the 2.5% and 97.5% points are .3 and .8. A bootstrap that
  # pooled the tasks would reach .2 ({.2, .2, .2, .4}: IQM .2).
  assert (low, high) == (pytest.approx(0.3), pytest.approx(0.8))
  # 25% cut at each end of the 6 pooled runs: .2 .3 .5 .6 of .1 ... .9.
  assert tables.iqm(np.array([0.1, 0.2, 0.3, 0.9]),
                    np.array([0.5, 0.6])) == pytest.approx(0.4)
  # The mean weighs tasks, not runs: (.375 + .55) / 2, where the 6 pooled
  # runs would give .433.
  assert tables.mean(np.array([0.1, 0.2, 0.3, 0.9]),
                     np.array([0.5, 0.6])) == pytest.approx(0.4625)
  value, ci = tables.interval([np.array([0.5]), np.array([0.2, 0.4])],
                              tables.iqm)
  assert ci is None  # One run cannot be resampled.


def test_probability_of_improvement_and_profile_by_hand():
  x = [np.array([0.5, 0.6]), np.array([0.2, 0.9])]
  y = [np.array([0.4, 0.6]), np.array([0.3, 0.1])]
  # Task 1: .5>.4, .5<.6, .6>.4, .6=.6 -> 2.5/4; task 2: 3/4.
  value, (low, high) = tables.interval(x + y, tables.improvement)
  assert value == pytest.approx((0.625 + 0.75) / 2)
  assert 0 <= low < value < high <= 1
  tasks = [np.array([0.1, 0.2, 0.3, 0.9]), np.array([0.5, 0.6])]
  value, (low, high) = tables.interval(
      tasks, tables.profile([0.0, 0.25, 0.5, 0.75]))
  np.testing.assert_allclose(value, [1.0, 0.75, 0.375, 0.125])
  assert np.all(low <= value) and np.all(value <= high)
  np.testing.assert_allclose(low[0], 1.0)  # Every resample: all above 0.


def test_aggregates_in_tables(root):
  text = tables.aggregate_markdown(root, tolerance=10_000)
  # 100K: IDM 500 and 600 on walker_walk, Dreamer 300 (one seed: no CI).
  assert '| idm | 1 | 2 | 0.550 [0.500, 0.600] |' in text
  assert '| dreamer | 1 | 1 | 0.300 (no CI: a task has 1 seed) |' in text
  assert 'P(IDM > Dreamer) over 1 tasks: 1.00 (no CI: a task has 1 seed).' in text
  # 500K: Dreamer is missing, so no comparison is printed for it.
  assert text.count('P(IDM > Dreamer)') == 2


def test_tables_command_writes_files(root, tmp_path):
  assert tables.main(['--root', str(root), '--out', str(tmp_path / 'out')]) == 0
  assert '550.0 ± 50.0 (2)' in (tmp_path / 'out' / 'tables.md').read_text()
  assert tables.main(['--root', str(tmp_path / 'nope')]) == 2


def test_plotting_writes_valid_pngs(root, tmp_path):
  import matplotlib.image
  out = tmp_path / 'plots'
  assert plotting.main(['--root', str(root), '--out', str(out)]) == 0
  names = sorted(p.name for p in out.glob('*.png'))
  assert names == ['ablations_table1.png', 'ablations_table2.png',
                   'curves_table1.png', 'curves_table2.png',
                   'profiles_table1_100k.png', 'profiles_table1_500k.png',
                   'profiles_table2_100k.png', 'profiles_table2_500k.png']
  for name in names:
    data = (out / name).read_bytes()
    assert data[:8] == b'\x89PNG\r\n\x1a\n'
    image = matplotlib.image.imread(out / name)
    assert image.ndim == 3 and image.shape[0] > 100 and image.std() > 0


def test_scores_file_gets_runs_replaced_by_key_and_plots(tmp_path):
  import matplotlib.image
  import ruamel.yaml
  run = tmp_path / 'run'
  run.mkdir()
  (run / 'metrics.jsonl').write_text('\n'.join(json.dumps(r) for r in [
      {'step': 5000, 'test/return': 136.0}, {'step': 5000, 'model_loss': 2},
      {'step': 8000, 'train/return': 300.0},
      {'step': 8000, 'test/return': 250.5}]) + '\n')
  scores = tmp_path / 'scores.json'
  # An upstream run has no config.yaml: the task must be given.
  assert plotting.main(['--scores', str(scores), '--add', str(run),
                        '--method', 'upstream_dreamer', '--seed', '0']) == 2
  assert not scores.exists()
  assert plotting.main(['--scores', str(scores), '--add', str(run), '--method',
                        'upstream_dreamer', '--seed', '0', '--task',
                        'dmc_cartpole_balance']) == 0
  ruamel.yaml.YAML().dump({'task': 'dmc_cartpole_balance'},
                          run / 'config.yaml')
  for seed in (1, 0):  # Seed 0 again replaces its entry.
    plotting.main(['--scores', str(scores), '--add', str(run), '--method',
                   'dreamer', '--seed', str(seed)])
  entries = json.loads(scores.read_text())
  assert [(e['method'], e['seed']) for e in entries] == [
      ('dreamer', 0), ('dreamer', 1), ('upstream_dreamer', 0)]
  assert entries[0] == dict(task='dmc_cartpole_balance', method='dreamer',
                            seed=0, xs=[5000, 8000], ys=[136.0, 250.5])
  out = tmp_path / 'curves.png'
  assert plotting.main(['--scores', str(scores), '--out', str(out)]) == 0
  assert matplotlib.image.imread(out).std() > 0


def test_methods_without_a_style_get_colours_no_other_line_uses():
  # matplotlib's default cycle would draw the first unknown method in
  # Dreamer's blue, indistinguishable from it.
  style = plotting.styles(['dreamer', 'mine', 'theirs', 'upstream_dreamer'])
  assert style['dreamer'] == plotting.STYLE['dreamer']
  assert style['mine'][0] == 'mine'
  colors = [color for _, color in style.values()]
  assert len(set(colors)) == len(colors)
  styled = {color for _, color in plotting.STYLE.values()}
  assert not styled & set(plotting.SPARE_COLORS)


def test_diagnostic_spans_hold_their_lower_edge_and_the_last_both(
    tmp_path, capsys):
  runs = {'a/0': {'action_ent': [[0, 1.0], [5, 3.0], [10, 5.0], [15, 7.0],
                                 [20, 9.0]], 'value_loss': []},
          'b/0': {'action_ent': [[10, -2.0]]}}
  text = tables.spans_markdown(runs, [0, 10, 20])
  assert '| a/0 | 2.00 (1.00 to 3.00) | 7.00 (5.00 to 9.00) |' in text
  assert '| b/0 |  | -2.00 (-2.00 to -2.00) |' in text
  assert 'value_loss' not in text  # Logged by no run.
  saved = tmp_path / 'diagnostics.json'
  saved.write_text(json.dumps(runs))
  assert tables.main(['--diagnostics', str(saved), '--spans', '0', '20']) == 0
  assert '| a/0 | 5.00 (1.00 to 9.00) |' in capsys.readouterr().out
  assert tables.main(['--diagnostics', str(saved), '--spans', '20', '0']) == 2
  assert 'increasing' in capsys.readouterr().err
  assert tables.main(['--spans', '0', '20']) == 2
  assert 'needs --diagnostics or --scores' in capsys.readouterr().err
  # From a scores file: each run's test return over the spans, every
  # evaluation counted.
  scores = tmp_path / 'scores.json'
  scores.write_text(json.dumps([dict(
      task='dmc_cartpole_balance', method='idm', seed=3,
      xs=[5000, 20000, 30000, 38000], ys=[136, 300, 100, 200])]))
  assert tables.main(['--scores', str(scores), '--spans', '0', '20000',
                      '38000']) == 0
  assert ('| idm 3 | 136 (136 to 136) | 200 (100 to 300) |'
          in capsys.readouterr().out)
  assert tables.main(['--scores', str(scores), '--spans', '20000']) == 2
  assert 'increasing' in capsys.readouterr().err


def test_learning_check_uses_the_mean_of_the_last_three_evaluations(capsys):
  # End = mean(250, 240, 260) = 250: 1.84 x and +114 over 136 learns; one
  # high last point alone (mean 230, +94) does not.
  check = tables.learning_check([136, 431, 250, 240, 260])
  assert check['end'] == pytest.approx(250.0)
  assert check['ratio'] == pytest.approx(250 / 136) and check['learns']
  assert not tables.learning_check([136, 136, 140, 150, 400])['learns']
  # +100 alone is not enough from a high start: 1.4 x.
  assert not tables.learning_check([250, 350, 350, 350])['learns']
  entries = [
      dict(task='dmc_cartpole_balance', method='dreamer', seed=0,
           xs=[5000, 8000, 10000, 15000], ys=[136, 300, 250, 260]),
      dict(task='dmc_cartpole_balance', method='upstream_dreamer', seed=1,
           xs=[5000, 10000], ys=[157, 150]),
      dict(task='dmc_cartpole_balance', method='dreamer', seed=1,
           xs=[5000, 10000], ys=[136, 192]),
      dict(task='dmc_cartpole_balance', method='idm', seed=0,
           xs=[5000, 10000], ys=[100, 500]),
      dict(task='dmc_cartpole_balance', method='idm', seed=1,
           xs=[5000, 10000], ys=[136, 264])]
  text = tables.scores_markdown(entries)
  lines = text.splitlines()
  # Upstream first; 8K is not a column; a missing 15K stays blank.
  assert '| upstream_dreamer 1 | 157 | 150 |  |' in lines
  assert '| dreamer 0 | 136 | 250 | 260 |' in lines
  assert '| dreamer 0 | 4 to 15K | 136 | 270 | 1.99 | +134 | yes |' in lines
  assert '| upstream_dreamer 1 | 2 to 10K | 157 | 154 | 0.98 | -4 | no |' in lines
  assert ('| upstream_dreamer | 0 of 1 | 154 (1 seed) | 154 to 154 '
          '| 157 to 154 (0.98 x, -4): no |') in lines
  # Dreamer's seeds end at 270 and 164: one of two learns, mean 217; the
  # t-interval's half-width is t(0.975, 1) 12.706 x sem 53.0 = 673. As a
  # whole it does not: mean end 217 over mean first 136 is 1.60 x but +81.
  # IDM's seed 1 (136 to 200, 1.47 x) misses, yet as a whole it learns:
  # firsts 100 and 136 (mean 118), ends 300 and 200 (250): 2.12 x, +132.
  dreamer = ('| dreamer | 1 of 2 | 217 ± 673 | 164 to 270 '
             '| 136 to 217 (1.60 x, +81): no |')
  assert dreamer in lines
  assert ('| idm | 1 of 2 | 250 ± 635 | 200 to 300 '
          '| 118 to 250 (2.12 x, +132): yes |') in lines
  # Upstream, then ours in the order dreamer, idm.
  assert (lines.index(dreamer)
          < next(i for i, row in enumerate(lines) if row.startswith('| idm |')))
  # Mann-Whitney U: with two seeds against one, each of the three ranks of
  # the one is as likely; U = 2 is the highest, so p = 2 x 1/3.
  assert ('P(dreamer end > upstream_dreamer end): 1.00 (no CI: 1 seed); '
          'Mann-Whitney U test, two-sided: p = 0.67.') in text
  # IDM ends 300 and 200 against 270 and 164: 3 of 4 pairs; of the 6 rank
  # orders of two against two, U = 3 or 4 in 2: p = 2 x 2/6.
  assert 'P(idm end > dreamer end): 0.75 [' in text
  assert 'Mann-Whitney U test, two-sided: p = 0.67.' in text.split(
      'P(idm end > dreamer end)')[1]
  # Four ends all above four: 1 of the C(8, 4) = 70 rank orders is as
  # extreme each way, p = 2/70 = 0.029, two digits that matter.
  entries = [dict(task='dmc_cartpole_balance', method=method, seed=seed,
                  xs=[5000], ys=[base + seed])
             for method, base in (('dreamer', 300), ('upstream_dreamer', 100))
             for seed in range(4)]
  assert ('Mann-Whitney U test, two-sided: p = 0.029.'
          in tables.scores_markdown(entries))
  # The frozen-noise upstream runs are a method of their own, listed after
  # upstream's and compared with it (two ends against four) and with ours.
  frozen = [dict(task='dmc_cartpole_balance', method=tables.FROZEN, seed=s,
                 xs=[5000], ys=[50 + s]) for s in range(2)]
  text = tables.scores_markdown(entries + frozen)
  assert ('P(upstream_dreamer end > upstream_dreamer_frozen_noise end): 1.00'
          in text)
  assert 'P(dreamer end > upstream_dreamer_frozen_noise end): 1.00' in text
  rows = text.splitlines()
  row = lambda start: next(i for i, r in enumerate(rows) if r.startswith(start))
  assert (row('| upstream_dreamer | 0 of 4 | 102 ± 2 | 100 to 103 |')
          < row('| upstream_dreamer_frozen_noise | 0 of 2 | 50 ± 6 '
                '| 50 to 51 |')
          < row('| dreamer | 0 of 4 | 302 ± 2 | 300 to 303 |'))
  # Each program's mean against the seeds' spread of the one it extends: at
  # 5K dreamer's 136 and 136 are both under upstream's only seed, 157; at 10K
  # their mean 221 is above its 150; 15K, where upstream has no point, is left
  # out. IDM's mean 118 at 5K is under dreamer's 136, with seed 0's 100.
  assert '| 5K | 157 to 157 | 136 | below | 0 (136.0), 1 (136.0) |' in lines
  assert '| 10K | 150 to 150 | 221 | above |  |' in lines
  assert '| 5K | 136 to 136 | 118 | below | 0 (100.0) |' in lines
  assert '| 10K | 192 to 250 | 382 | above |  |' in lines
  assert not any(row.startswith('| 15K |') for row in lines)
  # One of two against none of one, and two of two against one of two: any
  # split of so few seeds is as likely as the one seen.
  assert ('Seeds that learn: dreamer 1 of 2, upstream_dreamer 0 of 1; '
          "Fisher's exact test, two-sided: p = 1.00.") in lines
  # Five of six against two of six: 7 of 12 seeds learn; of the 924 ways to
  # pick upstream's six, C(7, k) C(5, 6 - k) give k learners (7, 105, 350,
  # 350, 105, 7 for k = 1..6), and the splits as unlikely as k = 2 sum to
  # 224: p = 0.24.
  learns = [136, 300, 260, 250]
  fails = [136, 150, 150, 150]
  entries = [dict(task='dmc_cartpole_balance', method=method, seed=seed,
                  xs=[5000, 10000, 15000, 20000], ys=ys)
             for method, k in (('dreamer', 5), ('upstream_dreamer', 2))
             for seed, ys in enumerate([learns] * k + [fails] * (6 - k))]
  assert ('Seeds that learn: dreamer 5 of 6, upstream_dreamer 2 of 6; '
          "Fisher's exact test, two-sided: p = 0.24.") in (
              tables.scores_markdown(entries).splitlines())
  assert tables.main([]) == 2
  assert 'pass --root' in capsys.readouterr().err


def test_until_judges_runs_on_their_evaluations_up_to_a_budget(
    tmp_path, capsys):
  # A 75K run cut at 37.5K: 136 first, then 300, 260, 250 to 35K end 270
  # (learns); its later 100s would make it fail. A run that starts after
  # the cut is left out.
  entries = [
      dict(task='dmc_cartpole_balance', method='idm', seed=0,
           xs=[5000, 20000, 30000, 35000, 40000, 75000],
           ys=[136, 300, 260, 250, 100, 100]),
      dict(task='dmc_cartpole_balance', method='idm', seed=1,
           xs=[40000], ys=[500])]
  runs = tables.cut(entries, 37500)
  assert len(runs) == 1 and runs[0]['xs'][-1] == 35000
  assert runs[0]['ys'] == [136, 300, 260, 250] and entries[0]['ys'][-1] == 100
  scores = tmp_path / 'scores.json'
  scores.write_text(json.dumps(entries))
  assert tables.main(['--scores', str(scores), '--until', '37500']) == 0
  lines = capsys.readouterr().out.splitlines()
  assert '| idm 0 | 4 to 35K | 136 | 270 | 1.99 | +134 | yes |' in lines
  assert not any(row.startswith('| idm 1 |') for row in lines)
  assert tables.main(['--scores', str(scores)]) == 0
  assert '| idm 0 | 6 to 75K | 136 | 150 | 1.10 | +14 | no |' in (
      capsys.readouterr().out.splitlines())
  assert tables.main(['--scores', str(scores), '--until', '4000']) == 2
  assert 'no run has an evaluation at or before --until 4000' in (
      capsys.readouterr().err)
  assert tables.main(['--until', '37500']) == 2
  assert '--until needs --scores' in capsys.readouterr().err


def test_diagnostics_plot_reads_the_idm_metrics(tmp_path):
  import matplotlib.image
  run = tmp_path / 'idm' / '0'
  run.mkdir(parents=True)
  records = [dict(step=s, evaluator_real_prob=0.6, evaluator_fake_prob=0.4,
                  weight_ess=0.9, weight_max_rel=3.0, weight_min_rel=0.2,
                  weight_derived_share=0.45, constraint_kl=10.0,
                  constraint_over_margin=0.1, imag_return_original=5.0,
                  imag_return_derived=4.0, action_ent=-2.0, value_loss=3.0)
             for s in (1000, 2000)]
  (run / 'metrics.jsonl').write_text(
      '\n'.join(json.dumps(r) for r in records) + '\n')
  out = tmp_path / 'diagnostics.png'
  saved = tmp_path / 'diagnostics.json'
  assert plotting.main(['--diagnostics', str(run), '--out', str(out),
                        '--save', str(saved)]) == 0
  assert matplotlib.image.imread(out).std() > 0
  # The saved curves stand in for the run folder and plot the same.
  runs = plotting.load_diagnostics([saved])
  assert runs['idm/0']['weight_ess'] == [(1000, 0.9), (2000, 0.9)]
  assert runs['idm/0']['test/return'] == []
  again = tmp_path / 'again.png'
  assert plotting.main(['--diagnostics', str(saved), '--out', str(again)]) == 0
  assert (matplotlib.image.imread(again) == matplotlib.image.imread(out)).all()
  assert plotting.main(['--diagnostics', str(tmp_path / 'nothing'),
                        '--out', str(out)]) == 2
  keys = {k for _, panel, _ in plotting.DIAGNOSTICS for k in panel}
  assert keys == set(records[0]) - {'step'}
  assert len(plotting.diagnostics_panels(runs)) == len(plotting.DIAGNOSTICS)


def test_diagnostics_plot_keeps_a_dreamer_runs_panels(tmp_path, capsys):
  import matplotlib.image
  # A Dreamer run (ours or upstream's) logs the entropy and value loss only.
  run = tmp_path / 'dreamer' / '0'
  run.mkdir(parents=True)
  (run / 'metrics.jsonl').write_text(''.join(
      json.dumps(dict(step=s, action_ent=-s / 1000, value_loss=2.0,
                      model_loss=5.0)) + '\n' for s in (1000, 2000)))
  runs = plotting.load_diagnostics([run])
  assert [title for title, _, _ in plotting.diagnostics_panels(runs)] == [
      'action entropy', 'value loss']
  assert runs['dreamer/0']['action_ent'] == [(1000, -1.0), (2000, -2.0)]
  out = tmp_path / 'dreamer.png'
  assert plotting.main(['--diagnostics', str(run), '--out', str(out)]) == 0
  # Two panels side by side: half the width of the four-column IDM figure.
  assert matplotlib.image.imread(out).shape[:2] == (300, 840)
  # A run that logged none of the panels' metrics is an error, not a blank.
  (run / 'metrics.jsonl').write_text(json.dumps(dict(step=1000)) + '\n')
  assert plotting.main(['--diagnostics', str(run), '--out', str(out)]) == 2
  assert 'no run logged any of evaluator_real_prob' in capsys.readouterr().err


def test_a_tie_goes_to_the_earlier_evaluation():
  # Upstream's schedule evaluates at 95K and 105K, none at 100K.
  curve = [(85_000, 1.0), (95_000, 2.0), (105_000, 3.0)]
  assert tables.value_at(curve, 100_000, 10_000) == (95_000, 2.0)
  assert tables.value_at(curve[::-1], 100_000, 10_000) == (95_000, 2.0)
  assert tables.value_at([(105_000, 3.0)], 100_000, 5_000) == (105_000, 3.0)
  assert tables.value_at([(111_000, 3.0)], 100_000, 10_000) is None


def test_band_averages_over_the_seeds_at_each_step():
  steps, mean, std = plotting.band({
      '0': [(0, 1.0), (10, 3.0)], '1': [(0, 3.0), (10, 5.0), (20, 7.0)]})
  np.testing.assert_array_equal(steps, [0, 10, 20])
  np.testing.assert_allclose(mean, [2.0, 4.0, 7.0])
  np.testing.assert_allclose(std, [1.0, 1.0, 0.0])


def test_bench_targets_compare_each_value_with_its_bound():
  import bench
  dreamer = dict(update_seconds=3.9, first_update_seconds=16.0,
                 peak_memory_gb=3.5, policy_step_ms=1.5,
                 env_steps_per_sec_agent=40.0)
  result = dict(update_seconds=7.0, first_update_seconds=14.0,
                peak_memory_gb=6.5, env_steps_per_sec=50.0, dreamer=dreamer)
  rows = {row['name']: row for row in bench.targets(result)}
  assert {name: row['passed'] for name, row in rows.items()} == {
      'Dreamer update (s) <= 0.6 x upstream': True,  # 3.9 <= 3.96
      'Dreamer first update (s) < 15': False,
      'Dreamer peak memory (GB) < 4': True,
      'Policy step (ms) < 2': True,
      'IDM update (s) <= upstream Dreamer': False,  # 7.0 > 6.6
      'IDM first update (s) < 15': True,
      'IDM peak memory (GB) < 6': False,
      'Env steps/s with the agent >= 0.8 x random': True}  # 40 >= 40
  assert rows['Dreamer update (s) <= 0.6 x upstream']['bound'] == 3.96
  # Dreamer alone: only its own rows, read from the top level.
  alone = bench.targets(dict(dreamer, env_steps_per_sec=60.0))
  assert [row['passed'] for row in alone] == [True, False, True, True, False]


def test_bench_replay_links_episodes_and_measures_both_replays(tmp_path):
  import bench
  import tools
  directory = bench.write_replay(tmp_path, 3, 2, length=60)
  files = sorted(directory.glob('*.npz'))
  assert len(files) == 6 and tools.count_episodes(directory) == (6, 354)
  assert len({f.stat().st_ino for f in files}) == 3  # Links, not copies.
  ours = bench.measure_replay(directory, 2, False)
  assert ours['episodes'] == 6 and 0 < ours['batch_seconds'] < 10
  upstream = bench.measure_replay(directory, 2, True)
  assert upstream['episodes'] == 6 and upstream['rss_gb'] > 0


def test_bench_builds_the_agent_for_the_tasks_action_size(tmp_path):
  # It once assumed walker's 6 actions and failed on cartpole's one.
  import bench
  import dreamer_idm
  config = dreamer_idm.parse_args(
      ['--configs', 'defaults', 'dmc', 'dreamer', 'debug', '--task',
       'dmc_cartpole_balance', '--time_limit', '40', '--logdir',
       str(tmp_path)])
  result = bench.measure_agent(config, 1, tmp_path / 'episodes', 10)
  (episode, *_) = sorted((tmp_path / 'episodes').glob('*.npz'))
  assert np.load(episode)['action'].shape == (21, 1)
  assert result['update_seconds'] > 0 and result['env_steps_per_sec_agent'] > 0


def test_perturbation_figure_shows_every_kind(tmp_path):
  import matplotlib.image
  filename = plotting.plot_perturbations(
      ['dmc_cartpole_balance'], tmp_path / 'frames.png', levels=(0.3,))
  image = matplotlib.image.imread(filename)
  # One row of none + 5 kinds, each panel a real frame (not blank).
  assert image.shape[1] > 5 * image.shape[0] and image.std() > 0.1
