"""BN-folded QAT in training: output and gradients equal those of the textbook formulation.

The wrapper undoes the fold on the quantized weight (``conv(x, Q(W g) / g)``, cheap) instead of
on the output (``conv(x, Q(W g)) / g``, an activation-sized division and gradient). By linearity
both are the same function, so the forward values and the gradients with respect to every
trainable weight (kernel, bias, gamma, beta) must agree; the reference below is written directly
with ``tf.nn`` / ``tf.quantization`` ops, independently of ``tfquant``.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfquant.layers import QuantizeWrapper
from tfquant.specs import LayerSpec, TensorSpec

EPS = 1e-3


def _layer(kind):
    if kind == "conv":
        return keras.layers.Conv2D(4, 3, name="conv"), (3, 7, 7, 3)
    if kind == "depthwise":
        return keras.layers.DepthwiseConv2D(3, depth_multiplier=2, name="dw"), (3, 7, 7, 3)
    return keras.layers.Dense(5, name="fc"), (9, 6)


def _setup(kind, rng):
    layer, x_shape = _layer(kind)
    bn = keras.layers.BatchNormalization(momentum=0.8, epsilon=EPS, name="bn")
    x = rng.normal(0.2, 1.0, size=x_shape).astype(np.float32)
    bn(layer(x))
    c = bn.gamma.shape[0]
    layer.set_weights([rng.normal(0.0, 0.5, size=w.shape).astype(np.float32)
                       for w in layer.get_weights()])
    bn.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(0.0, 0.3, c),
                    rng.normal(0.0, 0.5, c), rng.uniform(0.3, 2.0, c)])
    weights = TensorSpec(bits=8, symmetric=True, per_axis=True, narrow_range=True,
                         learner="minmax")
    wrapper = QuantizeWrapper(layer, LayerSpec(weights, TensorSpec(bits=8, learner="ema")),
                              batchnorm=bn)
    wrapper(x)
    wrapper.output_quantizer.enabled = False
    return layer, bn, wrapper, x


def _reference(kind, x, kernel, bias, gamma, beta, mean, var):
    """``BN_train(op(x, FQ(W g)) / g + b)`` with the weight range the min/max learner takes."""
    g = gamma * tf.math.rsqrt(var + EPS)
    if kind == "depthwise":
        folded = kernel * tf.reshape(g, kernel.shape[-2:])
        flat = tf.reshape(folded, [-1, g.shape[0]])
    else:
        folded = kernel * g
        flat = tf.reshape(folded, [-1, g.shape[0]])
    lo = tf.minimum(tf.reduce_min(flat, 0), 0.0)
    hi = tf.maximum(tf.reduce_max(flat, 0), 0.0)
    abs_max = tf.maximum(tf.maximum(-lo, hi), 1e-6)
    wq = tf.quantization.fake_quant_with_min_max_vars_per_channel(
        flat, -abs_max, abs_max, num_bits=8, narrow_range=True)
    wq = tf.reshape(wq, kernel.shape)
    if kind == "depthwise":
        y = tf.nn.depthwise_conv2d(x, wq, [1, 1, 1, 1], "VALID")
    elif kind == "conv":
        y = tf.nn.conv2d(x, wq, 1, "VALID")
    else:
        y = tf.matmul(x, wq)
    unfolded = y / g + bias
    b_mean, b_var = tf.nn.moments(unfolded, list(range(len(unfolded.shape) - 1)))
    return (unfolded - b_mean) * tf.math.rsqrt(b_var + EPS) * gamma + beta


@pytest.mark.parametrize("kind", ["conv", "depthwise", "dense"])
def test_training_forward_and_gradients_match_output_unfolding(kind, rng):
    layer, bn, wrapper, x = _setup(kind, rng)
    mean, var = tf.constant(bn.moving_mean.numpy()), tf.constant(bn.moving_variance.numpy())
    ref_vars = [tf.Variable(v.numpy()) for v in (layer.kernel, layer.bias, bn.gamma, bn.beta)]
    upstream = tf.constant(rng.normal(size=wrapper.compute_output_shape(x.shape))
                           .astype(np.float32))

    with tf.GradientTape() as tape:
        expected = _reference(kind, tf.constant(x), *ref_vars, mean, var)
        ref_loss = tf.reduce_sum(expected * upstream)
    ref_grads = tape.gradient(ref_loss, ref_vars)

    got_vars = [layer.kernel, layer.bias, bn.gamma, bn.beta]
    with tf.GradientTape() as tape:
        got = wrapper(x, training=True)
        loss = tf.reduce_sum(got * upstream)
    grads = tape.gradient(loss, got_vars)

    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=2e-5, rtol=1e-4)
    for name, g, r in zip(("kernel", "bias", "gamma", "beta"), grads, ref_grads):
        assert g is not None, name
        scale = float(np.abs(r.numpy()).max())
        if name == "bias":  # a bias before a batch-statistics BN has no effect: ~0 both ways
            np.testing.assert_allclose(g.numpy(), r.numpy(), atol=1e-5)
            continue
        assert scale > 1e-2, name  # a non-trivial gradient is being compared
        np.testing.assert_allclose(g.numpy(), r.numpy(), atol=2e-5 * scale, rtol=1e-3,
                                   err_msg=name)
    # The moving statistics were updated from the batch statistics of the unfolded output.
    assert not np.allclose(bn.moving_mean.numpy(), mean.numpy())
