"""The fake-quant function against TF's FakeQuant ops and a numpy model of them; properties of
the forward; the LSQ / LSQ+ and PACT gradients against the papers' formulas (numpy)."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tfquant.fake_quant import (fake_quant, fake_quant_lsq, int8_container, lsq_levels,
                                 lsq_range)
from tfquant.quantizers import PACTQuantizer
from tfquant.specs import TensorSpec

F32 = np.float32
SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def _fq(x, lo, hi, bits=8, narrow_range=False, axis=None):
    return fake_quant(tf.constant(x, tf.float32), tf.constant(lo, tf.float32),
                      tf.constant(hi, tf.float32), bits=bits, narrow_range=narrow_range,
                      axis=axis).numpy()


def _assert_same_grid(y, expected, lo, hi, bits, narrow_range, ref, axis=None):
    np.testing.assert_array_equal(ref.grid_index(y, lo, hi, bits, narrow_range, axis),
                                  ref.grid_index(expected, lo, hi, bits, narrow_range, axis))
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------ against the op
@pytest.mark.parametrize("bits,narrow_range", [(8, False), (8, True), (4, True), (16, False)])
def test_per_tensor_equals_tf_op_and_numpy(bits, narrow_range, rng, ref):
    x = rng.normal(0.0, 2.0, size=(3, 5, 7)).astype(np.float32)
    y = _fq(x, -2.5, 3.1, bits, narrow_range)
    op = tf.quantization.fake_quant_with_min_max_vars(x, -2.5, 3.1, num_bits=bits,
                                                      narrow_range=narrow_range).numpy()
    np.testing.assert_array_equal(y, op)
    expected, _ = ref.fake_quant(x, -2.5, 3.1, bits, narrow_range)
    _assert_same_grid(y, expected, -2.5, 3.1, bits, narrow_range, ref)


def test_per_axis_last_equals_tf_per_channel_op(rng, ref):
    x = rng.normal(0.0, 1.0, size=(4, 6, 5)).astype(np.float32)
    lo = -rng.uniform(0.2, 2.0, 5).astype(np.float32)
    hi = rng.uniform(0.2, 2.0, 5).astype(np.float32)
    y = _fq(x, lo, hi, 8, True, axis=-1)
    op = tf.quantization.fake_quant_with_min_max_vars_per_channel(
        x, lo, hi, num_bits=8, narrow_range=True).numpy()
    np.testing.assert_array_equal(y, op)
    expected, _ = ref.fake_quant(x, lo, hi, 8, True, axis=-1)
    _assert_same_grid(y, expected, lo, hi, 8, True, ref, axis=-1)


def _per_slice_reference(x, lo, hi, bits, narrow_range, channel_of):
    """Applies the per-TENSOR TF op to each channel's elements separately."""
    out = np.empty_like(x)
    channels = channel_of(x.shape)
    for c in range(len(lo)):
        mask = channels == c
        out[mask] = tf.quantization.fake_quant_with_min_max_vars(
            x[mask], lo[c], hi[c], num_bits=bits, narrow_range=narrow_range).numpy()
    return out


@pytest.mark.parametrize("axis", [0, 1, -2])
def test_per_axis_non_last_axis(axis, rng, ref):
    x = rng.normal(0.0, 1.5, size=(3, 4, 5)).astype(np.float32)
    n = x.shape[axis]
    lo = -np.linspace(0.3, 2.0, n).astype(np.float32)
    hi = np.linspace(0.5, 1.7, n).astype(np.float32)

    def channel_of(shape):
        idx = np.indices(shape)[axis % 3]
        return idx

    y = _fq(x, lo, hi, 8, False, axis=axis)
    expected = _per_slice_reference(x, lo, hi, 8, False, channel_of)
    _assert_same_grid(y, expected, lo, hi, 8, False, ref, axis=axis)
    numpy_ref, _ = ref.fake_quant(x, lo, hi, 8, False, axis=axis)
    _assert_same_grid(y, numpy_ref, lo, hi, 8, False, ref, axis=axis)


