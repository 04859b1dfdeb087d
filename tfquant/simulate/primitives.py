"""Fixed-point primitives of TFLite's integer kernels, for TensorFlow graphs and numpy.

Every function here reproduces one C++ helper of TFLite/gemmlowp bit for bit. Integer functions
take and return int64 arrays that hold values of the C type named in the docstring (int32 or
int16); 64-bit storage keeps the products exact, and the wrap-around of the C code is reproduced
explicitly with :func:`wrap_int32` where the C code can overflow.

The integer functions run on numpy arrays (used on the host to build lookup tables at trace
time) and on TF tensors (inside ``tf.function(jit_compile=True)``): the backend follows the
arguments, so the math is written once. Float helpers (:func:`round_half_away`, the exact
double-precision requantisation) are TF only.

Example:
    >>> rounding_divide_by_pot([5, -5, 6, -6], 2).tolist()   # 1.25, -1.25, 1.5, -1.5
    [1, -1, 2, -2]
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1
INT16_MIN = -(1 << 15)
INT16_MAX = (1 << 15) - 1


class _Numpy:
    """int64 numpy operations (right shifts of signed integers are arithmetic)."""

    @staticmethod
    def i64(x):
        return np.asarray(x, np.int64)

    rshift = staticmethod(np.right_shift)
    lshift = staticmethod(np.left_shift)
    band = staticmethod(np.bitwise_and)
    where = staticmethod(np.where)
    maximum = staticmethod(np.maximum)

    @staticmethod
    def wrap32(x):
        return np.asarray(x, np.int64).astype(np.int32).astype(np.int64)

    @staticmethod
    def wrap16(x):
        return np.asarray(x, np.int64).astype(np.int16).astype(np.int64)

    @staticmethod
    def truncdiv(a, b):
        q = np.abs(a) // np.abs(b)
        return np.where((a < 0) != (b < 0), -q, q)

    @staticmethod
    def clip(x, lo, hi):
        return np.clip(x, lo, hi)

    @staticmethod
    def sum_last(x):
        return np.sum(x, axis=-1)


class _TF:
    """The same operations on int64 TF tensors."""

    @staticmethod
    def i64(x):
        if isinstance(x, (int, np.integer, np.ndarray, list, tuple)):
            return tf.constant(np.asarray(x, np.int64))
        x = tf.convert_to_tensor(x)
        return x if x.dtype == tf.int64 else tf.cast(x, tf.int64)

    @staticmethod
    def rshift(x, n):
        return tf.bitwise.right_shift(x, _TF.i64(n))

    @staticmethod
    def lshift(x, n):
        return tf.bitwise.left_shift(x, _TF.i64(n))

    @staticmethod
    def band(x, n):
        return tf.bitwise.bitwise_and(x, _TF.i64(n))

    @staticmethod
    def where(c, a, b):
        return tf.where(c, _TF.i64(a), _TF.i64(b))

    @staticmethod
    def maximum(a, b):
        return tf.maximum(_TF.i64(a), _TF.i64(b))

    @staticmethod
    def wrap32(x):
        return tf.cast(tf.cast(_TF.i64(x), tf.int32), tf.int64)

    @staticmethod
    def wrap16(x):
        return tf.cast(tf.cast(_TF.i64(x), tf.int16), tf.int64)

    @staticmethod
    def truncdiv(a, b):
        return tf.truncatediv(_TF.i64(a), _TF.i64(b))

    @staticmethod
    def clip(x, lo, hi):
        return tf.clip_by_value(x, tf.constant(lo, tf.int64), tf.constant(hi, tf.int64))

    @staticmethod
    def sum_last(x):
        return tf.reduce_sum(x, axis=-1)


def _backend(*xs: Any):
    return _TF if any(isinstance(x, (tf.Tensor, tf.Variable)) for x in xs) else _Numpy


def wrap_int32(x: Any) -> Any:
    """Two's complement wrap of int64 values to the int32 range (what C's int32 overflow does)."""
    return _backend(x).wrap32(x)


def wrap_int16(x: Any) -> Any:
    """Two's complement wrap to int16 (a C assignment to ``int16_t``)."""
    return _backend(x).wrap16(x)


