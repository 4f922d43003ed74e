import numpy as np
import tools  # Sets TF_USE_LEGACY_KERAS before TensorFlow loads.
import tensorflow as tf
from tensorflow_probability import distributions as tfd
from tf_keras import layers as tfkl
from tf_keras import mixed_precision as prec


class RSSM(tools.Module):
  """Recurrent state-space model: a GRU path h and a Gaussian path s."""

  def __init__(self, stoch=30, deter=200, hidden=200, act=tf.nn.elu,
               shared_noise=False):
    super().__init__()
    self._stoch_size, self._deter_size = stoch, deter
    self._hidden_size, self._activation = hidden, act
    self._shared_noise = shared_noise
    self._cell = tfkl.GRUCell(deter)

  def initial(self, batch_size):
    dtype = prec.global_policy().compute_dtype
    sizes = dict(mean=self._stoch_size, std=self._stoch_size,
                 stoch=self._stoch_size, deter=self._deter_size)
    return {k: tf.zeros([batch_size, n], dtype) for k, n in sizes.items()}

  def observe(self, embed, action, state=None):
    # Scans over time, so inputs and outputs swap their first two axes.
    if state is None:
      state = self.initial(tf.shape(action)[0])
    inputs = _swap_time((action, embed))
    step = lambda carry, inp: self.obs_step(carry[0], inp[0], inp[1])
    post, prior = tools.static_scan(step, inputs, (state, state))
    return _swap_time(post), _swap_time(prior)

  def imagine(self, action, state=None):
    if state is None:
      state = self.initial(tf.shape(action)[0])
    assert isinstance(state, dict), state
    prior = tools.static_scan(self.img_step, _swap_time(action), state)
    return _swap_time(prior)

  @staticmethod
  def get_feat(state):
    return tf.concat([state['stoch'], state['deter']], -1)

  def get_dist(self, state):
    # Distributions in float32, also under mixed precision.
    return tfd.MultivariateNormalDiag(
        tf.cast(state['mean'], tf.float32), tf.cast(state['std'], tf.float32))

  def obs_step(self, prev_state, prev_action, embed):
    """Posterior: the prior step, corrected by the embedded observation."""
    prior = self.img_step(prev_state, prev_action)
    hidden = self.get('obs1', tfkl.Dense, self._hidden_size, self._activation)(
        tf.concat([prior['deter'], embed], -1))
    stats = self.get('obs2', tfkl.Dense, 2 * self._stoch_size)(hidden)
    return self._gaussian(stats, prior['deter']), prior

  def img_step(self, prev_state, prev_action):
    """Prior: one step of the dynamics from the last state and action."""
    stoch = prev_state['stoch']
    inp = tf.concat([stoch, tf.cast(prev_action, stoch.dtype)], -1)
    inp = self.get('img1', tfkl.Dense, self._hidden_size, self._activation)(inp)
    out, (deter,) = self._cell(inp, [prev_state['deter']])
    out = self.get('img2', tfkl.Dense, self._hidden_size, self._activation)(out)
    stats = self.get('img3', tfkl.Dense, 2 * self._stoch_size)(out)
    return self._gaussian(stats, deter)

  def _gaussian(self, stats, deter):
    # std = softplus(.) + 0.1 keeps the latent from collapsing.
    mean, raw_std = tf.split(stats, 2, -1)
    std = tf.nn.softplus(raw_std) + 0.1
    # Upstream's sampler (tools._mnd_sample) draws one noise vector per call,
    # shared by every row of the batch; shared_noise reproduces it.
    shape = tf.shape(mean)[-1:] if self._shared_noise else tf.shape(mean)
    noise = tf.random.normal(shape, dtype=mean.dtype)
    return dict(mean=mean, std=std, stoch=mean + std * noise, deter=deter)


def _swap_time(nest):
  return tf.nest.map_structure(lambda x: tf.transpose(x, [1, 0, 2]), nest)


def kl_loss(post_dist, prior_dist, free_nats):
  # Averaged over batch and time first, then clipped below at free nats, so
  # the representation is free to use that many nats on average.
  div = tf.reduce_mean(tfd.kl_divergence(post_dist, prior_dist))
  return tf.maximum(div, free_nats)


