"""Keras-side exports (.h5, .keras, SavedModel) of the folded float model, and output paths.

References: Keras' own loaders and ``tf.saved_model.load``; the quantized model run with every
quantizer disabled (BN folding changes no value in inference).
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfquant  # noqa: E402
from tfquant.export import formats  # noqa: E402
from tfquant.export.tflite import all_quantizers  # noqa: E402

L = keras.layers


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    return np.random.default_rng(1).normal(size=(16, 6, 6, 2)).astype(np.float32)


@pytest.fixture(scope="module")
def qmodel(data):
    keras.utils.set_random_seed(3)
    inp = keras.Input((6, 6, 2), name="image")
    x = L.Conv2D(4, 3, use_bias=False, name="conv")(inp)
    x = L.BatchNormalization(name="bn")(x)
    x = L.ReLU(name="relu")(x)
    x = L.Flatten(name="flat")(x)
    out = L.Dense(3, name="fc")(x)
    qmodel = tfquant.quantize_model(keras.Model(inp, out), "tflite_int8")
    qmodel.compile("adam", "mse")
    qmodel.fit(data, np.zeros((16, 3), np.float32), epochs=1, verbose=0)  # compiled + BN stats
    return qmodel


def _unquantized_predictions(qmodel, x):
    quantizers = [q for _, q in all_quantizers(qmodel)]
    for q in quantizers:
        q.enabled = False
    try:
        return qmodel(x, training=False).numpy()
    finally:
        for q in quantizers:
            q.enabled = True


def _numpy_reference(qmodel, x):
    """conv (3x3 valid, no bias) -> BN (moving statistics) -> ReLU -> flatten -> dense, in
    float64 numpy from the variables of ``qmodel`` (the float computation the exports hold)."""
    wrapper = qmodel.get_layer("quant_conv")
    kernel = wrapper.layer.kernel.numpy().astype(np.float64)
    bn = wrapper.batchnorm
    patches = np.stack([x[:, i:i + 4, j:j + 4, :] for i in range(3) for j in range(3)], axis=3)
    y = np.einsum("nhwkc,kco->nhwo", patches, kernel.reshape(9, 2, 4))
    y = (y - bn.moving_mean.numpy()) / np.sqrt(bn.moving_variance.numpy() + bn.epsilon)
    y = np.maximum(y * bn.gamma.numpy() + bn.beta.numpy(), 0.0)
    fc = qmodel.get_layer("quant_fc").layer
    return y.reshape(len(x), -1) @ fc.kernel.numpy() + fc.bias.numpy()


def _leftovers(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if "partial" in p.name)


def test_h5_holds_the_folded_float_model(qmodel, data, tmp_path):
    path = tfquant.export.keras_h5(qmodel, tmp_path / "m.h5")
    loaded = keras.models.load_model(path, compile=False)
    assert not any("quant" in layer.name for layer in loaded.layers if layer.weights)
    got = loaded.predict(data, verbose=0)
    np.testing.assert_allclose(got, _unquantized_predictions(qmodel, data), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got, _numpy_reference(qmodel, data), rtol=1e-4, atol=1e-5)
    assert _leftovers(tmp_path) == []


def test_keras_file_folded_and_quantized(qmodel, data, tmp_path):
    folded = keras.saving.load_model(tfquant.export.keras_file(qmodel, tmp_path / "f.keras"))
    np.testing.assert_allclose(folded.predict(data, verbose=0),
                               _unquantized_predictions(qmodel, data), rtol=1e-5, atol=1e-5)
    assert getattr(folded, "optimizer", None) is None  # the folded model is not compiled
    path = tfquant.export.keras_file(qmodel, tmp_path / "q.keras", folded=False)
    again = keras.saving.load_model(path)
    np.testing.assert_array_equal(again.predict(data, verbose=0), qmodel.predict(data, verbose=0))


def test_saved_model_serving_default(qmodel, data, tmp_path):
    directory = tfquant.export.saved_model(qmodel, tmp_path / "sm")
    serve = tf.saved_model.load(directory).signatures["serving_default"]
    (out,) = serve(image=tf.constant(data)).values()
    np.testing.assert_allclose(out.numpy(), _unquantized_predictions(qmodel, data),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out.numpy(), _numpy_reference(qmodel, data), rtol=1e-4, atol=1e-5)
    # the quantized model itself: the signature computes the fake-quant outputs
    quantized = tfquant.export.saved_model(qmodel, tmp_path / "sm_q", folded=False)
    (out_q,) = tf.saved_model.load(quantized).signatures["serving_default"](
        image=tf.constant(data)).values()
    np.testing.assert_allclose(out_q.numpy(), qmodel.predict(data, verbose=0), rtol=0, atol=1e-6)
    assert not np.allclose(out_q.numpy(), out.numpy(), rtol=0, atol=1e-6)
    # writing again replaces the earlier SavedModel; a foreign directory is refused
    tfquant.export.saved_model(qmodel, directory)
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="no SavedModel"):
        tfquant.export.saved_model(qmodel, foreign)
    assert os.listdir(foreign) == ["keep.txt"]
    assert _leftovers(tmp_path) == []


def test_missing_directory_and_bad_suffix_write_nothing(qmodel, tmp_path):
    missing = tmp_path / "missing"
    for call in (lambda: tfquant.export.keras_h5(qmodel, missing / "m.h5"),
                 lambda: tfquant.export.keras_file(qmodel, missing / "m.keras"),
                 lambda: tfquant.export.saved_model(qmodel, missing / "sm"),
                 lambda: tfquant.export.tflite(qmodel, missing / "m.tflite")):
        with pytest.raises(FileNotFoundError, match="does not exist"):
            call()
    with pytest.raises(ValueError, match=r"\.h5"):
        tfquant.export.keras_h5(qmodel, tmp_path / "m.keras")
    with pytest.raises(ValueError, match=r"\.keras"):
        tfquant.export.keras_file(qmodel, tmp_path / "m.h5")
    assert list(tmp_path.iterdir()) == []


def test_failure_while_writing_leaves_no_partial_file(qmodel, tmp_path, monkeypatch):
    class Broken:
        def save(self, path):
            with open(path, "wb") as f:
                f.write(b"half a model")
            raise OSError("disk full")

    monkeypatch.setattr(formats, "folded_float_model", lambda _: Broken())
    target = tmp_path / "m.h5"
    with pytest.raises(OSError, match="disk full"):
        tfquant.export.keras_h5(qmodel, target)
    assert list(tmp_path.iterdir()) == []


def test_failed_savedmodel_export_keeps_the_earlier_one(qmodel, tmp_path, monkeypatch):
    directory = tfquant.export.saved_model(qmodel, tmp_path / "sm")
    before = {p.name: p.read_bytes() for p in (tmp_path / "sm").rglob("*") if p.is_file()}

    class Broken:
        def export(self, path, **kwargs):
            with open(os.path.join(path, "saved_model.pb"), "wb") as f:
                f.write(b"half a graph")
            raise OSError("disk full")

    monkeypatch.setattr(formats, "folded_float_model", lambda _: Broken())
    with pytest.raises(OSError, match="disk full"):
        tfquant.export.saved_model(qmodel, directory)
    after = {p.name: p.read_bytes() for p in (tmp_path / "sm").rglob("*") if p.is_file()}
    assert after == before
    assert _leftovers(tmp_path) == [] and sorted(os.listdir(tmp_path)) == ["sm"]
