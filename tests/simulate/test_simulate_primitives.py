"""Fixed-point primitives and parameter builders against hand-worked values and a scalar
reference written directly from the C sources (gemmlowp / TFLite), independent of the TF code."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from tfquant.qparams import quantize_multiplier
from tfquant.simulate import builders as B
from tfquant.simulate import kernels as K
from tfquant.simulate import matmul as MM
from tfquant.simulate import primitives as P
from tfquant.simulate.graph import Op

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1


# ----------------------------------------------------------------------------------------------
# scalar references, transcribed from the C code (nudge + truncating division, masks)
# ----------------------------------------------------------------------------------------------
def _trunc_div(a: int, b: int) -> int:
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def ref_srdhm(a: int, b: int) -> int:
    if a == b == INT32_MIN:
        return INT32_MAX
    ab = a * b
    nudge = (1 << 30) if ab >= 0 else 1 - (1 << 30)
    return _trunc_div(ab + nudge, 1 << 31)


def ref_rdbpot(x: int, exponent: int) -> int:
    mask = (1 << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> exponent) + (1 if remainder > threshold else 0)


def ref_wrap32(x: int) -> int:
    return (x + (1 << 31)) % (1 << 32) - (1 << 31)


def ref_mbqm(x: int, m: int, shift: int) -> int:
    left, right = max(shift, 0), max(-shift, 0)
    return ref_rdbpot(ref_srdhm(ref_wrap32(x * (1 << left)), m), right)


def np_int(t) -> list[int]:
    return [int(v) for v in np.asarray(t).reshape(-1)]


@pytest.fixture(params=["numpy", "tf"])
def to(request):
    """Inputs for either backend of the primitives (numpy on the host, TF in graphs)."""
    if request.param == "numpy":
        return lambda x: np.asarray(x, np.int64)
    return lambda x: tf.constant(np.asarray(x, np.int64))


# ----------------------------------------------------------------------------------------------
# SaturatingRoundingDoublingHighMul
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("a, b, expected", [
    (1 << 30, 1 << 30, 1 << 29),                    # 0.5 * 0.5 = 0.25
    (1, 1 << 30, 1),                                # +0.5 rounds up
    (-1, 1 << 30, 0),                               # -0.5 rounds up (toward +inf) too
    (3, 1 << 30, 2),                                # 1.5 -> 2
    (-3, 1 << 30, -1),                              # -1.5 -> -1
    (-5, 1 << 30, -2),                              # -2.5 -> -2
    (INT32_MIN, INT32_MIN, INT32_MAX),              # the single overflow case saturates
    (INT32_MIN, INT32_MAX, -INT32_MAX),             # exact: -(2^31 - 1)
    (INT32_MAX, INT32_MAX, INT32_MAX - 1),
    (100, 1518500250, 71),                          # 100 * 0.70710678 = 70.71
    (-100, 1518500250, -71),
])
def test_srdhm_hand_worked(a, b, expected, to):
    assert int(P.saturating_rounding_doubling_high_mul(to(a), to(b))) == expected
    assert ref_srdhm(a, b) == expected


def test_srdhm_matches_c_reference_on_random_and_edge_values(to):
    rng = np.random.default_rng(0)
    edges = [INT32_MIN, INT32_MIN + 1, -1, 0, 1, INT32_MAX, 1 << 30, -(1 << 30)]
    a = np.concatenate([rng.integers(INT32_MIN, INT32_MAX, 3000, endpoint=True),
                        np.repeat(edges, len(edges))])
    b = np.concatenate([rng.integers(INT32_MIN, INT32_MAX, 3000, endpoint=True),
                        np.tile(edges, len(edges))])
    got = np_int(P.saturating_rounding_doubling_high_mul(to(a), to(b)))
    assert got == [ref_srdhm(int(x), int(y)) for x, y in zip(a, b)]


# ----------------------------------------------------------------------------------------------
# RoundingDivideByPOT
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("x, exponent, expected", [
    (5, 1, 3), (-5, 1, -3),            # 2.5 -> 3, -2.5 -> -3: ties away from zero
    (3, 1, 2), (-3, 1, -2),            # 1.5, -1.5
    (6, 2, 2), (-6, 2, -2),            # 1.5, -1.5
    (5, 2, 1), (-5, 2, -1),            # 1.25, -1.25
    (7, 2, 2), (-7, 2, -2),            # 1.75, -1.75
    (-1, 1, -1), (1, 1, 1),            # -0.5 -> -1, 0.5 -> 1
    (-1, 2, 0),                        # -0.25 -> 0
    (123, 0, 123), (-123, 0, -123),
    (INT32_MIN, 31, -1), (INT32_MAX, 31, 1),
    (1 << 30, 31, 1), (-(1 << 30), 31, -1),
])
def test_rounding_divide_by_pot_hand_worked(x, exponent, expected, to):
    assert int(P.rounding_divide_by_pot(to(x), exponent)) == expected
    assert ref_rdbpot(x, exponent) == expected


def test_rounding_divide_by_pot_per_channel_exponents():
    x = tf.constant([[5, 5, 5], [-5, -5, -5]], tf.int64)
    got = P.rounding_divide_by_pot(x, tf.constant([0, 1, 2], tf.int64)).numpy().tolist()
    assert got == [[5, 3, 1], [-5, -3, -1]]


# ----------------------------------------------------------------------------------------------
# MultiplyByQuantizedMultiplier (double rounding)
# ----------------------------------------------------------------------------------------------
def test_mbqm_hand_worked(to):
    m, e = quantize_multiplier(0.25)
    assert (m, e) == (1 << 30, -1)
    # 10 * 0.25 = 2.5: SRDHM(10, 2^30) = 5, then 5 / 2 -> 3 (half away from zero)
    assert np_int(P.multiply_by_quantized_multiplier(to([10, -10, 6, -6]), m, e)) == [3, -3, 2, -2]
    m, e = quantize_multiplier(3.0)                 # left shift: 3 = 0.75 * 2^2
    assert (m, e) == (1610612736, 2)
    assert np_int(P.multiply_by_quantized_multiplier(to([7, -7]), m, e)) == [21, -21]


def test_mbqm_double_rounding_differs_from_single_rounding():
    """Find x where round(round(x*m/2^31) / 2^r) != round(x*m/2^(31+r)) and check TFLite's."""
    m, e = quantize_multiplier(0.3)
    found = None
    for x in range(1, 200000):
        exact = x * m / 2 ** (31 - e)
        single = math.floor(exact + 0.5)
        if ref_mbqm(x, m, e) != single:
            found = x
            break
    assert found is not None
    assert int(P.multiply_by_quantized_multiplier(found, m, e)) == ref_mbqm(found, m, e)


