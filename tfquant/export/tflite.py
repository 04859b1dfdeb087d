"""TFLite export: full-integer int8, int16x8 and dynamic-range models from tfquant models."""

from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Callable, Iterable

import keras
import numpy as np
import tensorflow as tf

from tfquant.export.paths import check_output_path, write_atomic
from tfquant.fake_quant import int8_container
from tfquant.layers.wrapper import QuantizeWrapper
from tfquant.quantizers import Quantizer

MODES = ("int8", "int16x8", "dynamic_range")
IO_TYPES = {"float32": tf.float32, "int8": tf.int8, "uint8": tf.uint8, "int16": tf.int16}


@dataclasses.dataclass(frozen=True)
class FloatOp:
    """An operator of a converted model that still computes in float."""

    index: int
    op_name: str
    output_names: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.op_name} (op {self.index}, output {', '.join(self.output_names)})"


def float_ops(tflite_model: bytes) -> list[FloatOp]:
    """Lists the operators of a TFLite model that read or write float32 activations.

    The boundary QUANTIZE (float -> int) and DEQUANTIZE (int -> float) ops of a float-io model
    are not counted: they are the model's interface, not float compute.

    Example:
        >>> float_ops(open("m.tflite", "rb").read())
        []
    """
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=bytes(tflite_model))
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    model_inputs = {t["index"] for t in interpreter.get_input_details()}
    model_outputs = {t["index"] for t in interpreter.get_output_details()}
    found = []
    for op in interpreter._get_ops_details():  # noqa: SLF001 - the public API has no op list
        ins = [i for i in op["inputs"] if i >= 0]
        outs = list(op["outputs"])
        name = op["op_name"]
        if name == "QUANTIZE" and all(i in model_inputs for i in ins):
            continue
        if name == "DEQUANTIZE" and all(o in model_outputs for o in outs):
            continue
        if any(tensors[i]["dtype"] == np.float32 for i in ins + outs):
            found.append(FloatOp(op["index"], name, tuple(tensors[o]["name"] for o in outs)))
    return found


def check_exportable(qmodel: keras.Model, mode: str = "int8") -> None:
    """Raises ``ValueError`` naming each layer that TFLite cannot run as requested.

    Checked before conversion (so nothing is written): weights must be symmetric with zero
    point 0 and at most 8 bits; Dense weights must be per-tensor (the converter lowers Dense to
    a transposed MatMul and rejects per-channel axes there); activations must be at most 8 bits
    in int8 mode and 16-bit symmetric in int16x8 mode.
    """
    problems = []
    for layer in _all_layers(qmodel):
        if not isinstance(layer, QuantizeWrapper):
            continue
        for attr, q in layer.weight_quantizers.items():
            spec = q.spec
            if not spec.symmetric and spec.learner not in ("lsq",):
                problems.append(f"{layer.layer.name}: {attr} quantizer is asymmetric; TFLite "
                                "needs symmetric weights with zero point 0")
            if spec.bits > 8:
                problems.append(f"{layer.layer.name}: {attr} uses {spec.bits}-bit weights; "
                                "TFLite stores int8 weights")
            if spec.per_axis and isinstance(layer.layer, keras.layers.Dense):
                problems.append(f"{layer.layer.name}: per-channel Dense weights are rejected by "
                                "the TFLite converter; use per_axis=False for Dense")
    for label, q in all_quantizers(qmodel):
        if "/weights/" in label:
            continue
        bits = q.spec.bits
        if mode == "int8" and bits > 8:
            problems.append(f"{label}: {bits}-bit activations need mode='int16x8'")
        if mode == "int16x8" and bits != 16:
            problems.append(f"{label}: int16x8 mode needs 16-bit activations, got {bits}")
        if mode == "int16x8" and not q.spec.symmetric and q.spec.learner != "fixed":
            problems.append(f"{label}: int16x8 mode needs symmetric activations")
    if problems:
        raise ValueError("model cannot be exported to TFLite " + mode + ":\n  - "
                         + "\n  - ".join(problems))


