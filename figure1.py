"""Figure 1 of the paper: the same frames decoded from latents perturbed with
N(0, sigma^2) noise by a Dreamer model and by an R2S2 (IDM) model. Writes one
PNG with rows: truth, Dreamer z, Dreamer z', truth, R2S2 z, R2S2 z' (the
frames come from the IDM run's stored episodes).

  python figure1.py --dreamer logdir/walker_walk/dreamer --idm \
      logdir/walker_walk/idm --sigma 0.5 --out figure1.png
"""

import argparse
import pathlib
import sys

import numpy as np

import evaluate
import tools
import wrappers


def main(argv):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--dreamer', required=True, help='a Dreamer run')
  parser.add_argument('--idm', required=True, help='an IDM (R2S2) run')
  parser.add_argument('--sigma', type=float, default=0.5)
  parser.add_argument('--out', default='figure1.png')
  args = parser.parse_args(argv)
  import tensorflow as tf
  episodes = pathlib.Path(args.idm) / 'episodes'
  try:
    episode = next(tools.load_episodes(episodes, 1, length=8, seed=0))
  except RuntimeError:
    raise tools.ConfigError(
        f'No episode of 8 or more steps in {episodes}; --idm must be a run '
        f'folder with its episodes (the frames come from them).') from None
  grids, tasks = [], []
  for logdir in (args.dreamer, args.idm):
    agent, config, _ = evaluate.load_agent(logdir)
    tasks.append(config.task)
    data = {k: tf.constant(v[None]) for k, v in episode.items()}
    sigma = tf.constant(args.sigma, agent._float)
    grids.append(agent._perturbation_image(data, sigma, sigma).numpy())
  if tasks[0] != tasks[1]:
    raise tools.ConfigError(
        f'The runs are of different tasks ({tasks[0]}, {tasks[1]}); pass a '
        f'Dreamer and an IDM run of the same task.')
  image = np.concatenate(grids, 0)
  tools.atomic_write(args.out, tf.io.encode_png(image).numpy())
  print(f'Wrote {args.out}: rows truth, Dreamer z, Dreamer z\' (sigma '
        f'{args.sigma}), truth, R2S2 z, R2S2 z\'.')
  return 0


if __name__ == '__main__':
  try:
    sys.exit(main(sys.argv[1:]))
  except (tools.ConfigError, wrappers.EnvError) as e:
    print(f'Error: {e}', file=sys.stderr)
    sys.exit(2)
