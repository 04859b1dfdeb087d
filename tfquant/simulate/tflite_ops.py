"""TFLite operator -> simulator IR op: one handler per builtin op (used by ``tflite_reader``).

Each handler gets the reader (tensor types, quantization parameters, constants), the op name,
the flatbuffer operator and its input/output tensor ids, and returns an
:class:`~tfquant.simulate.graph.Op` whose integer parameters come from
:mod:`tfquant.simulate.builders`. A handler raises :class:`_Unsupported` with the reason when the
op cannot be simulated (the reader lists all of them in one ``UnsupportedModelError``).

Example:
    >>> sorted(HANDLERS)[:3]
    ['ADD', 'AVERAGE_POOL_2D', 'CONCATENATION']
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from tfquant.simulate import builders as B
from tfquant.simulate.graph import Op

try:  # the newest schema first
    from ai_edge_litert import schema_py_generated as schema
except ImportError:  # pragma: no cover - depends on the installation
    from tensorflow.lite.python import schema_py_generated as schema

_PADDING = {schema.Padding.SAME: "SAME", schema.Padding.VALID: "VALID"}


class _Unsupported(Exception):
    """Internal: one op cannot be simulated (the reason ends up in UnsupportedModelError)."""


# ----------------------------------------------------------------------------------------------
# op handlers: (reader, op name, operator, input ids, output ids) -> IR op
# ----------------------------------------------------------------------------------------------
Handler = Callable[[Any, str, Any, list, list], Op]
HANDLERS: dict[str, Handler] = {}


def _handles(*names: str) -> Callable[[Handler], Handler]:
    def wrap(fn: Handler) -> Handler:
        for n in names:
            HANDLERS[n] = fn
        return fn
    return wrap


def _int8_io(r: Any, x: int, y: int) -> tuple[np.float32, int, np.float32, int]:
    r.expect(x, "int8")
    r.expect(y, "int8")
    s_in, zp_in = r.scale_zp(x)
    s_out, zp_out = r.scale_zp(y)
    return s_in, zp_in, s_out, zp_out


def _bias(r: Any, inputs: list, channels: int) -> np.ndarray | None:
    if len(inputs) < 3 or inputs[2] < 0:
        return None
    bias = r.need_constant(inputs[2], "bias")
    if bias.dtype != np.int32:
        raise _Unsupported(f"{bias.dtype} bias")
    return bias.astype(np.int64).reshape(channels)


def _filter(r: Any, index: int, channels_axis: int, symmetric: bool = True) -> np.ndarray:
    filt = r.need_constant(index, "filter")
    if filt.dtype != np.int8:
        raise _Unsupported(f"{filt.dtype} weights")
    scales, zps, _ = r.qparams(index)
    if scales is None:
        raise _Unsupported("weights without quantization parameters")
    if np.size(scales) not in (1, filt.shape[channels_axis]):
        raise ValueError(f"corrupt TFLite model: {np.size(scales)} weight scales for "
                         f"{filt.shape[channels_axis]} channels")
    if symmetric and np.any(np.asarray(zps) != 0):
        raise _Unsupported("int8 weights with a nonzero zero point (TFLite requires 0)")
    return filt


def _conv_params(r: Any, op: Any, x: int, y: int, filter_index: int, channels_axis: int,
                 bias_index: int | None) -> dict[str, Any]:
    """The parameters every per-channel convolution shares: int8 filter, bias, multipliers, zero
    points, activation clamp, strides and padding."""
    s_in, zp_in, s_out, zp_out = _int8_io(r, x, y)
    filt = _filter(r, filter_index, channels_axis)
    scales, _, _ = r.qparams(filter_index)
    channels = filt.shape[channels_axis]
    m, e = B.conv_multipliers(s_in, scales, s_out, channels)
    o = op.builtinOptions
    act_min, act_max = B.activation_range(r.activation(o), s_out, zp_out)
    bias = None if bias_index is None else _bias(r, [x, filter_index, bias_index], channels)
    return {"filter": filt, "bias": bias, "multiplier": m, "shift": e, "input_zp": zp_in,
            "output_zp": zp_out, "act_min": act_min, "act_max": act_max,
            "strides": (int(o.strideH), int(o.strideW)), "padding": _PADDING[o.padding]}


def _dilations(op: Any) -> tuple[int, int]:
    o = op.builtinOptions
    return int(o.dilationHFactor or 1), int(o.dilationWFactor or 1)


def _optional(inputs: list, index: int) -> int | None:
    return inputs[index] if len(inputs) > index else None


@_handles("CONV_2D")
def _conv_2d(r: Any, name: str, op: Any, inputs: list, outputs: list) -> Op:
    x, y = inputs[0], outputs[0]
    params = _conv_params(r, op, x, y, inputs[1], 0, _optional(inputs, 2))
    return Op("CONV_2D", (r.operand(x),), (y,), {**params, "dilations": _dilations(op)})


@_handles("DEPTHWISE_CONV_2D")
def _depthwise_conv_2d(r: Any, name: str, op: Any, inputs: list, outputs: list) -> Op:
    x, y = inputs[0], outputs[0]
    params = _conv_params(r, op, x, y, inputs[1], 3, _optional(inputs, 2))
    channels = params["filter"].shape[3]
    return Op("DEPTHWISE_CONV_2D", (r.operand(x),), (y,), {
        **params, "depth_multiplier": channels // max(r.shape(x)[-1], 1),
        "dilations": _dilations(op)})


@_handles("TRANSPOSE_CONV")
def _transpose_conv(r: Any, name: str, op: Any, inputs: list, outputs: list) -> Op:
    # inputs: output shape (taken from the output's static shape), filter [O, KH, KW, I],
    # input, optional bias
    x, y = inputs[2], outputs[0]
    params = _conv_params(r, op, x, y, inputs[1], 0, _optional(inputs, 3))
    return Op("TRANSPOSE_CONV", (r.operand(x),), (y,), {
        **params, "output_hw": tuple(r.shape(y)[1:3])})


@_handles("FULLY_CONNECTED")
def _fully_connected(r: Any, name: str, op: Any, inputs: list, outputs: list) -> Op:
    x, y = inputs[0], outputs[0]
    s_in, zp_in, s_out, zp_out = _int8_io(r, x, y)
    o = op.builtinOptions
    if o is not None and int(o.weightsFormat) != 0:
        raise _Unsupported("shuffled weights format")
    scales, filter_zp, _ = r.qparams(inputs[1])
    per_channel = np.ndim(scales) > 0
    filt = _filter(r, inputs[1], 0, symmetric=per_channel)      # per-tensor FC keeps its zp
    channels = filt.shape[0]
    m, e, real = B.fc_multipliers(s_in, scales, s_out, channels)
    act_min, act_max = B.activation_range(r.activation(o), s_out, zp_out)
    return Op("FULLY_CONNECTED", (r.operand(x),), (y,), {
        "filter": filt.reshape(channels, -1),
        "filter_zp": 0 if per_channel else int(filter_zp or 0),
        "bias": _bias(r, inputs, channels), "multiplier": m, "shift": e, "real_multiplier": real,
        "requantize": r.fc_requantize, "input_zp": zp_in, "output_zp": zp_out,
        "act_min": act_min, "act_max": act_max,
        "keep_num_dims": bool(o.keepNumDims) if o is not None else False})


@_handles("ADD", "SUB")
def _add_sub(r: Any, name: str, op: Any, inputs: list, outputs: list) -> Op:
    a, b, y = inputs[0], inputs[1], outputs[0]
    for t in (a, b, y):
        r.expect(t, "int8")
    (s1, zp1), (s2, zp2), (so, zpo) = r.scale_zp(a), r.scale_zp(b), r.scale_zp(y)
    params = B.add_sub_params(s1, zp1, s2, zp2, so, zpo, r.activation(op.builtinOptions))
    return Op(name, (r.operand(a), r.operand(b)), (y,), params)


@_handles("MUL")
def _mul(r: Any, name: str, op: Any, inputs: list, outputs: list) -> Op:
    a, b, y = inputs[0], inputs[1], outputs[0]
    for t in (a, b, y):
        r.expect(t, "int8")
    (s1, zp1), (s2, zp2), (so, zpo) = r.scale_zp(a), r.scale_zp(b), r.scale_zp(y)
    params = B.mul_params(s1, zp1, s2, zp2, so, zpo, r.activation(op.builtinOptions))
    return Op("MUL", (r.operand(a), r.operand(b)), (y,), params)


@_handles("CONCATENATION")
def _concatenation(r: Any, name: str, op: Any, inputs: list, outputs: list) -> Op:
    y = outputs[0]
    r.expect(y, "int8")
    s_out, zp_out = r.scale_zp(y)
    for t in inputs:
        r.expect(t, "int8")
        if r.scale_zp(t) != (s_out, zp_out):
            raise _Unsupported("inputs with other scales than the output (TFLite rejects int8 "
                               "concatenation that would need rescaling)")
    o = op.builtinOptions
    if r.activation(o) != "NONE":
        raise _Unsupported("a fused activation (TFLite's kernel rejects it)")
    return Op("CONCATENATION", tuple(r.operand(t) for t in inputs), (y,),
              {"axis": int(o.axis) % len(r.shape(y))})


@_handles("MAXIMUM", "MINIMUM")
def _maximum_minimum(r: Any, name: str, op: Any, inputs: list, outputs: list) -> Op:
    """Element-wise max/min of the stored integers (TFLite's int8 kernel does not rescale:
    operands share the output's parameters; sub-8-bit exports clip with them)."""
    y = outputs[0]
    r.expect(y, "int8")
    for t in inputs:
        r.expect(t, "int8")
        if r.scale_zp(t) != r.scale_zp(y):
            raise _Unsupported("operands with other scales than the output")
    return Op(name, tuple(r.operand(t) for t in inputs), (y,), {})


@_handles("AVERAGE_POOL_2D", "MAX_POOL_2D")
def _pool(r: Any, name: str, op: Any, inputs: list, outputs: list) -> Op:
    x, y = inputs[0], outputs[0]
    s_in, zp_in, s_out, zp_out = _int8_io(r, x, y)
    o = op.builtinOptions
    act_min, act_max = B.activation_range(r.activation(o), s_out, zp_out)
    return Op(name, (r.operand(x),), (y,), {
        "filter": (int(o.filterHeight), int(o.filterWidth)),
        "strides": (int(o.strideH), int(o.strideW)), "padding": _PADDING[o.padding],
        "act_min": act_min, "act_max": act_max})


@_handles("MEAN")
def _mean(r: Any, name: str, op: Any, inputs: list, outputs: list) -> Op:
    x, y = inputs[0], outputs[0]
    s_in, zp_in, s_out, zp_out = _int8_io(r, x, y)
    rank = len(r.shape(x))
    axes = sorted({int(a) % rank for a in r.need_constant(inputs[1], "MEAN axes").reshape(-1)})
    if 0 in axes:
        raise _Unsupported("reduction over the batch dimension")
    n = int(np.prod([r.shape(x)[a] for a in axes]))
    params = B.mean_params(s_in, zp_in, s_out, zp_out, n)
    params.update(axes=tuple(axes), keep_dims=bool(op.builtinOptions.keepDims))
    return Op("MEAN", (r.operand(x),), (y,), params)


def _same_params(r: Any, x: int, y: int) -> None:
    """Data movement copies the stored integers (TFLite does not rescale them either)."""
    if r.dtype(x) != r.dtype(y):
        raise _Unsupported(f"{r.dtype(x)} -> {r.dtype(y)}")
    if r.dtype(x) not in ("int8", "float32", "int32"):
        raise _Unsupported(f"{r.dtype(x)} tensors")


@_handles("RESHAPE")
def _reshape(r: Any, name: str, op: Any, inputs: list, outputs: list) -> Op:
    x, y = inputs[0], outputs[0]
    _same_params(r, x, y)
    return Op("RESHAPE", (r.operand(x),), (y,), {"new_shape": tuple(r.batched_shape(y))})


@_handles("EXPAND_DIMS")
def _expand_dims(r: Any, name: str, op: Any, inputs: list, outputs: list) -> Op:
    """A size-1 axis inserted (Conv1D and 1-D pooling run as their 2-D ops around it): a
    reshape to the output's static shape."""
    x, y = inputs[0], outputs[0]
    _same_params(r, x, y)
    return Op("RESHAPE", (r.operand(x),), (y,), {"new_shape": tuple(r.batched_shape(y))})


@_handles("SQUEEZE")
def _squeeze(r: Any, name: str, op: Any, inputs: list, outputs: list) -> Op:
    x, y = inputs[0], outputs[0]
    _same_params(r, x, y)
    shape = r.shape(x)
    dims = op.builtinOptions.squeezeDims if op.builtinOptions is not None else None
    if dims is None or len(dims) == 0:
        axes = tuple(i for i in range(1, len(shape)) if shape[i] == 1)
    else:
        axes = tuple(sorted(int(d) % len(shape) for d in dims))
    return Op("SQUEEZE", (r.operand(x),), (y,), {"axes": axes})


@_handles("TRANSPOSE")
def _transpose(r: Any, name: str, op: Any, inputs: list, outputs: list) -> Op:
    x, y = inputs[0], outputs[0]
    _same_params(r, x, y)
    perm = tuple(int(v) for v in r.need_constant(inputs[1], "TRANSPOSE perm").reshape(-1))
    return Op("TRANSPOSE", (r.operand(x),), (y,), {"perm": perm})


@_handles("STRIDED_SLICE")
def _strided_slice(r: Any, name: str, op: Any, inputs: list, outputs: list) -> Op:
    x, y = inputs[0], outputs[0]
    _same_params(r, x, y)
    begin = [int(v) for v in r.need_constant(inputs[1], "begin").reshape(-1)]
    end = [int(v) for v in r.need_constant(inputs[2], "end").reshape(-1)]
    strides = [int(v) for v in r.need_constant(inputs[3], "strides").reshape(-1)]
    o = op.builtinOptions
    if getattr(o, "offset", False):
        end = [b + e for b, e in zip(begin, end)]
    end_mask = int(o.endMask)
    # A full slice of the batch dimension keeps working for any batch size.
    shape = r.shape(x)
    if (begin and not (int(o.ellipsisMask) & 1) and not (int(o.newAxisMask) & 1)
            and not (int(o.shrinkAxisMask) & 1) and begin[0] == 0 and strides[0] == 1
            and end[0] == shape[0]):
        end_mask |= 1
    return Op("STRIDED_SLICE", (r.operand(x),), (y,), {
        "begin": tuple(begin), "end": tuple(end), "strides": tuple(strides),
        "begin_mask": int(o.beginMask), "end_mask": end_mask, "ellipsis_mask": int(o.ellipsisMask),
        "new_axis_mask": int(o.newAxisMask), "shrink_axis_mask": int(o.shrinkAxisMask)})


@_handles("SPLIT", "SPLIT_V")
def _split(r: Any, name: str, op: Any, inputs: list, outputs: list) -> Op:
    if name == "SPLIT":
        axis_t, x = inputs[0], inputs[1]
    else:
        x, axis_t = inputs[0], inputs[2]
    for y in outputs:
        _same_params(r, x, y)
    rank = len(r.shape(x))
    axis = int(r.need_constant(axis_t, "split axis").reshape(-1)[0]) % rank
    sizes = tuple(r.shape(y)[axis] for y in outputs)
    return Op(name, (r.operand(x),), tuple(outputs), {"axis": axis, "sizes": sizes})


@_handles("PAD", "PADV2")
def _pad(r: Any, name: str, op: Any, inputs: list, outputs: list) -> Op:
    x, y = inputs[0], outputs[0]
    _same_params(r, x, y)
    paddings = r.need_constant(inputs[1], "paddings").astype(np.int64).reshape(-1, 2)
    if len(inputs) > 2 and inputs[2] >= 0:
        pad_value = r.need_constant(inputs[2], "pad value").reshape(-1)[0]
    else:
        pad_value = r.scale_zp(y)[1] if r.dtype(y) == "int8" else 0
    return Op(name, (r.operand(x),), (y,), {
        "paddings": tuple(tuple(int(v) for v in p) for p in paddings),
        "pad_value": pad_value.item() if hasattr(pad_value, "item") else pad_value})


@_handles("RESIZE_NEAREST_NEIGHBOR")
def _resize_nearest(r: Any, name: str, op: Any, inputs: list, outputs: list) -> Op:
    x, y = inputs[0], outputs[0]
    _same_params(r, x, y)
    size = tuple(int(v) for v in r.need_constant(inputs[1], "resize size").reshape(-1))
    o = op.builtinOptions
    return Op("RESIZE_NEAREST_NEIGHBOR", (r.operand(x),), (y,), {
        "size": size, "align_corners": bool(getattr(o, "alignCorners", False)),
        "half_pixel_centers": bool(getattr(o, "halfPixelCenters", False))})


@_handles("LOGISTIC", "TANH")
def _lut_op(r: Any, name: str, op: Any, inputs: list, outputs: list) -> Op:
    x, y = inputs[0], outputs[0]
    s_in, zp_in, s_out, zp_out = _int8_io(r, x, y)
    build = B.logistic_lut if name == "LOGISTIC" else B.tanh_lut
    return Op(name, (r.operand(x),), (y,), {"lut": build(s_in, zp_in, s_out, zp_out)})


@_handles("SOFTMAX")
def _softmax(r: Any, name: str, op: Any, inputs: list, outputs: list) -> Op:
    x, y = inputs[0], outputs[0]
    s_in, _, s_out, zp_out = _int8_io(r, x, y)
    if zp_out != -128:
        raise _Unsupported("int8 output zero point must be -128")
    beta = float(op.builtinOptions.beta) if op.builtinOptions is not None else 1.0
    try:
        params = B.softmax_params(beta, s_in)
    except ValueError as e:                     # parameters TFLite itself cannot run
        raise _Unsupported(str(e)) from e
    return Op("SOFTMAX", (r.operand(x),), (y,), params)


@_handles("HARD_SWISH")
def _hard_swish(r: Any, name: str, op: Any, inputs: list, outputs: list) -> Op:
    x, y = inputs[0], outputs[0]
    s_in, zp_in, s_out, zp_out = _int8_io(r, x, y)
    try:
        params = B.hard_swish_params(s_in, zp_in, s_out, zp_out)
    except ValueError as e:                     # parameters TFLite itself rejects
        raise _Unsupported(str(e)) from e
    return Op("HARD_SWISH", (r.operand(x),), (y,), params)


@_handles("LEAKY_RELU")
def _leaky_relu(r: Any, name: str, op: Any, inputs: list, outputs: list) -> Op:
    x, y = inputs[0], outputs[0]
    s_in, zp_in, s_out, zp_out = _int8_io(r, x, y)
    alpha = float(op.builtinOptions.alpha)
    return Op("LEAKY_RELU", (r.operand(x),), (y,),
              B.leaky_relu_params(alpha, s_in, zp_in, s_out, zp_out))


@_handles("RELU", "RELU6", "RELU_N1_TO_1")
def _relu(r: Any, name: str, op: Any, inputs: list, outputs: list) -> Op:
    x, y = inputs[0], outputs[0]
    s_in, zp_in, s_out, zp_out = _int8_io(r, x, y)
    return Op(name, (r.operand(x),), (y,), B.relu_params(name, s_in, zp_in, s_out, zp_out))


@_handles("QUANTIZE")
def _quantize(r: Any, name: str, op: Any, inputs: list, outputs: list) -> Op:
    x, y = inputs[0], outputs[0]
    r.expect(x, "float32", "int8", "uint8")
    r.expect(y, "int8", "uint8")
    s_out, zp_out = r.scale_zp(y)
    if r.dtype(x) == "float32":
        r.expect(y, "int8")
        return Op("QUANTIZE", (r.operand(x),), (y,), {"mode": "float", "scale": s_out,
                                                      "zp": zp_out})
    s_in, zp_in = r.scale_zp(x)
    params = B.requantize_params(s_in, zp_in, s_out, zp_out)
    # uint8 model inputs/outputs (export input_type/output_type="uint8") requantize to and
    # from int8 at the model's edges
    params.update(input_dtype=r.dtype(x), output_dtype=r.dtype(y))
    return Op("QUANTIZE", (r.operand(x),), (y,), params)


@_handles("DEQUANTIZE")
def _dequantize(r: Any, name: str, op: Any, inputs: list, outputs: list) -> Op:
    x, y = inputs[0], outputs[0]
    r.expect(x, "int8")
    r.expect(y, "float32")
    s_in, zp_in = r.scale_zp(x)
    return Op("DEQUANTIZE", (r.operand(x),), (y,), {"scale": s_in, "zp": zp_in})
