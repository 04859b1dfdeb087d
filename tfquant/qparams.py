"""Quantization parameters: the one place where ranges become scales and zero points.

Every other part of tfquant (the fake-quant forward and its gradients, the exporters, the
encodings file and the integer simulator) reads its parameters from here.

Two pieces of math live in this module:

* :func:`nudge` reproduces TensorFlow's ``FakeQuantWithMinMaxVars`` nudging (float32 math,
  only the zero point is nudged so that real 0.0 is exactly representable).
* :func:`quantize_multiplier` turns a real requantisation multiplier into TFLite's
  (int32 multiplier, shift) pair.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import tensorflow as tf

MIN_BITS = 2
MAX_BITS = 16


def check_bits(bits: int, where: str = "bits") -> int:
    """Validates a bit width and returns it as an int.

    Raises:
        ValueError: naming ``where`` and the value when it is not an integer in [2, 16].
    """
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not (
        MIN_BITS <= int(bits) <= MAX_BITS
    ):
        raise ValueError(f"{where}={bits!r} is not supported: bits must be an integer in "
                         f"[{MIN_BITS}, {MAX_BITS}].")
    return int(bits)


def unsigned_grid(bits: int, narrow_range: bool) -> tuple[int, int]:
    """The integer grid of TF's FakeQuant op: ``[narrow_range, 2**bits - 1]``."""
    return (1 if narrow_range else 0), (1 << bits) - 1


def nudge(x_min: Any, x_max: Any, bits: int, narrow_range: bool):
    """TF's FakeQuant nudging, in float32 TensorFlow ops (works on scalars or per-channel vectors).

    Args:
        x_min: range minimum (tensor-like, float32).
        x_max: range maximum (tensor-like, float32).
        bits: bit width, 2 to 16.
        narrow_range: whether the lowest integer level is dropped.

    Returns:
        ``(scale, zero_point, nudged_min, nudged_max)`` as float32 tensors; ``zero_point`` is on
        the unsigned grid ``[qmin, qmax]`` of :func:`unsigned_grid` and holds whole numbers.

    Example:
        >>> s, zp, lo, hi = nudge(-1.0, 1.0, 8, False)  # 1 / float32(2/255) = 127.49999
        >>> float(zp)
        127.0
    """
    qmin, qmax = unsigned_grid(bits, narrow_range)
    qmin_f = tf.constant(qmin, tf.float32)
    qmax_f = tf.constant(qmax, tf.float32)
    x_min = tf.convert_to_tensor(x_min, tf.float32)
    x_max = tf.convert_to_tensor(x_max, tf.float32)
    scale = (x_max - x_min) / (qmax_f - qmin_f)
    zp_from_min = qmin_f - x_min / scale
    # std::round: half away from zero (zp_from_min is clamped to >= qmin >= 0 before use).
    rounded = tf.floor(tf.abs(zp_from_min) + 0.5) * tf.sign(zp_from_min)
    zero_point = tf.clip_by_value(rounded, qmin_f, qmax_f)
    zero_point = tf.where(zp_from_min < qmin_f, qmin_f, tf.where(zp_from_min > qmax_f, qmax_f,
                                                                  zero_point))
    nudged_min = (qmin_f - zero_point) * scale
    nudged_max = (qmax_f - zero_point) * scale
    return scale, zero_point, nudged_min, nudged_max


@dataclasses.dataclass(frozen=True)
class QuantParams:
    """Affine quantization parameters of one tensor: ``real = scale * (q - zero_point)``.

    ``zero_point``, ``qmin`` and ``qmax`` are expressed on the integer type the tensor is stored
    in: signed (int8/int16 style, e.g. [-128, 127]) when ``signed`` else unsigned ([0, 255]).

    Attributes:
        scale: float32 array, shape ``()`` per-tensor or ``(C,)`` per-axis.
        zero_point: int64 array of the same shape.
        bits: bit width of the grid.
        narrow_range: True when the grid drops its lowest level (symmetric weights).
        signed: whether integers are stored signed.
        axis: the quantized axis for per-axis parameters, else None.
        min: the float range minimum the parameters were derived from (after nudging).
        max: the float range maximum (after nudging).

    Example:
        >>> p = QuantParams.from_min_max(-1.0, 1.0, bits=8, narrow_range=True)
        >>> int(p.zero_point), p.qmin, p.qmax
        (0, -127, 127)
    """

    scale: np.ndarray
    zero_point: np.ndarray
    bits: int = 8
    narrow_range: bool = False
    signed: bool = True
    axis: int | None = None
    min: np.ndarray | None = None
    max: np.ndarray | None = None

    @classmethod
    def from_min_max(cls, x_min: Any, x_max: Any, bits: int = 8, narrow_range: bool = False,
                     signed: bool = True, axis: int | None = None) -> "QuantParams":
        """Derives parameters from a float range exactly as TF's FakeQuant op does."""
        bits = check_bits(bits)
        x_min = np.asarray(x_min, np.float32)
        x_max = np.asarray(x_max, np.float32)
        if not (np.all(np.isfinite(x_min)) and np.all(np.isfinite(x_max))):
            raise ValueError(f"non-finite quantization range: min={x_min}, max={x_max}")
        if np.any(x_max <= x_min):
            raise ValueError(f"empty quantization range: min={x_min} must be < max={x_max}")
        scale, zp, lo, hi = (t.numpy() for t in nudge(x_min, x_max, bits, narrow_range))
        offset = (1 << (bits - 1)) if signed else 0
        return cls(scale=scale.astype(np.float32), zero_point=zp.astype(np.int64) - offset,
                   bits=bits, narrow_range=narrow_range, signed=signed, axis=axis,
                   min=lo.astype(np.float32), max=hi.astype(np.float32))

    @property
    def qmin(self) -> int:
        """Lowest integer level on the storage type."""
        low, _ = unsigned_grid(self.bits, self.narrow_range)
        return low - ((1 << (self.bits - 1)) if self.signed else 0)

    @property
    def qmax(self) -> int:
        """Highest integer level on the storage type."""
        _, high = unsigned_grid(self.bits, self.narrow_range)
        return high - ((1 << (self.bits - 1)) if self.signed else 0)

    @property
    def per_axis(self) -> bool:
        """True when the parameters hold one scale per channel."""
        return np.ndim(self.scale) > 0

    @property
    def symmetric(self) -> bool:
        """True when every zero point sits at the middle of a signed grid (0)."""
        return bool(self.signed and np.all(self.zero_point == 0))

    def _broadcast(self, x: np.ndarray):
        if not self.per_axis:
            return self.scale, self.zero_point
        axis = self.axis if self.axis is not None else -1
        shape = [1] * x.ndim
        shape[axis] = -1
        return self.scale.reshape(shape), self.zero_point.reshape(shape)

    def quantize(self, x: Any) -> np.ndarray:
        """Float -> integers on this grid, rounding half away from zero (TFLite's Quantize op)."""
        x = np.asarray(x, np.float32)
        scale, zp = self._broadcast(x)
        scaled = x.astype(np.float64) / scale.astype(np.float64)
        q = np.sign(scaled) * np.floor(np.abs(scaled) + 0.5) + zp
        return np.clip(q, self.qmin, self.qmax).astype(np.int64)

    def dequantize(self, q: Any) -> np.ndarray:
        """Integers on this grid -> float32 values."""
        q = np.asarray(q)
        scale, zp = self._broadcast(q)
        return (scale * (q.astype(np.float32) - zp)).astype(np.float32)

    def to_dict(self) -> dict:
        """A JSON-friendly dict (lists for per-axis values)."""
        def plain(v):
            return None if v is None else np.asarray(v).tolist()
        return {"scale": plain(self.scale), "zero_point": plain(self.zero_point),
                "bits": self.bits, "narrow_range": self.narrow_range, "signed": self.signed,
                "axis": self.axis, "min": plain(self.min), "max": plain(self.max)}


