import numpy as np
import tools  # Sets TF_USE_LEGACY_KERAS before TensorFlow loads.
import tensorflow as tf
from tensorflow_probability import distributions as tfd
from tf_keras import layers as tfkl
from tf_keras import mixed_precision as prec


class RSSM(tools.Module):

  def __init__(self, stoch=30, deter=200, hidden=200, act=tf.nn.elu):
    super().__init__()
    self._activation = act
    self._stoch_size = stoch
    self._deter_size = deter
    self._hidden_size = hidden
    self._cell = tfkl.GRUCell(self._deter_size)

  def initial(self, batch_size):
    dtype = prec.global_policy().compute_dtype
    zeros = lambda size: tf.zeros([batch_size, size], dtype)
    return dict(
        mean=zeros(self._stoch_size), std=zeros(self._stoch_size),
        stoch=zeros(self._stoch_size), deter=zeros(self._deter_size))

  def observe(self, embed, action, state=None):
    if state is None:
      state = self.initial(tf.shape(action)[0])
    embed = tf.transpose(embed, [1, 0, 2])
    action = tf.transpose(action, [1, 0, 2])
    post, prior = tools.static_scan(
        lambda prev, inputs: self.obs_step(prev[0], *inputs),
        (action, embed), (state, state))
    post = {k: tf.transpose(v, [1, 0, 2]) for k, v in post.items()}
    prior = {k: tf.transpose(v, [1, 0, 2]) for k, v in prior.items()}
    return post, prior

  def imagine(self, action, state=None):
    if state is None:
      state = self.initial(tf.shape(action)[0])
    assert isinstance(state, dict), state
    action = tf.transpose(action, [1, 0, 2])
    prior = tools.static_scan(self.img_step, action, state)
    prior = {k: tf.transpose(v, [1, 0, 2]) for k, v in prior.items()}
    return prior

  def get_feat(self, state):
    return tf.concat([state['stoch'], state['deter']], -1)

  def get_dist(self, state):
    # Distributions in float32, also under mixed precision.
    mean = tf.cast(state['mean'], tf.float32)
    std = tf.cast(state['std'], tf.float32)
    return tfd.MultivariateNormalDiag(mean, std)

  def obs_step(self, prev_state, prev_action, embed):
    prior = self.img_step(prev_state, prev_action)
    x = tf.concat([prior['deter'], embed], -1)
    x = self.get('obs1', tfkl.Dense, self._hidden_size, self._activation)(x)
    x = self.get('obs2', tfkl.Dense, 2 * self._stoch_size, None)(x)
    post = self._stoch_state(x, prior['deter'])
    return post, prior

  def img_step(self, prev_state, prev_action):
    prev_action = tf.cast(prev_action, prev_state['stoch'].dtype)
    x = tf.concat([prev_state['stoch'], prev_action], -1)
    x = self.get('img1', tfkl.Dense, self._hidden_size, self._activation)(x)
    x, deter = self._cell(x, [prev_state['deter']])
    deter = deter[0]  # Keras wraps the state in a list.
    x = self.get('img2', tfkl.Dense, self._hidden_size, self._activation)(x)
    x = self.get('img3', tfkl.Dense, 2 * self._stoch_size, None)(x)
    return self._stoch_state(x, deter)

  def _stoch_state(self, x, deter):
    mean, std = tf.split(x, 2, -1)
    std = tf.nn.softplus(std) + 0.1
    stoch = mean + std * tf.random.normal(tf.shape(mean), dtype=mean.dtype)
    return {'mean': mean, 'std': std, 'stoch': stoch, 'deter': deter}


def kl_loss(post_dist, prior_dist, free_nats):
  # Averaged over batch and time first, then clipped below at free nats, so
  # the representation is free to use that many nats on average.
  div = tf.reduce_mean(tfd.kl_divergence(post_dist, prior_dist))
  return tf.maximum(div, free_nats)


class ConvEncoder(tools.Module):

  def __init__(self, depth=32, act=tf.nn.relu):
    self._act = act
    self._depth = depth

  def __call__(self, obs):
    kwargs = dict(strides=2, activation=self._act)
    x = tf.reshape(obs['image'], (-1,) + tuple(obs['image'].shape[-3:]))
    x = self.get('h1', tfkl.Conv2D, 1 * self._depth, 4, **kwargs)(x)
    x = self.get('h2', tfkl.Conv2D, 2 * self._depth, 4, **kwargs)(x)
    x = self.get('h3', tfkl.Conv2D, 4 * self._depth, 4, **kwargs)(x)
    x = self.get('h4', tfkl.Conv2D, 8 * self._depth, 4, **kwargs)(x)
    shape = tf.concat([tf.shape(obs['image'])[:-3], [32 * self._depth]], 0)
    return tf.reshape(x, shape)