def saturating_rounding_doubling_high_mul(a: Any, b: Any) -> Any:
    """gemmlowp ``SaturatingRoundingDoublingHighMul`` for int32 operands.

    ``(a*b + 2^30) >> 31`` with an arithmetic shift (this equals gemmlowp's sign-dependent nudge
    and truncating division: ties round up), and ``a = b = INT32_MIN`` saturates to INT32_MAX.

    Example:
        >>> int(saturating_rounding_doubling_high_mul(1 << 30, 1 << 30))   # 0.5 * 0.5
        536870912
    """
    xp = _backend(a, b)
    a, b = xp.i64(a), xp.i64(b)
    overflow = (a == b) & (a == INT32_MIN)
    high = xp.rshift(a * b + (1 << 30), 31)
    return xp.where(overflow, INT32_MAX, high)


def rounding_divide_by_pot(x: Any, exponent: Any) -> Any:
    """gemmlowp ``RoundingDivideByPOT``: ``x / 2^exponent`` rounded half away from zero.

    ``exponent`` may be an array (e.g. one shift per channel) broadcasting against ``x``; it must
    lie in [0, 62] for int64 storage (TFLite uses [0, 31]).
    """
    xp = _backend(x, exponent)
    x, exponent = xp.i64(x), xp.i64(exponent)
    mask = xp.lshift(xp.i64(1), exponent) - 1
    remainder = xp.band(x, mask)
    threshold = xp.rshift(mask, 1) + xp.i64(x < 0)
    return xp.rshift(x, exponent) + xp.i64(remainder > threshold)


def multiply_by_quantized_multiplier(x: Any, multiplier: Any, shift: Any) -> Any:
    """TFLite's ``MultiplyByQuantizedMultiplier`` (double rounding), int32 in and out.

    ``RDBPOT(SRDHM(x * 2^max(shift, 0), multiplier), max(-shift, 0))``; the left shift wraps in
    int32 as the C code does. ``multiplier`` and ``shift`` broadcast against ``x`` (per channel on
    the last axis).

    Example:
        >>> from tfquant.qparams import quantize_multiplier
        >>> m, e = quantize_multiplier(0.25)
        >>> multiply_by_quantized_multiplier([6, -6, 7], m, e).tolist()   # 1.5, -1.5, 1.75
        [2, -2, 2]
    """
    xp = _backend(x, multiplier, shift)
    x, multiplier, shift = xp.i64(x), xp.i64(multiplier), xp.i64(shift)
    left = xp.maximum(shift, 0)
    right = xp.maximum(-shift, 0)
    shifted = xp.wrap32(xp.lshift(x, left))
    return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(shifted, multiplier), right)


def saturating_rounding_multiply_by_pot(x: Any, exponent: int) -> Any:
    """gemmlowp ``SaturatingRoundingMultiplyByPOT<exponent>`` on int32 values (static exponent)."""
    xp = _backend(x)
    x = xp.i64(x)
    if exponent == 0:
        return x
    if exponent < 0:
        return rounding_divide_by_pot(x, -exponent)
    threshold = (1 << (31 - exponent)) - 1
    shifted = xp.lshift(x, exponent)
    shifted = xp.where(x > threshold, INT32_MAX, shifted)
    return xp.where(x < -threshold, INT32_MIN, shifted)


def double_requantize_mode(bound: Any, multiplier: Any, shift: Any, k: int = 0) -> str | None:
    """Which exact double-precision evaluation of ``MultiplyByQuantizedMultiplier`` applies.

    For inputs ``v * 2^k`` with ``|v| <= bound`` and per-channel ``(m, e)`` (``l = max(e, 0)``,
    ``r = max(-e, 0)``) the reference computes ``z = v * m * 2^(k+l)`` (no int32 wrap needed:
    ``bound * 2^(k+l) < 2^31``), ``t = floor((z + 2^30) / 2^31)``, then ``t / 2^r`` rounded half
    away from zero. Every value below is an integer ``N`` scaled by a power of two, exact in a
    double when ``N / 2^g < 2^53`` where ``2^g`` divides N (``g = min(k + l, 30)``):

    * ``"single"``: one floor of ``(z + 2^30 + 2^(30+r) [- 2^(31+r)]) / 2^(31+r)``;
      needs ``bound * m * 2^(k+l) + 2^(31+r) < 2^(53+g)``.
    * ``"two_step"``: ``t`` from one floor (needs ``bound * m * 2^(k+l) + 2^30 < 2^(53+g)``),
      then a second floor of ``t / 2^r + 1/2 [- 2^-r]``, which is always exact (|t| < 2^31).

    Returns:
        ``"single"``, ``"two_step"``, or None when neither is exact (use int64 arithmetic).

    Example:
        >>> double_requantize_mode(255 * 127 * 9, 1 << 30, -8)
        'single'
    """
    m = np.asarray(multiplier, np.int64).reshape(-1)
    e = np.broadcast_to(np.asarray(shift, np.int64).reshape(-1), m.shape)
    b = np.broadcast_to(np.asarray(bound, np.int64).reshape(-1), m.shape)
    modes = set()
    for bc, mc, ec in zip(b.tolist(), m.tolist(), e.tolist()):
        left, right = max(ec, 0) + k, max(-ec, 0)
        if bc < 0 or mc < 0 or right > 31 or (bc << left) >= (1 << 31) or bc * mc >= (1 << 53):
            return None
        g = min(left, 30)
        z = (bc * mc) << left
        if z + (1 << (31 + right)) < (1 << (53 + g)):
            modes.add("single")
        elif z + (1 << 30) < (1 << (53 + g)):
            modes.add("two_step")
        else:
            return None
    return "two_step" if "two_step" in modes else "single"