def converter_scale_zero_point(x_min: Any, x_max: Any, bits: int, narrow_range: bool,
                               signed: bool) -> tuple[np.ndarray, np.ndarray]:
    """The scale and zero point the TFLite converter stores for a FakeQuant range.

    TF's FakeQuant kernel (and :class:`QuantParams`) derive the scale in float32; the converter
    reads the same ``min``/``max``, recomputes ``(max - min) / (qmax - qmin)`` in double, stores
    it as float32 and takes the zero point from whichever end of the range rounds with the
    smaller error. The two agree except in the last bit of the scale for ranges where
    ``max - min`` is not exact in float32; what TFLite computes follows the converter's value.

    Args:
        x_min: range minimum (scalar or per channel).
        x_max: range maximum.
        bits: bit width.
        narrow_range: whether the lowest level is unused.
        signed: zero points on the signed grid (int8) rather than the unsigned one.

    Returns:
        ``(scale, zero_point)`` as 1-D float32 and int64 arrays (one entry per channel).

    Example:
        >>> scale, zp = converter_scale_zero_point(-1.0, 1.0, 8, False, True)
        >>> float(scale[0]), int(zp[0])
        (0.007843137718737125, 0)
    """
    lo = np.asarray(x_min, np.float64).reshape(-1)
    hi = np.asarray(x_max, np.float64).reshape(-1)
    qmin, qmax = unsigned_grid(bits, narrow_range)
    scale = (hi - lo) / float(qmax - qmin)
    from_min, from_max = qmin - lo / scale, qmax - hi / scale
    use_min = (abs(qmin) + np.abs(lo / scale)) < (abs(qmax) + np.abs(hi / scale))
    zp = np.where(use_min, from_min, from_max)
    zp = np.clip(np.sign(zp) * np.floor(np.abs(zp) + 0.5), qmin, qmax).astype(np.int64)
    zp = zp - ((1 << (bits - 1)) if signed else 0)
    return scale.astype(np.float32), zp


def symmetric_range(abs_max: Any, bits: int, narrow_range: bool):
    """The (min, max) pair whose nudged grid is symmetric around 0 and covers ``abs_max``.

    With ``narrow_range`` the grid is [-(2^(b-1)-1), 2^(b-1)-1]; without it the extra negative
    level is kept, so the minimum is ``-abs_max * 2^(b-1) / (2^(b-1)-1)``.
    """
    abs_max = tf.convert_to_tensor(abs_max, tf.float32)
    if narrow_range:
        return -abs_max, abs_max
    half = float(1 << (bits - 1))
    return -abs_max * (half / (half - 1.0)), abs_max


def quantize_multiplier(real_multiplier: float) -> tuple[int, int]:
    """TFLite's ``QuantizeMultiplier``: real M -> (int32 multiplier m, shift e), M ~ m * 2^(e-31).

    Args:
        real_multiplier: a non-negative double.

    Returns:
        ``(m, e)`` with m in [2^30, 2^31) (or 0) and e the left shift (negative = right shift).

    Example:
        >>> quantize_multiplier(0.5)
        (1073741824, 0)
    """
    m = float(real_multiplier)
    if m < 0 or not math.isfinite(m):
        raise ValueError(f"requantisation multiplier must be finite and >= 0, got {m}")
    if m == 0.0:
        return 0, 0
    q, e = math.frexp(m)
    q_fixed = int(math.floor(abs(q) * (1 << 31) + 0.5))  # std::round, q > 0
    if q_fixed == (1 << 31):
        q_fixed //= 2
        e += 1
    if e < -31:
        return 0, 0
    return q_fixed, e
