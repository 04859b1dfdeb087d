"""The :class:`Observer` base class: input checking, channel layout and range finalisation.

An observer turns a stream of batches into a float range ``(min, max)``. Subclasses only
implement ``_reset_state``, ``_update`` (on a ``(channels, values)`` float64 array) and
``_raw_range`` (an un-finalised ``(lo, hi)`` pair of shape ``(channels,)``); the base class
checks inputs, keeps ``num_batches`` and applies the rules every range obeys (see
:func:`finalize_range`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from tfquant.qparams import check_bits, symmetric_range

#: Width below which a range is degenerate and is widened to this width (an all-zero tensor
#: gets ``[0, 1e-6]``, or ``[-1e-6 * 2^(b-1) / (2^(b-1) - 1) / 2, 5e-7]`` when symmetric).
MIN_RANGE_WIDTH = 1e-6


def finalize_range(lo: Any, hi: Any, bits: int, symmetric: bool,
                   narrow_range: bool) -> tuple[np.ndarray, np.ndarray]:
    """Applies the rules every observer range obeys and returns float32 ``(min, max)``.

    * 0 is included (``min <= 0 <= max``): TFLite needs real 0 to be exactly representable.
    * ``symmetric``: the range becomes :func:`tfquant.qparams.symmetric_range` of
      ``max(-lo, hi)``, so its nudged grid is symmetric about 0.
    * a degenerate range (narrower than :data:`MIN_RANGE_WIDTH`) is widened to that width.

    Args:
        lo: range minima, scalar or ``(C,)``.
        hi: range maxima, same shape.
        bits: bit width of the grid the range is meant for.
        symmetric: whether to return the symmetric range.
        narrow_range: whether the grid drops its lowest level (matters for ``symmetric``).

    Returns:
        ``(min, max)`` float32 arrays of the shape of ``lo``.

    Example:
        >>> lo, hi = finalize_range(0.5, 2.0, 8, symmetric=False, narrow_range=False)
        >>> float(lo), float(hi)
        (0.0, 2.0)
    """
    lo = np.minimum(np.asarray(lo, np.float64), 0.0)
    hi = np.maximum(np.asarray(hi, np.float64), 0.0)
    if symmetric:
        abs_max = np.maximum(np.maximum(-lo, hi), MIN_RANGE_WIDTH / 2).astype(np.float32)
        s_lo, s_hi = symmetric_range(abs_max, bits, narrow_range)
        return (np.asarray(tf.convert_to_tensor(s_lo)).astype(np.float32),
                np.asarray(tf.convert_to_tensor(s_hi)).astype(np.float32))
    lo32 = lo.astype(np.float32)
    hi32 = np.maximum(hi.astype(np.float32), lo32 + np.float32(MIN_RANGE_WIDTH))
    return lo32, hi32


class Observer:
    """Streaming calibration statistics that turn batches of data into a float range.

    Observers are plain Python objects (not Keras layers): feed batches with :meth:`update`,
    read the range for a grid with :meth:`range`. Their memory does not grow with the number
    of samples.

    Args:
        axis: the axis kept for per-channel ranges (all other axes are reduced); ``None`` for
            one per-tensor range.

    Attributes:
        axis: the kept axis or None.
        num_batches: how many batches have been observed since construction or :meth:`reset`.

    Example:
        >>> from tfquant.observers import MinMaxObserver
        >>> obs = MinMaxObserver()
        >>> obs.update(np.array([-1.0, 3.0]))
        >>> [float(v) for v in obs.range()]
        [-1.0, 3.0]
    """

    #: Registry name (set by subclasses).
    name: str = ""
    #: Whether ``axis`` other than None is supported.
    supports_per_channel: bool = True

    def __init__(self, axis: int | None = None):
        if axis is not None:
            if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
                raise TypeError(f"axis must be an int or None, got {axis!r}")
            if not self.supports_per_channel:
                raise ValueError(f"{type(self).__name__} ({self.name!r}) supports per-tensor "
                                 f"ranges only (axis=None), got axis={axis}; use 'minmax', "
                                 f"'ema', 'mse', 'percentile' or 'mean_std' for per-channel "
                                 f"ranges.")
            axis = int(axis)
        self.axis = axis
        self.reset()

    # ----------------------------------------------------------------------------- public API
    def reset(self) -> None:
        """Forgets everything observed so far (options are kept)."""
        self.num_batches = 0
        self._channels: int | None = None
        self._reset_state()

    def update(self, x: Any) -> None:
        """Adds one batch of data.

        Args:
            x: a ``np.ndarray``, ``tf.Tensor`` or anything ``np.asarray`` accepts; real numbers.

        Raises:
            ValueError: the batch is empty, holds NaN/Inf values (the message says how many),
                has no ``axis``, or its channel count differs from earlier batches.
            TypeError: the batch is not real-valued.
        """
        values = self._as_channels(x)
        self._update(values)
        self.num_batches += 1

    def range(self, bits: int = 8, symmetric: bool = False,
              narrow_range: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """The calibrated float range for a grid of ``bits`` bits.

        Args:
            bits: bit width of the target grid (search-based observers depend on it).
            symmetric: return a range whose nudged grid is symmetric about 0.
            narrow_range: whether the grid drops its lowest level.

        Returns:
            float32 ``(min, max)`` of shape ``()`` (per-tensor) or ``(C,)`` (per-channel), with
            ``min <= 0 <= max`` and ``max - min >= MIN_RANGE_WIDTH``.

        Raises:
            RuntimeError: nothing has been observed yet.
            ValueError: ``bits`` is not an integer in [2, 16].
        """
        bits = check_bits(bits)
        if self.num_batches == 0:
            raise RuntimeError(f"{type(self).__name__}.range() called before any update(); "
                               f"feed at least one batch first.")
        lo, hi = self._raw_range(bits, bool(symmetric), bool(narrow_range))
        lo, hi = finalize_range(lo, hi, bits, bool(symmetric), bool(narrow_range))
        if self.axis is None:
            return lo.reshape(()), hi.reshape(())
        return lo, hi

    @property
    def state_nbytes(self) -> int:
        """Bytes held in numpy arrays by this observer's state (bounded, whatever the data)."""
        total = 0
        for value in vars(self).values():
            if isinstance(value, np.ndarray):
                total += value.nbytes
            elif hasattr(value, "state_nbytes"):
                total += value.state_nbytes
        return total

    def __repr__(self) -> str:
        return f"{type(self).__name__}(axis={self.axis}, num_batches={self.num_batches})"

    # ------------------------------------------------------------------------- for subclasses
    def _reset_state(self) -> None:
        raise NotImplementedError

    def _update(self, values: np.ndarray) -> None:
        """``values``: float64 ``(C, N)``, finite, N >= 1 (C = 1 per-tensor)."""
        raise NotImplementedError

    def _raw_range(self, bits: int, symmetric: bool,
                   narrow_range: bool) -> tuple[np.ndarray, np.ndarray]:
        """Un-finalised ``(lo, hi)``, float64 ``(C,)``; for ``symmetric`` ``max(-lo, hi)``
        is the absolute maximum the symmetric grid must cover."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------ helpers
    def _as_channels(self, x: Any) -> np.ndarray:
        where = f"{type(self).__name__}.update"
        if tf.is_tensor(x):
            x = x.numpy()
        arr = np.asarray(x)
        if arr.dtype.kind in "cOSUMmV" and arr.dtype.name != "bfloat16":
            raise TypeError(f"{where}: expected real numbers, got dtype {arr.dtype}")
        if arr.size == 0:
            raise ValueError(f"{where}: empty batch (shape {arr.shape}); every batch must hold "
                             f"at least one value.")
        arr = arr.astype(np.float64, copy=False)
        finite = np.isfinite(arr)
        if not finite.all():
            bad = arr.size - int(np.count_nonzero(finite))
            raise ValueError(f"{where}: batch of shape {arr.shape} holds {bad} non-finite "
                             f"value(s) (NaN or Inf) out of {arr.size}; calibration data must "
                             f"be finite.")
        if self.axis is None:
            return arr.reshape(1, -1)
        if not -arr.ndim <= self.axis < arr.ndim:
            raise ValueError(f"{where}: axis={self.axis} is out of range for a batch of shape "
                             f"{arr.shape}.")
        channels = arr.shape[self.axis]
        if self._channels is not None and channels != self._channels:
            raise ValueError(f"{where}: batch has {channels} channels on axis {self.axis}, "
                             f"earlier batches had {self._channels}.")
        self._channels = channels
        return np.moveaxis(arr, self.axis, 0).reshape(channels, -1)