@pytest.mark.parametrize("bits,narrow_range", [(8, True), (4, False)])
def test_depthwise_multi_axis(bits, narrow_range, rng, ref):
    """Depthwise kernels (kh, kw, in, multiplier): TFLite's channel is in * mult + m."""
    kernel = rng.normal(0.0, 0.5, size=(3, 3, 4, 2)).astype(np.float32)
    lo = -np.linspace(0.2, 1.5, 8).astype(np.float32)
    hi = np.linspace(0.3, 1.1, 8).astype(np.float32)

    def channel_of(shape):
        idx = np.indices(shape)
        return idx[2] * shape[3] + idx[3]

    y = _fq(kernel, lo, hi, bits, narrow_range, axis=(-2, -1))
    expected = _per_slice_reference(kernel, lo, hi, bits, narrow_range, channel_of)
    lo_b, hi_b = lo.reshape(4, 2), hi.reshape(4, 2)
    _assert_same_grid(y, expected, lo_b, hi_b, bits, narrow_range, ref, axis=(-2, -1))
    assert y.shape == kernel.shape


def test_multi_axis_not_last(rng, ref):
    x = rng.normal(0.0, 1.0, size=(2, 3, 2, 5)).astype(np.float32)
    lo = -np.linspace(0.2, 1.5, 6).astype(np.float32)
    hi = np.linspace(0.3, 1.1, 6).astype(np.float32)

    def channel_of(shape):
        idx = np.indices(shape)
        return idx[1] * shape[2] + idx[2]

    y = _fq(x, lo, hi, 8, False, axis=(1, 2))
    expected = _per_slice_reference(x, lo, hi, 8, False, channel_of)
    _assert_same_grid(y, expected, lo.reshape(3, 2), hi.reshape(3, 2), 8, False, ref,
                      axis=(1, 2))


def test_non_contiguous_axes_raise():
    with pytest.raises(ValueError, match="contiguous"):
        _fq(np.zeros((2, 3, 4), np.float32), np.zeros(8) - 1, np.ones(8), axis=(0, 2))


def test_works_inside_tf_function_and_xla(rng, ref):
    x = rng.normal(0.0, 1.0, size=(3, 3, 4, 2)).astype(np.float32)
    lo, hi = -np.ones(8, np.float32), np.ones(8, np.float32) * 0.7

    @tf.function(jit_compile=True)
    def f(t):
        return fake_quant(t, lo, hi, bits=8, narrow_range=True, axis=(-2, -1))

    expected, _ = ref.fake_quant(x, lo.reshape(4, 2), hi.reshape(4, 2), 8, True, axis=(-2, -1))
    _assert_same_grid(f(x).numpy(), expected, lo.reshape(4, 2), hi.reshape(4, 2), 8, True, ref,
                      axis=(-2, -1))


