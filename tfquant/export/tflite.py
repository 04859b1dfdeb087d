"""TFLite export: full-integer int8, int16x8 and dynamic-range models from tfquant models.

The converter reads every quantization parameter from the FakeQuant ops of the traced model, so
the TFLite tensors carry exactly the :class:`~tfquant.qparams.QuantParams` of the quantizers.
Sub-8-bit tensors are stored in int8 as their b-bit integers shifted left by ``8 - b`` bits
(see :func:`tfquant.fake_quant.int8_container`).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Iterable

import keras
import numpy as np
import tensorflow as tf
from tensorflow.lite.python.convert_phase import ConverterError

from tfquant.export.paths import check_output_file, write_atomic
from tfquant.export.tflite_compact import compact_tflite
from tfquant.fake_quant import int8_container
from tfquant.layers.wrapper import QuantizeWrapper
from tfquant.quantizers import Quantizer

MODES = ("int8", "int16x8", "dynamic_range")
IO_TYPES = {"float32": tf.float32, "int8": tf.int8, "uint8": tf.uint8, "int16": tf.int16}
# The input/output types the converter accepts in each mode (dynamic range keeps float I/O).
MODE_IO_TYPES = {"int8": ("float32", "int8", "uint8"), "int16x8": ("float32", "int16"),
                 "dynamic_range": ("float32",)}


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

    Checked before conversion (so nothing is written), from the quantizers' current
    :class:`~tfquant.qparams.QuantParams`: weights must be symmetric (zero point 0 on every
    channel) and at most 8 bits; Dense, depthwise/separable 1-D convolution and
    transposed-convolution weights must be per-tensor (their kernels reach the TFLite op
    through a reshape or transpose, and the converter rejects per-channel axes there);
    activations must be at most 8 bits in int8 mode and 16-bit symmetric in int16x8 mode; a
    layer called more than once must have 8-bit weights. Ops that stay float after conversion
    (e.g. binary ``sign`` activations, layers left in float) are reported by :func:`tflite`.

    Example:
        >>> check_exportable(qat)          # silent when the model can be exported
        >>> check_exportable(asym_model)   # doctest: +SKIP
        ValueError: model cannot be exported to TFLite int8:
          - conv1: kernel quantizer is asymmetric (zero point != 0); TFLite needs ...
    """
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not one of {MODES}")
    problems = []
    for layer in _all_layers(qmodel):
        if not isinstance(layer, QuantizeWrapper):
            continue
        for attr, q in layer.weight_quantizers.items():
            spec = q.spec
            if not q.enabled:
                continue
            if not q.quant_params().symmetric:
                problems.append(f"{layer.layer.name}: {attr} quantizer is asymmetric (zero "
                                "point != 0); TFLite needs symmetric weights with zero point 0 "
                                "(use symmetric=True for weights)")
            if spec.bits > 8:
                problems.append(f"{layer.layer.name}: {attr} uses {spec.bits}-bit weights; "
                                "TFLite stores int8 weights")
            calls = len(getattr(layer, "_inbound_nodes", ()))
            if spec.bits < 8 and calls > 1:
                problems.append(f"{layer.layer.name}: a layer called {calls} times (shared "
                                f"weights) with {spec.bits}-bit {attr}: the TFLite converter "
                                "leaves its ops in float; give it 8-bit weights or make one "
                                "layer per call")
            kind = _per_tensor_only(layer.layer)
            if spec.per_axis and kind is not None:
                problems.append(f"{layer.layer.name}: per-channel {kind} weights are rejected by "
                                f"the TFLite converter; use per_axis=False for {kind} (the "
                                "TFLite presets do)")
    for layer in _all_layers(qmodel):
        if isinstance(layer, QuantizeWrapper) and getattr(layer.layer, "rank", None) == 3 \
                and layer.weight_quantizers:
            problems.append(f"{layer.layer.name}: TFLite runs 3-D convolutions in float only "
                            "(no int8 CONV_3D kernel); skip this layer")
        if isinstance(layer, QuantizeWrapper) and isinstance(
                layer.layer, (keras.layers.Maximum, keras.layers.Minimum)) \
                and layer.output_quantizer is not None:
            op = type(layer.layer).__name__.upper()
            problems.append(f"{layer.layer.name}: TFLite's int8 {op} compares stored "
                            "integers, so the converter puts its operands and "
                            "result on one grid and clamps an operand with a wider range; "
                            "tfquant does not unify those ranges: skip this layer (it then "
                            "runs in float)")
    for label, q in all_quantizers(qmodel):
        if "/weights/" in label or not q.enabled:
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


