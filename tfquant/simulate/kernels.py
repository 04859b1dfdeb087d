"""One integer kernel per IR op type, written with TF ops that XLA compiles.

Kernels follow TFLite's reference kernels bit for bit (:data:`KERNELS` maps an op type to its
kernel; the activation, quantize and softmax kernels are in :mod:`tfquant.simulate.activations`).
Activations travel between kernels as ``tf.int8`` (``tf.float32`` around QUANTIZE/DEQUANTIZE).

Accumulation:
    CONV_2D (im2col) and FULLY_CONNECTED run on XLA's int8 x int8 -> int32 dot, with the input
    zero point moved into the bias (:mod:`tfquant.simulate.matmul`, which also has the exact
    float32 fallback); DEPTHWISE_CONV_2D sums int32 taps of the raw input (XLA's depthwise
    convolution is slow on CPU), with the same bias shift.

Requantisation:
    ``MultiplyByQuantizedMultiplier`` runs in float64 with exact floors when
    :func:`tfquant.simulate.primitives.double_requantize_mode` proves it exact from the
    accumulator bound (the common case; several times cheaper than int64 emulation), the bias
    folded into the rounding constant and the sign branch dropped below a fused ReLU's zero point
    where that stays exact; the zero point is then added and the result clamped in int32.
    Otherwise it runs in int64 integer ops.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import tensorflow as tf

from tfquant.simulate import primitives as P
from tfquant.simulate.graph import Op
from tfquant.simulate.matmul import (FLOAT32_EXACT, INT8_MAX, INT8_MIN, exact_matmul,
                                     int8_matmul_ok, raw_input_matmul, zero_point_into_bias)

Kernel = Callable[[Op, list], list]
KERNELS: dict[str, Kernel] = {}


def register(*types: str) -> Callable[[Kernel], Kernel]:
    """Decorator registering a kernel for one or more op types."""
    def wrap(fn: Kernel) -> Kernel:
        for t in types:
            KERNELS[t] = fn
        return fn
    return wrap


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
def _i64(x: tf.Tensor) -> tf.Tensor:
    return tf.cast(x, tf.int64)


def _to_int8(acc: tf.Tensor, act_min: int, act_max: int) -> tf.Tensor:
    """Clamps integer values (a float or integer tensor) to ``[act_min, act_max]`` as int8."""
    acc = tf.clip_by_value(acc, tf.constant(act_min, acc.dtype), tf.constant(act_max, acc.dtype))
    if acc.dtype.is_floating:
        acc = tf.cast(acc, tf.int32)
    return tf.cast(acc, tf.int8)


def _requantize(acc: tf.Tensor, multiplier: Any, shift: Any, output_zp: int, act_min: int,
                act_max: int, bound: Any = None, bias: Any = None) -> tf.Tensor:
    """``clamp(MultiplyByQuantizedMultiplier(acc + bias, m, e) + zp)`` as int8.

    Args:
        acc: exact integer values (a float or integer tensor), channels on the last axis.
        multiplier, shift: per-channel (or scalar) TFLite multiplier pairs.
        bound: max |acc| (scalar or per channel) when known; enables the double-precision path,
            which adds the zero point and clamps in int32 once the result provably fits.
        bias: optional int32 bias added to ``acc`` first (int32 addition, as in C).
    """
    m = np.asarray(multiplier, np.int64)
    e = np.asarray(shift, np.int64)
    if bound is not None:
        total = np.asarray(bound, np.int64) + (np.abs(np.asarray(bias, np.int64))
                                               if bias is not None else 0)
        mode = P.double_requantize_mode(total, m, e) if np.all(total < (1 << 31)) else None
        if mode is not None:
            x, addend = tf.cast(acc, tf.float64), bias
            if bias is not None and mode == "single" and not P.addend_folds_exactly(
                    bound, bias, m, e):
                x, addend = x + tf.constant(np.asarray(bias, np.float64)), None
            y = P.multiply_by_quantized_multiplier_double(
                x, m, e, mode=mode, addend=addend, negatives_clamped=act_min >= output_zp)
            # |y| <= |acc + bias| * 2^max(e, 0) + 1, far inside int32 for every real layer
            if int(np.max(total * np.exp2(np.maximum(e, 0)))) + 256 < (1 << 31):
                y = tf.cast(y, tf.int32) + output_zp
                return _to_int8(y, act_min, act_max)
            return _to_int8(y + output_zp, act_min, act_max)
    x = acc if acc.dtype == tf.int64 else _i64(tf.cast(acc, tf.int32) if acc.dtype.is_floating
                                                else acc)
    if bias is not None:
        x = P.wrap_int32(x + tf.constant(np.asarray(bias, np.int64)))
    out = P.multiply_by_quantized_multiplier(x, tf.constant(m), tf.constant(e)) + output_zp
    return _to_int8(out, act_min, act_max)


def _lut(x: tf.Tensor, table: Any) -> tf.Tensor:
    """Applies a 256-entry int8 table indexed by ``q + 128``."""
    table = tf.constant(np.asarray(table, np.int8))
    return tf.gather(table, tf.cast(x, tf.int32) + 128)


def _input_range(zp: int) -> int:
    """max |q - zp| over int8 q."""
    return max(INT8_MAX - zp, zp - INT8_MIN)


# ----------------------------------------------------------------------------------------------
# convolutions
# ----------------------------------------------------------------------------------------------
@register("CONV_2D")
def conv_2d(op: Op, inputs: list) -> list:
    """Per-channel int8 convolution (TFLite ``ConvPerChannel``).

    Computed as im2col (the window taps, strided slices of the input padded with ``zp_in``,
    concatenated along channels) minus ``zp_in`` times the ``[KH*KW*I, O]`` weight matrix with
    :func:`exact_matmul`: XLA's CPU convolution is single-threaded and slow for small inputs.
    Grouped convolutions use ``tf.nn.conv2d``.
    """
    p = op.params
    x = inputs[0]
    filt = np.asarray(p["filter"], np.int64)             # [O, KH, KW, I_group]
    out_channels, kh, kw, group_channels = filt.shape
    groups = int(x.shape[-1]) // group_channels
    x_range = _input_range(p["input_zp"])
    bias = p.get("bias")
    bound = np.abs(filt).sum(axis=(1, 2, 3)) * x_range
    w = np.transpose(filt, (1, 2, 3, 0)).reshape(-1, out_channels)       # rows: (kh, kw, i)
    if groups == 1:
        # im2col on the int8 input, padded with zp_in (which contributes 0 to x - zp_in)
        taps = [t for _, t in window_taps(x, (kh, kw), tuple(p["strides"]),
                                          tuple(p["dilations"]), p["padding"], p["input_zp"])]
        patches = taps[0] if len(taps) == 1 else tf.concat(taps, axis=-1)
        out_shape = tf.concat([tf.shape(patches)[:-1], [out_channels]], axis=0)
        rows = tf.reshape(patches, (-1, w.shape[0]))
        if int8_matmul_ok(w):
            acc, bound, bias = raw_input_matmul(rows, w, p["input_zp"], bias)
        else:
            acc = exact_matmul(tf.cast(rows, tf.float32) - float(p["input_zp"]), w, x_range)
        acc = tf.reshape(acc, out_shape)
    else:
        x_f = tf.cast(x, tf.float32) - float(p["input_zp"])
        per_group = int(np.abs(filt).sum(axis=(1, 2, 3)).max()) * x_range
        dtype = tf.float32 if per_group <= FLOAT32_EXACT else tf.float64
        acc = tf.nn.conv2d(tf.cast(x_f, dtype),
                           tf.constant(np.transpose(filt, (1, 2, 3, 0)), dtype),
                           strides=(1, *p["strides"], 1), padding=p["padding"],
                           dilations=(1, *p["dilations"], 1))
    return [_requantize(acc, p["multiplier"], p["shift"], p["output_zp"], p["act_min"],
                        p["act_max"], bound=bound, bias=bias)]


def window_taps(x: tf.Tensor, window: tuple[int, int], strides: tuple[int, int],
                dilations: tuple[int, int], padding: str, pad_value: int) -> list:
    """Every tap of a 2-D sliding window as a strided slice of the padded NHWC input.

    Returns a list of ``((kh, kw), tensor [B, OH, OW, C])``. Padding follows TFLite/TF ("SAME":
    ``total = max((out - 1) * stride + effective_window - size, 0)``, ``before = total // 2``);
    padded positions hold ``pad_value``. XLA fuses the slices of a tap loop into one pass, which
    is much faster on CPU than its depthwise/pooling convolutions.
    """
    pads, outs = [], []
    for axis in (0, 1):
        size = int(x.shape[1 + axis])
        effective = (window[axis] - 1) * dilations[axis] + 1
        if padding == "SAME":
            out = -(-size // strides[axis])
            total = max((out - 1) * strides[axis] + effective - size, 0)
            before = total // 2
        else:
            out = (size - effective) // strides[axis] + 1
            total, before = 0, 0
        # Pad enough on the far side for the last tap's slice.
        needed = (out - 1) * strides[axis] + effective
        pads.append((before, max(needed - size - before, 0)))
        outs.append(out)
    xp = x
    if any(p != (0, 0) for p in pads):
        xp = tf.pad(x, [(0, 0), pads[0], pads[1], (0, 0)], constant_values=pad_value)
    taps = []
    for kh in range(window[0]):
        h0 = kh * dilations[0]
        for kw in range(window[1]):
            w0 = kw * dilations[1]
            taps.append(((kh, kw), xp[:, h0:h0 + (outs[0] - 1) * strides[0] + 1:strides[0],
                                      w0:w0 + (outs[1] - 1) * strides[1] + 1:strides[1], :]))
    return taps


@register("DEPTHWISE_CONV_2D")
def depthwise_conv_2d(op: Op, inputs: list) -> list:
    """Per-channel int8 depthwise convolution with a depth multiplier.

    Computed tap by tap as element-wise multiply-adds of the raw int8 input in int32 (XLA's
    depthwise convolution is slow on CPU, and its int32 element-wise code beats float32 here);
    the zero point moves into the bias as in :func:`raw_input_matmul`, so no tap subtracts it.
    """
    p = op.params
    x = inputs[0]
    filt = np.asarray(p["filter"], np.int64)             # [1, KH, KW, I * M]
    kh, kw, out_channels = filt.shape[1], filt.shape[2], filt.shape[3]
    in_channels = int(x.shape[-1])
    multiplier = out_channels // in_channels
    bound = np.abs(filt).sum(axis=(0, 1, 2)) * (-INT8_MIN)    # max |sum of x * w|
    dtype = tf.int32 if int(bound.max()) < (1 << 31) else tf.int64
    if multiplier != 1:                                  # output o = i * M + k reads input i
        x = tf.repeat(x, multiplier, axis=-1)
    acc = None
    # taps of the int8 input padded with zp_in (a padded tap then contributes 0 to x - zp_in)
    for (i, j), tap in window_taps(x, (kh, kw), tuple(p["strides"]), tuple(p["dilations"]),
                                   p["padding"], p["input_zp"]):
        term = tf.cast(tap, dtype) * tf.constant(filt[0, i, j], dtype)
        acc = term if acc is None else acc + term
    bias = zero_point_into_bias(p.get("bias"), p["input_zp"], filt.sum(axis=(0, 1, 2)))
    return [_requantize(acc, p["multiplier"], p["shift"], p["output_zp"], p["act_min"],
                        p["act_max"], bound=bound, bias=bias)]


@register("TRANSPOSE_CONV")
def transpose_conv(op: Op, inputs: list) -> list:
    """Per-channel int8 transposed convolution (TFLite's reference ``TransposeConv``).

    TFLite scatters ``(x - zp_in) * w`` of every input pixel into the output window at
    ``in * stride - pad`` (pad from the output size, as TF's conv2d gradient places it), adds
    the bias and requantises per channel. Here ``tf.nn.conv2d_transpose`` computes the same
    sums, in float32 when every output's sum of |products| stays within 2^24 (then exact in any
    order), else in float64.
    """
    p = op.params
    x = inputs[0]
    filt = np.asarray(p["filter"], np.int64)             # [O, KH, KW, I]
    bound = np.abs(filt).sum(axis=(1, 2, 3)) * _input_range(p["input_zp"])
    dtype = tf.float32 if int(bound.max()) <= FLOAT32_EXACT else tf.float64
    x_f = tf.cast(x, dtype) - tf.constant(p["input_zp"], dtype)
    out_shape = tf.stack([tf.shape(x)[0], *p["output_hw"], filt.shape[0]])
    acc = tf.nn.conv2d_transpose(x_f, tf.constant(np.transpose(filt, (1, 2, 0, 3)), dtype),
                                 out_shape, strides=(1, *p["strides"], 1),
                                 padding=p["padding"])
    return [_requantize(acc, p["multiplier"], p["shift"], p["output_zp"], p["act_min"],
                        p["act_max"], bound=bound, bias=p.get("bias"))]


@register("FULLY_CONNECTED")
def fully_connected(op: Op, inputs: list) -> list:
    """int8 FullyConnected, requantised with fixed-point multipliers or in double."""
    p = op.params
    x = inputs[0]
    filt = np.asarray(p["filter"], np.int64)             # [O, K]
    filter_zp = int(p.get("filter_zp", 0))
    w = filt - filter_zp                                   # (filter_val + filter_offset)
    k = w.shape[1]
    lead = tf.shape(x)[:-1]
    rows = tf.reshape(x, (-1, k))
    wt = w.T                                               # [K, O]
    bias = p.get("bias")
    bound = np.abs(wt).sum(axis=0) * _input_range(p["input_zp"])
    if int8_matmul_ok(wt):
        acc, bound, bias = raw_input_matmul(rows, wt, p["input_zp"], bias)
    else:
        acc = exact_matmul(tf.cast(rows, tf.float32) - float(p["input_zp"]), wt,
                           _input_range(p["input_zp"]))
    if p.get("requantize", "fixed_point") == "double":
        # reference FullyConnected of current LiteRT: int32 acc, then round(acc * double scale)
        total = bound + (np.abs(np.asarray(bias, np.int64)) if bias is not None else 0)
        if np.all(total < (1 << 31)):
            accd = tf.cast(acc, tf.float64)
            if bias is not None:
                accd = accd + tf.constant(np.asarray(bias, np.float64))
        else:
            acc64 = acc if acc.dtype == tf.int64 else _i64(tf.cast(acc, tf.int32))
            if bias is not None:
                acc64 = P.wrap_int32(acc64 + tf.constant(np.asarray(bias, np.int64)))
            accd = tf.cast(acc64, tf.float64)
        scaled = accd * tf.constant(np.asarray(p["real_multiplier"], np.float64))
        out = _i64(P.round_half_away(scaled)) + p["output_zp"]
        y = _to_int8(out, p["act_min"], p["act_max"])
    else:
        y = _requantize(acc, p["multiplier"], p["shift"], p["output_zp"], p["act_min"],
                        p["act_max"], bound=bound, bias=bias)
    if p.get("keep_num_dims"):
        y = tf.reshape(y, tf.concat([lead, [filt.shape[0]]], axis=0))
    return [y]


# ----------------------------------------------------------------------------------------------
# element-wise binary ops
# ----------------------------------------------------------------------------------------------
def _add_sub(op: Op, inputs: list, sign: int) -> list:
    """TFLite's int8 ``AddElementwise``/Sub: each input rescaled to a common 2^20-scaled grid,
    summed in int32, then requantised.

    When both input rescalings are exact in double (:func:`P.double_requantize_mode`; always for
    8-bit inputs) the whole op runs on float64 integers: the rescaled inputs and their sum stay
    below 2^32, so nothing rounds, and the output requantisation gets the sum's bound.
    """
    p = op.params
    k = p["left_shift"]
    ranges = [_input_range(p["input_zp"][i]) for i in range(2)]
    pairs = [(np.asarray(p["input_multiplier"][i], np.int64),
              np.asarray(p["input_shift"][i], np.int64)) for i in range(2)]
    modes = [P.double_requantize_mode(ranges[i], *pairs[i], k=k) for i in range(2)]
    scaled, bound = [], 0
    for i in range(2):
        if modes[i] is not None:
            v = tf.cast(inputs[i], tf.float64) - float(p["input_zp"][i])
            scaled.append(P.multiply_by_quantized_multiplier_double(v, *pairs[i], k=k,
                                                                    mode=modes[i]))
        else:
            v = _i64(inputs[i]) - p["input_zp"][i]
            scaled.append(P.multiply_by_quantized_multiplier(v * (1 << k), *pairs[i]))
        extremes = np.array([ranges[i], -ranges[i]], np.int64) << k
        bound += int(np.abs(P.multiply_by_quantized_multiplier(extremes, *pairs[i])).max())
    if None not in modes and bound < (1 << 31):          # exact doubles; the int32 sum cannot wrap
        raw = scaled[0] + scaled[1] if sign > 0 else scaled[0] - scaled[1]
        return [_requantize(raw, p["output_multiplier"], p["output_shift"], p["output_zp"],
                            p["act_min"], p["act_max"], bound=bound)]
    raw = P.wrap_int32(_i64(scaled[0]) + sign * _i64(scaled[1]))
    return [_requantize(raw, p["output_multiplier"], p["output_shift"], p["output_zp"],
                        p["act_min"], p["act_max"])]


@register("ADD")
def add(op: Op, inputs: list) -> list:
    """int8 Add with broadcasting (TFLite ``AddElementwise``)."""
    return _add_sub(op, inputs, 1)


@register("SUB")
def sub(op: Op, inputs: list) -> list:
    """int8 Sub with broadcasting (each input rescaled, then subtracted)."""
    return _add_sub(op, inputs, -1)


@register("MUL")
def mul(op: Op, inputs: list) -> list:
    """int8 Mul with broadcasting."""
    p = op.params
    prod = ((tf.cast(inputs[0], tf.int32) - p["input_zp"][0])
            * (tf.cast(inputs[1], tf.int32) - p["input_zp"][1]))
    bound = _input_range(p["input_zp"][0]) * _input_range(p["input_zp"][1])
    return [_requantize(prod, p["output_multiplier"], p["output_shift"], p["output_zp"],
                        p["act_min"], p["act_max"], bound=bound)]


# ----------------------------------------------------------------------------------------------
# pooling and reductions
# ----------------------------------------------------------------------------------------------
def _valid_counts(size: int, window: int, stride: int, padding: str) -> np.ndarray:
    if padding == "SAME":
        out = -(-size // stride)
        before = max((out - 1) * stride + window - size, 0) // 2
    else:
        before, out = 0, (size - window) // stride + 1
    starts = np.arange(out) * stride - before
    return np.minimum(starts + window, size) - np.maximum(starts, 0)


@register("AVERAGE_POOL_2D")
def average_pool_2d(op: Op, inputs: list) -> list:
    """int8 AveragePool: integer sum over valid taps, divided with rounding half away from zero."""
    p = op.params
    x = inputs[0]
    (fh, fw), (sh, sw) = p["filter"], p["strides"]
    total = None
    for _, tap in window_taps(x, (fh, fw), (sh, sw), (1, 1), p["padding"], 0):
        tap = tf.cast(tap, tf.int32)                     # padded taps add 0 and are not counted
        total = tap if total is None else total + tap
    counts = np.outer(_valid_counts(int(x.shape[1]), fh, sh, p["padding"]),
                      _valid_counts(int(x.shape[2]), fw, sw, p["padding"]))
    count = tf.constant(counts[None, :, :, None].astype(np.int32))
    half = count // 2
    avg = tf.truncatediv(tf.where(total > 0, total + half, total - half), count)
    return [_to_int8(avg, p["act_min"], p["act_max"])]


@register("MAX_POOL_2D")
def max_pool_2d(op: Op, inputs: list) -> list:
    """int8 MaxPool over valid taps (padding never wins), then the fused activation clamp."""
    p = op.params
    best = None
    # padding with -128 never changes a maximum: every window has a valid tap >= -128
    for _, tap in window_taps(inputs[0], tuple(p["filter"]), tuple(p["strides"]), (1, 1),
                              p["padding"], INT8_MIN):
        best = tap if best is None else tf.maximum(best, tap)
    return [_to_int8(best, p["act_min"], p["act_max"])]


@register("MEAN")
def mean(op: Op, inputs: list) -> list:
    """int8 Mean (TFLite ``QuantizedMeanOrSum``): requantise ``sum(q) - zp_in * N``."""
    p = op.params
    total = tf.reduce_sum(tf.cast(inputs[0], tf.int32), axis=list(p["axes"]),
                          keepdims=bool(p["keep_dims"]))
    n = int(p["num_elements"])
    shifted = total - p["input_zp"] * n
    bound = _input_range(p["input_zp"]) * n
    return [_requantize(shifted, p["multiplier"], p["shift"], p["output_zp"], INT8_MIN, INT8_MAX,
                        bound=bound)]


# ----------------------------------------------------------------------------------------------
# data movement
# ----------------------------------------------------------------------------------------------
@register("RESHAPE")
def reshape(op: Op, inputs: list) -> list:
    """Reshape; -1 in ``new_shape`` marks the batch dimension."""
    return [tf.reshape(inputs[0], op.params["new_shape"])]


@register("SQUEEZE")
def squeeze(op: Op, inputs: list) -> list:
    """Squeeze the listed axes."""
    return [tf.squeeze(inputs[0], axis=list(op.params["axes"]))]


@register("TRANSPOSE")
def transpose(op: Op, inputs: list) -> list:
    """Transpose with a constant permutation."""
    return [tf.transpose(inputs[0], op.params["perm"])]


@register("STRIDED_SLICE")
def strided_slice(op: Op, inputs: list) -> list:
    """StridedSlice with TF's mask semantics."""
    p = op.params
    return [tf.strided_slice(inputs[0], p["begin"], p["end"], p["strides"],
                             begin_mask=p["begin_mask"], end_mask=p["end_mask"],
                             ellipsis_mask=p["ellipsis_mask"], new_axis_mask=p["new_axis_mask"],
                             shrink_axis_mask=p["shrink_axis_mask"])]


@register("SPLIT", "SPLIT_V")
def split(op: Op, inputs: list) -> list:
    """Split along ``axis`` into pieces of ``sizes``."""
    return list(tf.split(inputs[0], list(op.params["sizes"]), axis=op.params["axis"]))


@register("CONCATENATION")
def concatenation(op: Op, inputs: list) -> list:
    """Concatenation (int8 inputs share the output's parameters: a copy)."""
    return [tf.concat(inputs, axis=op.params["axis"])]


@register("MAXIMUM", "MINIMUM")
def maximum_minimum(op: Op, inputs: list) -> list:
    """Element-wise max/min with broadcasting (operands share the output's parameters)."""
    fn = tf.maximum if op.type == "MAXIMUM" else tf.minimum
    return [fn(inputs[0], inputs[1])]


@register("PAD", "PADV2")
def pad(op: Op, inputs: list) -> list:
    """Constant padding with ``pad_value`` (the output zero point unless given)."""
    p = op.params
    y = tf.pad(tf.cast(inputs[0], tf.int32), np.asarray(p["paddings"], np.int64),
               constant_values=int(p["pad_value"]))
    return [tf.cast(y, inputs[0].dtype)]


def nearest_indices(in_size: int, out_size: int, align_corners: bool,
                    half_pixel_centers: bool) -> np.ndarray:
    """TFLite's ``GetNearestNeighbor`` for every output coordinate (float32 math)."""
    f32 = np.float32
    if align_corners and out_size > 1:
        scale = f32(in_size - 1) / f32(out_size - 1)
    else:
        scale = f32(in_size) / f32(out_size)
    offset = f32(0.5) if half_pixel_centers else f32(0.0)
    out = []
    for v in range(out_size):
        value = f32(f32(f32(v) + offset) * scale)
        if align_corners:
            idx = int(np.sign(value) * np.floor(np.abs(value) + f32(0.5)))
        else:
            idx = int(np.floor(value))
        idx = min(idx, in_size - 1)
        if half_pixel_centers:
            idx = max(0, idx)
        out.append(idx)
    return np.asarray(out, np.int32)


@register("RESIZE_NEAREST_NEIGHBOR")
def resize_nearest_neighbor(op: Op, inputs: list) -> list:
    """Nearest-neighbour resize with TFLite's index rule."""
    p = op.params
    x = inputs[0]
    rows = nearest_indices(int(x.shape[1]), p["size"][0], p["align_corners"],
                           p["half_pixel_centers"])
    cols = nearest_indices(int(x.shape[2]), p["size"][1], p["align_corners"],
                           p["half_pixel_centers"])
    y = tf.gather(x, tf.constant(rows), axis=1)
    return [tf.gather(y, tf.constant(cols), axis=2)]


# The activation, quantize and softmax kernels live in their own module; importing it here
# registers them whenever the kernel table is used.
from tfquant.simulate import activations  # noqa: E402,F401  (registers kernels)