def test_mbqm_matches_c_reference_including_wraparound(to):
    rng = np.random.default_rng(1)
    x = rng.integers(-(1 << 31), 1 << 31, 2000)
    m = rng.integers(1 << 30, 1 << 31, 2000)
    e = rng.integers(-31, 8, 2000)
    got = np_int(P.multiply_by_quantized_multiplier(to(x), to(m), to(e)))
    assert got == [ref_mbqm(int(a), int(b), int(c)) for a, b, c in zip(x, m, e)]


@pytest.mark.parametrize("bound, k", [(255 * 127 * 9, 0), (1 << 20, 0), ((1 << 21) + 12345, 0),
                                      (255, 20)])
def test_double_path_is_bit_exact_where_it_claims_to_be(bound, k):
    rng = np.random.default_rng(bound)
    m = rng.integers(1 << 30, 1 << 31, 16)
    m[0] = 1 << 30
    e = rng.integers(-24, 1 if k else 3, 16)
    if k == 0:
        e[:2] = [1, 2]                                 # left shifts too
    mode = P.double_requantize_mode(bound, m, e, k=k)
    assert mode is not None
    x = np.concatenate([rng.integers(-bound, bound + 1, (3000, 16)),
                        np.arange(-64, 64)[:, None] * np.ones(16, np.int64),
                        np.full((1, 16), bound), np.full((1, 16), -bound)])
    got = P.multiply_by_quantized_multiplier_double(tf.constant(x, tf.float64), m, e, k=k,
                                                    offset=3, mode=mode).numpy()
    want = P.multiply_by_quantized_multiplier(x * (1 << k), m, e) + 3
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("right", [1, 7, 21, 22, 26, 31])
def test_double_path_near_second_stage_ties(right):
    """Inputs whose first rounding lands on (or next to) a tie of the second rounding."""
    rng = np.random.default_rng(right)
    m = int(rng.integers(1 << 30, 1 << 31))
    bound = (1 << 22) - 1
    mode = P.double_requantize_mode(bound, m, -right)
    assert mode == "single" if right <= 7 else mode is not None
    if right >= 22:
        assert mode == "two_step"       # 2^(31+r) no longer fits next to the product
    ties = (2 * rng.integers(-(1 << 10), 1 << 10, 400) + 1) * 2.0 ** (right - 1)
    v = np.round(ties * 2.0 ** 31 / m).astype(np.int64)
    v = np.clip(np.concatenate([v - 1, v, v + 1, rng.integers(-bound, bound, 400)]), -bound, bound)
    got = P.multiply_by_quantized_multiplier_double(tf.constant(v, tf.float64), m, -right,
                                                    mode=mode).numpy()
    assert got.tolist() == [ref_mbqm(int(a), m, -right) for a in v]


