"""Runs a grid of tasks x presets x seeds into <root>/<task>/<preset>/<seed>/,
resuming unfinished runs and skipping finished ones. The default grid is the
paper's: six tasks; idm, dreamer and the four ablations; five seeds, with
test images also evaluated under rotation of up to 5 degrees (Table 1).

  python sweep.py --root sweeps/paper                       # 180 runs, 1 at a time
  python sweep.py --root sweeps/paper --parallel 2
  python sweep.py --root sweeps/paper --ray auto            # on a Ray cluster
  python sweep.py --root /tmp/s --tasks walker_walk --presets idm dreamer \
      --seeds 0 --configs defaults dmc debug -- --steps 200

Arguments after `--` go to every run of dreamer_idm.py. Each run's output is
in its folder's train.log. With --ray every run is a Ray task; it asks for one
GPU when the cluster has GPUs. The root must be on a file system every node
sees, and the code is shipped to the nodes as the Ray job's working dir.
"""

import argparse
import concurrent.futures
import pathlib
import subprocess
import sys
import time

import tables

ROOT = pathlib.Path(__file__).resolve().parent
DEFAULT_PRESETS = tables.PRESETS


def finished(logdir, steps):
  """A run is finished when its checkpoint has evaluated its target step
  (one written during collection may reach the step before the final
  evaluation runs; those from before the schedule was stored were all
  written at evaluations)."""
  import tools
  checkpoint = pathlib.Path(logdir) / 'variables.pkl'
  if not checkpoint.exists():
    return False
  try:
    checkpoint = tools.read_checkpoint(checkpoint)
    return checkpoint.get('evaluated_at', checkpoint['step']) >= steps
  except tools.ConfigError:
    return False  # Unreadable: the run itself will say why.


def target_steps(configs, extra):
  import dreamer_idm
  return dreamer_idm.parse_args(['--configs', *configs, *extra]).steps


def command(task, preset, seed, logdir, configs, extra):
  return [
      'dreamer_idm.py', '--configs', *configs, preset, '--task',
      f'dmc_{task}', '--seed', str(seed), '--logdir', str(logdir), *extra]


def run_one(cmd, logdir, cwd=None):
  """Runs one training run to the end with this process's Python; returns
  its exit code. cwd None: the current folder, which on a Ray node is the
  shipped copy of the code (Ray pickles this function by value, so a path
  taken from __file__ would be the driver's)."""
  logdir = pathlib.Path(logdir)
  logdir.mkdir(parents=True, exist_ok=True)
  with (logdir / 'train.log').open('ab') as log:
    return subprocess.run(
        [sys.executable, *cmd], stdout=log, stderr=subprocess.STDOUT,
        cwd=cwd).returncode


def plan(args, extra):
  runs, skipped = [], []
  for task in args.tasks:
    for preset in args.presets:
      configs = args.configs
      steps = target_steps([*configs, preset], extra)
      for seed in args.seeds:
        logdir = pathlib.Path(args.root).resolve() / task / preset / str(seed)
        if finished(logdir, steps):
          skipped.append(logdir)
        else:
          runs.append((command(task, preset, seed, logdir, configs, extra),
                       logdir))
  return runs, skipped


def run_local(runs, parallel):
  with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
    futures = {pool.submit(run_one, cmd, logdir, str(ROOT)): logdir
               for cmd, logdir in runs}
    yield from ((futures[f], f.result())
                for f in concurrent.futures.as_completed(futures))


def run_ray(runs, address, root):
  import ray
  # Only the code is shipped: never runs, episodes or checkpoints.
  excludes = ['/logdir', '/sweeps', '.git', '*.egg-info', '__pycache__']
  root = pathlib.Path(root).resolve()
  if root.is_relative_to(ROOT):
    excludes.append(f'/{root.relative_to(ROOT)}')
  ray.init(address=None if address == 'local' else address,
           runtime_env={'working_dir': str(ROOT), 'excludes': excludes},
           include_dashboard=False, log_to_driver=False)
  try:
    gpus = 1 if ray.cluster_resources().get('GPU', 0) else 0
    remote = ray.remote(num_cpus=1, num_gpus=gpus)(run_one)
    refs = {remote.remote(cmd, str(logdir)): logdir for cmd, logdir in runs}
    pending = list(refs)
    while pending:
      done, pending = ray.wait(pending, num_returns=1)
      try:
        code = ray.get(done[0])
      except ray.exceptions.RayError as e:  # The task itself failed.
        print(f'{refs[done[0]]}: {type(e).__name__}: {e}', file=sys.stderr)
        code = -1
      yield refs[done[0]], code
  finally:
    ray.shutdown()


def main(argv):
  if '--' in argv:
    index = argv.index('--')
    argv, extra = argv[:index], argv[index + 1:]
  else:
    extra = []
  parser = argparse.ArgumentParser(
      description=__doc__.splitlines()[0],
      formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
  parser.add_argument('--root', required=True)
  parser.add_argument('--tasks', nargs='+', default=list(tables.TASKS),
                      help='e.g. walker_walk (dmc_ is optional)')
  parser.add_argument('--presets', nargs='+', default=list(DEFAULT_PRESETS))
  parser.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2, 3, 4])
  parser.add_argument('--configs', nargs='+', default=['defaults', 'dmc'])
  parser.add_argument('--parallel', type=int, default=1,
                      help='runs at once on this machine')
  parser.add_argument('--ray', metavar='ADDRESS',
                      help="a Ray cluster address, or 'local' for a new one")
  args = parser.parse_args(argv)
  args.tasks = [t[4:] if t.startswith('dmc_') else t for t in args.tasks]
  if not any(x.startswith('--eval_rotation') for x in extra):
    extra = ['--eval_rotation', '5', *extra]  # Table 1's test images.
  import tools
  try:
    runs, skipped = plan(args, extra)
  except tools.ConfigError as e:
    print(f'Error: {e}', file=sys.stderr)
    return 2
  print(f'{len(runs)} runs to do, {len(skipped)} finished and skipped.',
        flush=True)
  start, failed = time.time(), []
  results = run_ray(runs, args.ray, args.root) if args.ray else run_local(
      runs, args.parallel)
  for count, (logdir, code) in enumerate(results, 1):
    if code:
      failed.append(logdir)
    elapsed = time.time() - start
    eta = tools.format_duration(elapsed / count * (len(runs) - count))
    status = 'done' if not code else f'FAILED (exit {code}, see train.log)'
    print(f'[{count}/{len(runs)}] {logdir}: {status} | ETA {eta}', flush=True)
  if failed:
    print(f'{len(failed)} runs failed; rerun the same command to resume them.',
          file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
