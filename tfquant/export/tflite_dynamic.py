"""Dynamic-range TFLite export: int8 weights from the weight quantizers, float activations.

TFLite's converter picks its own weight scales (``max|w| / 127``) in dynamic-range mode; after
QAT or clipped calibration a quantizer's range differs, so the converted int8 weights are
replaced by the quantizers' own integers and scales (matched by shape and value).
"""

from __future__ import annotations

import dataclasses
import os
import warnings

import keras
import numpy as np
import tensorflow as tf

from tfquant.export.paths import write_atomic
from tfquant.export.tflite import _BIAS_INPUT, _all_layers, _convert
from tfquant.export.tflite_compact import compact_tflite
from tfquant.layers.wrapper import QuantizeWrapper


def dynamic_range_tflite(qmodel: keras.Model, path: str | os.PathLike | None = None, *,
                         compact: bool = True) -> bytes:
    """Converts a weight-quantized model to a dynamic-range (hybrid) TFLite flatbuffer.

    The converter's dynamic-range pass runs on the folded model whose weights hold their
    fake-quantized values; every int8 weight it produces is then set to the quantizer's own
    integers and scales. Weights the converter keeps in float (fewer than 1024 values) hold
    the fake-quantized values, so they compute what the quantized model computes. Called by
    ``tfquant.export.tflite(qmodel, mode="dynamic_range")``.

    Args:
        qmodel: a quantized model (typically from :func:`tfquant.ptq.dynamic_range`).
        path: where to write the ``.tflite`` file (None: don't write); checked by the caller.
        compact: share identical quantization vectors
            (:func:`~tfquant.export.tflite_compact.compact_tflite`).

    Returns:
        The flatbuffer bytes.

    Raises:
        ValueError: naming every layer whose kernel quantizer is asymmetric or wider than 8
            bits (before converting; nothing is written).

    Example:
        >>> data = dynamic_range_tflite(tfquant.ptq.dynamic_range(model), "m.tflite")
    """
    from tfquant.export.folding import folded_float_model

    grids = _weight_grids(qmodel)  # raises before converting if a weight can't be int8
    converter = tf.lite.TFLiteConverter.from_keras_model(
        folded_float_model(qmodel, quantized_weights=True))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    data = _set_weight_integers(_convert(converter), grids)
    if compact:
        data = compact_tflite(data)
    if path is not None:
        write_atomic(path, data)
    return data


@dataclasses.dataclass
class _WeightGrid:
    """A quantized weight in TFLite's layout: ``values = scale * integers`` along ``axis``."""

    layer: str
    integers: np.ndarray
    scale: np.ndarray  # () or (C,)
    axis: int | None
    used: bool = False


def _weight_grids(qmodel: keras.Model) -> list[_WeightGrid]:
    grids, problems = [], []
    for layer in _all_layers(qmodel):
        if not isinstance(layer, QuantizeWrapper):
            continue
        inner = layer.layer
        kernel_q = layer.weight_quantizers.get("kernel")
        if kernel_q is None or not kernel_q.enabled:
            continue
        kernel = np.asarray(layer.folded_weights()["kernel"], np.float32)
        p = kernel_q.quant_params()
        if not p.symmetric:
            problems.append(f"{inner.name}: kernel quantizer is asymmetric (zero point != 0); "
                            "TFLite dynamic-range weights are symmetric")
        if p.bits > 8:
            problems.append(f"{inner.name}: {p.bits}-bit kernel; TFLite stores int8 weights")
        if problems:
            continue
        scale = np.asarray(p.scale, np.float32)
        if isinstance(inner, keras.layers.DepthwiseConv2D):  # (kh, kw, in, m) -> (1, kh, kw, in*m)
            kernel, axis = kernel.reshape((1,) + kernel.shape[:2] + (-1,)), 3
        elif isinstance(inner, keras.layers.Conv2D):  # HWIO -> OHWI
            kernel, axis = np.transpose(kernel, (3, 0, 1, 2)), 0
        elif isinstance(inner, keras.layers.Dense):  # (in, out) -> (out, in)
            kernel, axis = kernel.T, 0
        else:
            continue
        shape = [1] * kernel.ndim
        if scale.ndim:
            shape[axis] = -1
        integers = np.clip(np.round(kernel / scale.reshape(shape)), p.qmin, p.qmax)
        grids.append(_WeightGrid(inner.name, integers.astype(np.int8), scale,
                                 axis if scale.ndim else None))
    if problems:
        raise ValueError("model cannot be exported to TFLite dynamic_range:\n  - "
                         + "\n  - ".join(problems))
    return grids


