import json
import pathlib
import subprocess
import sys
import types

import matplotlib.image

import tools

ROOT = pathlib.Path(__file__).resolve().parent.parent
TINY = ['--configs', 'defaults', 'dmc', 'debug', '--', '--steps', '100',
        '--log_images', 'False']


def _sweep(root, *args):
  result = subprocess.run(
      [sys.executable, 'sweep.py', '--root', str(root), '--tasks',
       'walker_walk', '--seeds', '0', *args, *TINY],
      cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stdout + result.stderr
  return result.stdout


def _check_run(logdir):
  assert tools.read_checkpoint(logdir / 'variables.pkl')['step'] == 100
  records = [json.loads(x) for x in (logdir / 'metrics.jsonl').read_text(
      ).splitlines()]
  keys = set().union(*records)
  # The sweep adds Table 1's rotated evaluation beside the plain one.
  assert {'test/return', 'test_perturbed/return'} <= keys
  assert 'Finished training at step 100.' in (logdir / 'train.log').read_text()


def test_a_run_is_finished_once_its_target_step_is_evaluated(tmp_path):
  import numpy as np

  import sweep
  variables = [types.SimpleNamespace(name='v', numpy=lambda: np.zeros(1))]
  save = lambda step, **fields: tools.save_checkpoint(
      tmp_path / 'variables.pkl', variables, step, {}, **fields)
  assert not sweep.finished(tmp_path, 100)  # No checkpoint yet.
  # Written when collection reached the target, before the final evaluation.
  save(100, evaluated_at=90, eval_anchor=90)
  assert not sweep.finished(tmp_path, 100)
  save(100, evaluated_at=100, eval_anchor=90)
  assert sweep.finished(tmp_path, 100)
  save(100)  # Older checkpoints were written at evaluations only.
  assert sweep.finished(tmp_path, 100) and not sweep.finished(tmp_path, 101)


def test_local_sweep_resumes_and_skips_finished_runs_then_figure1(tmp_path):
  out = _sweep(tmp_path, '--presets', 'dreamer', 'idm', '--parallel', '2')
  assert '2 runs to do, 0 finished and skipped.' in out
  assert '[2/2]' in out and 'FAILED' not in out
  for preset in ('dreamer', 'idm'):
    _check_run(tmp_path / 'walker_walk' / preset / '0')
  out = _sweep(tmp_path, '--presets', 'dreamer', 'idm')
  assert '0 runs to do, 2 finished and skipped.' in out

  figure = tmp_path / 'figure1.png'
  result = subprocess.run(
      [sys.executable, 'figure1.py', '--dreamer',
       str(tmp_path / 'walker_walk' / 'dreamer' / '0'), '--idm',
       str(tmp_path / 'walker_walk' / 'idm' / '0'), '--out', str(figure)],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stdout + result.stderr
  image = matplotlib.image.imread(figure)
  assert image.shape[:2] == (6 * 64, 8 * 64)
  # Rows 0 and 3 are the same true frames.
  assert (image[:64] == image[3 * 64:4 * 64]).all() and image[:64].std() > 0


def test_sweep_through_a_local_ray_instance(tmp_path):
  out = _sweep(tmp_path, '--presets', 'dreamer', '--seeds', '0', '1',
               '--ray', 'local')
  assert '2 runs to do, 0 finished and skipped.' in out
  for seed in ('0', '1'):
    _check_run(tmp_path / 'walker_walk' / 'dreamer' / seed)
