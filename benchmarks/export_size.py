"""Size of the exported int8 TFLite model against the float TFLite model of the same network.

For each model: the float ``.tflite`` from ``tf.lite.TFLiteConverter.from_keras_model`` and the
full-integer ``.tflite`` from ``tfquant.export.tflite`` (``quantize_model`` with the default
``tflite_int8`` config, calibrated on 8 random inputs, int8 input and output), both measured in
bytes in one run. The target is judged on tfquant's default output (``compact=True``: each
distinct quantization vector stored once, see :mod:`tfquant.export.tflite_compact`); the
converter's own bytes (``compact=False``) are reported next to it. Models: the project's zoo
(trained nowhere: sizes do not depend on values) and ``keras.applications`` MobileNet,
MobileNetV2 and ResNet50 (``weights=None``, 1,000 classes, 96x96 input: the input size changes
no weight).

For comparison, TFLite's own full-integer post-training quantization of the same float model
(``TFLiteConverter`` with ``representative_dataset``, int8 in and out) is sized too, as the
converter writes it and compacted: it uses the same per-channel format, so it shows the
format's floor for each network.

Also reported: how many bytes TFLite's per-channel quantization parameters take as the
converter writes them (a float32 scale and an int64 zero point per output channel, for the
weights and again for the int32 bias), the floor that kept a model dominated by depthwise and
narrow 1x1 kernels above 0.27 before compaction shared the identical zero-point vectors.

Usage::

    .venv/bin/python benchmarks/export_size.py

Writes ``benchmarks/results/export_size.json``. Target (deploy issue): int8 <= 0.27 of float.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table, write_results  # noqa: E402

import numpy as np  # noqa: E402

TARGET = 0.27


def _models():
    import keras

    from tfquant import zoo

    yield "zoo.small_cnn (28x28, widths 32-64-128)", lambda: zoo.small_cnn(
        (28, 28, 1), widths=(32, 64, 128))
    yield "zoo.mobilenet_v2_style (28x28)", lambda: zoo.mobilenet_v2_style((28, 28, 1), 10)
    yield "zoo.resnet_style (28x28)", lambda: zoo.resnet_style((28, 28, 1), 10)
    for name in ("MobileNet", "MobileNetV2", "ResNet50"):
        builder = getattr(keras.applications, name)
        yield f"keras.applications.{name}", lambda b=builder: b(
            weights=None, input_shape=(96, 96, 3), classes=1000)


def _per_channel_param_bytes(qmodel) -> int:
    """Bytes of per-channel scales (float32) and zero points (int64), weights plus bias."""
    from tfquant.layers import QuantizeWrapper

    total = 0
    for layer in qmodel.layers:
        if not isinstance(layer, QuantizeWrapper):
            continue
        for quantizer in layer.weight_quantizers.values():
            if quantizer.axis is not None:
                channels = int(np.prod(quantizer.param_shape))
                total += 2 * channels * (4 + 8)
    return total


def main() -> dict:
    import keras
    import tensorflow as tf

    import tfquant
    from tfquant.export.tflite_compact import compact_tflite

    rows, t0 = [], time.perf_counter()
    for label, build in _models():
        keras.utils.set_random_seed(0)
        model = build()
        shape = (8, *model.input_shape[1:])
        data = np.random.default_rng(0).uniform(0, 1, size=shape).astype(np.float32)
        with contextlib.redirect_stdout(io.StringIO()):
            float_flat = tf.lite.TFLiteConverter.from_keras_model(model).convert()
            qmodel = tfquant.quantize_model(model)
            tfquant.calibrate(qmodel, data, verbose=0)
            int8_flat = tfquant.export.tflite(qmodel, input_type="int8", output_type="int8")
            uncompacted_flat = tfquant.export.tflite(qmodel, input_type="int8",
                                                     output_type="int8", compact=False)
            converter = tf.lite.TFLiteConverter.from_keras_model(model)
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = lambda: ([row[None]] for row in data)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
            converter_flat = converter.convert()
        params = _per_channel_param_bytes(qmodel)
        ratio = len(int8_flat) / len(float_flat)
        rows.append({"model": label, "parameters": int(model.count_params()),
                     "float_bytes": len(float_flat), "int8_bytes": len(int8_flat),
                     "int8/float": round(ratio, 4),
                     "int8_uncompacted_bytes": len(uncompacted_flat),
                     "int8_uncompacted/float": round(len(uncompacted_flat) / len(float_flat), 4),
                     "converter_ptq_bytes": len(converter_flat),
                     "converter_ptq/float": round(len(converter_flat) / len(float_flat), 4),
                     "converter_ptq_compacted/float": round(
                         len(compact_tflite(bytes(converter_flat))) / len(float_flat), 4),
                     "per_channel_param_bytes": params,
                     "per_channel_share_of_uncompacted": round(params / len(uncompacted_flat), 3),
                     "met": ratio <= TARGET})
        print(f"{label}: {ratio:.3f}", flush=True)
    result = {"benchmark": "export_size", "target": f"int8 / float <= {TARGET}",
              "calibration": "8 uniform [0, 1) inputs; default tflite_int8 config",
              "rows": rows, "wall_s": round(time.perf_counter() - t0, 1)}
    write_results("export_size", result)
    print(markdown_table(rows, ["model", "parameters", "float_bytes", "int8_bytes", "int8/float",
                                "int8_uncompacted/float", "converter_ptq/float",
                                "converter_ptq_compacted/float",
                                "per_channel_share_of_uncompacted"]))
    return result


if __name__ == "__main__":
    main()
