"""The main job end to end: train, quantize-aware fine-tune, export, verify (``tfquant demo``).

Uses scikit-learn's bundled 8x8 digits (no downloads). Prints float vs quantized accuracy, the
exported TFLite int8 accuracy, its size, and how closely TFLite reproduces the Keras model.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np


def _tflite_predict(tflite_bytes: bytes, x: np.ndarray) -> np.ndarray:
    """Runs a float-io TFLite model on ``x`` one sample at a time (reference kernels)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(model_content=tflite_bytes,
                              experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    outputs = []
    for sample in x:
        interpreter.set_tensor(inp["index"], sample[None].astype(np.float32))
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(out["index"])[0].copy())
    return np.stack(outputs)


def run(output_dir: str = "out", float_epochs: int = 25, qat_epochs: int = 4,
        seed: int = 0, verbose: bool = True) -> dict[str, Any]:
    """Trains a small CNN on digits, fine-tunes it with int8 QAT, exports and checks TFLite.

    Args:
        output_dir: where ``demo.tflite``, ``demo_qat.keras`` are written (created if missing).
        float_epochs: float training epochs.
        qat_epochs: QAT fine-tuning epochs.
        seed: random seed.
        verbose: print progress and the summary.

    Returns:
        A dict of the measured figures.

    Example:
        >>> results = run(output_dir="/tmp/demo", float_epochs=2, qat_epochs=1)
    """
    import keras

    import tfquant
    from tfquant import datasets, zoo

    def say(*args):
        if verbose:
            print(*args, flush=True)

    keras.utils.set_random_seed(seed)
    os.makedirs(output_dir, exist_ok=True)
    (x_train, y_train), (x_test, y_test) = datasets.load_digits(seed=seed)
    say(f"digits: {len(x_train)} train / {len(x_test)} test images of 8x8")

    model = zoo.small_cnn(x_train.shape[1:], 10, seed=seed)
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy",
                  metrics=["accuracy"], jit_compile=False)
    start = time.perf_counter()
    model.fit(x_train, y_train, batch_size=64, epochs=float_epochs, verbose=0)
    float_acc = model.evaluate(x_test, y_test, verbose=0)[1]
    say(f"float model: test accuracy {float_acc:.4f} ({time.perf_counter() - start:.1f} s)")

    qat = tfquant.quantize_model(model, config="tflite_int8")
    say(qat.quantization_report)
    qat.compile(keras.optimizers.Adam(5e-4), "sparse_categorical_crossentropy",
                metrics=["accuracy"], jit_compile=False)
    start = time.perf_counter()
    qat.fit(x_train, y_train, batch_size=64, epochs=qat_epochs, verbose=0)
    qat_acc = qat.evaluate(x_test, y_test, verbose=0)[1]
    say(f"int8 QAT model (Keras fake-quant): test accuracy {qat_acc:.4f} "
        f"({time.perf_counter() - start:.1f} s)")
    qat.save(os.path.join(output_dir, "demo_qat.keras"))

    tflite_path = os.path.join(output_dir, "demo.tflite")
    data = tfquant.export.tflite(qat, tflite_path)
    float_tflite = tfquant.export.tflite(qat, mode="dynamic_range")
    tflite_out = _tflite_predict(data, x_test)
    keras_out = qat.predict(x_test, verbose=0)
    tflite_acc = float((tflite_out.argmax(1) == y_test).mean())
    lsb = 1.0 / 256.0  # the softmax output's int8 step, fixed by TFLite
    diff_lsb = np.abs(tflite_out - keras_out) / lsb
    results = {
        "float_accuracy": float(float_acc),
        "qat_accuracy": float(qat_acc),
        "tflite_int8_accuracy": tflite_acc,
        "tflite_bytes": len(data),
        "dynamic_range_tflite_bytes": len(float_tflite),
        "keras_vs_tflite_max_lsb": float(diff_lsb.max()),
        "keras_vs_tflite_within_1lsb": float((diff_lsb <= 1.0 + 1e-6).mean()),
        "argmax_agreement": float((tflite_out.argmax(1) == keras_out.argmax(1)).mean()),
    }
    say(f"TFLite int8 ({len(data)} bytes, {tflite_path}): test accuracy {tflite_acc:.4f}")
    say(f"Keras fake-quant vs TFLite reference kernels: max {results['keras_vs_tflite_max_lsb']:.0f}"
        f" LSB, {100 * results['keras_vs_tflite_within_1lsb']:.2f}% of outputs within 1 LSB, "
        f"argmax agreement {100 * results['argmax_agreement']:.2f}%")
    return results
