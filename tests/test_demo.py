"""``tfquant.demo.run`` with tiny epochs: it exports, verifies and prints the bit-exact figure;
its figures are recomputed here from the files it wrote, with the LiteRT interpreter."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from tfquant import datasets, demo


def test_demo_exports_verifies_and_reports(tmp_path, capsys):
    results = demo.run(output_dir=str(tmp_path), float_epochs=1, qat_epochs=1, seed=0)
    printed = capsys.readouterr().out
    assert results["simulator_bit_exact"] == 1.0
    assert results["from_keras_bit_exact"] == 1.0
    assert "integer simulator vs TFLite reference kernels: 100.00 % bit-exact" in printed
    assert "Keras fake-quant vs TFLite reference kernels" in printed
    assert "XNNPACK" in printed and "first disagreement" in printed

    # recompute the TFLite figures from the written files
    (_, _), (x_test, y_test) = datasets.load_digits(seed=0)
    data = (tmp_path / "demo.tflite").read_bytes()
    interpreter = Interpreter(model_content=data,
                              experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    detail = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(detail["index"], list(x_test.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(detail["index"], x_test.astype(np.float32))
    interpreter.invoke()
    tflite_out = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    assert results["tflite_int8_accuracy"] == pytest.approx(
        np.mean(tflite_out.argmax(1) == y_test))
    qat = keras.saving.load_model(tmp_path / "demo_qat.keras")
    diff = np.abs(qat.predict(x_test, verbose=0) - tflite_out) * 256.0   # softmax step 1/256
    assert results["keras_vs_tflite_max_lsb"] == pytest.approx(diff.max(), abs=1e-3)
    assert results["keras_vs_tflite_within_1lsb"] == pytest.approx(np.mean(diff <= 1.001))
    assert 0.0 <= results["xnnpack_bit_exact"] <= 1.0
    assert results["verification"]["bit_exact_fraction"] == 1.0
