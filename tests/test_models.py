import numpy as np
import pytest
import tensorflow as tf
from tensorflow_probability import distributions as tfd

import models
import tools


def _rssm():
  tf.random.set_seed(0)
  return models.RSSM(stoch=4, deter=8, hidden=8)


def test_observe_and_imagine_shapes():
  rssm = _rssm()
  embed = tf.random.normal((3, 5, 12))
  action = tf.random.uniform((3, 5, 2), -1, 1)
  post, prior = rssm.observe(embed, action)
  for state in (post, prior):
    assert state['stoch'].shape == (3, 5, 4)
    assert state['deter'].shape == (3, 5, 8)
    assert state['mean'].shape == (3, 5, 4) and state['std'].shape == (3, 5, 4)
    assert np.all(state['std'].numpy() >= 0.1)
  assert rssm.get_feat(post).shape == (3, 5, 12)
  prior = rssm.imagine(action, {k: v[:, 0] for k, v in post.items()})
  assert prior['deter'].shape == (3, 5, 8)


def test_imagine_starts_from_the_given_state():
  rssm = _rssm()
  embed = tf.random.normal((2, 4, 12))
  action = tf.random.uniform((2, 4, 2), -1, 1)
  post, prior = rssm.observe(embed, action)
  start = {k: v[:, 1] for k, v in post.items()}
  # The deterministic part of the first imagined step depends only on the
  # start state and the action, so it equals the posterior's next prior.
  imagined = rssm.imagine(action[:, 2:], start)
  np.testing.assert_allclose(
      imagined['deter'][:, 0].numpy(), prior['deter'][:, 2].numpy(),
      rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
      imagined['mean'][:, 0].numpy(), prior['mean'][:, 2].numpy(),
      rtol=1e-5, atol=1e-6)
  # A different start gives a different first step.
  other = dict(start, deter=start['deter'] + 1.0)
  moved = rssm.imagine(action[:, 2:], other)
  assert not np.allclose(moved['deter'][:, 0], imagined['deter'][:, 0])


def _noise(state):
  return ((state['stoch'] - state['mean']) / state['std']).numpy()


def _rows_share(noise):
  # [batch, ..., stoch]: every row equal to the first.
  return np.allclose(noise, noise[:1], atol=1e-5)


@pytest.mark.parametrize('shared', [False, True])
def test_rssm_rows_share_their_noise_only_with_shared_noise(shared):
  # Upstream's sampler (tools._mnd_sample) drew one noise vector per call for
  # the whole batch; shared_noise reproduces it, per-row noise is the default.
  tf.random.set_seed(0)
  rssm = models.RSSM(stoch=4, deter=8, hidden=8, shared_noise=shared)
  embed = tf.random.normal((3, 5, 12))
  action = tf.random.uniform((3, 5, 2), -1, 1)
  post, prior = rssm.observe(embed, action)
  imagined = rssm.imagine(action, {k: v[:, 0] for k, v in post.items()})
  for state in (post, prior, imagined):
    noise = _noise(state)
    assert _rows_share(noise) == shared
    # A new draw at every step either way.
    assert not np.allclose(noise[:, 0], noise[:, 1])


@pytest.mark.parametrize('shared', [False, True])
def test_rssm_draws_new_noise_at_every_step_in_a_graph_under_a_global_seed(
    shared):
  # Training runs in tf.function with a global seed. There, upstream's
  # nested tf.function steps were inlined with one op seed each, and every
  # step of a call drew the same noise vector (REPRODUCING, "The shim's
  # global seed froze upstream's RSSM noise").
  tf.random.set_seed(0)
  rssm = models.RSSM(stoch=4, deter=8, hidden=8, shared_noise=shared)
  embed = tf.random.normal((3, 6, 12))
  action = tf.random.uniform((3, 6, 2), -1, 1)

  @tf.function
  def run(embed, action):
    post, prior = rssm.observe(embed, action)
    start = {k: v[:, 0] for k, v in post.items()}
    return post, prior, rssm.imagine(action, start)

  for state in run(embed, action):
    noise = _noise(state)
    assert _rows_share(noise) == shared
    for row in noise:  # [time, stoch]: six different draws.
      assert len(np.unique(row.round(4), axis=0)) == 6


@pytest.mark.parametrize('shared', [False, True])
def test_policy_rows_share_their_noise_only_with_shared_noise(tmp_path, shared):
  from test_idm import _agent
  agent, _ = _agent(tmp_path, 'dreamer', '--shared_rssm_noise', str(shared))
  images = np.random.RandomState(0).randint(0, 255, (3, 64, 64, 3), np.uint8)
  _, (latent, _) = agent.policy(
      {'image': images}, None, False, tf.constant(0.0))
  assert _rows_share(_noise(latent)) == shared


