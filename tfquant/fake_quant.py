"""The fake-quant function: TF's FakeQuant ops forward, with each range learner's gradient.

The forward value is ALWAYS computed by ``tf.quantization.fake_quant_with_min_max_vars`` (or its
per-channel variant), so the TFLite converter recognises it and the training and inference paths
give identical values. Learners differ only in the gradient:

* min/max, EMA, fixed ranges and PACT use the op's own gradient: straight-through inside the
  nudged range, and for the range ends the sum of upstream gradients of inputs clipped below /
  above (with ``min=0, max=alpha`` that is exactly PACT's ``dy/dalpha = 1[x >= alpha]``).
* LSQ / LSQ+ (:func:`fake_quant_lsq`) wrap the op in ``tf.custom_gradient`` and return the
  learned-step-size gradient, scaled by ``grad_scale``.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator, Sequence

import tensorflow as tf

from tfquant.qparams import nudge, unsigned_grid

Axis = int | Sequence[int] | None

CONTAINER_BITS = 8
_container = contextvars.ContextVar("tfquant_int8_container", default=False)


@contextlib.contextmanager
def int8_container() -> Iterator[None]:
    """Within this context, sub-8-bit fake quantization is expressed with 8-bit FakeQuant ops.

    TFLite has no int4 kernels and its converter rejects ``num_bits < 8`` FakeQuant ops, so the
    exporter traces the model in this context. A b-bit tensor is then stored in int8 as its
    signed b-bit integers shifted left by ``8 - b`` bits: step ``s / 2**(8-b)``, zero point
    ``zp_b * 2**(8-b)`` (the "fine" container; symmetric weights keep zero point 0). Each
    fake-quant becomes

    * activations: FQ8 on the b-bit step (the producer rounds to the b-bit grid) -> clip to the
      b-bit range (MINIMUM/MAXIMUM) -> FQ8 on the fine step (an exact x 2**(8-b) requantize);
    * weights: the b-bit FakeQuant op itself -> FQ8 on the fine step; the converter folds both
      into the constant, so the stored weights are bit-identical to the Keras model's. (An
      8-bit FakeQuant on the b-bit step padded to 256 levels rounds in a frame offset by ~128
      levels, where float32 resolves ties ~16x more coarsely: a weight within ~1e-5 steps of
      a tie could land on the other level, shifting a whole output channel in TFLite.)

    Values (and clipping) are exactly those of the b-bit quantizer. The fine container matters
    for TFLite's integer kernels: they requantize with a fixed-point multiplier and round twice
    (``SaturatingRoundingDoublingHighMul`` then a rounding shift), with an error of up to
    ``2**(e-1)`` output steps for a multiplier ``m * 2**e``. With b-bit integers stored as-is,
    accumulators are tiny and multipliers large (``e`` of -1 to -3 for 4x4 bits), so a few
    percent of the outputs of every 4-bit layer would be off by one step; 2**(8-b) times larger
    integers on both operands shrink the multiplier and that error by 2**(2(8-b)) (int32 bias
    rounding likewise).

    Example:
        >>> with int8_container():
        ...     concrete = tf.function(model).get_concrete_function(spec)
    """
    token = _container.set(True)
    try:
        yield
    finally:
        _container.reset(token)


def _padded_container_range(x_min, x_max, bits: int, narrow_range: bool):
    """The 8-bit range with the same step and zero point as the b-bit nudged range.

    Returns ``(lo, hi, c_min, c_max)``: the b-bit nudged range and the padded 8-bit range.
    """
    scale, zero_point, lo, hi = nudge(x_min, x_max, bits, narrow_range)
    qmin, qmax = unsigned_grid(bits, narrow_range)
    cmin, cmax = unsigned_grid(CONTAINER_BITS, narrow_range)
    pad = float(((cmax - cmin) - (qmax - qmin)) // 2)
    c_zero = zero_point - qmin + cmin + pad
    return lo, hi, (cmin - c_zero) * scale, (cmax - c_zero) * scale


def _fine_container_range(x_min, x_max, bits: int, narrow_range: bool):
    """The 8-bit range that holds the b-bit integers shifted left by ``8 - bits``.

    Step ``scale / 2**(8-b)`` and signed zero point ``(zp - 2**(b-1)) * 2**(8-b)``: the b-bit
    levels ``[qmin, qmax]`` land on ``[qmin - 2**(b-1), 2**(b-1) - 1] * 2**(8-b)``, inside the
    8-bit grid (and inside [-127, 127] with ``narrow_range``).
    """
    scale, zero_point, _, _ = nudge(x_min, x_max, bits, narrow_range)
    cmin, cmax = unsigned_grid(CONTAINER_BITS, narrow_range)
    shift = float(1 << (CONTAINER_BITS - bits))
    fine = scale / shift
    c_zero = float(1 << (CONTAINER_BITS - 1)) + (zero_point - float(1 << (bits - 1))) * shift
    return (cmin - c_zero) * fine, (cmax - c_zero) * fine


def _channel_axes(rank: int, axis: Axis) -> list[int]:
    axes = [axis] if isinstance(axis, int) else list(axis)
    axes = sorted(a % rank for a in axes)
    if axes != list(range(axes[0], axes[0] + len(axes))):
        raise ValueError(f"per-axis quantization needs contiguous axes, got {axis}")
    return axes


def _to_channels_last(x: tf.Tensor, axis: Axis):
    """Reshapes/transposes ``x`` so the (possibly multi-dim) channel axis is the last one.

    Returns the transformed tensor and a function that undoes the transformation.
    """
    rank = x.shape.rank
    axes = _channel_axes(rank, axis)
    static_shape = x.shape.as_list()
    if axes[-1] != rank - 1:
        perm = [a for a in range(rank) if a not in axes] + axes
        inverse = [perm.index(a) for a in range(rank)]
        x = tf.transpose(x, perm)
    else:
        perm = inverse = None
    moved_shape = x.shape.as_list()
    if len(axes) > 1:
        channels = 1
        for a in axes:
            channels *= static_shape[a]
        x = tf.reshape(x, moved_shape[: rank - len(axes)] + [channels])

    def restore(y: tf.Tensor) -> tf.Tensor:
        if len(axes) > 1:
            y = tf.reshape(y, moved_shape)
        if inverse is not None:
            y = tf.transpose(y, inverse)
        return y

    return x, restore


def tracing_for_tflite() -> bool:
    """True inside :func:`int8_container`, i.e. while the exporter traces the model for the
    TFLite converter: a layer may then emit an op that TF's CPU kernels lack but that converts
    to a TFLite int8 op (a dilated depthwise convolution)."""
    return _container.get()


def fake_quant(x: tf.Tensor, x_min: tf.Tensor, x_max: tf.Tensor, *, bits: int,
               narrow_range: bool, axis: Axis = None, constant: bool = False) -> tf.Tensor:
    """TF's FakeQuant op on ``x`` with range ``[x_min, x_max]`` (per-tensor or per-axis).

    Args:
        x: float tensor.
        x_min: scalar, or one value per channel when ``axis`` is given.
        x_max: same shape as ``x_min``.
        bits: bit width (2 to 16).
        narrow_range: drop the lowest level.
        axis: the channel axis, or a tuple of contiguous axes whose product is the channel
            dimension (depthwise kernels), or None for per-tensor.
        constant: ``x`` is a weight (constant-folded by the converter); only changes how
            :func:`int8_container` expresses sub-8-bit grids.

    Returns:
        The fake-quantized tensor, same shape as ``x``.

    Example:
        >>> y = fake_quant(tf.constant([0.26, -3.0]), -1.0, 1.0, bits=8, narrow_range=False)
    """
    if bits < CONTAINER_BITS and _container.get():
        # See int8_container. Weights: the b-bit op itself (the converter folds it into the
        # constant, so the stored values are bit-identical to the Keras model's), then FQ8 on
        # the fine grid. Activations: FQ8 on the b-bit step padded to 256 levels (the producer
        # rounds to the b-bit grid), clip to the b-bit range (MINIMUM/MAXIMUM), FQ8 on the fine
        # grid (an exact requantize by 2**(8-b)).
        f_min, f_max = _fine_container_range(x_min, x_max, bits, narrow_range)
        fine = dict(bits=CONTAINER_BITS, narrow_range=narrow_range, axis=axis)
        if constant:
            return _fake_quant_op(_fake_quant_op(x, x_min, x_max, bits, narrow_range, axis),
                                  f_min, f_max, **fine)
        lo, hi, c_min, c_max = _padded_container_range(x_min, x_max, bits, narrow_range)
        x = _fake_quant_op(x, c_min, c_max, **fine)
        if axis is not None:
            lo, hi = _broadcast_param(lo, x, axis), _broadcast_param(hi, x, axis)
        return _fake_quant_op(tf.clip_by_value(x, lo, hi), f_min, f_max, **fine)
    return _fake_quant_op(x, x_min, x_max, bits, narrow_range, axis)


def _fake_quant_op(x: tf.Tensor, x_min, x_max, bits: int, narrow_range: bool,
                   axis: Axis) -> tf.Tensor:
    """TF's FakeQuant op, per-tensor or per-axis (channels moved last for the op)."""
    if axis is None:
        return tf.quantization.fake_quant_with_min_max_vars(
            x, x_min, x_max, num_bits=bits, narrow_range=narrow_range)
    moved, restore = _to_channels_last(x, axis)
    if moved.shape.rank > 4:
        # the per-channel op (and its gradient) take at most 4 dimensions (Conv3D kernels
        # have 5); the channels are last, so a [-1, channels] view quantizes the same values
        shape = tf.shape(moved)
        y = tf.quantization.fake_quant_with_min_max_vars_per_channel(
            tf.reshape(moved, [-1, moved.shape[-1]]), x_min, x_max, num_bits=bits,
            narrow_range=narrow_range)
        return restore(tf.reshape(y, shape))
    y = tf.quantization.fake_quant_with_min_max_vars_per_channel(
        moved, x_min, x_max, num_bits=bits, narrow_range=narrow_range)
    return restore(y)


