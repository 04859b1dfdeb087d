"""The PTQ pipeline (``tfquant.ptq``) and dynamic-range quantization checked with TFLite."""

from __future__ import annotations

import sys
import types

import keras
import numpy as np
import pytest

import tfquant
import tfquant.ptq
from tfquant.layers.wrapper import QuantizeWrapper
from tfquant.ptq import dynamic_range, ptq
from tfquant.ptq.data import pack_inputs

L = keras.layers


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(31)
    rng = np.random.default_rng(31)
    inp = keras.Input((8, 8, 3))
    a = L.Conv2D(8, 3, padding="same", name="c1")(inp)
    a = L.BatchNormalization(name="bn1")(a)
    a = L.ReLU(max_value=6.0, name="r1")(a)
    a = L.DepthwiseConv2D(3, padding="same", name="dw")(a)
    a = L.BatchNormalization(name="bn2")(a)
    a = L.ReLU(name="r2")(a)
    a = L.GlobalAveragePooling2D()(a)
    out = L.Dense(4, name="fc")(a)
    m = keras.Model(inp, out)
    for bn in ("bn1", "bn2"):
        m.get_layer(bn).set_weights([rng.uniform(0.5, 1.5, 8), rng.normal(0, 0.3, 8),
                                     rng.normal(0, 0.1, 8), rng.uniform(0.5, 1.5, 8)])
    return m


@pytest.fixture(scope="module")
def data():
    return np.random.default_rng(8).normal(size=(48, 8, 8, 3)).astype(np.float32)


def run(m, x):
    return np.asarray(m(pack_inputs(m, [x]), training=False))


def test_ptq_runs_every_step_delegates_adaround_and_keeps_the_model(model, data, monkeypatch):
    calls = []
    fake = types.ModuleType("tfquant.ptq.adaround")
    fake.adaround = lambda qmodel, data, **options: calls.append((qmodel, data, options))
    monkeypatch.setitem(sys.modules, "tfquant.ptq.adaround", fake)
    before = [w.copy() for w in model.get_weights()]

    qmodel = ptq(model, data, verbose=0, iterations=7, relu6_to_relu=True)

    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    report = qmodel.ptq_report
    assert report.ran == ["fold_batchnorm", "cle", "quantize_model", "calibrate",
                          "bias_correction", "adaround"]
    assert len(calls) == 1 and calls[0][0] is qmodel and calls[0][1] is data
    assert calls[0][2] == {"iterations": 7, "verbose": 0}
    assert report["cle"].result.replaced_relu6 == ["r1"]   # opted in (default: kept)
    assert report["bias_correction"].result.method == "empirical"
    assert not any(isinstance(layer, L.BatchNormalization) for layer in qmodel.layers)
    wrapped = sorted(layer.layer.name for layer in qmodel.layers
                     if isinstance(layer, QuantizeWrapper) and layer.weight_quantizers)
    assert wrapped == ["c1", "dw", "fc"]
    # Activations stay below 6 here, so ReLU6 -> ReLU does not change the float function.
    reference = run(model, data)
    error = np.abs(run(qmodel, data) - reference)
    assert error.mean() < 0.05 * np.abs(reference).mean()


def test_ptq_package_is_callable_and_runs_only_what_is_asked(model, data):
    qmodel = tfquant.ptq(model, data, methods=(), verbose=0)
    assert qmodel.ptq_report.ran == ["fold_batchnorm", "quantize_model", "calibrate"]
    assert tfquant.ptq.cle.cross_layer_equalization is tfquant.ptq.cross_layer_equalization


@pytest.mark.parametrize("kwargs, message", [
    (dict(data=None), "needs calibration data"),
    (dict(methods=("cle", "magic")), "unknown PTQ method"),
    (dict(methods=("cle",), iterations=3), "unknown ptq option"),
    (dict(data="generator"), "one-shot"),
])
def test_ptq_rejects_bad_calls(model, data, kwargs, message):
    kwargs = {"data": data, **kwargs}
    if isinstance(kwargs["data"], str):
        kwargs["data"] = (data[i:i + 8] for i in range(0, 48, 8))
    with pytest.raises(ValueError, match=message):
        ptq(model, verbose=0, **kwargs)



def test_analytic_bias_correction_takes_a_one_shot_generator(model, data):
    """Analytic bias correction reads BN statistics, not the data: a generator (read once, by
    calibration) gives the same model as the array in the same batches."""
    def batches():
        return (data[i:i + 8] for i in range(0, 48, 8))
    opts = dict(methods=("bias_correction",), bias_correction="analytic", batch_size=8,
                verbose=0)
    from_generator = ptq(model, batches(), **opts)
    from_array = ptq(model, data, **opts)
    assert from_generator.ptq_report.ran == from_array.ptq_report.ran
    assert "bias_correction" in from_array.ptq_report.ran
    np.testing.assert_array_equal(run(from_generator, data), run(from_array, data))
    with pytest.raises(ValueError, match="one-shot"):
        ptq(model, batches(), methods=("bias_correction",), bias_correction="empirical",
            verbose=0)


def test_dynamic_range_model_exports_int8_weights_and_float_activations():
    from ai_edge_litert.interpreter import Interpreter

    keras.utils.set_random_seed(5)
    inp = keras.Input((64,))
    a = L.Dense(48, activation="relu", name="fc1")(inp)
    out = L.Dense(32, name="fc2")(a)  # both kernels >= 1024 weights: TFLite quantizes them
    m = keras.Model(inp, out)

    qmodel = ptq(m, None, config="dynamic_range")
    assert qmodel.ptq_report.ran == ["fold_batchnorm", "cle", "quantize_model"]
    assert not [q for layer in qmodel.layers if isinstance(layer, QuantizeWrapper)
                for role, q in layer.quantizers.items() if not role.startswith("weights/")]
    direct = dynamic_range(m).get_layer("quant_fc1").weight_quantizers["kernel"]
    np.testing.assert_allclose(float(direct.current_range()[1]),
                               np.abs(m.get_layer("fc1").kernel.numpy()).max(), rtol=1e-6)
    flatbuffer = tfquant.export.tflite(qmodel, mode="dynamic_range")

    interpreter = Interpreter(model_content=flatbuffer)
    interpreter.allocate_tensors()
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    fully_connected = [op for op in interpreter._get_ops_details()
                       if op["op_name"] == "FULLY_CONNECTED"]
    assert len(fully_connected) == 2
    for op in fully_connected:
        activation, weights = op["inputs"][0], op["inputs"][1]
        assert tensors[weights]["dtype"] == np.int8
        assert tensors[activation]["dtype"] == np.float32
        assert tensors[op["outputs"][0]]["dtype"] == np.float32
    x = np.random.default_rng(1).normal(size=(1, 64)).astype(np.float32)
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    y = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    reference = np.asarray(m(x))
    assert np.abs(y - reference).max() < 0.05 * np.abs(reference).max()
