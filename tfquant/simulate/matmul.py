"""Exact integer matrix products for the simulator's kernels.

The main path is XLA's int8 x int8 -> int32 dot on the raw int8 input (:func:`int8_matmul`,
:func:`raw_input_matmul`): exact, and on CPU faster than a float32 matmul of the same values,
while XLA's integer *convolution* is very slow. ``x - zp_in`` does not fit int8, so
``-zp_in * sum(w)`` moves into the bias (:func:`zero_point_into_bias`): the sum is the same
integer TFLite forms.

Weights outside int8 (a nonzero filter zero point) use float32 matmuls of ``x - zp_in``
(:func:`exact_matmul`), exact because every partial sum is a sum of a subset of the products,
bounded by ``B = max|x - zp_in| * sum_k |w[k, c]|`` for output channel c, and every integer of
magnitude <= 2^24 is a float32. When B > 2^24 the reduction is split into contiguous groups of K
whose bound is <= 2^24 each (:func:`exact_float_chunks`), computed in float32, converted to
int32 and added in integers; a single row whose bound alone exceeds 2^24 falls back to float64
(exact for any int8 model, 2^53).

Example:
    >>> import numpy as np
    >>> w = np.full((600, 4), 127)                          # K = 600: 600 * 255 * 127 > 2^24
    >>> exact_float_chunks(w, 255)
    [(0, 518), (518, 600)]
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.compiler.tf2xla.python import xla
from tensorflow.compiler.xla import xla_data_pb2

FLOAT32_EXACT = 1 << 24
INT8_MIN, INT8_MAX = -128, 127

_MATMUL_DIMS = xla_data_pb2.DotDimensionNumbers(lhs_contracting_dimensions=[1],
                                                rhs_contracting_dimensions=[0])


def _i64(x: tf.Tensor) -> tf.Tensor:
    return tf.cast(x, tf.int64)


def exact_float_chunks(abs_weight_sums: np.ndarray, x_bound: int,
                       limit: int = FLOAT32_EXACT) -> list[tuple[int, int]] | None:
    """Splits input channels into contiguous groups whose float32 accumulation is exact.

    Args:
        abs_weight_sums: ``[I, O]`` array, sum of |w| over the taps of input channel i feeding
            output channel o.
        x_bound: max |x - zp_in|.
        limit: the largest exactly representable magnitude (2^24 for float32).

    Returns:
        ``[(start, end), ...]`` covering ``range(I)``, or None when one channel alone exceeds the
        limit (the caller then uses float64).
    """
    sums = np.asarray(abs_weight_sums, np.int64) * int(x_bound)
    if np.any(sums > limit):
        return None
    # Greedy, as a loop over rows would do it, with one cumulative sum: a group ends before the
    # first row whose running sum (from the group's start) exceeds the limit on some channel.
    cumulative = np.cumsum(sums, axis=0)
    chunks, start = [], 0
    while True:
        before = cumulative[start - 1] if start else 0
        over = np.any(cumulative[start:] - before > limit, axis=-1)
        if not over.any():
            chunks.append((start, sums.shape[0]))
            return chunks
        end = start + int(np.argmax(over))
        chunks.append((start, end))
        start = end


def int8_matmul_ok(w: np.ndarray) -> bool:
    """True when ``x @ w`` for int8 ``x`` can run as XLA's s8 x s8 -> s32 dot: ``w`` holds int8
    values and no int32 partial sum can wrap (|x| <= 128)."""
    return (w.size > 0 and int(w.min()) >= INT8_MIN and int(w.max()) <= INT8_MAX
            and int(np.abs(w).sum(axis=0).max()) * 128 < (1 << 31))


def int8_matmul(x: tf.Tensor, w: np.ndarray) -> tf.Tensor:
    """``x [N, K] @ w [K, O]`` for int8 ``x`` and int8-valued ``w``, accumulated in int32.

    XLA's integer dot on int8 operands is exact (int32 accumulation; :func:`int8_matmul_ok`
    rules out a wrap) and on CPU faster than the float32 matmul of the same values, with no
    int8 -> float32 pass over the input. (Its int32 convolution, by contrast, is very slow.)
    """
    return xla.dot_general(x, tf.constant(np.asarray(w, np.int8)), _MATMUL_DIMS, None,
                           preferred_element_type=tf.int32)


def zero_point_into_bias(bias: Any, input_zp: int, weight_sums: np.ndarray) -> np.ndarray:
    """``bias - input_zp * sum(w)`` per output channel (int64), so that ``sum(x * w) + bias'``
    over the raw int8 inputs is the integer ``sum((x - zp) * w) + bias`` TFLite forms.

    Padding with ``zp_in`` stays exact: a padded tap adds ``zp * w`` to the raw sum, which the
    shifted bias takes back out, as TFLite's ``(zp - zp) * w`` adds nothing.
    """
    base = np.asarray(bias, np.int64) if bias is not None else np.int64(0)
    return base - int(input_zp) * np.asarray(weight_sums, np.int64)


def raw_input_matmul(x: tf.Tensor, w: np.ndarray, input_zp: int, bias: Any
                     ) -> tuple[tf.Tensor, np.ndarray, np.ndarray]:
    """``(x - input_zp) @ w + bias`` as ``(x @ w, bound of |x @ w| per column, bias')``.

    ``x - zp`` does not fit int8 (up to 255), so the product runs on the raw int8 values with
    :func:`int8_matmul` and the zero point moves into the bias (:func:`zero_point_into_bias`).
    """
    w = np.asarray(w, np.int64)
    return (int8_matmul(x, w), np.abs(w).sum(axis=0) * -INT8_MIN,
            zero_point_into_bias(bias, input_zp, w.sum(axis=0)))


def exact_matmul(x_f: tf.Tensor, w: np.ndarray, x_range: int) -> tf.Tensor:
    """``x_f [N, K] @ w [K, O]`` for integer-valued float32 ``x_f`` (|x_f| <= x_range), exactly.

    Runs one float32 matmul when every partial sum stays within 2^24, else float32 matmuls over
    groups of K whose partial sums do (added in int64), else one float64 matmul.

    Returns:
        A float32/float64 tensor of exact integers, or an int64 tensor when the sum was split.
    """
    chunks = exact_float_chunks(np.abs(w), x_range)
    if chunks is None:
        return tf.matmul(tf.cast(x_f, tf.float64), tf.constant(w, tf.float64))
    if len(chunks) == 1:
        return tf.matmul(x_f, tf.constant(w, tf.float32))
    total = None
    for start, end in chunks:
        part = tf.matmul(x_f[:, start:end], tf.constant(w[start:end], tf.float32))
        part = _i64(tf.cast(part, tf.int32))
        total = part if total is None else total + part
    return total
