"""The quantizer zoo: DoReFa, binary (BNN / XNOR-Net), ternary (TWN), the naive weight-only
preset and per-layer mixed precision, each against a hand-written numpy formula.

(Named ``test_zoo_quantizers.py``: ``tests/test_zoo.py`` already exists and pytest's default
import mode needs unique basenames in a tests tree without ``__init__.py`` files.)
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfquant
from tfquant.layers import QuantizeWrapper
from tfquant.quantizers import (QUANTIZER_CLASSES, BinaryQuantizer, DoReFaQuantizer, Quantizer,
                                TernaryQuantizer, make_quantizer)
from tfquant.quantizers.binary import LatentWeightClip, constrain_latent_weights
from tfquant.specs import LayerSpec, QuantConfig, TensorSpec

F32 = np.float32


# ------------------------------------------------------------- numpy references
def np_dorefa_weights(w, k, axis=None):
    """Zhou et al. 2016, eq. (9): 2 * quantize_k(tanh(w) / (2 max|tanh w|) + 1/2) - 1."""
    t = np.tanh(w.astype(np.float64))
    m = np.abs(t).max() if axis is None else np.abs(t).max(axis=0, keepdims=True)
    r = t / (2 * m) + 0.5
    n = 2 ** k - 1
    return 2 * np.floor(r * n + 0.5) / n - 1


def np_dorefa_weight_grad(w, c):
    """d/dw of sum(c * (tanh(w) / M)), M = max|tanh(w)| (the STE makes w_q ~ 2 w_t - 1)."""
    w = w.astype(np.float64)
    t = np.tanh(w)
    flat = np.abs(t).ravel()
    j = int(np.argmax(flat))
    m = flat[j]
    d_tanh = 1 - t ** 2
    grad = c * d_tanh / m
    s = np.sum(c * t)
    grad.ravel()[j] -= np.sign(t.ravel()[j]) * d_tanh.ravel()[j] * s / m ** 2
    return grad


def np_binary(x, per_channel=False, scaled=True):
    alpha = 1.0
    if scaled:
        alpha = np.abs(x).mean(axis=0, keepdims=True) if per_channel else np.abs(x).mean()
    return alpha * np.where(x >= 0, 1.0, -1.0), alpha


def np_ternary(w, per_channel=False):
    a = np.abs(w.astype(np.float64))
    axis = 0 if per_channel else None
    delta = 0.7 * a.mean(axis=axis, keepdims=per_channel)
    mask = a > delta
    alpha = (a * mask).sum(axis=axis, keepdims=per_channel) / mask.sum(axis=axis,
                                                                    keepdims=per_channel)
    return alpha * np.sign(w) * mask, delta, alpha


def _weight_quantizer(learner, per_axis=False, **spec):
    q = make_quantizer(TensorSpec(learner=learner, symmetric=True, narrow_range=True,
                                  per_axis=per_axis, **spec),
                       axis=-1 if per_axis else None, name=f"q_{learner}")
    q.for_weights = True
    return q


def _value_and_grad(q, x, upstream, training=True):
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = q(x, training=training)
        loss = tf.reduce_sum(y * upstream)
    return y.numpy(), tape.gradient(loss, x).numpy()


def test_registry_maps_zoo_learners():
    assert QUANTIZER_CLASSES["dorefa"] is DoReFaQuantizer
    assert QUANTIZER_CLASSES["binary"] is BinaryQuantizer
    assert QUANTIZER_CLASSES["ternary"] is TernaryQuantizer


# ------------------------------------------------------------------------ DoReFa
@pytest.mark.parametrize("k", [2, 3, 5])
@pytest.mark.parametrize("per_axis", [False, True])
def test_dorefa_weights_match_paper_formula(k, per_axis, rng):
    w = rng.normal(0.0, 0.6, size=(64, 6)).astype(F32)
    q = _weight_quantizer("dorefa", per_axis=per_axis, bits=k)
    y_train = q(tf.constant(w), training=True).numpy()
    y_infer = q(tf.constant(w), training=False).numpy()
    expected = np_dorefa_weights(w, k, axis=0 if per_axis else None)
    np.testing.assert_allclose(y_train, expected, atol=1e-6)
    np.testing.assert_array_equal(y_train, y_infer)
    n = 2 ** k - 1
    levels = np.unique(np.round(y_train * n).astype(int))
    assert set(levels) <= set(range(-n, n + 1, 2))  # odd multiples of 1/n: no zero level
    if not per_axis:
        assert len(levels) == 2 ** k
    # the storage grid: (k+1)-bit symmetric narrow range, scale 1/n, integers = odd levels
    p = q.quant_params()
    assert (p.bits, p.narrow_range, int(p.zero_point), p.qmin, p.qmax) == (k + 1, True, 0, -n, n)
    np.testing.assert_allclose(p.scale, 1.0 / n, rtol=1e-6)
    ints = p.quantize(y_train)
    np.testing.assert_array_equal(ints, np.round(expected * n).astype(int))
    np.testing.assert_allclose(p.dequantize(ints), y_train, atol=1e-6)


def test_dorefa_gradient_is_straight_through_the_rounding(rng):
    w = rng.normal(0.0, 0.8, size=(12, 5)).astype(F32)
    c = rng.normal(size=w.shape).astype(F32)
    q = _weight_quantizer("dorefa", bits=3)
    _, grad = _value_and_grad(q, w, c)
    # w_q = 2 quantize_k(w_t) - 1 with dquantize_k = 1: d/dw sum(c w_q) = d/dw sum(c tanh/M)
    np.testing.assert_allclose(grad, np_dorefa_weight_grad(w, c), rtol=1e-4, atol=1e-6)


def test_dorefa_activations_clip_to_unit_interval(rng):
    q = make_quantizer(TensorSpec(bits=3, learner="dorefa"), name="act")
    x = rng.uniform(-0.5, 1.5, size=(8, 16)).astype(F32)
    y, grad = _value_and_grad(q, x, np.ones_like(x))
    np.testing.assert_allclose(y, np.round(np.clip(x, 0, 1) * 7) / 7, atol=1e-6)
    np.testing.assert_array_equal(grad, ((x >= 0) & (x <= 1)).astype(F32))
    p = q.quant_params()
    assert p.bits == 3 and float(p.min) == 0.0 and abs(float(p.max) - 1.0) < 1e-6


def test_dorefa_rejects_16_bit_weights(rng):
    q = _weight_quantizer("dorefa", bits=16)
    with pytest.raises(ValueError, match="17-bit storage"):
        q(tf.constant(rng.normal(size=(4, 3)).astype(F32)), training=True)


# ------------------------------------------------------------------------ binary
@pytest.mark.parametrize("per_axis", [False, True])
def test_binary_weights_xnor_scale_and_hardtanh_gradient(per_axis, rng):
    w = rng.normal(0.0, 0.9, size=(32, 4)).astype(F32)
    w[0, 0] = 0.0  # sign(0) = +1
    upstream = rng.normal(size=w.shape).astype(F32)
    q = _weight_quantizer("binary", per_axis=per_axis)
    y, grad = _value_and_grad(q, w, upstream)
    expected, alpha = np_binary(w, per_channel=per_axis)
    np.testing.assert_allclose(y, expected, rtol=1e-6)
    assert y[0, 0] > 0
    # hardtanh STE: alpha * 1[|w| <= 1]
    np.testing.assert_allclose(grad, upstream * alpha * (np.abs(w) <= 1), rtol=1e-5, atol=1e-7)
    assert np.any(np.abs(w) > 1) and np.any(grad == 0)
    p = q.quant_params()
    np.testing.assert_allclose(p.scale, np.ravel(alpha) if per_axis else alpha, rtol=1e-6)
    assert (p.bits, p.narrow_range, p.qmin, p.qmax) == (2, True, -1, 1)
    np.testing.assert_array_equal(p.quantize(y), np.where(w >= 0, 1, -1))


def test_binary_activations_are_unscaled_sign(rng):
    q = make_quantizer(TensorSpec(learner="binary"), name="bin_act")
    x = rng.normal(0.0, 1.5, size=(8, 10)).astype(F32)
    y, grad = _value_and_grad(q, x, np.ones_like(x))
    np.testing.assert_array_equal(y, np.where(x >= 0, 1.0, -1.0))
    np.testing.assert_array_equal(grad, (np.abs(x) <= 1).astype(F32))
    np.testing.assert_allclose(q.quant_params().scale, 1.0)


def test_binary_scale_options_and_state_semantics(rng):
    w1 = rng.normal(0.0, 0.5, size=(16, 3)).astype(F32)
    w2 = 3.0 * w1
    q = BinaryQuantizer(TensorSpec(learner="binary"), scale="mean", name="b")
    # before any training step inference computes alpha from its input and stores nothing
    np.testing.assert_allclose(q(tf.constant(w2), training=False).numpy(),
                               np_binary(w2)[0], rtol=1e-6)
    with pytest.raises(ValueError, match="no state yet"):
        q.quant_params()
    q(tf.constant(w1), training=True)
    # afterwards inference uses the stored alpha (from w1), like the min/max learner's range
    np.testing.assert_allclose(q(tf.constant(w2), training=False).numpy(),
                               np.abs(w1).mean() * np.where(w2 >= 0, 1, -1), rtol=1e-6)
    unscaled = BinaryQuantizer(TensorSpec(learner="binary"), scale="none", name="b1")
    unscaled.for_weights = True
    np.testing.assert_array_equal(unscaled(tf.constant(w1), training=True).numpy(),
                                  np.where(w1 >= 0, 1.0, -1.0))
    with pytest.raises(ValueError, match="scale="):
        BinaryQuantizer(TensorSpec(learner="binary"), scale="max")


# ----------------------------------------------------------------------- ternary
@pytest.mark.parametrize("per_axis", [False, True])
def test_ternary_matches_twn(per_axis, rng):
    w = rng.normal(0.0, 0.4, size=(48, 5)).astype(F32)
    upstream = rng.normal(size=w.shape).astype(F32)
    q = _weight_quantizer("ternary", per_axis=per_axis)
    y, grad = _value_and_grad(q, w, upstream)
    expected, delta, alpha = np_ternary(w, per_channel=per_axis)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-7)
    assert set(np.unique(np.sign(y))) == {-1.0, 0.0, 1.0}
    np.testing.assert_allclose(q.delta.numpy(), np.ravel(delta), rtol=1e-5)
    np.testing.assert_allclose(q.alpha_var.numpy(), np.ravel(alpha), rtol=1e-5)
    np.testing.assert_array_equal(grad, upstream)  # identity straight-through estimator
    np.testing.assert_array_equal(q(tf.constant(w), training=False).numpy(), y)
    np.testing.assert_array_equal(q.quant_params().quantize(y), np.sign(expected))


def test_freeze_and_start_step_for_zoo_quantizers(rng):
    x1 = rng.normal(0.0, 1.0, size=(16, 4)).astype(F32)
    x2 = 2.0 * x1
    q = TernaryQuantizer(TensorSpec(learner="ternary", freeze_step=1), name="t")
    q(tf.constant(x1), training=True)
    q(tf.constant(x2), training=True)  # step 1: frozen, state from x1 kept
    np.testing.assert_allclose(q.alpha_var.numpy(), np_ternary(x1)[2], rtol=1e-5)
    q = BinaryQuantizer(TensorSpec(learner="binary", quant_start_step=2), name="b")
    np.testing.assert_array_equal(q(tf.constant(x1), training=True).numpy(), x1)
    q(tf.constant(x1), training=True)
    np.testing.assert_array_equal(q(tf.constant(x1), training=True).numpy(),
                                  np.where(x1 >= 0, 1.0, -1.0))


# ------------------------------------------------------------ models, saving, export
def _mlp(seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((12,))
    x = keras.layers.Dense(16, name="fc1")(inp)
    x = keras.layers.Dense(16, activation="relu", name="fc2")(x)
    out = keras.layers.Dense(5, name="fc3")(x)
    return keras.Model(inp, out)


def _zoo_config():
    def w(learner, **kw):
        return {"weights": {"learner": learner, "symmetric": True, "narrow_range": True,
                            "per_axis": False, **kw}}
    return QuantConfig(by_name={"fc1": w("dorefa", bits=3), "fc2": w("binary"),
                                "fc3": w("ternary")})


def test_mixed_precision_overrides_take_effect(rng):
    def dorefa(bits):
        return {"weights": {"learner": "dorefa", "bits": bits, "per_axis": False}}
    cfg = QuantConfig(by_name={"fc1": dorefa(2), "fc2": dorefa(3), "fc3": dorefa(4)})
    qmodel = tfquant.quantize_model(_mlp(), cfg)
    qmodel(rng.normal(size=(4, 12)).astype(F32), training=True)
    for name, bits in (("fc1", 2), ("fc2", 3), ("fc3", 4)):
        wrapper = qmodel.get_layer(f"quant_{name}")
        quantizer = wrapper.weight_quantizers["kernel"]
        assert quantizer.spec.bits == bits and isinstance(quantizer, DoReFaQuantizer)
        kernel = wrapper.layer.kernel.numpy()
        used = quantizer(tf.constant(kernel), training=False).numpy()
        assert len(np.unique(used)) == 2 ** bits  # 16x16 or 16x5 weights fill every level
        np.testing.assert_allclose(used, np_dorefa_weights(kernel, bits), atol=1e-6)


def test_naive_w8_preset_is_weight_only(rng):
    model = _mlp()
    qmodel = tfquant.quantize_model(model, "naive_w8")
    assert not any(isinstance(layer, Quantizer) for layer in qmodel.layers)  # no input quantizer
    quantizers = [q for layer in qmodel.layers if isinstance(layer, QuantizeWrapper)
                  for q in layer.quantizers.values()]
    assert len(quantizers) == 3 and all(q.for_weights for q in quantizers)
    x = rng.normal(size=(3, 12)).astype(F32)
    # hand reference: per-tensor symmetric int8 weights, float activations, no input quantizer
    h = x
    for name in ("fc1", "fc2", "fc3"):
        w, b = model.get_layer(name).get_weights()
        s = np.abs(w).max() / 127.0
        h = h @ (np.round(w / s) * s) + b
        if name == "fc2":
            h = np.maximum(h, 0)
    np.testing.assert_allclose(qmodel(x, training=False).numpy(), h, rtol=1e-4, atol=1e-5)


def test_keras_round_trip_without_custom_objects(tmp_path, rng):
    qmodel = tfquant.quantize_model(_mlp(), _zoo_config())
    inp = keras.Input((12,))
    extra = BinaryQuantizer(TensorSpec(learner="binary"), scale="mean", name="extra_binary")
    tern = TernaryQuantizer(TensorSpec(learner="ternary"), threshold_factor=0.5, name="tern")
    model = keras.Model(inp, tern(extra(qmodel(inp))))
    x = rng.normal(size=(8, 12)).astype(F32)
    model(x, training=True)
    path = tmp_path / "zoo.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(loaded(x, training=False).numpy(),
                                  model(x, training=False).numpy())
    assert loaded.get_layer("extra_binary").scale == "mean"
    assert loaded.get_layer("tern").threshold_factor == 0.5
    inner = loaded.get_layer(qmodel.name)
    assert isinstance(inner.get_layer("quant_fc1").weight_quantizers["kernel"], DoReFaQuantizer)


def test_tflite_export_stores_zoo_weights_as_exact_int8(rng):
    from ai_edge_litert.interpreter import Interpreter

    keras.utils.set_random_seed(1)
    inp = keras.Input((6, 6, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inp)
    x = keras.layers.Flatten()(x)
    out = keras.layers.Dense(3, name="fc")(x)
    cfg = QuantConfig(by_name={
        "conv": {"weights": {"learner": "dorefa", "bits": 3, "per_axis": False}},
        "fc": {"weights": {"learner": "ternary", "per_axis": False}}})
    qmodel = tfquant.quantize_model(keras.Model(inp, out), cfg)
    data = rng.uniform(0, 1, size=(16, 6, 6, 3)).astype(F32)
    qmodel(data, training=True)
    flat = tfquant.export.tflite(qmodel)
    interpreter = Interpreter(model_content=flat)
    found = {}
    for t in interpreter.get_tensor_details():
        if t["dtype"] == np.int8 and len(t["shape"]) in (2, 4) and t["shape"][0] in (3, 4):
            found[tuple(t["shape"])] = (interpreter.get_tensor(t["index"]),
                                        t["quantization_parameters"]["scales"])
    # Sub-8-bit grids are stored in int8 as their b-bit integers shifted left by 8 - b bits
    # (tfquant.fake_quant.int8_container): DoReFa k=3 is stored on a 4-bit grid (x 16),
    # ternary on a 2-bit one (x 64). The dequantized values must be the hand-computed ones.
    conv_q = qmodel.get_layer("quant_conv")
    kernel = conv_q.layer.kernel.numpy()
    ints, scales = found[(4, 3, 3, 3)]  # TFLite OHWI
    odd = np.transpose(np.round(np_dorefa_weights(kernel, 3) * 7), (3, 0, 1, 2))  # +-1..7, odd
    np.testing.assert_array_equal(ints.astype(np.int64), odd.astype(np.int64) * 16)
    np.testing.assert_allclose(scales, 1.0 / 7.0 / 16, rtol=1e-6)
    np.testing.assert_allclose(ints * scales[0],
                               np.transpose(np_dorefa_weights(kernel, 3), (3, 0, 1, 2)),
                               rtol=1e-6, atol=1e-7)
    fc_q = qmodel.get_layer("quant_fc")
    expected, _, alpha = np_ternary(fc_q.layer.kernel.numpy())
    ints, scales = found[(3, 64)]
    np.testing.assert_array_equal(ints.astype(np.int64), np.sign(expected).T.astype(np.int64) * 64)
    np.testing.assert_allclose(scales, alpha / 64, rtol=1e-5)
    np.testing.assert_allclose(ints * scales[0], expected.T, rtol=1e-5, atol=1e-7)


def test_binary_activation_export_is_refused(rng):
    inp = keras.Input((4,))
    out = keras.layers.Dense(3, name="fc")(inp)
    cfg = QuantConfig.preset("tflite_int8").with_overrides(
        by_name={"fc": {"activations": {"learner": "binary"}}})
    qmodel = tfquant.quantize_model(keras.Model(inp, out), cfg)
    qmodel(rng.normal(size=(4, 4)).astype(F32), training=True)
    with pytest.raises(ValueError, match="still computes these ops in float"):
        tfquant.export.tflite(qmodel)


def test_latent_weight_clip_with_fit(tmp_path, rng):
    model = _mlp()
    cfg = QuantConfig(LayerSpec(TensorSpec(learner="binary", per_axis=True, symmetric=True,
                                           narrow_range=True),
                                TensorSpec(bits=8, learner="ema")),
                      by_name={"fc3": {"weights": {"learner": "minmax", "per_axis": False}}})
    qmodel = tfquant.quantize_model(model, cfg)
    assert constrain_latent_weights(qmodel) == ["fc1/kernel", "fc2/kernel"]
    qmodel.compile(keras.optimizers.SGD(5.0), "mse")
    x = rng.normal(size=(32, 12)).astype(F32)
    y = rng.normal(0.0, 10.0, size=(32, 5)).astype(F32)
    qmodel.fit(x, y, epochs=2, batch_size=8, verbose=0)
    for name in ("fc1", "fc2"):
        kernel = qmodel.get_layer(f"quant_{name}").layer.kernel.numpy()
        assert np.abs(kernel).max() <= 1.0 and np.isclose(np.abs(kernel).max(), 1.0)
    fc3 = qmodel.get_layer("quant_fc3").layer.kernel.numpy()
    assert np.abs(fc3).max() > 1.0  # not constrained: the SGD step really was large
    path = tmp_path / "clip.keras"
    qmodel.save(path)
    loaded = keras.saving.load_model(path)
    constraint = loaded.get_layer("quant_fc1").layer.kernel.constraint
    assert isinstance(constraint, LatentWeightClip) and constraint.limit == 1.0
    assert isinstance(loaded.get_layer("quant_fc1"), QuantizeWrapper)
