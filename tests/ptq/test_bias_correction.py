"""Bias correction measured against the float model on held-out data (4-bit per-tensor
weights, whose rounding error is deliberately biased)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import tfquant
from tfquant.ptq import analytic_bias_correction, calibrate, empirical_bias_correction
from tfquant.ptq.data import pack_inputs
from tfquant.specs import LayerSpec, QuantConfig, TensorSpec

L = keras.layers
W4_PER_TENSOR = QuantConfig(LayerSpec(
    weights=TensorSpec(bits=4, symmetric=True, narrow_range=True, learner="minmax"),
    activations=TensorSpec(bits=8, learner="ema")))


@pytest.fixture(scope="module")
def setup():
    keras.utils.set_random_seed(21)
    rng = np.random.default_rng(21)
    inp = keras.Input((8, 8, 3))
    a = L.Conv2D(8, 3, padding="same", name="c1")(inp)
    a = L.BatchNormalization(momentum=0.0, name="bn1")(a)
    a = L.ReLU(name="r1")(a)
    a = L.Conv2D(8, 3, padding="same", name="c2")(a)
    a = L.BatchNormalization(momentum=0.0, name="bn2")(a)
    a = L.ReLU(name="r2")(a)
    a = L.GlobalAveragePooling2D()(a)
    out = L.Dense(4, name="fc")(a)
    model = keras.Model(inp, out)
    # c2: half of the output channels hold small positive weights (below half a 4-bit step of
    # the per-tensor range), so they quantize to 0 while their inputs (after ReLU) are >= 0.
    kernel = rng.normal(0.0, 0.5, (3, 3, 8, 8))
    kernel[..., :4] = rng.uniform(0.0, 0.03, (3, 3, 8, 4))
    model.get_layer("c2").kernel.assign(kernel)
    calib = rng.normal(0.5, 1.0, (64, 8, 8, 3)).astype(np.float32)
    model(calib, training=True)  # BN momentum 0: moving statistics = those of calib
    for bn in ("bn1", "bn2"):
        model.get_layer(bn).gamma.assign(rng.uniform(0.5, 1.5, 8))
        model.get_layer(bn).beta.assign(rng.normal(0.3, 0.5, 8))
    held_out = rng.normal(0.5, 1.0, (32, 8, 8, 3)).astype(np.float32)
    return model, calib, held_out


def channel_bias(model, qmodel, x):
    """Mean (over samples and positions) of quantized minus float pre-activation of c2."""
    float_probe = keras.Model(model.inputs, model.get_layer("bn2").output)
    quant_probe = keras.Model(qmodel.inputs, qmodel.get_layer("quant_c2").output)
    y_float = np.asarray(float_probe(pack_inputs(float_probe, [x])), np.float64)
    y_quant = np.asarray(quant_probe(pack_inputs(quant_probe, [x])), np.float64)
    return (y_quant - y_float).mean(axis=(0, 1, 2))


def calibrated(model, calib):
    qmodel = tfquant.quantize_model(model, W4_PER_TENSOR)
    calibrate(qmodel, calib, verbose=0)
    # quant_c2 outputs the pre-activation (its ReLU is fused and quantizes after it).
    assert qmodel.get_layer("quant_c2").output_quantizer is None
    return qmodel


def test_empirical_bias_correction_removes_the_mean_error(setup):
    model, calib, held_out = setup
    qmodel = calibrated(model, calib)
    before = np.abs(channel_bias(model, qmodel, held_out))
    std = np.asarray(model.get_layer("bn2").gamma).__abs__().mean()
    assert before.mean() > 0.05 * std  # the deliberately biased setting is biased

    report = empirical_bias_correction(qmodel, calib, batch_size=32)

    after = np.abs(channel_bias(model, qmodel, held_out))
    assert sorted(report.corrected) == ["c1", "c2", "fc"]
    assert report.passes == 4  # float means + one pass per dependency level
    assert after.mean() < 0.2 * before.mean(), (before, after)
    assert after[:4].max() < 0.2 * before[:4].max()


def test_analytic_bias_correction_reduces_the_mean_error(setup):
    model, calib, held_out = setup
    qmodel = calibrated(model, calib)
    before = np.abs(channel_bias(model, qmodel, held_out))

    report = analytic_bias_correction(qmodel)

    after = np.abs(channel_bias(model, qmodel, held_out))
    assert "c2" in report.corrected and "c1" in report.skipped  # c1 reads the model input
    assert after.mean() < 0.5 * before.mean(), (before, after)


def test_empirical_bias_correction_rejects_one_shot_generators(setup):
    model, calib, _ = setup
    qmodel = calibrated(model, calib)
    before = [v.numpy().copy() for v in qmodel.variables]
    with pytest.raises(ValueError, match="several times"):
        empirical_bias_correction(qmodel, (calib[i:i + 8] for i in range(0, 64, 8)))
    assert all(np.array_equal(a, v.numpy()) for a, v in zip(before, qmodel.variables))