def _all_layers(model: keras.Model) -> Iterable[keras.layers.Layer]:
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)


def all_quantizers(model: keras.Model) -> Iterable[tuple[str, Quantizer]]:
    """``(label, quantizer)`` for every quantizer of a model, labelled ``layer/role``."""
    for layer in _all_layers(model):
        if isinstance(layer, Quantizer):
            yield layer.name, layer
        elif isinstance(layer, QuantizeWrapper):
            for role, q in layer.quantizers.items():
                yield f"{layer.layer.name}/{role}", q


def _convert(converter) -> bytes:
    # The converter traces the Keras model inside convert(): sub-8-bit quantizers must see the
    # int8-container context then.
    with int8_container():
        return bytes(converter.convert())


def _representative(model: keras.Model) -> Callable:
    """Synthetic samples for converter modes that insist on a representative dataset.

    In int16x8 mode every activation already carries FakeQuant ranges; the converter still
    requires calibration data, so feed it inputs spanning the input quantizer ranges.
    """
    rng = np.random.default_rng(0)

    def gen():
        for _ in range(8):
            yield [rng.uniform(-1, 1, [1] + list(t.shape[1:])).astype(np.float32)
                   for t in model.inputs]
    return gen


def tflite(qmodel: keras.Model, path: str | os.PathLike | None = None, *,
           input_type: str = "float32", output_type: str | None = None, mode: str = "int8",
           strict: bool = True) -> bytes:
    """Converts a quantized (QAT or calibrated) model to a TFLite flatbuffer.

    Args:
        qmodel: a model from :func:`tfquant.quantize_model` (trained or calibrated).
        path: where to write the ``.tflite`` file (None: don't write). Its directory must exist.
        input_type: ``"float32"`` (a QUANTIZE op at the input), ``"int8"`` or ``"uint8"``
            (``"int16"`` in int16x8 mode).
        output_type: like ``input_type``; defaults to ``input_type``.
        mode: ``"int8"`` (full integer), ``"int16x8"`` (16-bit activations, 8-bit weights) or
            ``"dynamic_range"`` (int8 weights, float activations quantized at run time).
        strict: in the integer modes, raise if any op is still float (False: warn).

    Returns:
        The flatbuffer bytes.

    Raises:
        ValueError: the model has layers TFLite cannot run as requested (named), float ops
            remain with ``strict=True`` (named), or ``path``'s directory is missing. No file is
            written in any of these cases.

    Example:
        >>> data = tfquant.export.tflite(qat, "model.tflite", input_type="int8")
    """
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not one of {MODES}")
    output_type = output_type or input_type
    for name, value in (("input_type", input_type), ("output_type", output_type)):
        if value not in IO_TYPES:
            raise ValueError(f"{name}={value!r} is not one of {sorted(IO_TYPES)}")
    if path is not None:
        check_output_path(path)
    if mode == "dynamic_range":
        return _dynamic_range(qmodel, path)
    check_exportable(qmodel, mode)

    converter = tf.lite.TFLiteConverter.from_keras_model(qmodel)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode == "int16x8":
        ops = tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
        converter.target_spec.supported_ops = [ops]
        converter.representative_dataset = _representative(qmodel)
    converter.inference_input_type = IO_TYPES[input_type]
    converter.inference_output_type = IO_TYPES[output_type]
    data = _convert(converter)
    remaining = float_ops(data)
    if remaining:
        message = ("the converted model still computes these ops in float:\n  - "
                   + "\n  - ".join(str(op) for op in remaining)
                   + "\nsee qmodel.quantization_report for layers left in float")
        if strict:
            raise ValueError(message)
        warnings.warn(message, stacklevel=2)
    if path is not None:
        write_atomic(path, data)
    return data


def _dynamic_range(qmodel: keras.Model, path) -> bytes:
    from tfquant.export.folding import folded_float_model

    converter = tf.lite.TFLiteConverter.from_keras_model(folded_float_model(qmodel))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    data = _convert(converter)
    if path is not None:
        write_atomic(path, data)
    return data
