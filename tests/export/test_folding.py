"""The folded float model of Functional models that call ``keras.ops`` between layers.

``keras.ops.add(a, b)`` in a Functional model is an operation, not a layer (no weights); the
folded exports (:func:`folded_float_model`, ``.h5``, ``.keras``, SavedModel, dynamic-range
TFLite) carry it over (Keras' legacy ``.h5`` loader cannot rebuild such calls: that file
holds the weights, with a warning).

References: float64 numpy written out from the model's variables, the quantized model with
every quantizer disabled, TF's FakeQuant in numpy (``conftest.ref``) for the fake-quantized
weights, h5py, ``keras.saving.load_model``, ``tf.saved_model.load`` and the TFLite
interpreter.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import h5py  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from ai_edge_litert.interpreter import Interpreter  # noqa: E402

import tfquant  # noqa: E402
from tfquant.analysis.groups import enabled_only  # noqa: E402

L = keras.layers
DENSES = ("a", "b", "head")


def _ops_model(seed: int = 5) -> keras.Model:
    """x -> Dense a, Dense b -> keras.ops.add -> keras.ops.relu -> Dense head."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((6,), name="x")
    h = keras.ops.add(L.Dense(5, name="a")(inp), L.Dense(5, name="b")(inp))
    h = keras.ops.relu(h)
    return keras.Model(inp, L.Dense(3, name="head")(h))


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    return np.random.default_rng(2).normal(size=(32, 6)).astype(np.float32)


@pytest.fixture(scope="module")
def qmodel(data):
    qmodel = tfquant.quantize_model(_ops_model(), "tflite_int8")
    tfquant.calibrate(qmodel, data, verbose=0)
    return qmodel


def _operations(model: keras.Model) -> list:
    """The ``keras.ops`` operations of a Functional model (not layers)."""
    return [op for op in model.operations if not isinstance(op, keras.layers.Layer)]


def _kernels(qmodel, fake_quantized: bool, ref) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{layer: (kernel, bias)}`` in float64; kernels through numpy FakeQuant if asked."""
    out = {}
    for name in DENSES:
        wrapper = qmodel.get_layer(f"quant_{name}")
        kernel = wrapper.layer.kernel.numpy()
        if fake_quantized:
            q = wrapper.weight_quantizers["kernel"]
            p = q.quant_params()
            kernel, _ = ref.fake_quant(kernel, p.min, p.max, q.spec.bits, q.spec.narrow_range,
                                       axis=-1 if p.per_axis else None)
        out[name] = (kernel.astype(np.float64), wrapper.layer.bias.numpy().astype(np.float64))
    return out


def _numpy_reference(weights, x: np.ndarray) -> np.ndarray:
    """relu(x Wa + ba + x Wb + bb) Wh + bh in float64."""
    def dense(name, v):
        kernel, bias = weights[name]
        return v @ kernel + bias

    x = x.astype(np.float64)
    return dense("head", np.maximum(dense("a", x) + dense("b", x), 0.0))


def _unquantized_predictions(qmodel, x):
    with enabled_only(qmodel, []):
        return qmodel(x, training=False).numpy()


def test_folded_model_carries_the_ops_over(qmodel, data, ref):
    nodes = [len(op._inbound_nodes) for op in _operations(qmodel)]
    before = qmodel.predict(data, verbose=0)
    folded = tfquant.export.folded_float_model(qmodel)
    assert sorted(type(op).__name__ for op in _operations(folded)) == ["Add", "Relu"]
    assert {layer.name for layer in folded.layers if layer.weights} == set(DENSES)
    want = _numpy_reference(_kernels(qmodel, False, ref), data)
    got = folded.predict(data, verbose=0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got, _unquantized_predictions(qmodel, data), rtol=1e-6, atol=1e-6)
    assert not np.allclose(got, before, rtol=0, atol=1e-4)  # the fake-quant model differs
    # the quantized model's own graph is untouched
    assert [len(op._inbound_nodes) for op in _operations(qmodel)] == nodes
    np.testing.assert_array_equal(qmodel.predict(data, verbose=0), before)


def test_quantized_weights_are_the_fake_quantized_kernels(qmodel, data, ref):
    folded = tfquant.export.folded_float_model(qmodel, quantized_weights=True)
    want = _numpy_reference(_kernels(qmodel, True, ref), data)
    np.testing.assert_allclose(folded.predict(data, verbose=0), want, rtol=1e-5, atol=1e-5)
    assert not np.allclose(want, _numpy_reference(_kernels(qmodel, False, ref), data),
                           rtol=0, atol=1e-4)


def test_files_hold_the_folded_model(qmodel, data, tmp_path, ref):
    kernels = _kernels(qmodel, False, ref)
    want = _numpy_reference(kernels, data)
    # Keras' legacy HDF5 loader cannot rebuild keras.ops calls (not even of a float model):
    # the file is written with a warning naming them; its weights are the folded ones
    with pytest.warns(UserWarning, match=r"calls keras\.ops \(add, relu\).*load_weights"):
        h5 = tfquant.export.keras_h5(qmodel, tmp_path / "m.h5")
    with h5py.File(h5, "r") as f:
        for name in DENSES:
            np.testing.assert_array_equal(f[f"model_weights/{name}/{name}/kernel"][()],
                                          kernels[name][0].astype(np.float32))
    fresh = _ops_model(seed=11)  # other initial weights, same layer names
    fresh.load_weights(h5)
    np.testing.assert_allclose(fresh.predict(data, verbose=0), want, rtol=1e-5, atol=1e-5)
    native = keras.saving.load_model(tfquant.export.keras_file(qmodel, tmp_path / "m.keras"))
    np.testing.assert_allclose(native.predict(data, verbose=0), want, rtol=1e-5, atol=1e-5)
    directory = tfquant.export.saved_model(qmodel, tmp_path / "sm")
    serve = tf.saved_model.load(directory).signatures["serving_default"]
    (out,) = serve(x=tf.constant(data)).values()
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-5, atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.h5", "m.keras", "sm"]


def test_dynamic_range_tflite_of_an_ops_model(qmodel, data, ref):
    flatbuffer = tfquant.export.tflite(qmodel, mode="dynamic_range")
    interpreter = Interpreter(model_content=flatbuffer)
    inp = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(inp["index"], data.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], data)
    interpreter.invoke()
    got = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    # weights under 1024 values stay float in TFLite and hold their fake-quantized values
    want = _numpy_reference(_kernels(qmodel, True, ref), data)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert not np.allclose(got, _numpy_reference(_kernels(qmodel, False, ref), data),
                           rtol=0, atol=1e-3)


def test_an_op_without_a_config_is_reused(qmodel, data, ref, monkeypatch):
    add = next(op for op in _operations(qmodel) if type(op).__name__ == "Add")

    def no_config():
        raise NotImplementedError("no config")

    monkeypatch.setattr(add, "get_config", no_config)
    folded = tfquant.export.folded_float_model(qmodel)
    assert add in _operations(folded)
    want = _numpy_reference(_kernels(qmodel, False, ref), data)
    np.testing.assert_allclose(folded.predict(data, verbose=0), want, rtol=1e-5, atol=1e-5)