def double_requantize_is_exact(bound: Any, multiplier: Any, shift: Any, k: int = 0) -> bool:
    """True when :func:`multiply_by_quantized_multiplier_double` is exact (see
    :func:`double_requantize_mode`)."""
    return double_requantize_mode(bound, multiplier, shift, k) is not None


def addend_folds_exactly(bound: Any, addend: Any, multiplier: Any, shift: Any, k: int = 0) -> bool:
    """True when :func:`multiply_by_quantized_multiplier_double` may fold ``addend`` into its
    rounding constant (``"single"`` mode).

    With ``|v| <= bound`` every term, ``v * M``, ``addend * M`` and the rounding constant (< 1),
    is an integer multiple of ``2^-(31+r)``; when ``(bound + |addend|) * m * 2^(k+l) + 2^(31+r)
    < 2^53`` each of them and every partial sum is such a multiple below ``2^53`` units, so the
    folded evaluation ``v * M + (addend * M + c)`` never rounds.

    Example:
        >>> addend_folds_exactly(255 * 127 * 9, 20000, 1 << 30, -8)
        True
    """
    m = np.asarray(multiplier, np.int64).reshape(-1)
    e = np.broadcast_to(np.asarray(shift, np.int64).reshape(-1), m.shape)
    total = np.broadcast_to(np.asarray(bound, np.int64).reshape(-1) + np.abs(
        np.asarray(addend, np.int64).reshape(-1)), m.shape)
    for tc, mc, ec in zip(total.tolist(), m.tolist(), e.tolist()):
        left, right = max(ec, 0) + k, max(-ec, 0)
        if (tc * mc << left) + (1 << (31 + right)) >= (1 << 53):
            return False
    return True