class ConvDecoder(tools.Module):

  def __init__(self, depth=32, act=tf.nn.relu, shape=(64, 64, 3)):
    self._act = act
    self._depth = depth
    self._shape = shape

  def __call__(self, features):
    kwargs = dict(strides=2, activation=self._act)
    x = self.get('h1', tfkl.Dense, 32 * self._depth, None)(features)
    x = tf.reshape(x, [-1, 1, 1, 32 * self._depth])
    x = self.get('h2', tfkl.Conv2DTranspose, 4 * self._depth, 5, **kwargs)(x)
    x = self.get('h3', tfkl.Conv2DTranspose, 2 * self._depth, 5, **kwargs)(x)
    x = self.get('h4', tfkl.Conv2DTranspose, 1 * self._depth, 6, **kwargs)(x)
    x = self.get('h5', tfkl.Conv2DTranspose, self._shape[-1], 6, strides=2)(x)
    mean = tf.reshape(x, tf.concat([tf.shape(features)[:-1], self._shape], 0))
    mean = tf.cast(mean, tf.float32)
    return tfd.Independent(tfd.Normal(mean, 1), len(self._shape))


class DenseDecoder(tools.Module):

  def __init__(self, shape, layers, units, dist='normal', act=tf.nn.elu):
    self._shape = shape
    self._layers = layers
    self._units = units
    self._dist = dist
    self._act = act

  def __call__(self, features):
    x = features
    for index in range(self._layers):
      x = self.get(f'h{index}', tfkl.Dense, self._units, self._act)(x)
    x = self.get('hout', tfkl.Dense, int(np.prod(self._shape)))(x)
    x = tf.reshape(x, tf.concat([tf.shape(features)[:-1], self._shape], 0))
    x = tf.cast(x, tf.float32)
    if self._dist == 'normal':
      return tfd.Independent(tfd.Normal(x, 1), len(self._shape))
    if self._dist == 'binary':
      return tfd.Independent(tfd.Bernoulli(x), len(self._shape))
    raise NotImplementedError(self._dist)


class ActionDecoder(tools.Module):

  def __init__(
      self, size, layers, units, dist='tanh_normal', act=tf.nn.elu,
      min_std=1e-4, init_std=5, mean_scale=5):
    if dist != 'tanh_normal':
      raise ValueError(
          f'action_dist {dist!r} is not supported; use tanh_normal.')
    self._size = size
    self._layers = layers
    self._units = units
    self._dist = dist
    self._act = act
    self._min_std = min_std
    self._init_std = init_std
    self._mean_scale = mean_scale

  def __call__(self, features):
    raw_init_std = np.log(np.exp(self._init_std) - 1)
    x = features
    for index in range(self._layers):
      x = self.get(f'h{index}', tfkl.Dense, self._units, self._act)(x)
    x = self.get('hout', tfkl.Dense, 2 * self._size)(x)
    mean, std = tf.split(tf.cast(x, tf.float32), 2, -1)
    # Bounded mean and a softplus std that starts at init_std.
    mean = self._mean_scale * tf.tanh(mean / self._mean_scale)
    std = tf.nn.softplus(std + raw_init_std) + self._min_std
    dist = tfd.Normal(mean, std)
    dist = tfd.TransformedDistribution(dist, tools.TanhBijector())
    dist = tfd.Independent(dist, 1)
    return tools.SampleDist(dist)


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
  The std widens additively, unlike the constraint's s + xi_s."""
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

  A state enters as [mean of s, h] for real, overshoot and imagined
  transitions alike, so that the width of posterior and prior samples cannot
  give the answer away.
  """

  def __init__(self, layers=3, units=400, act=tf.nn.elu):
    self._layers = layers
    self._units = units
    self._act = act

  def __call__(self, state, action, next_state):
    x = tf.concat([
        self.features(state), tf.cast(action, state['deter'].dtype),
        self.features(next_state)], -1)
    for index in range(self._layers):
      x = self.get(f'h{index}', tfkl.Dense, self._units, self._act)(x)
    return tf.cast(self.get('hout', tfkl.Dense, 2)(x), tf.float32)

  @staticmethod
  def features(state):
    return tf.concat([state['mean'], state['deter']], -1)

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
