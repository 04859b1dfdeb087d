"""End-to-end int8 QAT on scikit-learn's digits: accuracy kept, TFLite export agrees.

A fast version of ``benchmarks/qat_accuracy.py``: train ``small_cnn`` in float from scratch,
fine-tune it with ``quantize_model(config="tflite_int8")``, then check that

* the Keras fake-quant model loses at most 1 percentage point of test accuracy, and
* the exported full-integer TFLite model (int8 input/output, ``ai_edge_litert``) predicts the
  same class as the Keras QAT model on at least 99% of the test images.
"""

from __future__ import annotations

import contextlib
import io
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import tfquant  # noqa: E402
from tfquant import datasets, zoo  # noqa: E402

FLOAT_EPOCHS = 10
QAT_EPOCHS = 2
BATCH = 32


def _tflite_int8_predict(flatbuffer: bytes, x: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=flatbuffer)
    inp = interp.get_input_details()[0]
    interp.resize_tensor_input(inp["index"], [len(x), *x.shape[1:]])
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    assert inp["dtype"] == np.int8 and out["dtype"] == np.int8
    scale, zero = inp["quantization"]
    interp.set_tensor(inp["index"],
                      np.clip(np.round(x / scale) + zero, -128, 127).astype(np.int8))
    interp.invoke()
    return interp.get_tensor(out["index"])


@pytest.fixture(scope="module")
def digits_qat():
    (x_train, y_train), (x_test, y_test) = datasets.load_digits()
    keras.utils.set_random_seed(0)
    model = zoo.small_cnn(x_train.shape[1:], 10, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y_train, batch_size=BATCH, epochs=FLOAT_EPOCHS, verbose=0)
    float_acc = float(np.mean(model.predict(x_test, verbose=0).argmax(-1) == y_test))

    qat = tfquant.quantize_model(model, config="tflite_int8")
    qat.compile(optimizer=keras.optimizers.Adam(1e-4),
                loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    qat.fit(x_train, y_train, batch_size=BATCH, epochs=QAT_EPOCHS, verbose=0)
    qat_pred = qat.predict(x_test, verbose=0).argmax(-1)
    with contextlib.redirect_stdout(io.StringIO()):
        flatbuffer = tfquant.export.tflite(qat, input_type="int8")
    tfl_pred = _tflite_int8_predict(flatbuffer, x_test).argmax(-1)
    return {"float_acc": float_acc, "y_test": y_test, "qat_pred": qat_pred,
            "tflite_pred": tfl_pred}


def test_int8_qat_keeps_float_accuracy(digits_qat):
    r = digits_qat
    qat_acc = float(np.mean(r["qat_pred"] == r["y_test"]))
    assert r["float_acc"] > 0.9, f"float baseline did not train: {r['float_acc']:.3f}"
    assert r["float_acc"] - qat_acc <= 0.01, (
        f"int8 QAT lost {100 * (r['float_acc'] - qat_acc):.2f} pp "
        f"(float {r['float_acc']:.4f}, QAT {qat_acc:.4f})")


def test_tflite_int8_agrees_with_keras_qat(digits_qat):
    r = digits_qat
    agreement = float(np.mean(r["tflite_pred"] == r["qat_pred"]))
    tfl_acc = float(np.mean(r["tflite_pred"] == r["y_test"]))
    assert agreement >= 0.99, (
        f"TFLite int8 argmax agrees with the Keras QAT model on only {100 * agreement:.1f}% of "
        f"{len(r['y_test'])} test images (TFLite accuracy {tfl_acc:.4f})")
