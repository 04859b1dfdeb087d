"""Behaviour shared by every range learner: training forward == inference forward,
quant_start_step, freeze_step, the enabled flag, error messages."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tfquant.quantizers import (LSQQuantizer, MinMaxQuantizer, PACTQuantizer, Quantizer,
                                make_quantizer)
from tfquant.specs import TensorSpec

LEARNERS = {
    "minmax": TensorSpec(learner="minmax"),
    "ema": TensorSpec(learner="ema", ema_decay=0.7),
    "fixed": TensorSpec(learner="fixed", init_min=-1.5, init_max=2.5),
    "lsq": TensorSpec(bits=4, learner="lsq", symmetric=True, narrow_range=True),
    "lsq_plus": TensorSpec(bits=4, learner="lsq_plus"),
    "pact": TensorSpec(bits=4, learner="pact", init_min=0.0, init_max=2.0),
    "minmax_per_axis": TensorSpec(learner="minmax", per_axis=True, symmetric=True,
                                  narrow_range=True),
    "lsq_per_axis": TensorSpec(bits=4, learner="lsq", per_axis=True, symmetric=True,
                               narrow_range=True),
}
CLASSES = {"minmax": MinMaxQuantizer, "ema": MinMaxQuantizer, "fixed": MinMaxQuantizer,
           "lsq": LSQQuantizer, "lsq_plus": LSQQuantizer, "pact": PACTQuantizer}


def _make(key, **changes):
    spec = LEARNERS[key].replace(**changes) if changes else LEARNERS[key]
    return make_quantizer(spec, axis=-1 if spec.per_axis else None, name=f"q_{key}")


def _perturb_state(q):
    """Moves learned parameters away from their initial values (as training would)."""
    if isinstance(q, LSQQuantizer):
        q.step_size.assign(q.step_size * 1.37)
        if q.offset is not None:
            q.offset.assign(q.offset + 0.45)  # > 0: the grid must be nudged to contain 0
    elif isinstance(q, PACTQuantizer):
        q.alpha.assign(q.alpha * 0.63)


@pytest.mark.parametrize("key", sorted(LEARNERS))
def test_training_forward_equals_inference_forward(key, rng):
    q = _make(key)
    spec = q.spec
    assert isinstance(q, CLASSES[spec.learner])
    x1 = rng.normal(0.3, 1.2, size=(4, 8)).astype(np.float32)
    x2 = rng.normal(-0.2, 0.9, size=(4, 8)).astype(np.float32)
    q(tf.constant(x1), training=True)  # initialise / observe
    _perturb_state(q)
    y_train = q(tf.constant(x2), training=True).numpy()  # state after this call is S
    before = [v.numpy().copy() for v in q.weights]
    y_infer = q(tf.constant(x2), training=False).numpy()  # same state S
    for v, b in zip(q.weights, before):
        np.testing.assert_array_equal(v.numpy(), b)  # inference changes nothing
    np.testing.assert_array_equal(y_train, y_infer)
    # and the value really is quantized with the quantizer's own parameters
    p = q.quant_params()
    scale = np.reshape(p.scale, (1, -1)) if p.per_axis else p.scale
    lo = np.reshape(p.min, (1, -1)) if p.per_axis else p.min
    k = (y_infer - lo) / scale
    np.testing.assert_allclose(k, np.round(k), atol=2e-3)
    assert len(np.unique(y_infer)) > 2


@pytest.mark.parametrize("key", ["minmax", "ema", "lsq", "lsq_plus", "pact"])
def test_quant_start_step_passes_through_while_ranges_update(key, rng):
    q = _make(key, quant_start_step=3)
    train = tf.function(lambda x: q(x, training=True))
    batches = [rng.normal(0.0, 1.0 + i, size=(4, 8)).astype(np.float32) for i in range(5)]
    q.build(batches[0].shape)
    seen = []
    for i, b in enumerate(batches):
        y = train(tf.constant(b)).numpy()
        seen.append([v.numpy().copy() for v in q.weights if v.name != "steps"])
        if i < 3:
            np.testing.assert_array_equal(y, b)  # identity for the first 3 steps
        else:
            assert not np.array_equal(y, b)
            np.testing.assert_array_equal(y, q(tf.constant(b), training=False).numpy())
    if key in ("minmax", "ema"):  # statistics are observed during the delay
        assert not np.array_equal(seen[0], seen[1]) and not np.array_equal(seen[1], seen[2])
        assert float(q.min.numpy()) != -6.0
    if key in ("lsq", "lsq_plus"):
        assert bool(q.initialized.numpy())
    # inference never skips quantization
    y = q(tf.constant(batches[0]), training=False).numpy()
    assert not np.array_equal(y, batches[0])


@pytest.mark.parametrize("key", ["minmax", "ema"])
def test_freeze_step_stops_range_updates(key, rng):
    q = _make(key, freeze_step=2)
    q.build((4, 8))
    train = tf.function(lambda x: q(x, training=True))
    ranges = []
    for i in range(5):
        train(tf.constant(rng.normal(0.0, 1.0 + i, size=(4, 8)).astype(np.float32)))
        ranges.append((float(q.min.numpy()), float(q.max.numpy())))
    assert ranges[0] != ranges[1]  # steps 0 and 1 update
    assert ranges[1] == ranges[2] == ranges[3] == ranges[4]  # step 2 onwards frozen


@pytest.mark.parametrize("key,var", [("lsq", "step_size"), ("lsq_plus", "offset"),
                                     ("lsq_plus", "step_size"), ("pact", "alpha")])
def test_freeze_step_stops_gradients(key, var, rng):
    q = _make(key, freeze_step=3)
    # step 0 initialises LSQ from a narrow batch; later batches are wider, so some values
    # fall outside the range and every parameter gets a gradient
    q(tf.constant(rng.normal(0.5, 0.5, size=(4, 8)).astype(np.float32)), training=True)
    x = tf.constant(rng.normal(0.5, 3.0, size=(4, 8)).astype(np.float32))
    weights = tf.constant(rng.normal(size=(4, 8)).astype(np.float32))
    grads = []
    for _ in range(4):  # steps 1, 2 (learning), 3, 4 (frozen)
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(q(x, training=True) * weights)
        g = tape.gradient(loss, getattr(q, var))
        grads.append(0.0 if g is None else float(tf.reduce_sum(tf.abs(g))))
    assert grads[0] > 0 and grads[1] > 0
    assert grads[2] == 0.0 and grads[3] == 0.0


@pytest.mark.parametrize("key", sorted(LEARNERS))
def test_disabled_quantizer_is_identity(key, rng):
    q = _make(key)
    x = rng.normal(size=(3, 8)).astype(np.float32)
    q.enabled = False
    np.testing.assert_array_equal(q(tf.constant(x), training=True).numpy(), x)
    np.testing.assert_array_equal(q(tf.constant(x), training=False).numpy(), x)


@pytest.mark.parametrize("key", ["minmax", "ema", "lsq", "lsq_plus"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_raise_naming_quantizer(key, bad, rng):
    q = _make(key)
    x = rng.normal(size=(2, 8)).astype(np.float32)
    x[1, 3] = bad
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"q_{key}"):
        q(tf.constant(x), training=True)
    q2 = _make(key)
    q2.build(x.shape)
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"q_{key}"):
        tf.function(lambda t: q2(t, training=True))(tf.constant(x))


def test_per_axis_without_axis_raises_naming_quantizer():
    with pytest.raises(ValueError, match="'kernel_q'.*channel axis"):
        MinMaxQuantizer(TensorSpec(per_axis=True), name="kernel_q")


def test_per_axis_unknown_channel_size_raises():
    q = MinMaxQuantizer(TensorSpec(per_axis=True), axis=-1, name="dyn_q")
    with pytest.raises(ValueError, match="dyn_q"):
        q.build((4, None))


def test_non_float_input_is_cast():
    q = _make("minmax")
    y = q(tf.constant([[1, -2, 3]], tf.int32), training=True)
    assert y.dtype == tf.float32


def test_learner_without_quantizer_class_raises(monkeypatch):
    from tfquant import quantizers
    monkeypatch.delitem(quantizers.QUANTIZER_CLASSES, "ema")
    with pytest.raises(ValueError, match="'ema'"):
        make_quantizer(TensorSpec(learner="ema"))


def test_quantizer_base_is_abstract():
    q = Quantizer(TensorSpec(), name="abstract")
    with pytest.raises(NotImplementedError):
        q.build(())