def check_io_types(mode: str, input_type: str, output_type: str | None = None) -> str:
    """Checks ``mode`` and the input/output types before anything is traced or converted.

    Args:
        mode: ``"int8"``, ``"int16x8"`` or ``"dynamic_range"``.
        input_type: the TFLite input type (see :data:`MODE_IO_TYPES`).
        output_type: the TFLite output type; None: ``input_type``.

    Returns:
        The output type (``input_type`` when ``output_type`` is None).

    Raises:
        ValueError: ``mode`` is unknown, or a type is not one that ``mode`` can give (int8:
            float32, int8, uint8; int16x8: float32, int16; dynamic_range: float32 only, its
            activations are quantized inside the model at run time).

    Example:
        >>> check_io_types("int8", "uint8")
        'uint8'
        >>> check_io_types("dynamic_range", "int8")  # doctest: +SKIP
        ValueError: input_type='int8' is not available in mode='dynamic_range' ...
    """
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not one of {MODES}")
    output_type = output_type or input_type
    allowed = MODE_IO_TYPES[mode]
    for name, value in (("input_type", input_type), ("output_type", output_type)):
        if value not in IO_TYPES:
            raise ValueError(f"{name}={value!r} is not one of {sorted(IO_TYPES)}")
        if value not in allowed:
            why = (" (a dynamic-range model keeps float inputs and outputs and quantizes "
                   "activations at run time)" if mode == "dynamic_range" else "")
            raise ValueError(f"{name}={value!r} is not available in mode={mode!r}: use one of "
                             f"{list(allowed)}{why}")
    return output_type


def _per_tensor_only(layer: keras.layers.Layer) -> str | None:
    """The layer type's name if the converter takes only per-tensor weights for it (their
    kernel reaches the TFLite op through a reshape or transpose), else None."""
    from keras.src.layers.convolutional.base_conv import BaseConv
    from keras.src.layers.convolutional.base_conv_transpose import BaseConvTranspose
    from keras.src.layers.convolutional.base_depthwise_conv import BaseDepthwiseConv
    from keras.src.layers.convolutional.base_separable_conv import BaseSeparableConv

    if isinstance(layer, (keras.layers.Dense, BaseConvTranspose)) or (
            isinstance(layer, (BaseDepthwiseConv, BaseSeparableConv))
            and getattr(layer, "rank", None) == 1) or (
            isinstance(layer, BaseConv) and layer.rank == 1 and (
                layer.data_format != "channels_last" or layer.groups != 1)):
        return type(layer).__name__
    return None


def _all_layers(model: keras.Model) -> Iterable[keras.layers.Layer]:
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)


def uncalibrated_quantizers(qmodel: keras.Model) -> list[str]:
    """Labels of the observed-range activation quantizers that never saw data: no training
    step and still their initial range (``init_min``/``init_max``), i.e. the model was neither
    calibrated nor trained there."""
    from tfquant.quantizers.minmax import MinMaxQuantizer

    found = []
    for label, q in all_quantizers(qmodel):
        if (isinstance(q, MinMaxQuantizer) and not q.for_weights and q.enabled
                and q.spec.learner != "fixed" and int(q.steps.numpy()) == 0
                and bool(q._at_initial_range(q.min.value, q.max.value))):  # noqa: SLF001
            found.append(label)
    return found


def _warn_if_uncalibrated(qmodel: keras.Model) -> None:
    labels = uncalibrated_quantizers(qmodel)
    if labels:
        shown = ", ".join(labels[:8]) + (", ..." if len(labels) > 8 else "")
        warnings.warn(f"{len(labels)} activation quantizer(s) still hold their initial range "
                      f"(never calibrated or trained): {shown}. The export uses those ranges; "
                      "run tfquant.calibrate(qmodel, data) or QAT first.", stacklevel=3)


def all_quantizers(model: keras.Model) -> Iterable[tuple[str, Quantizer]]:
    """``(label, quantizer)`` for every quantizer of a model, labelled ``layer/role``.

    Args:
        model: a quantized model (nested models are searched too).

    Returns:
        An iterator of ``(label, quantizer)``: standalone quantizers by their layer name,
        wrapper quantizers as ``"<layer>/<role>"`` (e.g. ``"conv1/weights/kernel"``).

    Example:
        >>> [label for label, _ in all_quantizers(qat)][:2]
        ['image_quantizer', 'conv1/weights/kernel']
    """
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