def _reduce_to_param(t: tf.Tensor, axis: Axis) -> tf.Tensor:
    """Sums a gradient over every axis but the channel axis (all axes when per-tensor)."""
    if axis is None:
        return tf.reduce_sum(t)
    moved, _ = _to_channels_last(t, axis)
    return tf.reduce_sum(tf.reshape(moved, [-1, tf.shape(moved)[-1]]), axis=0)


def _broadcast_param(p: tf.Tensor, x: tf.Tensor, axis: Axis) -> tf.Tensor:
    """Reshapes a per-channel vector so it broadcasts against ``x`` (identity per-tensor)."""
    if axis is None:
        return p
    rank = x.shape.rank
    axes = _channel_axes(rank, axis)
    shape = [1] * rank
    for a in axes:
        shape[a] = x.shape[a]
    return tf.reshape(p, shape)


def lsq_levels(bits: int, narrow_range: bool, symmetric: bool) -> tuple[int, int]:
    """Integer levels of the range ends relative to the zero point (LSQ's -Q_N and Q_P).

    Symmetric: ``(-2^(b-1) [+1 if narrow], 2^(b-1) - 1)``. Asymmetric (LSQ+, offset at the
    lowest level): ``(0, qmax - qmin)``.
    """
    qmin, qmax = unsigned_grid(bits, narrow_range)
    if symmetric:
        half = 1 << (bits - 1)
        return qmin - half, qmax - half
    return 0, qmax - qmin


