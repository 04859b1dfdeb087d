"""Fixtures of the analysis tests: small Dense models with one deliberately fragile layer."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import tfquant
from tfquant.ptq import calibrate
from tfquant.specs import LayerSpec, QuantConfig, TensorSpec

L = keras.layers

# 4-bit per-tensor symmetric weights, 8-bit activations: one outlier weight ruins a layer.
W4_PER_TENSOR = QuantConfig(LayerSpec(
    TensorSpec(bits=4, symmetric=True, narrow_range=True, learner="minmax"),
    TensorSpec(bits=8, learner="ema")))
# 8-bit per-channel weights, 4-bit activations: one huge output channel ruins a layer's output.
A4 = QuantConfig(LayerSpec(
    TensorSpec(bits=8, symmetric=True, per_axis=True, narrow_range=True, learner="minmax"),
    TensorSpec(bits=4, learner="ema")), by_type={"Dense": {"weights": {"per_axis": False}}})


def _mlp(name: str) -> keras.Model:
    inp = keras.Input((8,), name="x")
    h = L.Dense(16, activation="relu", name="fc1")(inp)
    h = L.Dense(16, activation="relu" if name == "fragile" else None, name=name)(h)
    out = L.Dense(4, name="head")(h)
    return keras.Model(inp, out, name=f"mlp_{name}")


@pytest.fixture(scope="session")
def a4_config():
    """8-bit per-channel weights, 4-bit activations."""
    return A4


@pytest.fixture(scope="session")
def x_data():
    return np.random.default_rng(0).normal(size=(128, 8)).astype(np.float32)


@pytest.fixture(scope="session")
def weight_fragile(x_data):
    """fc1 -> fragile -> head; fragile's kernel has a row of huge weights fed by a dead unit of
    fc1, so they do not change the float output but set a 4-bit per-tensor scale that rounds
    every other weight of the layer to 0. Returns ``(model, x, y)`` with ``y`` the float
    model's own predictions (float accuracy 1)."""
    keras.utils.set_random_seed(1)
    model = _mlp("fragile")
    w, b = model.get_layer("fc1").get_weights()
    w[:, 0], b[0] = 0.0, -1.0  # unit 0 of fc1 is always 0 after the ReLU
    model.get_layer("fc1").set_weights([w, b])
    w, b = model.get_layer("fragile").get_weights()
    w[0, :] = 500.0
    model.get_layer("fragile").set_weights([w, b])
    y = np.argmax(model(x_data), -1)
    return model, x_data, y


@pytest.fixture(scope="session")
def activation_fragile(x_data):
    """fc1 -> wide -> head; wide's output channel 0 sits near 1000 (its bias) and is ignored by
    head, so a 4-bit per-tensor output range rounds the other channels to 0."""
    keras.utils.set_random_seed(2)
    model = _mlp("wide")
    w, b = model.get_layer("wide").get_weights()
    b[0] = 1000.0  # the bias is not quantized: only the output range is affected
    model.get_layer("wide").set_weights([w, b])
    w, b = model.get_layer("head").get_weights()
    w[0, :] = 0.0
    model.get_layer("head").set_weights([w, b])
    return model, x_data


@pytest.fixture(scope="session")
def weight_qmodel(weight_fragile):
    """A calibrated W4 per-tensor copy of the weight-fragile model."""
    model, x, _ = weight_fragile
    qmodel = tfquant.quantize_model(model, W4_PER_TENSOR)
    calibrate(qmodel, x, verbose=0)
    return qmodel


@pytest.fixture(scope="session")
def weight_table(weight_fragile):
    """Sensitivity of the weight-fragile float model: quantized (W4 per-tensor) and calibrated
    inside, labels metric, traced forward passes. Also returns the float weights before."""
    from tfquant.analysis import sensitivity

    model, x, y = weight_fragile
    before = [w.copy() for w in model.get_weights()]
    table = sensitivity(model, (x, y), keras.metrics.SparseCategoricalAccuracy(),
                        config=W4_PER_TENSOR, batch_size=64)
    return table, before