def _broadcast_scale(scale: np.ndarray, axis: int | None, ndim: int) -> np.ndarray:
    """``scale`` shaped to broadcast against an ``ndim``-dimensional weight along ``axis``."""
    if axis is None or scale.size == 1:
        return scale.reshape(())
    shape = [1] * ndim
    shape[axis] = -1
    return scale.reshape(shape)


def _dequantized(values: np.ndarray, scale: np.ndarray, axis: int | None) -> np.ndarray:
    return values.astype(np.float32) * _broadcast_scale(scale, axis, values.ndim)


def _grid_matches(current: np.ndarray, scale: np.ndarray, axis: int | None,
                  grid: _WeightGrid) -> bool:
    """Whether the converter's dequantized weight ``current`` (its ``scale`` along ``axis``)
    came from ``grid``: every value within half a converter step plus half a grid step of the
    grid's value, channel by channel (rounding to either grid moves a value by at most half of
    that grid's step on its channel).
    """
    tolerance = 0.51 * (_broadcast_scale(scale, axis, current.ndim)
                        + _broadcast_scale(grid.scale, grid.axis, current.ndim))
    return bool(np.all(np.abs(current - _dequantized(grid.integers, grid.scale, grid.axis))
                       <= tolerance))


def _set_weight_integers(data: bytes, grids: list[_WeightGrid]) -> bytes:
    """Replaces the converter's int8 weights of hybrid ops by the quantizers' integers.

    Each int8 weight is matched to the quantized kernel it came from by shape and value: the
    converter rounds the fake-quantized values to its own grid, so on every channel the two
    dequantized weights lie within half a step of each grid (see :func:`_grid_matches`).
    """
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(data))
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    done, foreign = set(), []
    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            code = model.operatorCodes[op.opcodeIndex]
            name = names.get(max(code.builtinCode, code.deprecatedBuiltinCode))
            if name not in _BIAS_INPUT or len(op.inputs) < 2 or op.inputs[1] in done:
                continue
            tensor = subgraph.tensors[op.inputs[1]]
            q = tensor.quantization
            if tensor.type != schema.TensorType.INT8 or q is None or q.scale is None:
                continue
            buffer = model.buffers[tensor.buffer]
            shape = tuple(int(d) for d in tensor.shape)
            ints = np.frombuffer(bytes(bytearray(buffer.data)), np.int8).reshape(shape)
            scale = np.asarray(q.scale, np.float32)
            axis = int(q.quantizedDimension) if scale.size > 1 else None
            current = _dequantized(ints, scale, axis)
            grid = next((g for g in grids if not g.used and g.integers.shape == shape
                         and _grid_matches(current, scale, axis, g)), None)
            if grid is None:
                foreign.append(bytes(tensor.name or b"").decode(errors="replace"))
                continue
            if grid.axis is not None and grid.axis != axis:
                raise ValueError(f"{grid.layer}: per-channel weights on axis {grid.axis}, but "
                                 f"TFLite quantizes this op's weights on axis {axis}")
            new_scale = (np.full(shape[axis], grid.scale, np.float32)
                         if axis is not None and grid.axis is None else grid.scale.reshape(-1))
            buffer.data = np.frombuffer(grid.integers.tobytes(), np.uint8)
            q.scale = new_scale.astype(np.float32)
            q.zeroPoint = np.zeros(new_scale.size, np.int64)
            grid.used = True
            done.add(op.inputs[1])
    if foreign:
        warnings.warn("TFLite quantized these weights with its own scales (no tfquant weight "
                      f"quantizer matches them, e.g. layers left in float): {foreign}",
                      stacklevel=3)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))
