import json
import os
import pathlib
import re
import subprocess
import sys
import time

import numpy as np
import pytest
import scipy.stats
import tensorflow as tf

import dreamer_idm
import tools

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Upstream danijar/dreamer define_config(), key by key.
UPSTREAM = dict(
    seed=0, steps=5e6, eval_every=1e4, log_every=1e3, log_scalars=True,
    log_images=True, gpu_growth=True, task='dmc_walker_walk', envs=1,
    parallel='none', action_repeat=2, time_limit=1000, prefill=5000,
    eval_noise=0.0, clip_rewards='none', deter_size=200, stoch_size=30,
    num_units=400, dense_act='elu', cnn_act='relu', cnn_depth=32, pcont=False,
    free_nats=3.0, kl_scale=1.0, pcont_scale=10.0, weight_decay=0.0,
    weight_decay_pattern=r'.*', batch_size=50, batch_length=50,
    train_every=1000, train_steps=100, pretrain=100, model_lr=6e-4,
    value_lr=8e-5, actor_lr=8e-5, grad_clip=100.0, dataset_balance=False,
    discount=0.99, disclam=0.95, horizon=15, action_dist='tanh_normal',
    action_init_std=5.0, expl='additive_gaussian', expl_amount=0.3,
    expl_decay=0.0, expl_min=0.0)


def test_dreamer_preset_equals_upstream_defaults():
  for names in (['defaults'], ['defaults', 'dmc', 'dreamer']):
    config = dreamer_idm.parse_args(['--configs', *names])
    for key, value in UPSTREAM.items():
      assert config[key] == value, key
    # Documented deviations: logdir ('.' upstream) and precision (16).
    assert set(config) - set(UPSTREAM) >= {'logdir', 'precision'}
    assert config.precision == 'auto'


def test_parse_args_presets_then_overrides():
  config = dreamer_idm.parse_args(
      ['--configs', 'defaults', 'dmc', 'debug', '--batch_size', '3',
       '--precision', '32'])
  assert config.batch_size == 3 and config.deter_size == 16
  assert config.precision == '32'
  with pytest.raises(tools.ConfigError, match="Unknown preset 'dbg'"):
    dreamer_idm.parse_args(['--configs', 'defaults', 'dbg'])
  with pytest.raises(tools.ConfigError, match='Unknown config key --batchsize'):
    dreamer_idm.parse_args(['--batchsize', '3'])
  with pytest.raises(tools.ConfigError, match='--horizon expects an integer'):
    dreamer_idm.parse_args(['--horizon', 'long'])


def test_presets_always_apply_over_the_defaults():
  short = dreamer_idm.parse_args(['--configs', 'dmc', 'idm', '--steps', '7'])
  full = dreamer_idm.parse_args(
      ['--configs', 'defaults', 'dmc', 'idm', '--steps', '7'])
  assert short == full and short.steps == 7 and short.constraint
  assert short.batch_size == 50 and short.derived_copies == 1
  with pytest.raises(tools.ConfigError, match="'defaults' must come first"):
    dreamer_idm.parse_args(['--configs', 'idm', 'defaults'])


@pytest.mark.parametrize('overrides, message', [
    (['--horizon', '1'], '--horizon must be at least 2'),
    (['--eval_rotation', '-5'], '--eval_rotation must be 0'),
    (['--eval_color', '1.5'], r'--eval_color must be a level in \[0, 1\]'),
    (['--eval_camera', '-0.1'], r'--eval_camera must be a level in \[0, 1\]'),
    (['--expl', 'epsilon_greedy'], '--expl must be one of'),
    (['--jit', 'yes'], '--jit must be one of auto, on, off'),
    (['--action_repeat', '0'], '--action_repeat must be at least 1'),
    (['--train_every', '0'], '--train_every must be at least 1'),
    (['--eval_every', '0'], '--eval_every must be at least 1'),
    (['--derived_copies', '-1'], '--derived_copies must be 0 or more'),
])
def test_check_config_names_the_key_and_the_fix(overrides, message):
  config = dreamer_idm.parse_args(overrides)
  with pytest.raises(tools.ConfigError, match=message):
    dreamer_idm.check_config(config)