# ------------------------------------------------------------ int8 container (TFLite export)
@pytest.mark.parametrize("bits,narrow_range,lo,hi,constant,per_axis", [
    (4, False, -1.3, 2.1, False, False),   # asymmetric activations (LSQ+)
    (4, False, 0.0, 3.7, False, False),    # ReLU-style range, zero point at the bottom
    (3, False, -0.4, 5.0, False, False),
    (4, True, -0.7, 0.7, True, False),     # symmetric narrow-range weights
    (4, True, -0.7, 0.7, True, True),      # per-channel weights
    (2, True, -1.0, 1.0, True, False),     # ternary-style
])
def test_int8_container_keeps_the_b_bit_values_with_8_bit_ops(bits, narrow_range, lo, hi,
                                                              constant, per_axis, rng, ref):
    """Inside ``int8_container`` the values are the b-bit ones (numpy model of TF's op), the
    graph has only 8-bit FakeQuant ops, and the last one's grid stores the b-bit integers
    shifted left by ``8 - bits`` bits (zero point ``(zp_b - 2**(b-1)) * 2**(8-b)``)."""
    x = rng.normal(0.0, 2.0, size=(64, 5)).astype(np.float32)
    lo_a = np.full(5, lo, np.float32) * np.linspace(0.6, 1.0, 5, dtype=np.float32)
    hi_a = np.full(5, hi, np.float32) * np.linspace(0.6, 1.0, 5, dtype=np.float32)
    axis = -1 if per_axis else None
    lo_t, hi_t = (lo_a, hi_a) if per_axis else (lo_a[-1], hi_a[-1])
    expected, _ = ref.fake_quant(x, lo_t, hi_t, bits, narrow_range, axis=axis)

    def f(t):
        return fake_quant(t, tf.constant(lo_t), tf.constant(hi_t), bits=bits,
                          narrow_range=narrow_range, axis=axis, constant=constant)

    calls = []
    originals = (tf.quantization.fake_quant_with_min_max_vars,
                 tf.quantization.fake_quant_with_min_max_vars_per_channel)

    def spy(original):
        def record(t, x_min, x_max, num_bits, narrow_range):
            calls.append((np.asarray(x_min), np.asarray(x_max), num_bits, narrow_range))
            return original(t, x_min, x_max, num_bits=num_bits, narrow_range=narrow_range)
        return record

    with int8_container(), mock.patch.object(tf.quantization, "fake_quant_with_min_max_vars",
                                             spy(originals[0])), \
            mock.patch.object(tf.quantization, "fake_quant_with_min_max_vars_per_channel",
                              spy(originals[1])):
        y = f(tf.constant(x)).numpy()
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-6)
    # activations: 8-bit ops only; weights: the b-bit op (the converter folds it), then 8 bits
    assert [c[2] for c in calls] == ([bits, 8] if constant else [8, 8])
    assert all(c[3] == narrow_range for c in calls)
    # the last op's grid (what TFLite stores): 8 bits, step scale_b / 2**(8-b), and the b-bit
    # integers shifted left by 8 - b bits: zero point (zp_b - 2**(b-1)) * 2**(8-b)
    scale_b, zp_b, _, _, _ = ref.nudge(lo_t, hi_t, bits, narrow_range)
    shift = 1 << (8 - bits)
    fine_scale, fine_zp, _, _, _ = ref.nudge(calls[-1][0], calls[-1][1], 8, narrow_range)
    np.testing.assert_allclose(fine_scale, scale_b / shift, rtol=1e-5)
    np.testing.assert_array_equal(fine_zp - 128, (zp_b - (1 << (bits - 1))) * shift)
    ints = np.round(y / (fine_scale.reshape(1, -1) if per_axis else fine_scale))
    assert np.all(ints % shift == 0)


@pytest.mark.parametrize("bits", [4, 3])
def test_int8_container_weights_round_ties_like_the_b_bit_op(bits):
    """Weights within ~1e-5 steps of a rounding tie: the container stores the level the plain
    b-bit op (the Keras model) picks. (A padded 8-bit op rounds in a frame offset by ~128
    levels, where float32 cannot resolve such ties the same way.)"""
    q_p = (1 << (bits - 1)) - 1
    step = np.float32(0.2018148)
    k = np.arange(-q_p, q_p, dtype=np.float64) + 0.5
    delta = np.linspace(-2e-5, 2e-5, 81)
    x = ((k[:, None] + delta[None, :]) * step).astype(np.float32).ravel()
    lo, hi = tf.constant(-q_p * step), tf.constant(q_p * step)
    plain = fake_quant(tf.constant(x), lo, hi, bits=bits, narrow_range=True).numpy()
    with int8_container():
        stored = fake_quant(tf.constant(x), lo, hi, bits=bits, narrow_range=True,
                            constant=True).numpy()
    np.testing.assert_array_equal(stored, plain)


# ------------------------------------------------------------ properties
@st.composite
def _cases(draw):
    bits = draw(st.integers(2, 16))
    narrow = draw(st.booleans())
    lo = draw(st.floats(-100.0, 0.0, allow_subnormal=False, width=32))
    hi = draw(st.floats(0.0009765625, 100.0, allow_subnormal=False, width=32))
    if hi - lo < 1e-3:
        lo = -1e-3
    x = draw(hnp.arrays(np.float32, st.integers(1, 40),
                        elements=st.floats(-200.0, 200.0, width=32, allow_subnormal=False)))
    return bits, narrow, np.float32(lo), np.float32(hi), x


