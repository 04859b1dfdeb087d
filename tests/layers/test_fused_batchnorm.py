"""The fused batch-statistics BatchNormalization of the BN-folding wrapper equals Keras' layer.

``_fused_batchnorm_training`` replaces ``bn(x, training=True)`` in QAT training; the reference
is a copy of the same Keras ``BatchNormalization`` layer called in training mode: outputs,
updated moving statistics and gradients (input, gamma, beta) must agree.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfquant.layers.wrapper import _fusable_batchnorm, _fused_batchnorm_training


def _pair(shape, rng, **kwargs):
    bn = keras.layers.BatchNormalization(momentum=0.7, epsilon=1e-3, **kwargs)
    bn.build(shape)
    weights = [rng.uniform(0.5, 1.5, w.shape).astype(np.float32) for w in bn.weights]
    bn.set_weights(weights)
    ref = keras.layers.BatchNormalization.from_config(bn.get_config())
    ref.build(shape)
    ref.set_weights(weights)
    return bn, ref


@pytest.mark.parametrize("shape", [(5, 6, 7, 4), (16, 3), (4, 9, 5), (2, 3, 4, 5, 3)])
@pytest.mark.parametrize("center_scale", [True, False])
def test_fused_equals_keras_training(shape, center_scale, rng):
    bn, ref = _pair(shape, rng, center=center_scale, scale=center_scale)
    x = tf.constant(rng.normal(1.0, 2.0, size=shape).astype(np.float32))
    upstream = tf.constant(rng.normal(size=shape).astype(np.float32))
    assert _fusable_batchnorm(bn, x)

    def run(fn, layer):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = fn(layer)
            loss = tf.reduce_sum(y * upstream)
        sources = [x] + [w.value for w in layer.trainable_weights]
        return y.numpy(), [g.numpy() for g in tape.gradient(loss, sources)]

    got, got_grads = run(lambda layer: _fused_batchnorm_training(layer, x), bn)
    want, want_grads = run(lambda layer: layer(x, training=True), ref)
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4)
    assert len(got_grads) == len(want_grads) == (3 if center_scale else 1)
    for g, w in zip(got_grads, want_grads):
        np.testing.assert_allclose(g, w, atol=1e-4 * max(1.0, np.abs(w).max()), rtol=1e-3)
    # moving statistics: Keras' update with the biased batch variance (not Bessel-corrected)
    for a, b in ((bn.moving_mean, ref.moving_mean), (bn.moving_variance, ref.moving_variance)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)


def test_moving_variance_uses_biased_batch_variance(rng):
    bn, _ = _pair((8, 5), rng)
    old_var = bn.moving_variance.numpy().copy()
    x = rng.normal(size=(8, 5)).astype(np.float32)
    _fused_batchnorm_training(bn, tf.constant(x))
    np.testing.assert_allclose(bn.moving_variance.numpy(),
                               0.7 * old_var + 0.3 * x.astype(np.float64).var(0), rtol=1e-5)


@pytest.mark.parametrize("kwargs", [{"synchronized": True}, {"renorm": True}, {"axis": 1},
                                    {"epsilon": 1e-6}, {"trainable": False}])
def test_unsupported_configurations_are_not_fused(kwargs, rng):
    bn = keras.layers.BatchNormalization(**kwargs)
    x = tf.zeros((2, 3, 3, 4))
    bn.build(x.shape)
    assert not _fusable_batchnorm(bn, x)
