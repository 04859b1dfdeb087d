"""BN folding and cross-layer equalization against the float model and numpy channel ranges."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tfquant.ptq import cross_layer_equalization, fold_batchnorm
from tfquant.ptq.data import pack_inputs

L = keras.layers


def set_batchnorms(model, rng, beta_mean=0.0):
    for bn in (layer for layer in model.layers if isinstance(layer, L.BatchNormalization)):
        c = bn.gamma.shape[0]
        bn.set_weights([rng.uniform(0.3, 2.0, c) * rng.choice([-1, 1], c),
                        rng.normal(beta_mean, 0.5, c), rng.normal(0, 0.3, c),
                        rng.uniform(0.5, 2.0, c)])


def unbalance(layer, rng):
    """Multiplies each output channel by a factor in [0.02, 50]: ranges far from equal."""
    kernel = layer.kernel.numpy()
    factors = np.exp(rng.uniform(np.log(0.02), np.log(50), kernel.shape[-1]))
    layer.kernel.assign(kernel * factors)


def ranges(layer, side):
    """numpy max |W| per output or per input channel, written out per layer type."""
    k = np.abs(layer.kernel.numpy())
    if isinstance(layer, L.DepthwiseConv2D):  # (h, w, in, multiplier)
        return k.max(axis=(0, 1)).reshape(-1) if side == "out" else k.max(axis=(0, 1, 3))
    if isinstance(layer, L.Dense):  # (in, out)
        return k.max(axis=0) if side == "out" else k.max(axis=1)
    return k.max(axis=(0, 1, 2)) if side == "out" else k.max(axis=(0, 1, 3))  # (h, w, in, out)


@pytest.fixture(scope="module")
def relu_model():
    keras.utils.set_random_seed(11)
    rng = np.random.default_rng(11)
    inp = keras.Input((8, 8, 3))
    x = L.Conv2D(6, 3, padding="same", name="c1")(inp)
    x = L.BatchNormalization(name="bn1")(x)
    x = L.ReLU(name="r1")(x)
    x = L.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = L.BatchNormalization(name="bn2")(x)
    x = L.ReLU(name="r2")(x)
    x = L.Conv2D(5, 1, activation="relu", name="c2")(x)
    x = L.MaxPooling2D(name="pool")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    x = L.Dense(7, activation="relu", name="d1")(x)
    x = L.Dense(3, name="d2")(x)
    model = keras.Model(inp, x)
    set_batchnorms(model, rng)
    for name in ("c1", "c2", "d1"):
        unbalance(model.get_layer(name), rng)
    return model


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(5).normal(size=(6, 8, 8, 3)).astype(np.float32)


def outputs(model, x):
    return np.asarray(model(pack_inputs(model, [x]), training=False))


def test_fold_batchnorm_is_exact_and_removes_foldable_bn(x):
    keras.utils.set_random_seed(2)
    inp = keras.Input((8, 8, 3))
    a = L.Conv2D(4, 3, use_bias=False, name="conv")(inp)
    a = L.BatchNormalization(name="bn_conv")(a)
    a = L.DepthwiseConv2D(3, depth_multiplier=2, name="dw")(a)
    a = L.BatchNormalization(name="bn_dw")(a)
    a = L.Conv2D(3, 1, activation="relu", name="conv_relu")(a)
    a = L.BatchNormalization(name="bn_after_relu")(a)  # not foldable: the ReLU is in between
    a = L.Flatten()(a)
    a = L.Dense(5, name="fc")(a)
    out = L.BatchNormalization(name="bn_fc")(a)
    model = keras.Model(inp, out)
    set_batchnorms(model, np.random.default_rng(2))
    before = [w.copy() for w in model.get_weights()]

    folded, stats = fold_batchnorm(model, with_statistics=True)

    np.testing.assert_allclose(outputs(folded, x), outputs(model, x), rtol=1e-4, atol=1e-5)
    bns = [layer.name for layer in folded.layers if isinstance(layer, L.BatchNormalization)]
    assert bns == ["bn_after_relu"]
    assert sorted(stats) == ["conv", "dw", "fc"]
    bn = model.get_layer("bn_dw")
    np.testing.assert_allclose(stats["dw"].mean, bn.beta.numpy())
    np.testing.assert_allclose(stats["dw"].std, np.abs(bn.gamma.numpy()))
    assert folded.get_layer("conv").use_bias  # the folded bias needs one
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


def test_cle_keeps_the_function_and_equalizes_channel_ranges(relu_model, x):
    folded = fold_batchnorm(relu_model)
    eq = cross_layer_equalization(relu_model, relu6_to_relu=False, bias_absorption=False)
    report = eq.cle_report

    expected = [("c1", "dw"), ("dw", "c2"), ("c2", "d1"), ("d1", "d2")]
    assert [(p.first, p.second) for p in report.pairs] == expected
    assert report.converged
    reference = outputs(relu_model, x)
    np.testing.assert_allclose(outputs(eq, x), reference, rtol=1e-4,
                               atol=1e-5 * np.abs(reference).max())
    for first, second in expected:
        before = ranges(folded.get_layer(first), "out") / ranges(folded.get_layer(second), "in")
        after = ranges(eq.get_layer(first), "out") / ranges(eq.get_layer(second), "in")
        assert np.abs(np.log(before)).max() > np.log(2.0), (first, second)
        np.testing.assert_allclose(after, 1.0, rtol=1e-3, err_msg=f"{first} -> {second}")


def _relu6_model():
    keras.utils.set_random_seed(4)
    inp = keras.Input((5, 5, 2))
    a = L.Conv2D(4, 3, name="c1")(inp)
    a = L.ReLU(max_value=6.0, name="act")(a)
    out = L.Conv2D(3, 1, name="c2")(a)
    model = keras.Model(inp, out)
    unbalance(model.get_layer("c1"), np.random.default_rng(4))
    return model


def test_relu6_pairs_are_left_alone_or_replaced_by_relu():
    model = _relu6_model()
    x = np.random.default_rng(0).normal(size=(4, 5, 5, 2)).astype(np.float32)
    kept = cross_layer_equalization(model, relu6_to_relu=False)
    assert kept.cle_report.pairs == []
    assert any("relu6" in s for s in kept.cle_report.skipped)
    np.testing.assert_allclose(outputs(kept, x), outputs(model, x), rtol=1e-5, atol=1e-6)

    replaced = cross_layer_equalization(model, relu6_to_relu=True)
    assert replaced.cle_report.replaced_relu6 == ["act"]
    assert [(p.first, p.second) for p in replaced.cle_report.pairs] == [("c1", "c2")]
    assert replaced.get_layer("act").max_value is None
    # Same function as the model with a plain ReLU (computed here in numpy).
    pre = np.asarray(model.get_layer("c1")(x))
    c2 = model.get_layer("c2")
    expected = np.maximum(pre, 0) @ c2.kernel.numpy()[0, 0] + c2.bias.numpy()
    np.testing.assert_allclose(outputs(replaced, x), expected, rtol=1e-4, atol=1e-5)


def test_default_cle_and_ptq_keep_the_float_function_of_a_relu6_model():
    """relu6_to_relu is opt-in: by default neither CLE nor ``ptq(methods=("cle",))`` changes
    what the float model computes, even where ReLU6 clips (checked against the model itself;
    the quantized model is compared with every quantizer switched off)."""
    import tfquant
    from tfquant.export.tflite import all_quantizers

    model = _relu6_model()
    x = 5.0 * np.random.default_rng(1).normal(size=(8, 5, 5, 2)).astype(np.float32)
    pre = np.asarray(model.get_layer("c1")(x))
    assert pre.max() > 6.0   # ReLU6 clips here: replacing it would change the outputs
    reference = outputs(model, x)

    eq = cross_layer_equalization(model, bias_absorption=False)
    assert eq.cle_report.replaced_relu6 == []
    assert eq.get_layer("act").max_value == 6.0
    np.testing.assert_allclose(outputs(eq, x), reference, rtol=1e-5, atol=1e-5)

    qmodel = tfquant.ptq(model, x, methods=("cle",), bias_absorption=False, verbose=0)
    assert qmodel.ptq_report["cle"].result.replaced_relu6 == []
    for _, q in all_quantizers(qmodel):
        q.enabled = False
    np.testing.assert_allclose(np.asarray(qmodel(x, training=False)), reference,
                               rtol=1e-5, atol=1e-5)

    opted_in = cross_layer_equalization(model, relu6_to_relu=True, bias_absorption=False)
    assert not np.allclose(outputs(opted_in, x), reference, rtol=1e-3, atol=1e-3)


def test_high_bias_absorption_moves_bias_into_the_next_layer():
    keras.utils.set_random_seed(9)
    rng = np.random.default_rng(9)
    inp = keras.Input((6, 6, 3))
    a = L.Conv2D(6, 3, name="c1")(inp)
    a = L.BatchNormalization(momentum=0.0, name="bn1")(a)
    a = L.ReLU(name="r1")(a)
    out = L.Conv2D(4, 1, name="c2")(a)
    model = keras.Model(inp, out)
    bn = model.get_layer("bn1")
    x = rng.normal(size=(64, 6, 6, 3)).astype(np.float32)
    model(x, training=True)  # momentum 0: moving statistics = statistics of x
    gamma = rng.uniform(0.3, 1.0, 6)
    beta = np.array([4.0, 3.5, 3.2, 0.5, -1.0, 0.0])  # the first three have a high bias
    bn.gamma.assign(gamma)
    bn.beta.assign(beta)

    eq = cross_layer_equalization(model, bias_absorption=True)
    (pair,) = eq.cle_report.pairs
    c = np.maximum(0.0, beta - 3.0 * gamma)
    assert (c[:3] > 0).all() and (c[3:] == 0).all()
    np.testing.assert_allclose(pair.absorbed * pair.scales, c, rtol=1e-5, atol=1e-7)
    # c1's pre-activations shrink by c (in c1's rescaled units); the output barely changes.
    pre_before = np.asarray(model.get_layer("bn1")(model.get_layer("c1")(x))).mean(axis=(0, 1, 2))
    pre_after = np.asarray(eq.get_layer("c1")(x)).mean(axis=(0, 1, 2)) * pair.scales
    np.testing.assert_allclose(pre_before - pre_after, c, atol=1e-3)
    reference = outputs(model, x)
    error = np.abs(outputs(eq, x) - reference).mean()
    assert error < 1e-3 * np.abs(reference).mean()
