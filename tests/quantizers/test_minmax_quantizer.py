"""MinMaxQuantizer: last-value min/max, EMA (hand-computed recurrence) and fixed ranges."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tfquant.quantizers import MinMaxQuantizer, make_quantizer
from tfquant.specs import TensorSpec


def _batches(rng, n=5, shape=(4, 6)):
    # different scales per batch so every statistic moves
    return [(rng.normal(0.0, 1.0 + i, size=shape) + 0.3 * i).astype(np.float32)
            for i in range(n)]


def _train_fn(q, graph):
    def step(x):
        return q(x, training=True)
    return tf.function(step) if graph else step


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "tf_function"])
def test_ema_recurrence_per_tensor(graph, rng, ref):
    decay = 0.9
    q = MinMaxQuantizer(TensorSpec(bits=8, learner="ema", ema_decay=decay), name="ema_q")
    batches = _batches(rng)
    q.build(batches[0].shape)
    train = _train_fn(q, graph)
    m_min = m_max = None
    for t, b in enumerate(batches):
        y = train(tf.constant(b)).numpy()
        # hand computation: first batch initialises, then m = d * m + (1 - d) * batch
        if t == 0:
            m_min, m_max = b.min(), b.max()
        else:
            m_min = decay * m_min + (1 - decay) * b.min()
            m_max = decay * m_max + (1 - decay) * b.max()
        np.testing.assert_allclose(q.min.numpy(), m_min, rtol=1e-5)
        np.testing.assert_allclose(q.max.numpy(), m_max, rtol=1e-5)
        assert int(q.steps.numpy()) == t + 1
        lo, hi = min(m_min, 0.0), max(m_max, 0.0)
        expected, _ = ref.fake_quant(b, lo, hi, 8, False)
        np.testing.assert_array_equal(ref.grid_index(y, lo, hi, 8, False),
                                      ref.grid_index(expected, lo, hi, 8, False))


def test_ema_recurrence_per_axis(rng):
    decay = 0.5
    q = MinMaxQuantizer(TensorSpec(bits=8, learner="ema", ema_decay=decay, per_axis=True,
                                   symmetric=True, narrow_range=True), axis=-1, name="w_q")
    batches = _batches(rng, n=4, shape=(3, 5))
    m_min = m_max = None
    for t, b in enumerate(batches):
        q(tf.constant(b), training=True)
        b_min, b_max = b.min(axis=0), b.max(axis=0)
        m_min = b_min if t == 0 else decay * m_min + (1 - decay) * b_min
        m_max = b_max if t == 0 else decay * m_max + (1 - decay) * b_max
        np.testing.assert_allclose(q.min.numpy(), m_min, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(q.max.numpy(), m_max, rtol=1e-5, atol=1e-7)
    # symmetric narrow range: [-a, a] with a = max(|min|, |max|) per channel, zero point 0
    p = q.quant_params()
    a = np.maximum(-np.minimum(m_min, 0), np.maximum(m_max, 0))
    np.testing.assert_allclose(p.scale, a / 127.0, rtol=1e-5)
    np.testing.assert_array_equal(p.zero_point, 0)
    assert p.axis == -1 and (p.qmin, p.qmax) == (-127, 127)


def test_ema_per_axis_multi_axis_channel(rng):
    q = MinMaxQuantizer(TensorSpec(learner="minmax", per_axis=True, symmetric=True,
                                   narrow_range=True), axis=(-2, -1), name="dw_q")
    kernel = rng.normal(size=(3, 3, 4, 2)).astype(np.float32)
    q(tf.constant(kernel), training=True)
    flat = kernel.reshape(9, 8)  # channel index = in * multiplier + m
    np.testing.assert_allclose(q.min.numpy(), flat.min(axis=0), rtol=1e-6)
    np.testing.assert_allclose(q.max.numpy(), flat.max(axis=0), rtol=1e-6)


def test_minmax_keeps_last_batch(rng):
    q = MinMaxQuantizer(TensorSpec(learner="minmax"), name="mm")
    for b in _batches(rng, n=3):
        q(tf.constant(b), training=True)
        assert float(q.min.numpy()) == b.min() and float(q.max.numpy()) == b.max()


def test_symmetric_not_narrow_range(rng, ref):
    q = MinMaxQuantizer(TensorSpec(learner="minmax", symmetric=True, narrow_range=False),
                        name="sym")
    x = np.array([[-0.5, 2.0, 1.0]], np.float32)
    y = q(tf.constant(x), training=True).numpy()
    p = q.quant_params()
    # [-a * 128/127, a]: zero point exactly at 0 of the signed grid, scale a / 127
    assert int(p.zero_point) == 0 and (p.qmin, p.qmax) == (-128, 127)
    np.testing.assert_allclose(p.scale, 2.0 / 127.0, rtol=1e-6)
    np.testing.assert_allclose(p.min, -2.0 * 128 / 127, rtol=1e-6)
    expected, _ = ref.fake_quant(x, -2.0 * 128 / 127, 2.0, 8, False)
    np.testing.assert_allclose(y, expected, atol=1e-6)


def test_range_always_contains_zero_and_is_not_empty():
    q = MinMaxQuantizer(TensorSpec(learner="minmax"), name="pos")
    q(tf.constant([[1.0, 2.0]]), training=True)
    p = q.quant_params()
    assert float(p.min) == 0.0 and float(p.max) == pytest.approx(2.0, rel=1e-6)
    q(tf.zeros([2, 2]), training=True)  # all zeros: still a valid (tiny) range
    p = q.quant_params()
    assert float(p.max) > float(p.min) and np.isfinite(p.scale) and p.scale > 0


def test_fixed_range_never_changes(rng, ref):
    q = make_quantizer(TensorSpec(learner="fixed", init_min=0.0, init_max=255.0 / 256.0),
                       name="fixed")
    assert isinstance(q, MinMaxQuantizer)
    for b in _batches(rng, n=3):
        y = q(tf.constant(b), training=True).numpy()
        assert float(q.min.numpy()) == 0.0 and float(q.max.numpy()) == 255.0 / 256.0
        expected, _ = ref.fake_quant(b, 0.0, 255.0 / 256.0, 8, False)
        np.testing.assert_allclose(y, expected, atol=1e-7)
    p = q.quant_params()
    assert float(p.scale) == 1.0 / 256.0 and int(p.zero_point) == -128


def test_set_range_broadcasts():
    q = MinMaxQuantizer(TensorSpec(learner="minmax", per_axis=True), axis=-1, name="sr")
    q.build((2, 3))
    q.set_range(-1.0, 2.0)
    np.testing.assert_array_equal(q.min.numpy(), [-1.0] * 3)
    np.testing.assert_array_equal(q.max.numpy(), [2.0] * 3)