@SETTINGS
@given(_cases())
def test_property_on_grid_idempotent_and_error_bound(ref, case):
    bits, narrow, lo, hi, x = case
    grid_index = ref.grid_index
    scale, _, n_lo, n_hi, _ = ref.nudge(lo, hi, bits, narrow)
    levels = (1 << bits) - 1 - int(narrow)
    y = _fq(x, lo, hi, bits, narrow)
    # on the grid: an integer number of steps from the nudged minimum, within the grid
    k = (y.astype(np.float64) - n_lo) / scale
    # float32 values carry ~1 ulp of the range's magnitude: a few 1e-3 steps at 16 bits
    tol = 1e-3 + 4 * np.finfo(np.float32).eps * (abs(n_lo) + abs(n_hi)) / scale
    np.testing.assert_allclose(k, np.round(k), atol=tol)
    assert k.min() >= -tol and k.max() <= levels + tol
    # idempotent (same grid index)
    yy = _fq(y, lo, hi, bits, narrow)
    np.testing.assert_array_equal(grid_index(yy, lo, hi, bits, narrow),
                                  grid_index(y, lo, hi, bits, narrow))
    np.testing.assert_allclose(yy, y, rtol=0, atol=float(scale) * tol)
    # error <= scale / 2 inside the nudged range; clipped to the ends outside it
    inside = (x >= n_lo) & (x <= n_hi)
    eps = float(scale) * 1e-3 + 1e-6 * float(max(abs(n_lo), abs(n_hi)))
    assert np.all(np.abs(y[inside] - x[inside]) <= float(scale) / 2 + eps)
    np.testing.assert_allclose(y[x < n_lo], n_lo, rtol=1e-6, atol=eps)
    np.testing.assert_allclose(y[x > n_hi], n_hi, rtol=1e-6, atol=eps)


@SETTINGS
@given(st.integers(2, 8), st.booleans(),
       hnp.arrays(np.float32, (5, 3), elements=st.floats(-3.0, 3.0, width=32)),
       hnp.arrays(np.float32, 3, elements=st.floats(0.0625, 2.0, width=32)))