def lsq_range(step: tf.Tensor, offset: tf.Tensor | None, *, bits: int, narrow_range: bool,
              symmetric: bool):
    """The ``(x_min, x_max)`` that a learned step (and offset) stand for."""
    lo, hi = lsq_levels(bits, narrow_range, symmetric)
    if symmetric:
        return lo * step, hi * step
    return offset, offset + hi * step


def fake_quant_lsq(x: tf.Tensor, step: tf.Tensor, offset: tf.Tensor | None = None, *,
                   bits: int, narrow_range: bool, symmetric: bool, grad_scale: float,
                   axis: Axis = None) -> tf.Tensor:
    """Fake quantization with a learned step size (LSQ) and optional learned offset (LSQ+).

    Forward: ``fake_quant(x, *lsq_range(step, offset))`` — TF's op. Backward (Esser et al. 2019;
    Bhalgat et al. 2020), with ``v`` the clipped input and ``y`` the output:

    * ``dy/dx = 1`` inside the nudged range, 0 outside;
    * ``dy/dstep = (y - x) / step`` inside, the low/high level (``-Q_N`` / ``Q_P``) outside;
    * ``dy/doffset = 0`` inside, ``1`` outside;

    and the step/offset gradients are multiplied by ``grad_scale`` (``1/sqrt(N * Q_P)``).

    Example:
        >>> y = fake_quant_lsq(tf.ones([4]), tf.constant(0.1), bits=4, narrow_range=True,
        ...                    symmetric=True, grad_scale=0.5)
    """
    lo_level, hi_level = lsq_levels(bits, narrow_range, symmetric)
    if not symmetric and offset is None:
        raise ValueError("asymmetric LSQ needs an offset tensor")

    def forward(x, step, offset):
        x_min, x_max = lsq_range(step, offset, bits=bits, narrow_range=narrow_range,
                                 symmetric=symmetric)
        return fake_quant(x, x_min, x_max, bits=bits, narrow_range=narrow_range, axis=axis), \
            x_min, x_max

    @tf.custom_gradient
    def _lsq(x, step, offset):
        y, x_min, x_max = forward(x, step, offset)

        def grad(upstream):
            _, _, lo, hi = nudge(x_min, x_max, bits, narrow_range)
            lo_b, hi_b = _broadcast_param(lo, x, axis), _broadcast_param(hi, x, axis)
            step_b = _broadcast_param(step, x, axis)
            below, above = x < lo_b, x > hi_b
            inside = tf.logical_not(tf.logical_or(below, above))
            d_x = upstream * tf.cast(inside, upstream.dtype)
            d_step_elem = tf.where(below, float(lo_level),
                                   tf.where(above, float(hi_level), (y - x) / step_b))
            d_step = grad_scale * _reduce_to_param(upstream * d_step_elem, axis)
            d_offset = grad_scale * _reduce_to_param(
                upstream * tf.cast(tf.logical_not(inside), upstream.dtype), axis)
            return d_x, tf.reshape(d_step, tf.shape(step)), tf.reshape(d_offset,
                                                                       tf.shape(offset))

        return y, grad

    if offset is None:
        offset = tf.zeros_like(step)
    return _lsq(x, step, offset)