def _conversion_failure(qmodel: keras.Model, err: Exception) -> str:
    """The message for a failed conversion: the converter's first line, and the layers the
    model leaves in float (a layer TFLite cannot convert is usually among them)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    first = next((line for line in lines if "error" in line.lower()), lines[0] if lines else "")
    report = getattr(qmodel, "quantization_report", None)
    floats = list(report.float_layers) if report is not None else []
    where = (f"; layers left in float by the annotator: {floats}" if floats else "")
    return (f"the TFLite converter failed ({type(err).__name__}: {first[:300]}){where}. "
            "Nothing was written.")


# Operators with a bias input, and its position.
_BIAS_INPUT = {"CONV_2D": 2, "DEPTHWISE_CONV_2D": 2, "FULLY_CONNECTED": 2, "TRANSPOSE_CONV": 3}


def _widen_int16x8_biases(data: bytes) -> bytes:
    """Stores the int32 biases of ops with int16 activations as int64 (same integers).

    From FakeQuant ranges alone (no calibration) the converter emits int32 biases in int16x8
    mode, which the installed 16x8 kernels read wrongly (outputs saturate). int64 is TFLite's
    int16x8 bias type; the values and scales do not change.
    """
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(data))
    changed = False
    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            code = model.operatorCodes[op.opcodeIndex]
            name = names.get(max(code.builtinCode, code.deprecatedBuiltinCode))
            position = _BIAS_INPUT.get(name)
            if position is None or len(op.inputs) <= position or op.inputs[position] < 0:
                continue
            source, bias = subgraph.tensors[op.inputs[0]], subgraph.tensors[op.inputs[position]]
            if source.type != schema.TensorType.INT16 or bias.type != schema.TensorType.INT32:
                continue
            buffer = model.buffers[bias.buffer]
            values = np.frombuffer(bytes(bytearray(buffer.data)), dtype="<i4").astype("<i8")
            buffer.data = np.frombuffer(values.tobytes(), dtype=np.uint8)
            bias.type = schema.TensorType.INT64
            changed = True
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)) if changed else data


def tflite(qmodel: keras.Model, path: str | os.PathLike | None = None, *,
           input_type: str = "float32", output_type: str | None = None, mode: str = "int8",
           strict: bool = True, compact: bool = True) -> bytes:
    """Converts a quantized (QAT or calibrated) model to a TFLite flatbuffer.

    Args:
        qmodel: a model from :func:`tfquant.quantize_model` (trained or calibrated).
        path: where to write the ``.tflite`` file (None: don't write). Its directory must exist.
        input_type: ``"float32"`` (a QUANTIZE op at the input), ``"int8"`` or ``"uint8"``
            in int8 mode; ``"float32"`` or ``"int16"`` in int16x8 mode; ``"float32"`` only in
            dynamic_range mode.
        output_type: like ``input_type``; defaults to ``input_type``.
        mode: ``"int8"`` (full integer), ``"int16x8"`` (16-bit activations, 8-bit weights) or
            ``"dynamic_range"`` (int8 weights holding the weight quantizers' own integers and
            scales, float activations quantized at run time; weights TFLite keeps in float,
            under 1024 values, hold their fake-quantized values).
            int16x8 takes every activation range from the model's 16-bit FakeQuant ops (no
            calibration data); biases are stored as int64.
        strict: in the integer modes, raise if any op is still float (False: warn).
        compact: store each distinct quantization vector (per-channel scales, zero points)
            once, shared by every tensor that uses it
            (:func:`~tfquant.export.tflite_compact.compact_tflite`); lossless, the interpreter
            runs the same model. False: the converter's bytes as they are.

    Returns:
        The flatbuffer bytes.

    Raises:
        ValueError: an unknown mode, an input/output type the mode cannot give (checked
            before converting), layers TFLite cannot run as requested (named), or float ops
            remaining with ``strict=True`` (named). No file is written in any of these cases.
        FileNotFoundError: ``path``'s directory is missing (checked before converting).
        IsADirectoryError: ``path`` is an existing directory (checked before converting).

    Example:
        >>> data = tfquant.export.tflite(qat, "model.tflite", input_type="int8")
        >>> data16 = tfquant.export.tflite(qat16, mode="int16x8")  # a "tflite_int16x8" model
        >>> raw = tfquant.export.tflite(qat, compact=False)  # unshared quantization vectors
    """
    output_type = check_io_types(mode, input_type, output_type)
    if path is not None:
        check_output_file(path)
    if mode == "dynamic_range":
        from tfquant.export.tflite_dynamic import dynamic_range_tflite

        return dynamic_range_tflite(qmodel, path, compact=compact)
    check_exportable(qmodel, mode)
    _warn_if_uncalibrated(qmodel)

    converter = tf.lite.TFLiteConverter.from_keras_model(qmodel)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode == "int16x8":
        ops = tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
        # No representative dataset: the FakeQuant ops hold every range, and calibrating a
        # QAT graph fails ("16x8 ... not yet supported for op: 'DEQUANTIZE'").
        converter.target_spec.supported_ops = [ops]
    converter.inference_input_type = IO_TYPES[input_type]
    converter.inference_output_type = IO_TYPES[output_type]
    try:
        data = _convert(converter)
    except ConverterError as err:
        raise ValueError(_conversion_failure(qmodel, err)) from err
    if mode == "int16x8":
        data = _widen_int16x8_biases(data)
    if compact:
        data = compact_tflite(data)
    remaining = float_ops(data)
    if remaining:
        report = getattr(qmodel, "quantization_report", None)
        left = report.float_layers if report is not None else []
        message = ("the converted model still computes these ops in float:\n  - "
                   + "\n  - ".join(str(op) for op in remaining)
                   + (f"\nlayers left in float by quantize_model: {left}" if left else
                      "\nsee qmodel.quantization_report for layers left in float"))
        if strict:
            raise ValueError(message)
        warnings.warn(message, stacklevel=2)
    if path is not None:
        write_atomic(path, data)
    return data