@pytest.mark.parametrize("right", [0, 3, 9, 14])
def test_double_path_folded_addend_and_clamped_negatives(right):
    """A per-channel addend folded into the rounding constant, and the t < 0 branch dropped
    where the caller clamps at the zero point: both against the C reference of (v + addend)."""
    rng = np.random.default_rng(right)
    m = rng.integers(1 << 30, 1 << 31, 8)
    e = np.full(8, -right)
    bound = 255 * 127 * 16
    addend = rng.integers(-30000, 30000, 8)
    mode = P.double_requantize_mode(bound + np.abs(addend), m, e)
    assert mode == "single" and P.addend_folds_exactly(bound, addend, m, e)
    v = np.concatenate([rng.integers(-bound, bound + 1, (4000, 8)),
                        np.arange(-300, 300)[:, None] - addend])    # around t = 0
    want = np.array([[ref_mbqm(int(a + b), int(mc), int(ec)) for a, b, mc, ec
                      in zip(row, addend, m, e)] for row in v])
    got = P.multiply_by_quantized_multiplier_double(tf.constant(v, tf.float64), m, e,
                                                    mode=mode, addend=addend).numpy()
    np.testing.assert_array_equal(got, want)
    zp = -128                                            # a fused ReLU's output range
    clamped = P.multiply_by_quantized_multiplier_double(
        tf.constant(v, tf.float64), m, e, mode=mode, addend=addend, offset=zp,
        negatives_clamped=True).numpy()
    np.testing.assert_array_equal(np.clip(clamped, zp, 127), np.clip(want + zp, zp, 127))
    assert (want < 0).any()


def test_addend_folds_exactly_refuses_sums_beyond_2_pow_53():
    m, e = (1 << 31) - 1, -10
    assert P.addend_folds_exactly(1 << 20, 1 << 20, m, e)
    assert not P.addend_folds_exactly(1 << 21, 1 << 21, m, e)      # 2^22 * 2^31 > 2^53
    assert not P.addend_folds_exactly(10, 0, m, -22)                # 2^(31+22) alone


def test_int8_matmul_is_exact_int32_accumulation():
    rng = np.random.default_rng(7)
    k = 4000                                             # 4000 * 128 * 128 > 2^24
    x = np.concatenate([np.full((1, k), -128), np.full((1, k), 127),
                        rng.integers(-128, 128, (30, k))]).astype(np.int8)
    w = np.concatenate([np.full((k, 1), -128), np.full((k, 1), 127),
                        rng.integers(-128, 128, (k, 5))], axis=1)
    assert MM.int8_matmul_ok(w)
    got = MM.int8_matmul(tf.constant(x), w).numpy()
    np.testing.assert_array_equal(got, x.astype(np.int64) @ w.astype(np.int64))
    assert got[0, 0] == k * 128 * 128
    assert not MM.int8_matmul_ok(np.full((4, 2), 128))              # not an int8 weight
    assert not MM.int8_matmul_ok(np.full((140000, 1), 127))         # could wrap int32


def test_double_path_modes():
    assert P.double_requantize_mode(1 << 21, (1 << 31) - 1, -10) == "single"
    assert P.double_requantize_mode(1 << 21, (1 << 31) - 1, -25) == "two_step"
    assert P.double_requantize_mode(1 << 23, (1 << 31) - 1, -10) is None    # 2^54 product
    assert P.double_requantize_mode(1 << 29, 1 << 30, 2) is None            # int32 shift wraps
    assert P.double_requantize_mode(255, (1 << 31) - 1, 0, k=32) is None
    assert P.double_requantize_mode(255, (1 << 31) - 1, -25, k=20) == "single"


