"""The fast settings compute the same update as float32 without XLA, and the
update is traced once."""

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_probability import distributions as tfd

import dreamer_idm
from test_idm import _agent

# div sits at its free-nats floor at first; the entropies are unclipped.
LOSSES = ('model_loss', 'image_loss', 'reward_loss', 'div', 'prior_ent',
          'post_ent', 'constraint_kl', 'actor_loss', 'value_loss',
          'evaluator_loss')
# (relative, absolute) tolerances. XLA reorders float32 sums (measured:
# agreement to 1e-6). float16 (the GPU default) keeps 11 bits of mantissa and
# bfloat16 8 (0.4% per rounding), through a dozen layers before the float32
# losses; measured: float16 within 0.6%, bfloat16 within 3%. The absolute
# floor is for the actor loss, a mean of returns that can cancel to ~1e-3 at
# initialization (measured differences up to 1.1e-3 in float16, 3.2e-3 in
# bfloat16).
SETTINGS = {('32', 'on'): (1e-4, 1e-5), ('16', 'off'): (1e-2, 5e-3),
            ('bf16', 'off'): (5e-2, 2e-2)}


@pytest.fixture
def deterministic(monkeypatch):
  # The same fixed "noise" in every setting and every Normal sample at its
  # mean, so that all settings see the same latents, perturbations and
  # imagined actions: the comparison measures arithmetic, not sampling (XLA
  # draws its own random numbers).
  def noise(shape, dtype=tf.float32, **_):
    count = tf.reduce_prod(shape)
    pattern = tf.sin(tf.cast(tf.range(count), tf.float32))
    return tf.cast(tf.reshape(pattern, shape), dtype)
  monkeypatch.setattr(tf.random, 'normal', noise)
  def mean(self, n, seed=None):
    loc = self.loc + tf.zeros_like(self.scale)
    return tf.broadcast_to(loc, tf.concat([[n], tf.shape(loc)], 0))
  monkeypatch.setattr(tfd.Normal, '_sample_n', mean)
  yield
  dreamer_idm.setup_precision('32')


def _agent_like(tmp_path, precision, jit, weights=None):
  dreamer_idm.setup_precision(precision)
  agent, _ = _agent(tmp_path, 'idm', '--jit', jit)
  if weights is not None:  # The reference's weights and Adam statistics.
    for variable, value in zip(agent.checkpoint_variables(), weights):
      variable.assign(value)
  return agent


def _losses(agent, data):
  metrics = agent.train(data)  # Losses before this update's step.
  return {k: float(metrics[k]) for k in LOSSES}


def test_bf16_and_xla_losses_match_float32(tmp_path, deterministic):
  reference = _agent_like(tmp_path / 'ref', '32', 'off')
  assert reference._float == 'float32'
  weights = [v.numpy() for v in reference.checkpoint_variables()]
  data = next(reference._dataset)
  expected = _losses(reference, data)
  for (precision, jit), (rtol, atol) in SETTINGS.items():
    agent = _agent_like(tmp_path / f'{precision}-{jit}', precision, jit, weights)
    assert agent._float == dict(bf16='bfloat16', **{'16': 'float16'}).get(
        precision, 'float32')
    losses = _losses(agent, data)
    for key in LOSSES:
      np.testing.assert_allclose(
          losses[key], expected[key], rtol=rtol, atol=atol,
          err_msg=f'{key} with precision {precision}, XLA {jit}')


def test_the_update_traces_once_and_reports_a_retrace(tmp_path, capsys):
  agent, _ = _agent(tmp_path, 'dreamer')
  assert agent._traces == 1  # Built eagerly, traced by the first update.
  for _ in range(2):
    agent.train(next(agent._dataset))
  assert agent._traces == 1
  assert 'traced again' not in capsys.readouterr().out
  data = {k: v[:, :-1] for k, v in next(agent._dataset).items()}
  agent.train(data)  # A shorter sequence is a new input signature.
  assert agent._traces == 2
  assert 'Warning: the train step was traced again' in capsys.readouterr().out
