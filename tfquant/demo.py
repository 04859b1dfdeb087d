"""The main job end to end: train, quantize-aware fine-tune, export, verify (``tfquant demo``).

Uses scikit-learn's bundled 8x8 digits (no downloads). Prints float vs quantized accuracy, the
exported TFLite int8 accuracy and size, and :func:`tfquant.verify`'s figures: the integer
simulator against TFLite's reference kernels (bit-exact), the Keras fake-quant model against
them (within 1 LSB), XNNPACK's agreement, and the per-layer table.

Example:
    >>> from tfquant import demo
    >>> results = demo.run(output_dir="/tmp/demo", float_epochs=2, qat_epochs=1)  # doctest: +SKIP
    >>> results["simulator_bit_exact"]                                          # doctest: +SKIP
    1.0
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np


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
        A dict of the measured figures: accuracies, sizes, ``simulator_bit_exact`` (integer
        simulator vs TFLite reference kernels, from the .tflite), ``from_keras_bit_exact``
        (simulator built from the Keras model, vs the same), ``keras_vs_tflite_within_1lsb`` /
        ``keras_vs_tflite_max_lsb``, ``xnnpack_bit_exact``, and ``verification`` (the full
        :class:`~tfquant.verify.VerificationReport` as a dict).

    Example:
        >>> results = run(output_dir="/tmp/demo", float_epochs=2, qat_epochs=1)
    """
    import keras

    import tfquant
    from tfquant import datasets, zoo
    from tfquant.verify.execute import run_interpreter, tflite_inputs

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
    tflite_out = run_interpreter(data, tflite_inputs(data, [x_test]), reference=True)[0][0]
    tflite_acc = float((tflite_out.argmax(1) == y_test).mean())
    say(f"TFLite int8 ({len(data)} bytes, {tflite_path}): test accuracy {tflite_acc:.4f}")

    start = time.perf_counter()
    report = tfquant.verify(qat, tflite_path, x_test)
    from_keras = tfquant.simulate.IntegerModel.from_keras(qat)(x_test)
    say(report)
    results = {
        "float_accuracy": float(float_acc),
        "qat_accuracy": float(qat_acc),
        "tflite_int8_accuracy": tflite_acc,
        "tflite_bytes": len(data),
        "dynamic_range_tflite_bytes": len(float_tflite),
        "simulator_bit_exact": report.bit_exact_fraction,
        "from_keras_bit_exact": float(np.mean(from_keras == tflite_out)),
        "keras_vs_tflite_max_lsb": report.max_abs_diff_lsb,
        "keras_vs_tflite_within_1lsb": report.within_1lsb_fraction,
        "argmax_agreement": report.argmax_agreement,
        "xnnpack_bit_exact": report.xnnpack_bit_exact_fraction,
        "xnnpack_max_lsb": report.xnnpack_max_abs_diff_lsb,
        "first_disagreeing_layer": report.first_disagreeing_layer,
        "verification": report.to_dict(),
    }
    say(f"\nverification ({time.perf_counter() - start:.1f} s) on {len(x_test)} test images:")
    say(f"  integer simulator vs TFLite reference kernels: "
        f"{100 * results['simulator_bit_exact']:.2f} % bit-exact (from the .tflite); "
        f"{100 * results['from_keras_bit_exact']:.2f} % (built from the Keras QuantParams)")
    say(f"  Keras fake-quant vs TFLite reference kernels: "
        f"{100 * results['keras_vs_tflite_within_1lsb']:.2f} % of outputs within 1 LSB, max "
        f"{results['keras_vs_tflite_max_lsb']:.0f} LSB, argmax agreement "
        f"{100 * results['argmax_agreement']:.2f} %")
    say(f"  TFLite XNNPACK vs reference kernels: {100 * results['xnnpack_bit_exact']:.2f} % "
        f"bit-exact, max {results['xnnpack_max_lsb']:.0f} LSB")
    return results