class ConvEncoder(tools.Module):
  """Four stride-2 convolutions with kernel 4, depths 1, 2, 4, 8 x depth."""

  def __init__(self, depth=32, act=tf.nn.relu):
    self._act = act
    self._depth = depth

  def __call__(self, obs):
    image = obs['image']
    x = tf.reshape(image, [-1, *image.shape[-3:]])
    for index, mult in enumerate((1, 2, 4, 8)):
      conv = self.get(f'h{index + 1}', tfkl.Conv2D, mult * self._depth, 4,
                      strides=2, activation=self._act)
      x = conv(x)
    # 64x64 inputs leave 2x2x(8 depth), flattened to 32 depth features.
    batch_dims = tf.shape(image)[:-3]
    return tf.reshape(x, tf.concat([batch_dims, [32 * self._depth]], 0))


class ConvDecoder(tools.Module):
  """Dense to 32 x depth at 1x1, then transposed convolutions to the image;
  the image is the mean of a unit-variance Normal."""

  def __init__(self, depth=32, act=tf.nn.relu, shape=(64, 64, 3)):
    self._act = act
    self._depth = depth
    self._shape = shape

  def __call__(self, features):
    x = self.get('h1', tfkl.Dense, 32 * self._depth)(features)
    x = tf.reshape(x, [-1, 1, 1, 32 * self._depth])
    layers = ((4 * self._depth, 5, self._act), (2 * self._depth, 5, self._act),
              (self._depth, 6, self._act), (self._shape[-1], 6, None))
    for index, (filters, kernel, act) in enumerate(layers):
      deconv = self.get(f'h{index + 2}', tfkl.Conv2DTranspose, filters, kernel,
                        strides=2, activation=act)
      if index == 0:  # A 1x1 input: one matrix product.
        x = _deconv_from_1x1(deconv, x)
      elif index == len(layers) - 1:  # The image's few channels.
        x = _deconv_subpixel(deconv, x)
      else:
        x = deconv(x)
    batch_dims = tf.shape(features)[:-1]
    mean = tf.reshape(x, tf.concat([batch_dims, self._shape], 0))
    return tfd.Independent(
        tfd.Normal(tf.cast(mean, tf.float32), 1), len(self._shape))


def _deconv_from_1x1(deconv, x):
  """The transposed convolution of a 1x1 input is one matrix product with its
  kernel: the same layer and variables, about 4x faster on a CPU."""
  if not deconv.built:
    deconv.build(x.shape)
  kernel = tf.cast(deconv.kernel, x.dtype)  # [k, k, filters, channels]
  size, filters = kernel.shape[0], kernel.shape[2]
  matrix = tf.reshape(tf.transpose(kernel, [3, 0, 1, 2]), [x.shape[-1], -1])
  out = tf.matmul(tf.reshape(x, [-1, x.shape[-1]]), matrix)
  out = tf.reshape(out, [-1, size, size, filters]) + tf.cast(deconv.bias, x.dtype)
  return deconv.activation(out)