# ----------------------------------------------------------------------------------------------
# std::round and the int16 helpers (HardSwish)
# ----------------------------------------------------------------------------------------------
def test_round_half_away_from_zero_not_to_even():
    below_half = float(np.nextafter(np.float32(0.5), np.float32(0)))
    x = tf.constant([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, below_half, -below_half, 3.0, -7.49],
                    tf.float32)
    assert P.round_half_away(x).numpy().tolist() == [1, 2, 3, -1, -2, -3, 0, 0, 3, -7]
    assert tf.round(tf.constant(2.5)).numpy() == 2.0        # what must not be used


@pytest.mark.parametrize("a, b, rounding, truncating", [
    (16384, 16384, 8192, 8192),
    (1, 16384, 1, 0),          # 0.5: rounding -> 1, truncating -> 0
    (-1, 16384, 0, 0),         # -0.5
    (-3, 16384, -1, -1),       # -1.5: rounding half up -> -1, truncating toward zero -> -1
    (-5, 16384, -2, -2),       # -2.5
    (-32768, -32768, 32767, 32767),
])
def test_int16_high_muls(a, b, rounding, truncating, to):
    assert int(P.saturating_rounding_doubling_high_mul_int16(to(a), to(b))) == rounding
    assert int(P.saturating_doubling_high_mul_int16(to(a), to(b))) == truncating


def test_int16_truncation_differs_from_floor(to):
    # -3 * 10923 / 2^15 = -1.00003: truncation gives -1, floor would give -2
    assert int(P.saturating_doubling_high_mul_int16(to(-3), to(10923))) == -1
    assert int(P.saturating_left_shift_int16(to(20000), 1)) == 32767
    assert int(P.saturating_left_shift_int16(to(-20000), 2)) == -32768


# ----------------------------------------------------------------------------------------------
# gemmlowp exp / reciprocal (Softmax)
# ----------------------------------------------------------------------------------------------
def ref_exp_on_negative_values(a: int) -> int:
    """gemmlowp exp_on_negative_values<int32, 5 integer bits>, scalar Python."""
    def fx_mul(x, y):
        return ref_srdhm(x, y)

    one_quarter = 1 << 24
    amq = (a & (one_quarter - 1)) - one_quarter
    x = (amq << 5) + (1 << 28)
    x2 = fx_mul(x, x)
    x3 = fx_mul(x2, x)
    x4 = fx_mul(x2, x2)
    x4_over_4 = ref_rdbpot(x4, 2)
    poly = ref_rdbpot(fx_mul(x4_over_4 + x3, 715827883) + x2, 1)
    result = 1895147668 + fx_mul(1895147668, x + poly)
    remainder = amq - a
    for exponent, multiplier in [(-2, 1672461947), (-1, 1302514674), (0, 790015084),
                                 (1, 290630308), (2, 39332535), (3, 720401), (4, 242)]:
        if remainder & (1 << (26 + exponent)):
            result = fx_mul(result, multiplier)
    return INT32_MAX if a == 0 else result


def test_exp_on_negative_values(to):
    a = np.concatenate([-np.arange(0, 1 << 31, 9876543, dtype=np.int64), [-1, -(1 << 26)]])
    got = np_int(P.exp_on_negative_values(to(a), 5))
    assert got == [ref_exp_on_negative_values(int(v)) for v in a]
    assert got[0] == INT32_MAX                                          # exp(0)
    approx = np.exp(a / 2.0 ** 26) * 2.0 ** 31
    np.testing.assert_allclose(got, approx, atol=2 ** 31 * 2e-6)


def test_one_over_one_plus_x_and_reciprocal(to):
    x = np.linspace(0, INT32_MAX, 1001).astype(np.int64)
    got = np.asarray(P.one_over_one_plus_x_for_x_in_0_1(to(x))) / 2.0 ** 31
    np.testing.assert_allclose(got, 1 / (1 + x / 2.0 ** 31), atol=1e-8)
    scale, bits = P.get_reciprocal(to([3 << 19]), 12)  # sum of exps = 3.0
    assert int(bits[0]) == 1                       # 3 = 1.5 * 2^1: scale holds 1 / 1.5
    assert abs(int(scale[0]) / 2.0 ** 31 * 2 ** -1 - 1 / 3) < 1e-8
    clz = P.count_leading_zeros_uint32(to([0, 1, 2, 3, 1 << 16, (1 << 16) - 1, 1 << 31,
                                          (1 << 32) - 1]))
    assert np_int(clz) == [32, 31, 30, 30, 15, 16, 0, 0]


