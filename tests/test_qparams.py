"""QuantParams (min/max -> scale, zero point) against TF's own FakeQuant op, and the
requantisation multiplier against hand-worked examples."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import tensorflow as tf

from tfquant.qparams import QuantParams, check_bits, quantize_multiplier, symmetric_range

RANGES = [(-1.0, 1.0), (-0.3, 2.7), (0.1, 5.0), (-5.0, -0.2), (-6.0, 6.0), (-1e-3, 3e-3),
          (-0.5, 254.5), (0.0, 1.0)]
BITS = [2, 3, 4, 5, 8, 12, 16]


def _op_params(x_min, x_max, bits, narrow_range):
    """(nudged_min, nudged_max, scale, unsigned zero point, #levels) read off the op's output
    on an input grid much denser than the quantization grid."""
    levels = (1 << bits) - 1 - int(narrow_range)
    span = x_max - x_min
    lo, hi = min(x_min, 0.0) - span, max(x_max, 0.0) + span
    x = np.concatenate([np.linspace(lo, hi, 6 * (levels + 1) + 1), [0.0]]).astype(np.float32)
    y = tf.quantization.fake_quant_with_min_max_vars(
        x, x_min, x_max, num_bits=bits, narrow_range=narrow_range).numpy().astype(np.float64)
    assert 0.0 in y  # real zero is exactly representable
    y_min, y_max = y.min(), y.max()
    scale = (y_max - y_min) / levels
    zp = (1 if narrow_range else 0) - round(y_min / scale)
    return y_min, y_max, scale, zp, np.unique(y).size


@pytest.mark.parametrize("narrow_range", [False, True])
@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("x_min,x_max", RANGES)
def test_from_min_max_matches_tf_fake_quant(x_min, x_max, bits, narrow_range):
    y_min, y_max, scale, zp, distinct = _op_params(x_min, x_max, bits, narrow_range)
    qmin_u, qmax_u = (1 if narrow_range else 0), (1 << bits) - 1
    assert distinct == qmax_u - qmin_u + 1  # the op really produced every level
    for signed in (True, False):
        p = QuantParams.from_min_max(x_min, x_max, bits=bits, narrow_range=narrow_range,
                                     signed=signed)
        offset = (1 << (bits - 1)) if signed else 0
        assert (p.qmin, p.qmax) == (qmin_u - offset, qmax_u - offset)
        assert int(p.zero_point) == zp - offset
        assert p.qmin <= int(p.zero_point) <= p.qmax
        np.testing.assert_allclose(float(p.scale), scale, rtol=2e-5)
        np.testing.assert_allclose(float(p.min), y_min, rtol=1e-6, atol=1e-6 * float(p.scale))
        np.testing.assert_allclose(float(p.max), y_max, rtol=1e-6, atol=1e-6 * float(p.scale))
        assert p.axis is None and not p.per_axis
        assert p.scale.dtype == np.float32 and p.zero_point.dtype == np.int64


def test_hand_worked_params():
    # [-1, 1] on 256 levels: the zero point from min is 127.5 in exact arithmetic, but
    # float32 gives 1 / float32(2/255) = 127.49999, so TF rounds to 127 (signed: -1).
    p = QuantParams.from_min_max(-1.0, 1.0, bits=8)
    assert int(p.zero_point) == -1 and (p.qmin, p.qmax) == (-128, 127)
    np.testing.assert_allclose(p.scale, 2.0 / 255.0, rtol=1e-7)
    np.testing.assert_allclose([p.min, p.max], [-254.0 / 255.0, 256.0 / 255.0], rtol=1e-6)

    p = QuantParams.from_min_max(-1.0, 1.0, bits=8, narrow_range=True)
    assert int(p.zero_point) == 0 and (p.qmin, p.qmax) == (-127, 127)
    np.testing.assert_allclose([p.scale, p.min, p.max], [1.0 / 127.0, -1.0, 1.0], rtol=1e-6)

    # zero point from min is exactly 0.5: std::round goes away from zero (not to even).
    p = QuantParams.from_min_max(-0.5, 254.5, bits=8, signed=False)
    assert (float(p.scale), int(p.zero_point), float(p.min), float(p.max)) == (1.0, 1, -1.0, 254.0)

    # all-positive / all-negative ranges are moved so that 0 is an end of the grid
    p = QuantParams.from_min_max(0.1, 5.0, bits=8, signed=False)
    assert int(p.zero_point) == 0 and float(p.min) == 0.0
    np.testing.assert_allclose(p.max, 4.9, rtol=1e-6)
    p = QuantParams.from_min_max(-5.0, -0.2, bits=8, signed=False)
    assert int(p.zero_point) == 255 and float(p.max) == 0.0
    np.testing.assert_allclose(p.min, -4.8, rtol=1e-6)


@pytest.mark.parametrize("bits,narrow_range", [(8, True), (8, False), (4, True), (3, False)])
def test_per_channel_matches_tf_per_channel_op(bits, narrow_range):
    mins = np.array([-1.0, -0.3, 0.1, -5.0, -2e-3], np.float32)
    maxs = np.array([1.0, 2.7, 5.0, -0.2, 7e-3], np.float32)
    levels = (1 << bits) - 1 - int(narrow_range)
    cols = []
    for lo, hi in zip(mins, maxs):
        span = hi - lo
        cols.append(np.linspace(min(lo, 0) - span, max(hi, 0) + span, 8 * (levels + 1)))
    x = np.stack(cols, axis=1).astype(np.float32)
    y = tf.quantization.fake_quant_with_min_max_vars_per_channel(
        x, mins, maxs, num_bits=bits, narrow_range=narrow_range).numpy().astype(np.float64)
    p = QuantParams.from_min_max(mins, maxs, bits=bits, narrow_range=narrow_range, axis=1)
    assert p.per_axis and p.axis == 1 and p.scale.shape == (5,) and p.zero_point.shape == (5,)
    y_min, y_max = y.min(axis=0), y.max(axis=0)
    scale = (y_max - y_min) / levels
    zp = (1 if narrow_range else 0) - np.round(y_min / scale) - (1 << (bits - 1))
    np.testing.assert_array_equal(p.zero_point, zp.astype(np.int64))
    np.testing.assert_allclose(p.scale, scale, rtol=2e-5)
    np.testing.assert_allclose(p.min, y_min, rtol=1e-6)
    np.testing.assert_allclose(p.max, y_max, rtol=1e-6)


@pytest.mark.parametrize("axis", [None, 0, 1])
def test_quantize_dequantize_round_trip_matches_op(axis, rng):
    x = rng.uniform(-3.0, 3.0, size=(6, 4)).astype(np.float32)
    if axis is None:
        lo, hi = np.float32(-1.3), np.float32(2.2)
        y = tf.quantization.fake_quant_with_min_max_vars(x, lo, hi, num_bits=8).numpy()
    else:
        n = x.shape[axis]
        lo = -np.linspace(0.5, 2.0, n).astype(np.float32)
        hi = np.linspace(1.0, 2.5, n).astype(np.float32)
        moved = np.moveaxis(x, axis, -1)
        y = np.moveaxis(tf.quantization.fake_quant_with_min_max_vars_per_channel(
            moved, lo, hi, num_bits=8).numpy(), -1, axis)
    p = QuantParams.from_min_max(lo, hi, bits=8, axis=axis)
    q = p.quantize(x)
    assert q.dtype == np.int64 and q.min() >= -128 and q.max() <= 127
    back = p.dequantize(q)
    shape = [1, 1]
    if axis is not None:
        shape[axis] = -1
    scale = np.reshape(p.scale, shape)
    np.testing.assert_array_equal(np.round((back - y) / scale), 0)
    np.testing.assert_allclose(back, y, atol=1e-6)
    # the integers are the storage integers: q = zp + round(x / s) inside the range
    inside = (x > np.reshape(p.min, shape)) & (x < np.reshape(p.max, shape))
    zp = np.reshape(p.zero_point, shape)
    expected = np.broadcast_to(zp, x.shape) + np.round(x.astype(np.float64) / scale)
    np.testing.assert_array_equal(q[inside], expected[inside])


def test_symmetric_range_gives_zero_point_zero():
    for bits in (4, 8, 16):
        for narrow in (False, True):
            lo, hi = symmetric_range(0.75, bits, narrow)
            p = QuantParams.from_min_max(float(lo), float(hi), bits=bits, narrow_range=narrow)
            assert int(p.zero_point) == 0 and p.symmetric
            np.testing.assert_allclose(float(p.max), 0.75, rtol=1e-6)
            half = 1 << (bits - 1)
            np.testing.assert_allclose(float(p.scale), 0.75 / (half - 1), rtol=1e-6)


def test_to_dict_is_json():
    p = QuantParams.from_min_max([-1.0, -2.0], [1.0, 2.0], bits=8, narrow_range=True, axis=-1)
    d = json.loads(json.dumps(p.to_dict()))
    assert d["zero_point"] == [0, 0] and d["axis"] == -1 and d["bits"] == 8
    np.testing.assert_allclose(d["scale"], [1 / 127, 2 / 127], rtol=1e-6)


# ----------------------------------------------------------------- errors
@pytest.mark.parametrize("bad", [0, 1, 17, 32, -8])
def test_bad_bits_raise_naming_value(bad):
    with pytest.raises(ValueError, match=rf"bits={bad}\b"):
        QuantParams.from_min_max(-1.0, 1.0, bits=bad)
    with pytest.raises(ValueError, match=rf"weights.bits={bad}\b"):
        check_bits(bad, "weights.bits")


@pytest.mark.parametrize("bad", [8.0, "8", True, None])
def test_non_integer_bits_raise(bad):
    with pytest.raises(ValueError, match="bits="):
        QuantParams.from_min_max(-1.0, 1.0, bits=bad)


@pytest.mark.parametrize("x_min,x_max,text", [
    (1.0, -1.0, "min=1.0"), (0.5, 0.5, "min=0.5"), (float("nan"), 1.0, "nan"),
    (-1.0, float("inf"), "inf"), ([-1.0, 2.0], [1.0, 1.5], "min=")])
def test_bad_ranges_raise_naming_value(x_min, x_max, text):
    with pytest.raises(ValueError, match=text):
        QuantParams.from_min_max(x_min, x_max, bits=8)


# ------------------------------------------------------ quantize_multiplier
@pytest.mark.parametrize("real,expected", [
    (0.0, (0, 0)),
    (0.5, (1 << 30, 0)),
    (0.75, (1610612736, 0)),                     # 0.75 * 2^31
    (1.0, (1 << 30, 1)),                         # frexp(1) = (0.5, 1)
    (0.3, (1288490189, -1)),                     # 0.6 * 2^31 = 1288490188.8
    (3.0, (1610612736, 2)),                      # 0.75 * 2^2
    (1.0 - 2.0 ** -20, (2147481600, 0)),         # just below 1, representable: 2^31 - 2^11
    (1.0 - 2.0 ** -40, (1 << 30, 1)),            # rounds to 2^31 -> 2^30 and shift + 1
    (0.9999999999, (1 << 30, 1)),
    (0.5 - 2.0 ** -35, (1 << 30, 0)),            # frexp -> (1 - 2^-34, -1) -> rounds up
    (2.0 ** -32, (1 << 30, -31)),                # smallest shift kept
    (2.0 ** -33, (0, 0)),                        # shift -32: flushed to zero
    (1e-12, (0, 0)),
])
def test_quantize_multiplier_hand_worked(real, expected):
    assert quantize_multiplier(real) == expected


def test_quantize_multiplier_reconstructs(rng):
    for real in rng.uniform(1e-6, 100.0, size=200):
        m, e = quantize_multiplier(real)
        assert (1 << 30) <= m < (1 << 31)
        assert abs(m * 2.0 ** (e - 31) - real) <= real * 2.0 ** -31


@pytest.mark.parametrize("bad", [-0.5, float("nan"), float("inf")])
def test_quantize_multiplier_rejects(bad):
    with pytest.raises(ValueError, match=str(bad) if not math.isnan(bad) else "nan"):
        quantize_multiplier(bad)