def _main(tmp_path, *args):
  config = dreamer_idm.parse_args(
      ['--configs', 'defaults', 'dmc', 'debug', '--logdir', str(tmp_path),
       *args])
  try:
    dreamer_idm.main(config)
  finally:
    tf.keras.mixed_precision.set_global_policy('float32')


def test_dry_run_writes_config_and_checks_task(tmp_path, capsys):
  _main(tmp_path / 'run', '--steps', '0')
  written = tools.load_presets(tmp_path / 'run' / 'config.yaml')
  assert written['steps'] == 0 and written['deter_size'] == 16
  assert not (tmp_path / 'run' / 'episodes').exists()
  assert 'Dry run' in capsys.readouterr().out
  with pytest.raises(Exception, match='Unknown task dmc_walker_fly'):
    _main(tmp_path / 'bad', '--steps', '0', '--task', 'dmc_walker_fly')
  with pytest.raises(tools.ConfigError, match='--precision must be'):
    _main(tmp_path / 'bad', '--steps', '0', '--precision', '8')


def test_unwritable_logdir(tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('')
  with pytest.raises(tools.ConfigError, match='Cannot write to logdir'):
    _main(blocker / 'logdir', '--steps', '0')


def test_incompatible_checkpoint_loses_nothing(tmp_path):
  logdir = tmp_path / 'run'
  logdir.mkdir()
  old = tools.AttrDict(dreamer_idm.parse_args(['--configs', 'defaults']))
  tools.save_checkpoint(logdir / 'variables.pkl', [tf.Variable(1.0)], 10, old)
  (logdir / 'config.yaml').write_text('original: true\n')
  before = (logdir / 'variables.pkl').read_bytes()
  with pytest.raises(tools.ConfigError, match='deter_size: 200 -> 16'):
    _main(logdir)
  assert (logdir / 'config.yaml').read_text() == 'original: true\n'
  assert (logdir / 'variables.pkl').read_bytes() == before


def test_command_line_errors_are_one_line():
  result = subprocess.run(
      [sys.executable, 'dreamer_idm.py', '--configs', 'defaults', 'nope'],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 2
  # One line and nothing else: TensorFlow's start-up lines are filtered.
  assert result.stderr.splitlines() == [
      "Error: Unknown preset 'nope'; choose from defaults, dmc, dreamer, idm, "
      "idm_no_evaluator, idm_no_derived, idm_evaluator_only, "
      "dreamer_doubled_batch, cpu_proxy, debug (see configs.yaml)."]


@pytest.mark.parametrize('flag', ['--help', '-h'])
def test_help_lists_every_preset_and_key_without_tensorflow(flag):
  result = subprocess.run(
      [sys.executable, '-X', 'importtime', 'dreamer_idm.py', '--configs',
       'idm', flag], cwd=ROOT, capture_output=True, text=True, timeout=60)
  assert result.returncode == 0
  assert 'tensorflow' not in result.stderr  # -X importtime lists imports.
  presets = tools.load_presets(dreamer_idm.CONFIGS)
  lines = result.stdout.splitlines()
  for name in presets:
    assert any(line.startswith(f'  {name} ') for line in lines), name
  for key, value in presets['defaults'].items():
    (line,) = [x for x in lines if x.strip().startswith(f'--{key} ')]
    assert line.split()[1] == str(value) or key.endswith(
        ('_lr', 'pattern')), line  # 6.0e-4 and '.*' as the file writes them.
    assert not line.rstrip().endswith(' -'), f'{key} has no comment'
  assert '    --precision auto' in result.stdout
  assert 'Upstream: 16. auto = 16 with a GPU' in result.stdout


def test_a_crash_during_the_import_keeps_its_last_lines():
  code = ('import os, dreamer_idm\n'
          'with dreamer_idm.quiet_startup():\n'
          '  os.write(2, b"I0000 00:00:1.0 1 cudart_stub.cc:31] noise\\n")\n'
          '  os.write(2, b"F0000 00:00:1.0 1 cpu_feature_guard.cc:9] fatal\\n")\n'
          '  os.abort()\n')
  result = subprocess.run([sys.executable, '-c', code], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode != 0
  assert 'cpu_feature_guard.cc:9] fatal' in result.stderr
  assert 'noise' not in result.stderr


def test_startup_noise_is_filtered_and_other_lines_get_through(capfd):
  with dreamer_idm.quiet_startup():
    os.write(2, b'I0000 00:00:1.0 1 cudart_stub.cc:31] Could not find cuda '
                b'drivers on your machine, GPU will not be used.\n')
    os.write(2, b'WARNING: All log messages before absl::InitializeLog() is '
                b'called are written to STDERR\n')
    os.write(2, b'E0000 00:00:1.0 1 some_op.cc:9] a real error\n')
    os.write(2, b'W0000 00:00:1.0 1 other.cc:9] a real warning\n')
  assert capfd.readouterr().err.splitlines() == [
      'E0000 00:00:1.0 1 some_op.cc:9] a real error',
      'W0000 00:00:1.0 1 other.cc:9] a real warning']


def _train(logdir, *args):
  if '--configs' not in args:
    args = ('--configs', 'defaults', 'dmc', 'debug', *args)
  result = subprocess.run(
      [sys.executable, 'dreamer_idm.py', '--logdir', str(logdir), *args],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stdout + result.stderr
  return result.stdout


def _records(logdir):
  lines = (logdir / 'metrics.jsonl').read_text().splitlines()
  return [json.loads(line) for line in lines]


def test_train_evaluate_checkpoint_and_resume(tmp_path):
  logdir = tmp_path / 'run'
  out = _train(logdir)
  assert 'Prefill dataset with 100 steps.' in out
  assert re.search(
      r'\[\d+/400 [\d.]+%\] episodes \d+ \| train return [\d.-]+ \| test return '
      r'[\d.-]+ \| [\d.]+ updates/s \| [\d.]+ env steps/s \| ETA ', out)
  records = _records(logdir)
  keys = set().union(*records)
  for key in (
      'train/return', 'test/return', 'model_loss', 'image_loss', 'reward_loss',
      'div', 'actor_loss', 'value_loss', 'model_grad_norm', 'actor_grad_norm',
      'value_grad_norm', 'fps'):
    assert key in keys, key
  assert all(r['div'] >= 3.0 for r in records if 'div' in r)  # Free nats.
  assert max(r['step'] for r in records) == 400
  assert [r['step'] for r in records if 'test/return' in r] == [100, 300, 400]
  episodes = sorted(p.name for p in (logdir / 'episodes').glob('*.npz'))
  assert len(episodes) == 4 and all(p.endswith('-51.npz') for p in episodes)
  checkpoint = tools.read_checkpoint(logdir / 'variables.pkl')
  assert checkpoint['step'] == 400
  # Evaluated at 100, 300 and the end: the grid of 200 from 100 stands at 300.
  assert (checkpoint['evaluated_at'], checkpoint['eval_anchor']) == (400, 300)
  assert list((logdir / 'images').glob('agent_openl_*'))
  assert list(logdir.glob('events.out.tfevents.*'))
  assert tools.load_presets(logdir / 'config.yaml')['batch_length'] == 10

  # Killed with SIGKILL mid-collection, after the checkpoint that follows
  # each train_every (100) env steps: the resumed run starts from the weights
  # of that moment, so only the episode in progress and the round of updates
  # it was due (redone on resume) are lost.
  process = subprocess.Popen(
      [sys.executable, 'dreamer_idm.py', '--configs', 'defaults', 'dmc',
       'debug', '--logdir', str(logdir), '--steps', '800', '--eval_every',
       '1000'],
      cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while tools.read_checkpoint(logdir / 'variables.pkl')['step'] < 500:
    assert process.poll() is None and time.time() < deadline
    time.sleep(0.05)
  process.kill()
  process.wait()
  killed = sorted(p.name for p in (logdir / 'episodes').glob('*.npz'))
  assert set(episodes) < set(killed) and len(killed) == 5
  for name in killed:
    assert tools.load_episode(logdir / 'episodes' / name) is not None
  checkpoint = tools.read_checkpoint(logdir / 'variables.pkl')
  assert (checkpoint['evaluated_at'], checkpoint['eval_anchor']) == (400, 300)

  # Evaluating every 60 env steps with 100-step episodes, on the grid from
  # 300: 360 is past due at 500, so this run evaluates first; then at the
  # first chunk end at or past 540 (600), 660 (700) and 720, which is also
  # the end (800).
  out = _train(logdir, '--steps', '760', '--eval_every', '60')
  assert 'Prefill dataset with 0 steps.' in out
  assert 'Resumed from checkpoint at step 500; 500 env steps stored.' in out
  assert out.index('Start evaluation.') < out.index('Start collection.')
  assert out.count('Start evaluation.') == 4
  after = sorted(p.name for p in (logdir / 'episodes').glob('*.npz'))
  assert set(killed) < set(after) and len(after) == 8
  assert tools.read_checkpoint(logdir / 'variables.pkl')['step'] == 800
  records = _records(logdir)
  assert [r['step'] for r in records if 'test/return' in r] == [
      100, 300, 400, 500, 600, 700, 800]

  # evaluate.py on the trained run: plain and rotated test episodes. It needs
  # only the checkpoint and config, not the episodes.
  (logdir / 'episodes').rename(tmp_path / 'episodes')
  result = subprocess.run(
      [sys.executable, 'evaluate.py', '--logdir', str(logdir), '--episodes',
       '2', '--rotation', '5'],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stdout + result.stderr
  report = json.loads((logdir / 'eval_800.json').read_text())
  assert report['step'] == 800 and report['task'] == 'dmc_walker_walk'
  plain, rotated = report['results']
  assert plain['perturbation'] == dict(
      rotation=0.0, noise_std=0.0, shift=0, color=0.0, camera=0.0,
      dynamic=False)
  assert rotated['perturbation']['rotation'] == 5.0
  for entry in (plain, rotated):
    assert len(entry['returns']) == 2
    assert entry['mean'] == pytest.approx(sum(entry['returns']) / 2)
  assert 'perturbation {\'rotation\': 5.0}: return' in result.stdout
  assert re.search(r'\[perturbation 2/2 rotation=5\] episode 2/2 return '
                   r'[\d.-]+ \| 4/4 episodes \| [\d.]+ s/episode \| ETA ',
                   result.stdout)

  # The robustness suite, killed after its first cell, then resumed.
  command = [sys.executable, 'evaluate.py', '--logdir', str(logdir),
             '--suite', '--episodes', '2', '--kinds', 'rotation', 'camera',
             '--levels', '0.3']
  suite_file = logdir / 'robustness_800.json'
  process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while not suite_file.exists() or len(
      json.loads(suite_file.read_text())['cells']) < 1:
    assert process.poll() is None and time.time() < deadline
    time.sleep(0.1)
  process.kill()
  process.wait()
  before = json.loads(suite_file.read_text())['cells']
  assert 1 <= len(before) < 3 and before[0]['kind'] == 'none'
  result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
  assert result.returncode == 0, result.stdout + result.stderr
  assert (f'Resuming robustness_800.json: {len(before)} cells done, '
          f'{3 - len(before)} to run.') in result.stdout
  assert re.search(r'\[cell \d/\d+ \w+ [\d.]+\] episode 2/2 return [\d.-]+ \| '
                   r'\d+/\d+ episodes \| [\d.]+ s/episode \| ETA ', result.stdout)
  report = json.loads(suite_file.read_text())
  cells = report['cells']
  assert cells[:len(before)] == before  # Finished cells were not rerun.
  assert sorted((c['kind'], c['level']) for c in cells) == sorted(
      [('none', 0.0), ('rotation', 0.3), ('camera', 0.3)])
  assert all(len(c['returns']) == 2 for c in cells)
  by_cell = {(c['kind'], c['level']): c for c in cells}
  assert by_cell[('rotation', 0.3)]['settings']['rotation'] == 27.0
  assert by_cell[('camera', 0.3)]['settings']['camera'] == 0.3
  table = (logdir / 'robustness_800.md').read_text()
  none = np.array(by_cell[('none', 0.0)]['returns'])
  half = scipy.stats.t.ppf(0.975, 1) * none.std(ddof=1) / np.sqrt(2)
  assert f'| camera | {none.mean():.1f} ± {half:.1f} |' in table
  assert table in result.stdout
  assert (logdir / 'robustness_800.png').stat().st_size > 1000


def test_evaluate_without_checkpoint_is_a_clear_error(tmp_path):
  result = subprocess.run(
      [sys.executable, 'evaluate.py', '--logdir', str(tmp_path)],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 2
  assert f'Error: No checkpoint in {tmp_path}' in result.stderr