def test_kl_loss_averages_first_then_clips_at_free_nats():
  prior = tfd.MultivariateNormalDiag(tf.zeros((2, 1)), tf.ones((2, 1)))
  # KL of N(m, 1) to N(0, 1) is m^2 / 2: here 1 and 7 nats, mean 4.
  mean = tf.Variable([[np.sqrt(2.0)], [np.sqrt(14.0)]], dtype=tf.float32)
  with tf.GradientTape() as tape:
    post = tfd.MultivariateNormalDiag(mean, tf.ones((2, 1)))
    loss = models.kl_loss(post, prior, 3.0)
  assert np.isclose(loss.numpy(), 4.0, rtol=1e-5)  # Per-element clip: 5.
  assert np.any(tape.gradient(loss, mean).numpy() != 0)
  with tf.GradientTape() as tape:
    post = tfd.MultivariateNormalDiag(mean, tf.ones((2, 1)))
    loss = models.kl_loss(post, prior, 5.0)
  assert np.isclose(loss.numpy(), 5.0)
  grad = tape.gradient(loss, mean)
  assert grad is None or np.all(grad.numpy() == 0)


def test_actor_samples_inside_bounds_and_mode_per_row():
  tf.random.set_seed(1)
  actor = models.ActionDecoder(3, 2, 16, init_std=5.0)
  feat = tf.random.normal((64, 10)) * 10
  dist = actor(feat)
  sample = dist.sample().numpy()
  assert sample.shape == (64, 3)
  assert np.all(np.abs(sample) <= 1.0) and np.all(np.isfinite(sample))
  mode = dist.mode().numpy()
  assert mode.shape == (64, 3) and np.all(np.abs(mode) <= 1.0)
  # The tanh's inverse at the bounds stays finite.
  assert np.all(np.isfinite(dist.log_prob(tf.ones((64, 3))).numpy()))


def test_sample_dist_mode_takes_each_rows_own_best_sample():
  # Four fixed draws for two rows; row 0 likes draw 2, row 1 draw 0
  # (upstream took row 0's best draw for every row).
  draws = tf.constant(np.arange(4 * 2 * 1, dtype=np.float32).reshape(4, 2, 1))
  class Fixed:
    def sample(self, n):
      return draws[:n]
    def log_prob(self, x):
      return -tf.abs(x[..., 0] - tf.constant([[4.0, 1.0]]))
  mode = tools.SampleDist(Fixed(), samples=4).mode().numpy()
  np.testing.assert_array_equal(mode, [[4.0], [1.0]])


def test_decoder_outputs_image_distribution_in_float32():
  decoder = models.ConvDecoder(depth=4)
  dist = decoder(tf.random.normal((2, 3, 10)))
  assert dist.mean().shape == (2, 3, 64, 64, 3)
  assert dist.mean().dtype == tf.float32
  image = tf.zeros((2, 3, 64, 64, 3))
  expected = -0.5 * tf.reduce_sum(
      tf.square(dist.mean() - image), [2, 3, 4]) - 0.5 * 64 * 64 * 3 * np.log(
          2 * np.pi)
  np.testing.assert_allclose(
      dist.log_prob(image).numpy(), expected.numpy(), rtol=1e-5)


def test_decoder_first_layer_as_matmul_equals_the_transposed_conv():
  tf.random.set_seed(1)
  decoder = models.ConvDecoder(depth=4, act=tf.nn.relu)
  features = tf.random.normal((2, 3, 10))
  mean = decoder(features).mean()
  assert mean.shape == (2, 3, 64, 64, 3)
  # The same layers, the first called as Keras computes it.
  x = decoder.get('h1', None)(tf.reshape(features, [6, 10]))
  x = tf.reshape(x, [6, 1, 1, 128])
  for index in range(2, 6):
    x = decoder.get(f'h{index}', None)(x)
  np.testing.assert_allclose(
      mean.numpy().reshape(6, 64, 64, 3), x.numpy(), rtol=1e-4, atol=1e-5)
  assert np.abs(x.numpy()).max() > 1e-3  # Not trivially zero.


def test_subpixel_output_layer_equals_the_transposed_conv_and_its_gradients():
  tf.random.set_seed(2)
  layer = models.tfkl.Conv2DTranspose(3, 6, strides=2)
  x = tf.random.normal((2, 5, 5, 8))
  layer(x)  # Builds the kernel and bias.
  layer.bias.assign(tf.random.normal((3,)))
  dy = tf.random.normal((2, 14, 14, 3))  # (5 - 1) * 2 + 6.
  results = []
  for call in (layer, lambda x: models._deconv_subpixel(layer, x)):
    with tf.GradientTape() as tape:
      tape.watch(x)
      y = call(x)
      loss = tf.reduce_sum(y * dy)
    results.append([y, *tape.gradient(loss, [x, layer.kernel, layer.bias])])
  for keras, ours in zip(*results):
    assert np.abs(keras.numpy()).max() > 1e-2  # Not trivially zero.
    np.testing.assert_allclose(ours.numpy(), keras.numpy(), rtol=1e-4, atol=1e-4)