def multiply_by_quantized_multiplier_double(v: Any, multiplier: Any, shift: Any, k: int = 0,
                                            offset: int = 0, mode: str = "single",
                                            addend: Any = None,
                                            negatives_clamped: bool = False) -> tf.Tensor:
    """``MultiplyByQuantizedMultiplier((v + addend) * 2^k, m, e) + offset`` with exact floors.

    With ``z = v * m * 2^(k+l)`` (``l = max(e, 0)``, ``r = max(-e, 0)``) TFLite computes
    ``t = floor((z + 2^30) / 2^31)`` and then rounds ``t / 2^r`` half away from zero. Since
    ``floor(floor(a) + n) = floor(a + n)`` for integers n and ``floor(floor(a) / 2^r) =
    floor(a / 2^r)``, the two roundings collapse into one (``mode="single"``)::

        y = floor(p + 2^(-1-r) + 1/2)           if t >= 0      (p = z / 2^(31+r))
        y = floor(p + 2^(-1-r) + 1/2 - 2^-r)    if t < 0       (t < 0  <=>  p < -2^(-1-r))

    and ``y = floor(p + 1/2)`` when r = 0. ``mode="two_step"`` keeps the two floors (for large
    r). The caller must check :func:`double_requantize_mode`; then the result equals the int32
    reference bit for bit, several times cheaper than 64-bit integer emulation on CPUs.
    ``offset`` is added after the floor (an exact integer addition, whatever its size).

    Args:
        v: float64 tensor of integer values (channels on the last axis for per-channel pairs).
        multiplier, shift: numpy arrays or ints.
        k: extra left shift of the input (20 for ADD/SUB inputs).
        offset: an integer added to the result (the output zero point).
        mode: ``"single"`` or ``"two_step"``, from :func:`double_requantize_mode` (for the bound
            of ``|v + addend|``).
        addend: optional integers (per channel) added to ``v`` first, e.g. a bias. In
            ``"single"`` mode it is folded into the rounding constant (one addition per element
            fewer); the caller must then also have checked :func:`addend_folds_exactly`.
        negatives_clamped: the caller clamps every result below ``offset`` away (an output
            range starting at the zero point, as after a fused ReLU); the ``t < 0`` rounding is
            then not computed, since it and the ``t >= 0`` one both give values ``<= offset``
            there.

    Returns:
        A float64 tensor holding the integer results.
    """
    m = np.asarray(multiplier, np.int64)
    e = np.broadcast_to(np.asarray(shift, np.int64), m.shape)
    left = np.maximum(e, 0)
    right = np.maximum(-e, 0).astype(np.float64)
    v = tf.convert_to_tensor(v, tf.float64)
    if addend is not None and mode == "single":
        folded = np.asarray(addend, np.float64) * (m * np.exp2(left + k - 31.0 - right))
    else:
        folded = 0.0
        if addend is not None:
            v = v + tf.constant(np.asarray(addend, np.float64))
    if mode == "two_step":
        t = tf.floor(v * tf.constant(m * np.exp2(left + k - 31.0)) + 0.5)
        u = t * tf.constant(np.exp2(-right))
        positive = np.where(right > 0, 0.5, 0.0)
        if negatives_clamped:
            y = tf.floor(u + tf.constant(positive))
        else:
            negative = np.where(right > 0, 0.5 - np.exp2(-right), 0.0)
            y = tf.floor(u + tf.where(t < 0, tf.constant(negative), tf.constant(positive)))
        return y + offset if offset else y
    half = np.exp2(-1.0 - right)
    positive = np.where(right > 0, half + 0.5, 0.5)
    negative = np.where(right > 0, half + 0.5 - np.exp2(-right), 0.5)
    p = v * tf.constant(m * np.exp2(left + k - 31.0 - right))
    if negatives_clamped or np.array_equal(positive, negative):
        y = tf.floor(p + tf.constant(positive + folded))
    else:
        # t < 0 <=> p < -half; with the addend folded, p lacks addend * M
        y = tf.floor(p + tf.where(p < tf.constant(-half - folded),
                                  tf.constant(negative + folded),
                                  tf.constant(positive + folded)))
    return y + offset if offset else y


def round_half_away(x: Any) -> tf.Tensor:
    """C's ``std::round`` / ``roundf`` on float tensors: round half away from zero, exactly.

    Unlike ``floor(|x| + 0.5)`` this never rounds 0.49999997 up (the addition is not exact there).

    Example:
        >>> round_half_away([0.5, -0.5, 1.5, 2.5, -2.5]).numpy().tolist()
        [1.0, -1.0, 2.0, 3.0, -3.0]
    """
    x = tf.convert_to_tensor(x)
    if not x.dtype.is_floating:
        x = tf.cast(x, tf.float64)
    magnitude = tf.abs(x)
    whole = tf.floor(magnitude)
    rounded = whole + tf.cast(magnitude - whole >= 0.5, x.dtype)
    return tf.where(x < 0, -rounded, rounded)


# ----------------------------------------------------------------------------------------------
# int16 helpers (HardSwish)
# ----------------------------------------------------------------------------------------------
def saturating_rounding_doubling_high_mul_int16(a: Any, b: Any) -> Any:
    """gemmlowp ``SaturatingRoundingDoublingHighMul`` for int16: ``(a*b + 2^14) >> 15``."""
    xp = _backend(a, b)
    a, b = xp.i64(a), xp.i64(b)
    overflow = (a == b) & (a == INT16_MIN)
    return xp.where(overflow, INT16_MAX, xp.rshift(a * b + (1 << 14), 15))


def saturating_doubling_high_mul_int16(a: Any, b: Any) -> Any:
    """TFLite's ``SaturatingDoublingHighMul`` for int16: ``a*b / 2^15`` truncated toward zero."""
    xp = _backend(a, b)
    a, b = xp.i64(a), xp.i64(b)
    overflow = (a == b) & (a == INT16_MIN)
    return xp.where(overflow, INT16_MAX, xp.truncdiv(a * b, 1 << 15))


def saturating_left_shift_int16(x: Any, amount: int) -> Any:
    """TFLite's ``SaturatingLeftShift`` on int16 values."""
    xp = _backend(x)
    return xp.clip(xp.i64(x) * (1 << amount), INT16_MIN, INT16_MAX)