def test_property_per_axis_matches_per_tensor_slices(bits, narrow, x, hi):
    lo = -hi * np.float32(0.7)
    y = _fq(x, lo, hi, bits, narrow, axis=-1)
    for c in range(3):
        yc = _fq(x[:, c], lo[c], hi[c], bits, narrow)
        np.testing.assert_allclose(y[:, c], yc, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------ LSQ gradients
def _away_from_ties(v, q_lo, q_hi, margin=0.02):
    """Keeps values whose x/s is not near a rounding tie nor a range end."""
    frac = v - np.floor(v)
    return (np.abs(frac - 0.5) > margin) & (np.abs(v - q_lo) > margin) & \
        (np.abs(v - q_hi) > margin)


def _lsq_reference(x, s, beta, q_n, q_p, upstream, grad_scale, channel_axis=None):
    """LSQ (Esser et al. 2019) / LSQ+ (Bhalgat et al. 2020) gradients in numpy.

    v = (x - beta) / s;  y = clip(round(v), -Q_N, Q_P) * s + beta
    dy/dx    = 1 inside, 0 outside
    dy/ds    = -Q_N below, Q_P above, round(v) - v inside
    dy/dbeta = 1 outside, 0 inside
    """
    v = (x.astype(np.float64) - beta) / s
    below, above = v < -q_n, v > q_p
    inside = ~below & ~above
    y = np.clip(np.round(v), -q_n, q_p) * s + beta
    d_x = upstream * inside
    d_s_elem = np.where(below, -q_n, np.where(above, q_p, np.round(v) - v))
    d_b_elem = (~inside).astype(np.float64)
    if channel_axis is None:
        d_s = grad_scale * np.sum(upstream * d_s_elem)
        d_b = grad_scale * np.sum(upstream * d_b_elem)
    else:
        axes = tuple(a for a in range(x.ndim) if a != channel_axis % x.ndim)
        d_s = grad_scale * np.sum(upstream * d_s_elem, axis=axes)
        d_b = grad_scale * np.sum(upstream * d_b_elem, axis=axes)
    return y, d_x, d_s, d_b


def _lsq_tf(x, s, offset, upstream, **kw):
    x, s = tf.constant(x), tf.constant(s)
    offset = None if offset is None else tf.constant(offset)
    with tf.GradientTape() as tape:
        tape.watch([x, s] + ([] if offset is None else [offset]))
        y = fake_quant_lsq(x, s, offset, **kw)
        loss = tf.reduce_sum(y * upstream)
    grads = tape.gradient(loss, [x, s] + ([] if offset is None else [offset]))
    return [y.numpy()] + [g.numpy() for g in grads]


@pytest.mark.parametrize("bits,narrow_range", [(4, True), (4, False), (3, True), (8, False)])
def test_lsq_symmetric_gradients_per_tensor(bits, narrow_range, rng):
    q_n, q_p = (1 << (bits - 1)) - int(narrow_range), (1 << (bits - 1)) - 1
    assert lsq_levels(bits, narrow_range, True) == (-q_n, q_p)
    s = np.float32(0.125)
    x = rng.uniform(-(q_n + 3) * s, (q_p + 3) * s, size=400).astype(np.float32)
    x = x[_away_from_ties(x / s, -q_n, q_p)]
    upstream = rng.normal(size=x.shape).astype(np.float32)
    y, d_x, d_s = _lsq_tf(x, s, None, upstream, bits=bits, narrow_range=narrow_range,
                          symmetric=True, grad_scale=0.3)
    ry, rd_x, rd_s, _ = _lsq_reference(x, s, 0.0, q_n, q_p, upstream, 0.3)
    assert np.any(x / s < -q_n) and np.any(x / s > q_p)  # both clipped sides exercised
    np.testing.assert_allclose(y, ry, atol=1e-6)
    np.testing.assert_array_equal(d_x, rd_x)
    np.testing.assert_allclose(d_s, rd_s, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("axis", [-1, 0])
def test_lsq_symmetric_gradients_per_axis(axis, rng):
    bits, q_n, q_p = 4, 7, 7
    s = np.array([0.125, 0.25, 0.0625], np.float32)
    shape = [50, 50]
    shape[axis] = 3
    x = rng.uniform(-1.0, 1.0, size=shape).astype(np.float32) * 12
    s_b = s.reshape([1, -1] if axis == -1 else [-1, 1])
    x = (x * s_b).astype(np.float32)
    keep = _away_from_ties(x / s_b, -q_n, q_p)
    x = np.where(keep, x, np.float32(0.1) * s_b).astype(np.float32)
    upstream = rng.normal(size=x.shape).astype(np.float32)
    y, d_x, d_s = _lsq_tf(x, s, None, upstream, bits=bits, narrow_range=True, symmetric=True,
                          grad_scale=0.05, axis=axis)
    v_s = s_b.astype(np.float64)
    ry, rd_x, rd_s, _ = _lsq_reference(x, v_s, 0.0, q_n, q_p, upstream, 0.05, channel_axis=axis)
    np.testing.assert_allclose(y, ry, atol=1e-6)
    np.testing.assert_array_equal(d_x, rd_x)
    assert d_s.shape == (3,)
    np.testing.assert_allclose(d_s, rd_s, rtol=1e-4, atol=1e-4)


def test_lsq_depthwise_axis_gradients(rng):
    s = np.array([0.125, 0.25, 0.0625, 0.5, 0.03125, 0.1875], np.float32)
    kernel_s = s.reshape(1, 1, 3, 2)
    x = (rng.uniform(-10, 10, size=(3, 3, 3, 2)) * kernel_s).astype(np.float32)
    x = np.where(_away_from_ties(x / kernel_s, -7, 7), x, np.float32(0.1) * kernel_s)
    x = x.astype(np.float32)
    upstream = rng.normal(size=x.shape).astype(np.float32)
    y, d_x, d_s = _lsq_tf(x, s, None, upstream, bits=4, narrow_range=True, symmetric=True,
                          grad_scale=1.0, axis=(-2, -1))
    ry, rd_x, _, _ = _lsq_reference(x, kernel_s.astype(np.float64), 0.0, 7, 7, upstream, 1.0)
    v = x / kernel_s
    d_elem = np.where(v < -7, -7, np.where(v > 7, 7, np.round(v) - v)) * upstream
    np.testing.assert_allclose(y, ry, atol=1e-6)
    np.testing.assert_array_equal(d_x, rd_x)
    np.testing.assert_allclose(d_s, d_elem.sum(axis=(0, 1)).reshape(-1), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("bits", [4, 8])
def test_lsq_plus_offset_and_step_gradients(bits, rng):
    q_p = (1 << bits) - 1
    assert lsq_levels(bits, False, False) == (0, q_p)
    s = np.float32(0.0625 if bits == 4 else 0.0078125)
    beta = np.float32(-4 * s)  # on the grid, so TF's nudging leaves the range unchanged
    lo, hi = lsq_range(tf.constant(s), tf.constant(beta), bits=bits, narrow_range=False,
                       symmetric=False)
    np.testing.assert_allclose([float(lo), float(hi)], [beta, beta + q_p * s], rtol=1e-6)
    x = rng.uniform(beta - 3 * s * q_p / 8, beta + (q_p + q_p / 8) * s, 600).astype(np.float32)
    x = x[_away_from_ties((x - beta) / s, 0, q_p)]
    upstream = rng.normal(size=x.shape).astype(np.float32)
    y, d_x, d_s, d_b = _lsq_tf(x, s, beta, upstream, bits=bits, narrow_range=False,
                               symmetric=False, grad_scale=0.2)
    ry, rd_x, rd_s, rd_b = _lsq_reference(x, s, beta, 0, q_p, upstream, 0.2)
    assert np.any(x < beta) and np.any(x > beta + q_p * s)
    np.testing.assert_allclose(y, ry, atol=1e-5)
    np.testing.assert_array_equal(d_x, rd_x)
    np.testing.assert_allclose(d_s, rd_s, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(d_b, rd_b, rtol=1e-5)


def test_lsq_requires_offset_when_asymmetric():
    with pytest.raises(ValueError, match="offset"):
        fake_quant_lsq(tf.ones([2]), tf.constant(0.1), None, bits=4, narrow_range=False,
                       symmetric=False, grad_scale=1.0)


# ------------------------------------------------------------ PACT gradients
@pytest.mark.parametrize("bits", [4, 8])
def test_pact_gradients(bits, rng):
    alpha = 2.0
    q = PACTQuantizer(TensorSpec(bits=bits, learner="pact", init_min=0.0, init_max=alpha))
    x = rng.uniform(-1.0, 3.0, size=(8, 50)).astype(np.float32)
    x = np.where(np.abs(x - alpha) < 1e-3, np.float32(1.0), x)
    x = np.where(np.abs(x) < 1e-3, np.float32(0.5), x).astype(np.float32)
    upstream = rng.normal(size=x.shape).astype(np.float32)
    q.build(x.shape)
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y = q(xt, training=True)
        loss = tf.reduce_sum(y * upstream)
    d_x, d_alpha = tape.gradient(loss, [xt, q.alpha])
    # Choi et al. 2018: y = quantize(clip(x, 0, alpha));
    # dy/dx = 1[0 <= x <= alpha]; dy/dalpha = 1[x > alpha] (straight-through inside)
    np.testing.assert_array_equal(d_x.numpy(), upstream * ((x >= 0) & (x <= alpha)))
    np.testing.assert_allclose(d_alpha.numpy(), np.sum(upstream * (x > alpha)), rtol=1e-5)
    levels = (1 << bits) - 1
    expected = np.round(np.clip(x, 0, alpha) / (alpha / levels)) * (alpha / levels)
    np.testing.assert_allclose(y.numpy(), expected, atol=1e-6)


def test_pact_regularization_loss():
    q = PACTQuantizer(TensorSpec(bits=4, learner="pact", init_min=0.0, init_max=3.0,
                                 regularization=1e-2))
    q(tf.ones([2, 3]), training=True)
    np.testing.assert_allclose(float(sum(q.losses)), 1e-2 * 3.0 ** 2, rtol=1e-6)