# ----------------------------------------------------------------------------------------------
# builders: host-side parameter derivation in TFLite's precision
# ----------------------------------------------------------------------------------------------
def test_activation_range():
    assert B.activation_range("NONE", 0.05, -10) == (-128, 127)
    assert B.activation_range("RELU", 0.05, -10) == (-10, 127)
    assert B.activation_range("RELU6", 0.05, -10) == (-10, 110)         # -10 + round(120)
    assert B.activation_range("RELU_N1_TO_1", 0.05, -10) == (-30, 10)
    assert B.activation_range("RELU6", 6.0 / 255, -128) == (-128, 127)
    with pytest.raises(ValueError):
        B.activation_range("TANH", 0.1, 0)


def test_add_params_use_left_shift_20_and_twice_max():
    p = B.add_sub_params(0.5, 1, 0.25, -2, 1.0, 3)
    assert p["left_shift"] == 20
    assert p["input_multiplier"] == (1 << 30, 1 << 30)
    assert p["input_shift"] == (0, -1)                 # 0.5/1.0 and 0.25/1.0
    assert (p["output_multiplier"], p["output_shift"]) == (1 << 30, -19)    # 1 / 2^20
    assert p["input_zp"] == (1, -2) and p["output_zp"] == 3


def test_mul_multiplier_is_computed_in_float32():
    s1, s2, so = 0.1, 0.3, 0.7
    p = B.mul_params(s1, 0, s2, 0, so, 0)
    real32 = float(np.float32(np.float32(np.float32(s1) * np.float32(s2)) / np.float32(so)))
    assert (p["output_multiplier"], p["output_shift"]) == quantize_multiplier(real32)


def test_conv_multipliers_are_double_per_channel():
    s_in, s_w, s_out = np.float32(0.02), np.float32([0.001, 0.003]), np.float32(0.05)
    m, e = B.conv_multipliers(s_in, s_w, s_out, 2)
    for c in range(2):
        real = float(s_in) * float(s_w[c]) / float(s_out)
        assert (int(m[c]), int(e[c])) == quantize_multiplier(real)