# ----------------------------------------------------------------------------------------------
# gemmlowp fixed-point transcendental functions (Softmax)
# ----------------------------------------------------------------------------------------------
def exp_on_interval_between_negative_one_quarter_and_0_excl(a: Any) -> Any:
    """gemmlowp's exp on [-1/4, 0) for Q0.31 raw values (Taylor expansion around -1/8)."""
    xp = _backend(a)
    mul = saturating_rounding_doubling_high_mul
    constant_term = 1895147668
    constant_1_over_3 = 715827883
    x = xp.wrap32(xp.i64(a) + (1 << 28))
    x2 = mul(x, x)
    x3 = mul(x2, x)
    x4 = mul(x2, x2)
    x4_over_4 = rounding_divide_by_pot(x4, 2)
    inner = xp.wrap32(mul(xp.wrap32(x4_over_4 + x3), constant_1_over_3) + x2)
    poly = rounding_divide_by_pot(inner, 1)
    return xp.wrap32(constant_term + mul(constant_term, xp.wrap32(x + poly)))


_EXP_BARREL = ((-2, 1672461947), (-1, 1302514674), (0, 790015084), (1, 290630308),
               (2, 39332535), (3, 720401), (4, 242))


def exp_on_negative_values(a: Any, integer_bits: int = 5) -> Any:
    """gemmlowp ``exp_on_negative_values``: raw Q(integer_bits) input <= 0 -> raw Q0.31 output."""
    xp = _backend(a)
    a = xp.i64(a)
    fractional_bits = 31 - integer_bits
    one_quarter = 1 << (fractional_bits - 2)
    a_mod_quarter_minus_one_quarter = xp.band(a, one_quarter - 1) - one_quarter
    result = exp_on_interval_between_negative_one_quarter_and_0_excl(
        saturating_rounding_multiply_by_pot(a_mod_quarter_minus_one_quarter, integer_bits))
    remainder = xp.wrap32(a_mod_quarter_minus_one_quarter - a)
    for exponent, multiplier in _EXP_BARREL:
        if integer_bits > exponent:
            take = xp.band(remainder, 1 << (fractional_bits + exponent)) != 0
            result = xp.where(take, saturating_rounding_doubling_high_mul(result, multiplier),
                              result)
    if integer_bits > 5:
        result = xp.where(a < -(1 << (fractional_bits + 5)), 0, result)
    return xp.where(a == 0, INT32_MAX, result)


def one_over_one_plus_x_for_x_in_0_1(a: Any) -> Any:
    """gemmlowp ``one_over_one_plus_x_for_x_in_0_1`` (Newton-Raphson), raw Q0.31 in and out."""
    xp = _backend(a)
    mul = saturating_rounding_doubling_high_mul
    total = xp.i64(a) + INT32_MAX
    half_denominator = xp.truncdiv(total + xp.where(total >= 0, 1, -1), 2)   # RoundingHalfSum
    f2_one = 1 << 29
    x = xp.wrap32(1515870810 + mul(half_denominator, -1010580540))   # 48/17 - 32/17 * d
    for _ in range(3):
        one_minus = xp.wrap32(f2_one - mul(half_denominator, x))
        x = xp.wrap32(x + saturating_rounding_multiply_by_pot(mul(x, one_minus), 2))
    return saturating_rounding_multiply_by_pot(x, 1)


def count_leading_zeros_uint32(x: Any) -> Any:
    """Leading zero bits of non-negative values below 2^32 viewed as uint32 (32 for 0)."""
    xp = _backend(x)
    x = xp.i64(x)
    bit_length = xp.i64(0)
    for step in (16, 8, 4, 2, 1):                       # binary search on the bit length
        big = x >= (1 << step)
        bit_length = bit_length + xp.where(big, step, 0)
        x = xp.where(big, xp.rshift(x, step), x)
    return 32 - (bit_length + xp.i64(x > 0))


def get_reciprocal(x: Any, x_integer_bits: int) -> tuple[Any, Any]:
    """TFLite's ``GetReciprocal``: returns ``(raw Q0.31 reciprocal, num_bits_over_unit)``."""
    xp = _backend(x)
    x = xp.i64(x)
    headroom_plus_one = count_leading_zeros_uint32(x)
    num_bits_over_unit = x_integer_bits - headroom_plus_one
    shifted_sum_minus_one = xp.lshift(x, headroom_plus_one) - (1 << 31)
    return one_over_one_plus_x_for_x_in_0_1(shifted_sum_minus_one), num_bits_over_unit