def _deconv_subpixel(deconv, x):
  """The transposed convolution as a stride-1 convolution with one sub-kernel
  per output phase, then depth-to-space: the same layer and variables. For
  the 3-channel output layer the forward pass is ~2.5x faster on a CPU; the
  backward pass keeps the transposed convolution's own gradient kernels,
  which are faster than those of this form."""
  if not deconv.built:
    deconv.build(x.shape)
  kernel = tf.cast(deconv.kernel, x.dtype)  # [k, k, filters, channels]
  stride, size = deconv.strides[0], kernel.shape[0]
  assert deconv.padding == 'valid' and size % stride == 0, deconv
  out = _subpixel_transposed_conv(x, kernel, stride, size // stride)
  return deconv.activation(out + tf.cast(deconv.bias, x.dtype))


def _subpixel_transposed_conv(x, kernel, stride, taps):
  filters, channels = kernel.shape[2], kernel.shape[3]

  @tf.custom_gradient
  def transposed_conv(x, kernel):
    # Output row stride * i + a sums x[i - t] * kernel[stride * t + a] over
    # t: a correlation of x padded by taps - 1 with the sub-kernel flipped.
    sub = tf.reshape(kernel, [taps, stride, taps, stride, filters, channels])
    sub = tf.reverse(sub, [0, 2])
    sub = tf.transpose(sub, [0, 2, 5, 1, 3, 4])
    sub = tf.reshape(sub, [taps, taps, channels, stride ** 2 * filters])
    pad = [taps - 1, taps - 1]
    out = tf.nn.conv2d(x, sub, 1, [[0, 0], pad, pad, [0, 0]])
    out = tf.nn.depth_to_space(out, stride)

    def grad(dy):
      strides = [1, stride, stride, 1]
      dx = tf.nn.conv2d(dy, kernel, strides, 'VALID')
      dkernel = tf.raw_ops.Conv2DBackpropFilter(
          input=dy, filter_sizes=tf.shape(kernel), out_backprop=x,
          strides=strides, padding='VALID')
      return dx, dkernel
    return out, grad

  return transposed_conv(x, kernel)


class DenseDecoder(tools.Module):
  """MLP head: a unit Normal ('normal') or a Bernoulli ('binary') over shape."""

  def __init__(self, shape, layers, units, dist='normal', act=tf.nn.elu):
    self._shape, self._dist = tuple(shape), dist
    self._layers, self._units, self._act = layers, units, act

  def __call__(self, features):
    size = int(np.prod(self._shape))
    out = self.mlp(features, self._layers, self._units, self._act, size)
    batch_dims = tf.shape(features)[:-1]
    out = tf.reshape(tf.cast(out, tf.float32),
                     tf.concat([batch_dims, self._shape], 0))
    dists = dict(normal=lambda: tfd.Normal(out, 1),
                 binary=lambda: tfd.Bernoulli(out))
    if self._dist not in dists:
      raise NotImplementedError(self._dist)
    return tfd.Independent(dists[self._dist](), len(self._shape))


class ActionDecoder(tools.Module):
  """Actor: a tanh-squashed Normal whose mean is bounded by mean_scale and
  whose std starts near init_std; mode and entropy come from samples."""

  def __init__(
      self, size, layers, units, dist='tanh_normal', act=tf.nn.elu,
      min_std=1e-4, init_std=5, mean_scale=5):
    if dist != 'tanh_normal':
      raise ValueError(
          f'action_dist {dist!r} is not supported; use tanh_normal.')
    self._size, self._layers, self._units = size, layers, units
    self._act, self._min_std = act, min_std
    self._init_std, self._mean_scale = init_std, mean_scale

  def __call__(self, features):
    out = self.mlp(features, self._layers, self._units, self._act,
                   2 * self._size)
    mean, std = tf.split(tf.cast(out, tf.float32), 2, -1)
    mean = self._mean_scale * tf.tanh(mean / self._mean_scale)
    # softplus(x + softplus^-1(init_std)) is init_std at x = 0.
    shift = np.log(np.expm1(self._init_std))
    std = tf.nn.softplus(std + shift) + self._min_std
    squashed = tfd.TransformedDistribution(
        tfd.Normal(mean, std), tools.TanhBijector())
    return tools.SampleDist(tfd.Independent(squashed, 1))


# IDM additions (Mu et al., 2021, "Model-Based Reinforcement Learning via
# Imagination with Derived Memory"). Equation numbers are the paper's.

def perturb_state(state, noise_h, noise_s):
  """z' = (h + xi_h, s + xi_s) with xi ~ N(0, sigma^2) per dimension, the
  perturbation the R2S2 decoding constraint is measured under (Sec. 3)."""
  deter, stoch = state['deter'], state['stoch']
  deter += noise_h * tf.random.normal(tf.shape(deter), dtype=deter.dtype)
  stoch += noise_s * tf.random.normal(tf.shape(stoch), dtype=stoch.dtype)
  return dict(state, deter=deter, stoch=stoch)


def decoding_constraint(decode, feat, feat_noisy, scale, margin, mean=None):
  """R2S2 decoding constraint: scale * mean(max(0, KL - margin)).

  The decoder is a unit-variance Gaussian, so KL(p(o'|z') || p(o|z)) is half
  the squared distance of the two means, summed over pixels, in float32. The
  original mean is under stop-gradient; pass it when it is already computed
  for the image loss to save a decoder pass. Returns the penalty and the KL of
  every state.
  """
  if mean is None:
    mean = decode(feat).mean()
  mean = tf.stop_gradient(tf.cast(mean, tf.float32))
  noisy = tf.cast(decode(feat_noisy).mean(), tf.float32)
  kl = 0.5 * tf.reduce_sum(tf.square(noisy - mean), [-3, -2, -1])
  penalty = scale * tf.reduce_mean(tf.maximum(0.0, kl - margin))
  return penalty, kl


def derive_memory(start, copies, noise_h, noise_s):
  """Derived memory (Eq. 2): the start states followed by `copies` derived
  copies of each, h' ~ N(h, sigma_h^2) and s' ~ N(mu_s, (sigma_s + sigma_s')^2).
  The std widens additively, as Eq. 2 writes it; Sec. 4.1's text (noise
  added to a sample, std sqrt(sigma_s^2 + sigma_s'^2)) is narrower. Unlike the
  constraint's s + xi_s."""
  if not copies:
    return start
  repeat = lambda x: tf.concat([x] * copies, 0)
  deter, mean, std = repeat(start['deter']), repeat(start['mean']), repeat(
      start['std']) + noise_s
  deter += noise_h * tf.random.normal(tf.shape(deter), dtype=deter.dtype)
  stoch = mean + std * tf.random.normal(tf.shape(mean), dtype=mean.dtype)
  derived = dict(mean=mean, std=std, stoch=stoch, deter=deter)
  return {k: tf.concat([start[k], derived[k]], 0) for k in start}


class TrajectoryEvaluator(tools.Module):
  """E(z, a, z'): softmax over {fake, real} for one transition (Eq. 3).

  A state enters as z = (s, h), the sampled s as in RSSM.get_feat, for real,
  overshoot and imagined transitions alike. Not the mean of s: the prior's
  mean is an exact function of h, so [mean, h] would tell prior-made states
  from posterior ones even for a perfect model, and every imagined state is
  prior-made. With samples, real and fake differ only by model error.
  """

  def __init__(self, layers=3, units=400, act=tf.nn.elu):
    self._layers = layers
    self._units = units
    self._act = act

  def __call__(self, state, action, next_state):
    x = tf.concat([
        RSSM.get_feat(state), tf.cast(action, state['deter'].dtype),
        RSSM.get_feat(next_state)], -1)
    return tf.cast(self.mlp(x, self._layers, self._units, self._act, 2),
                   tf.float32)

  def log_prob_real(self, state, action, next_state):
    return tf.nn.log_softmax(self(state, action, next_state))[..., 1]


def overshoot_triples(dynamics, post, action, horizon):
  """Real and fake transitions for the evaluator (Eq. 3), from every start t
  whose window t..t+horizon+1 fits the sequence.

  Real: (z_tau, a, z_tau+1) for tau = t..t+horizon. Fake: the open-loop
  overshoot from the same z_t on the same real actions, z_hat_t = z_t. Row t
  of a sequence holds the action that led to z_t, so z_tau -> z_tau+1 used
  action[:, tau + 1]. Returns (real, fake) as (state, action, next_state)
  triples with a leading axis of horizon + 1 steps.
  """
  post = tf.nest.map_structure(tf.stop_gradient, post)
  starts = action.shape[1] - horizon - 1
  flatten = lambda x: tf.reshape(x, [-1] + list(x.shape[2:]))
  window = lambda x, k: flatten(x[:, k: k + starts])
  steps = range(horizon + 1)
  acts = tf.stack([window(action, k + 1) for k in steps], 0)
  real_prev = {k: tf.stack([window(v, i) for i in steps], 0)
               for k, v in post.items()}
  real_next = {k: tf.stack([window(v, i + 1) for i in steps], 0)
               for k, v in post.items()}
  start = {k: window(v, 0) for k, v in post.items()}
  fake_next = tools.static_scan(dynamics.img_step, acts, start)
  fake_next = tf.nest.map_structure(tf.stop_gradient, fake_next)
  fake_prev = {k: tf.concat([start[k][None], fake_next[k][:-1]], 0)
               for k in start}
  return (real_prev, acts, real_next), (fake_prev, acts, fake_next)


def reliability_weights(log_real):
  """Eq. 4: W = P(real) of every imagined transition, normalized over the
  whole batch and horizon, in log space: softmax(log W). No gradient."""
  flat = tf.reshape(tf.cast(log_real, tf.float32), [-1])
  weights = tf.reshape(tf.nn.softmax(flat), tf.shape(log_real))
  return tf.stop_gradient(weights)


def actor_loss(returns, discount, weights=None):
  """Dreamer's actor loss, or Eq. 8's when weighted: -sum(w * discount * V)."""
  if weights is None:
    return -tf.reduce_mean(discount * returns)
  return -tf.reduce_sum(weights * discount * returns)


def value_loss(value_pred, target, discount, weights=None):
  """Dreamer's value loss, or Eq. 7's when weighted: the unit Normal's
  negative log-likelihood is 0.5 * (v - V_lambda)^2 plus a constant."""
  nll = -value_pred.log_prob(target)
  if weights is None:
    return tf.reduce_mean(discount * nll)
  return tf.reduce_sum(weights * discount * nll)
