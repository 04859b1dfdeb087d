"""Shared fixtures of the core tests: an independent numpy model of TF's FakeQuant op.

The reference re-implements TensorFlow's ``FakeQuantWithMinMaxVars`` kernel
(``tensorflow/core/kernels/fake_quant_ops_functor.h``) in float32 numpy, so tests can compare the
code under test against something that does not share its implementation.
"""

from __future__ import annotations

import os
import types

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

F32 = np.float32


def np_nudge(x_min, x_max, bits, narrow_range):
    """TF's ``Nudge``: float32 math, only the zero point is rounded (std::round).

    Returns ``(scale, zero_point, nudged_min, nudged_max, inv_scale)``; the zero point is on the
    unsigned grid ``[qmin, qmax]``.
    """
    qmin, qmax = (1 if narrow_range else 0), (1 << bits) - 1
    x_min, x_max = np.asarray(x_min, F32), np.asarray(x_max, F32)
    scale = (x_max - x_min) / F32(qmax - qmin)
    inv_scale = F32(qmax - qmin) / (x_max - x_min)
    zp_from_min = F32(qmin) - x_min / scale
    zp = np.where(zp_from_min < qmin, F32(qmin),
                  np.where(zp_from_min > qmax, F32(qmax), np.floor(zp_from_min + F32(0.5))))
    zp = zp.astype(F32)
    lo = ((F32(qmin) - zp) * scale).astype(F32)
    hi = ((F32(qmax) - zp) * scale).astype(F32)
    return scale, zp, lo, hi, inv_scale


def _shape_params(params, x, axis):
    if axis is None:
        return params
    axes = [axis] if isinstance(axis, int) else list(axis)
    axes = [a % x.ndim for a in axes]
    shape = [1] * x.ndim
    for a in axes:
        shape[a] = x.shape[a]
    return [np.reshape(p, shape) for p in params]


def np_fake_quant(x, x_min, x_max, bits, narrow_range, axis=None):
    """TF's FakeQuant forward in float32 numpy; ``axis`` may be a tuple of contiguous axes
    whose row-major flattening is the channel index. Returns ``(y, grid_index)``."""
    x = np.asarray(x, F32)
    scale, _, lo, hi, inv = np_nudge(x_min, x_max, bits, narrow_range)
    scale, lo, hi, inv = _shape_params([scale, lo, hi, inv], x, axis)
    quant_zero = np.floor(-lo * inv + F32(0.5))
    clamped = np.minimum(np.maximum(x, lo), hi)
    k = np.floor((clamped - lo) * inv - quant_zero + F32(0.5))
    y = (k * scale).astype(F32)
    return y, (k + quant_zero).astype(np.int64)


def grid_index(y, x_min, x_max, bits, narrow_range, axis=None):
    """The level of fake-quantized values ``y`` counted from the grid's lowest (0 .. qmax-qmin)."""
    y = np.asarray(y, np.float64)
    scale, _, lo, _, _ = np_nudge(x_min, x_max, bits, narrow_range)
    scale, lo = _shape_params([scale, lo], y, axis)
    return np.round((y - lo) / scale).astype(np.int64)


@pytest.fixture(scope="session")
def ref():
    """The numpy reference: ``nudge``, ``fake_quant``, ``grid_index``."""
    return types.SimpleNamespace(nudge=np_nudge, fake_quant=np_fake_quant, grid_index=grid_index)


@pytest.fixture
def rng():
    """A seeded numpy generator."""
    return np.random.default_rng(1234)
