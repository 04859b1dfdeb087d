"""LSQQuantizer: initialisation from the first batch, gradient scale, LSQ+ offsets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from tfquant.quantizers import LSQQuantizer
from tfquant.specs import TensorSpec


def _lsq(bits=4, narrow=True, per_axis=False, axis=None, name="lsq_q"):
    spec = TensorSpec(bits=bits, learner="lsq", symmetric=True, narrow_range=narrow,
                      per_axis=per_axis)
    return LSQQuantizer(spec, axis=axis, name=name)


@pytest.mark.parametrize("bits,narrow", [(4, True), (4, False), (8, True), (2, False)])
def test_lsq_init_from_first_batch_per_tensor(bits, narrow, rng):
    q_p = (1 << (bits - 1)) - 1
    q = _lsq(bits, narrow)
    x1 = rng.normal(0.2, 1.5, size=(6, 10)).astype(np.float32)
    q(tf.constant(x1), training=True)
    # Esser et al. 2019: s0 = 2 * mean(|x|) / sqrt(Q_P), capped at max|x| / Q_P (a coarser step
    # clips nothing); this batch takes the paper's value at 2 bits and the cap at 4 and 8 bits
    a = np.abs(x1.astype(np.float64))
    paper, cap = 2.0 * a.mean() / math.sqrt(q_p), a.max() / q_p
    assert (paper < cap) == (bits == 2)
    expected = min(paper, cap)
    np.testing.assert_allclose(q.step_size.numpy(), expected, rtol=1e-5)
    assert bool(q.initialized.numpy())
    # later batches do not re-initialise
    q(tf.constant(x1 * 10), training=True)
    np.testing.assert_allclose(q.step_size.numpy(), expected, rtol=1e-5)
    # and the range is [-Q_N s, Q_P s]
    p = q.quant_params()
    np.testing.assert_allclose(p.scale, expected, rtol=1e-5)
    assert int(p.zero_point) == 0


@pytest.mark.parametrize("axis,shape", [(-1, (3, 3, 2, 5)), ((-2, -1), (3, 3, 4, 2)),
                                        (-2, (3, 3, 5, 2))])
def test_lsq_init_per_axis(axis, shape, rng):
    q = _lsq(4, True, per_axis=True, axis=axis)
    w = rng.normal(0.0, 1.0, size=shape).astype(np.float32)
    w *= np.linspace(0.5, 2.0, int(np.prod(shape[-2:]))).reshape(shape[-2:]).astype(np.float32)
    q(tf.constant(w), training=True)
    axes = [axis] if isinstance(axis, int) else list(axis)
    axes = [a % w.ndim for a in axes]
    moved = np.moveaxis(w, axes, list(range(w.ndim - len(axes), w.ndim)))
    flat = np.abs(moved.reshape(-1, int(np.prod([w.shape[a] for a in axes]))))
    expected = np.minimum(2.0 * flat.mean(0) / math.sqrt(7), flat.max(0) / 7)
    np.testing.assert_allclose(q.step_size.numpy(), expected, rtol=1e-5)


@pytest.mark.parametrize("bits", [4, 8])
def test_lsq_plus_init(bits, rng):
    q = LSQQuantizer(TensorSpec(bits=bits, learner="lsq_plus"), name="lsqp")
    x = rng.uniform(-0.7, 3.0, size=(5, 9)).astype(np.float32)
    q(tf.constant(x), training=True)
    levels = (1 << bits) - 1
    np.testing.assert_allclose(q.offset.numpy(), x.min(), rtol=1e-6)
    np.testing.assert_allclose(q.step_size.numpy(), (x.max() - x.min()) / levels, rtol=1e-5)
    # an all-positive first batch starts the range at 0
    q2 = LSQQuantizer(TensorSpec(bits=bits, learner="lsq_plus"), name="lsqp2")
    q2(tf.constant(np.abs(x) + 1.0), training=True)
    assert float(q2.offset.numpy()) == 0.0
    np.testing.assert_allclose(q2.step_size.numpy(), (np.abs(x) + 1.0).max() / levels,
                               rtol=1e-5)


def _step_gradient(q, x, upstream):
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(q(tf.constant(x), training=True) * upstream)
    return tape.gradient(loss, q.step_size).numpy()


def _reference_step_grad(x, s, q_n, q_p, upstream, axis=None):
    v = x.astype(np.float64) / s
    d = np.where(v < -q_n, -q_n, np.where(v > q_p, q_p, np.round(v) - v)) * upstream
    if axis is None:
        return d.sum()
    return d.reshape(-1, d.shape[-1]).sum(0)


def test_lsq_gradient_scale_activations(rng):
    """Activations [batch, features]: g = 1 / sqrt(features * Q_P) (one sample's elements)."""
    q = _lsq(4, True, name="act_lsq")
    x = rng.normal(0.0, 1.0, size=(16, 12)).astype(np.float32)
    q(tf.constant(x), training=True)  # init (no gradient into the variable at step 0)
    q.step_size.assign(q.step_size * 0.8)  # clip the largest values; none on the boundary
    s = float(q.step_size.numpy())
    upstream = rng.normal(size=x.shape).astype(np.float32)
    g = _step_gradient(q, x, upstream)
    expected = _reference_step_grad(x, s, 7, 7, upstream) / math.sqrt(12 * 7)
    np.testing.assert_allclose(g, expected, rtol=1e-3, atol=1e-5)


def test_lsq_gradient_scale_per_tensor_weights(rng):
    """Weights: N is the number of weights the step covers (all of them per-tensor)."""
    q = _lsq(4, True, name="w_lsq")
    q.for_weights = True  # what QuantizeWrapper sets on its weight quantizers
    w = rng.normal(0.0, 1.0, size=(10, 6)).astype(np.float32)
    q(tf.constant(w), training=True)
    q.step_size.assign(q.step_size * 0.8)
    s = float(q.step_size.numpy())
    upstream = rng.normal(size=w.shape).astype(np.float32)
    g = _step_gradient(q, w, upstream)
    expected = _reference_step_grad(w, s, 7, 7, upstream) / math.sqrt(60 * 7)
    np.testing.assert_allclose(g, expected, rtol=1e-3, atol=1e-5)


def test_lsq_gradient_scale_per_channel_weights(rng):
    q = _lsq(4, True, per_axis=True, axis=-1, name="wc_lsq")
    q.for_weights = True
    w = rng.normal(0.0, 1.0, size=(3, 3, 4, 5)).astype(np.float32)
    q(tf.constant(w), training=True)
    q.step_size.assign(q.step_size * 0.8)
    s = q.step_size.numpy()
    upstream = rng.normal(size=w.shape).astype(np.float32)
    g = _step_gradient(q, w, upstream)
    expected = _reference_step_grad(w, s, 7, 7, upstream, axis=-1) / math.sqrt(36 * 7)
    np.testing.assert_allclose(g, expected, rtol=1e-3, atol=1e-5)


def test_lsq_learns_in_fit(rng):
    """End to end: the step size is a trainable weight that an optimizer moves."""
    import keras
    inp = keras.Input((6,))
    q = _lsq(3, True, name="fit_lsq")
    model = keras.Model(inp, q(inp))
    model.compile(keras.optimizers.SGD(0.1), "mse", jit_compile=False)
    x = rng.normal(size=(32, 6)).astype(np.float32)
    model.fit(x, x, epochs=3, batch_size=8, verbose=0, shuffle=False)
    assert q.step_size in model.trainable_weights
    s_after_init = min(2.0 * np.abs(x[:8]).mean() / math.sqrt(3), np.abs(x[:8]).max() / 3)
    assert abs(float(q.step_size.numpy()) - s_after_init) > 1e-4