def test_mean_params_fold_one_over_n():
    p = B.mean_params(0.1, 0, 0.1, 0, 16)
    m, e = quantize_multiplier(1.0)
    assert (m, e) == (1 << 30, 1)
    assert (p["multiplier"], p["shift"]) == (1 << 30, -3)     # shift = log2(16) = 4
    p = B.mean_params(0.1, 0, 0.1, 0, 49)                     # shift 5: (2^30 << 5) // 49
    assert (p["multiplier"], p["shift"]) == (((1 << 30) << 5) // 49, 1 - 5)


def test_softmax_params():
    p = B.softmax_params(1.0, 1 / 16)
    # beta * s * 2^26 = 2^22 -> (2^30, 23); radius = floor(31 * 2^26 / 2^23) = 248
    assert p == {"input_multiplier": 1 << 30, "input_left_shift": 23, "diff_min": -248}


def test_logistic_and_tanh_tables():
    lut = B.logistic_lut(1 / 16, 0, 1 / 256, -128)
    assert lut[0 + 128] == 0                     # sigmoid(0) * 256 - 128
    assert lut[127 + 128] == 127                 # 255.9 -> 256 -> clamped
    assert lut[-128 + 128] == -128
    tanh = B.tanh_lut(1 / 32, 0, 1 / 128, 0)
    assert tanh[128] == 0 and tanh[255] == 127 and tanh[0] == -128
    assert tanh[128 + 16] == round(np.tanh(0.5) * 128)


def test_hard_swish_params_are_16_bit():
    p = B.hard_swish_params(0.05, 3, 0.03, -7)
    assert 0 < p["output_multiplier_int16"] <= 32767
    assert 0 < p["reluish_multiplier_int16"] <= 32767
    assert p["output_exponent"] <= 0


# ----------------------------------------------------------------------------------------------
# the float32 accumulation guarantee of the convolution kernels
# ----------------------------------------------------------------------------------------------
def test_exact_float_chunks_split_at_2_pow_24():
    sums = np.full((600, 4), 127)                 # each input channel: 255 * 127 = 32385
    assert MM.exact_float_chunks(sums, 255) == [(0, 518), (518, 600)]   # 518 * 32385 < 2^24
    assert MM.exact_float_chunks(np.full((3, 2), 10), 255) == [(0, 3)]
    assert MM.exact_float_chunks(np.full((2, 1), 70000), 255) is None   # one channel > 2^24


def _greedy_chunks(sums, x_bound, limit):
    """The split as a row-by-row loop: close the group before a row that would overflow it."""
    sums = np.asarray(sums, np.int64) * x_bound
    chunks, start, running = [], 0, np.zeros(sums.shape[1], np.int64)
    for i, row in enumerate(sums):
        if np.any(row > limit):
            return None
        if np.any(running + row > limit):
            chunks.append((start, i))
            start, running = i, np.zeros_like(running)
        running += row
    return chunks + [(start, len(sums))]


def test_exact_float_chunks_is_the_greedy_split():
    rng = np.random.default_rng(7)
    for _ in range(500):
        high = int(rng.choice([10, 128, 2000, 70000]))
        sums = rng.integers(0, high, (int(rng.integers(0, 40)), int(rng.integers(1, 5))))
        x_bound, limit = int(rng.integers(1, 256)), int(rng.choice([1000, 50000, 1 << 24]))
        chunks = MM.exact_float_chunks(sums, x_bound, limit)
        assert chunks == _greedy_chunks(sums, x_bound, limit)
        for start, end in chunks or ():
            assert (sums[start:end].sum(axis=0) * x_bound).max(initial=0) <= limit


def _conv_reference(x, w, zp_in, bias):
    """int64 NHWC/OHWI VALID convolution, stride 1 (independent of TF)."""
    n, h, wd, _ = x.shape
    o, kh, kw, _ = w.shape
    xs = x.astype(np.int64) - zp_in
    out = np.zeros((n, h - kh + 1, wd - kw + 1, o), np.int64)
    for i in range(kh):
        for j in range(kw):
            out += np.einsum("nhwc,oc->nhwo", xs[:, i:i + out.shape[1], j:j + out.shape[2]],
                             w[:, i, j].astype(np.int64))
    return out + bias


@pytest.mark.parametrize("channels", [600, 1100])
def test_conv_and_fc_accumulation_exact_beyond_2_pow_24(channels):
    """Worst-case weights/inputs whose sums exceed 2^24: exact in the kernels (int32 dot), and
    in the float32 matmul used for weights outside int8, which splits the reduction."""
    rng = np.random.default_rng(channels)
    w = np.where(rng.random((3, 2, 2, channels)) < 0.9, 127, -127).astype(np.int8)
    x = np.where(rng.random((2, 3, 3, channels)) < 0.9, -128, 127).astype(np.int8)
    bias = rng.integers(-1000, 1000, 3)
    zp_in = 127
    acc = _conv_reference(x, w, zp_in, bias)
    assert np.abs(acc).max() > (1 << 24)
    # int8 outputs cannot show the accumulator itself: requantise it by 2^-24 and by 2^-16.
    for real in (2.0 ** -24, 2.0 ** -16):
        m, e = quantize_multiplier(real)
        op = Op("CONV_2D", (0,), (1,), {
            "filter": w, "bias": bias, "multiplier": np.full(3, m), "shift": np.full(3, e),
            "input_zp": zp_in, "output_zp": 0, "act_min": -128, "act_max": 127,
            "strides": (1, 1), "dilations": (1, 1), "padding": "VALID"})
        got = K.KERNELS["CONV_2D"](op, [tf.constant(x)])[0].numpy()
        want = np.clip([[ref_mbqm(int(v), m, e) for v in row]
                        for row in acc.reshape(-1, 3)], -128, 127).reshape(acc.shape)
        np.testing.assert_array_equal(got, want)
    fc_w = w[:, 0, 0, :]
    fc_x = x[:, 0, 0, :]
    fc_acc = (fc_x.astype(np.int64) - zp_in) @ fc_w.astype(np.int64).T + bias
    float_acc = MM.exact_matmul(tf.constant(fc_x, tf.float32) - zp_in, fc_w.T.astype(np.int64),
                               255).numpy()
    np.testing.assert_array_equal(float_acc, fc_acc - bias)
    m, e = quantize_multiplier(2.0 ** -20)
    op = Op("FULLY_CONNECTED", (0,), (1,), {
        "filter": fc_w, "bias": bias, "multiplier": np.full(3, m), "shift": np.full(3, e),
        "real_multiplier": np.full(3, 2.0 ** -20), "requantize": "fixed_point",
        "input_zp": zp_in, "output_zp": 0, "act_min": -128, "act_max": 127})
    got = K.KERNELS["FULLY_CONNECTED"](op, [tf.constant(fc_x)])[0].numpy()
    want = np.clip([[ref_mbqm(int(v), m, e) for v in row] for row in fc_acc], -128, 127)
    np.testing.assert_array_equal(got, want)
