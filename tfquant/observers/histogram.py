"""A streaming histogram with a fixed number of bins and exact re-binning.

Bins live on a grid anchored at 0 whose width is a power of two: bin ``k`` (an absolute
integer index) covers ``[k * 2**e, (k + 1) * 2**e)``. The histogram keeps ``bins``
consecutive bins starting at absolute index ``first``. When a new batch extends the data range
beyond the window, the exponent ``e`` grows until the window (which always contains 0) fits,
and old counts are merged: an old bin lies entirely inside exactly one new bin because the new
width is an integer multiple of the old one. Re-binning therefore never interpolates, and the
memory is ``channels * bins`` counts whatever the number of samples.
"""

from __future__ import annotations

import numpy as np

#: Smallest bin-width exponent (the width an all-zero tensor starts with).
MIN_EXPONENT = -126


class StreamingHistogram:
    """Per-channel histograms of a stream of values (one row per channel).

    Args:
        bins: number of bins kept per channel (at least 16).

    Attributes:
        counts: float64 ``(C, bins)`` counts, None before the first batch.
        exponent: int64 ``(C,)`` bin width exponents (width ``2.0**exponent``).
        first: int64 ``(C,)`` absolute index of the first bin.
        data_min: float64 ``(C,)`` exact minimum seen.
        data_max: float64 ``(C,)`` exact maximum seen.

    Example:
        >>> h = StreamingHistogram(bins=64)
        >>> h.add(np.array([[0.0, 1.0, 2.0, 3.0]]))
        >>> float(h.counts.sum()), float(h.data_max[0])
        (4.0, 3.0)
    """

    def __init__(self, bins: int = 2048):
        if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 16:
            raise ValueError(f"bins={bins!r} must be an integer >= 16.")
        self.bins = int(bins)
        self.reset()

    def reset(self) -> None:
        """Empties the histogram."""
        self.counts: np.ndarray | None = None
        self.exponent: np.ndarray | None = None
        self.first: np.ndarray | None = None
        self.data_min: np.ndarray | None = None
        self.data_max: np.ndarray | None = None

    @property
    def state_nbytes(self) -> int:
        """Bytes held by the histogram arrays."""
        return sum(a.nbytes for a in (self.counts, self.exponent, self.first, self.data_min,
                                      self.data_max) if a is not None)

    def width(self) -> np.ndarray:
        """Bin widths, float64 ``(C,)``."""
        return np.ldexp(1.0, self.exponent)

    def _fit_exponent(self, lo: np.ndarray, hi: np.ndarray, start: np.ndarray) -> np.ndarray:
        """Smallest exponent >= start whose window of ``bins`` bins holds [lo, hi] (lo<=0<=hi)."""
        span = hi - lo
        with np.errstate(divide="ignore"):
            guess = np.ceil(np.log2(span / (self.bins - 2)))
        guess = np.where(np.isfinite(guess), guess, MIN_EXPONENT)
        exponent = np.maximum(start, guess).astype(np.int64)
        while True:
            width = np.ldexp(1.0, exponent)
            needed = np.floor(hi / width) - np.floor(lo / width) + 1
            too_small = needed > self.bins
            if not too_small.any():
                return exponent
            exponent = exponent + too_small

    def add(self, values: np.ndarray) -> None:
        """Adds a ``(C, N)`` float64 batch of finite values (C fixed after the first batch)."""
        channels = values.shape[0]
        batch_min = values.min(axis=1)
        batch_max = values.max(axis=1)
        if self.counts is None:
            self.data_min, self.data_max = batch_min, batch_max
            self.exponent = self._fit_exponent(np.minimum(batch_min, 0.0),
                                               np.maximum(batch_max, 0.0),
                                               np.full(channels, MIN_EXPONENT, np.int64))
            self.first = np.floor(np.minimum(batch_min, 0.0) / self.width()).astype(np.int64)
            self.counts = np.zeros((channels, self.bins), np.float64)
        else:
            self._extend(np.minimum(self.data_min, batch_min), np.maximum(self.data_max,
                                                                          batch_max))
        width = self.width()[:, None]
        index = np.floor(values / width) - self.first[:, None]
        index = np.clip(index, 0, self.bins - 1).astype(np.int64)
        index += (np.arange(channels, dtype=np.int64) * self.bins)[:, None]
        self.counts += np.bincount(index.ravel(), minlength=channels * self.bins).reshape(
            channels, self.bins)

    def _extend(self, new_min: np.ndarray, new_max: np.ndarray) -> None:
        """Grows the window (merging bins by powers of two) so that it holds the new range."""
        self.data_min, self.data_max = new_min, new_max
        lo, hi = np.minimum(new_min, 0.0), np.maximum(new_max, 0.0)
        exponent = self._fit_exponent(lo, hi, self.exponent)
        first = np.floor(lo / np.ldexp(1.0, exponent)).astype(np.int64)
        if np.array_equal(exponent, self.exponent) and np.array_equal(first, self.first):
            return
        channels = self.counts.shape[0]
        factor = np.ldexp(1.0, exponent - self.exponent)[:, None]
        old_index = (self.first[:, None] + np.arange(self.bins)).astype(np.float64)
        new_index = np.floor(old_index / factor) - first[:, None]
        # Bins holding data always land inside the new window; empty ones may not (clip them).
        new_index = np.clip(new_index, 0, self.bins - 1).astype(np.int64)
        new_index += (np.arange(channels, dtype=np.int64) * self.bins)[:, None]
        self.counts = np.bincount(new_index.ravel(), weights=self.counts.ravel(),
                                  minlength=channels * self.bins).reshape(channels, self.bins)
        self.exponent, self.first = exponent, first

    # ------------------------------------------------------------------------------- views
    def nonzero_bins(self, channel: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Occupied bins of one channel as ``(lower, upper, count)``, ascending.

        Bin edges are clipped to the exact data range, so the first bin starts at the data
        minimum and the last one ends at the data maximum.
        """
        counts = self.counts[channel]
        occupied = np.flatnonzero(counts)
        width = np.ldexp(1.0, self.exponent[channel])
        absolute = (self.first[channel] + occupied).astype(np.float64)
        lower = np.maximum(absolute * width, self.data_min[channel])
        upper = np.minimum((absolute + 1) * width, self.data_max[channel])
        return lower, upper, counts[occupied]

    def signed(self, channel: int) -> tuple[np.ndarray, int, float]:
        """The counts of one channel trimmed to its occupied bins.

        Returns:
            ``(counts, zero, width)``: ``counts[j]`` covers ``[(j - zero) * width,
            (j - zero + 1) * width)``, i.e. ``zero`` is the position of the bin starting at 0
            (it may lie outside ``counts`` when all the data has one sign).
        """
        counts = self.counts[channel]
        occupied = np.flatnonzero(counts)
        start, stop = int(occupied[0]), int(occupied[-1]) + 1
        zero = -int(self.first[channel]) - start
        return counts[start:stop], zero, float(np.ldexp(1.0, self.exponent[channel]))

    def folded(self, channel: int) -> tuple[np.ndarray, float]:
        """The histogram of ``|x|`` of one channel: ``counts[j]`` covers ``[j w, (j+1) w)``.

        Folding is exact because the grid is anchored at 0 (bin ``k < 0`` maps to ``-k - 1``);
        the array is trimmed after its last occupied bin.

        Returns:
            ``(counts, width)``.
        """
        absolute = self.first[channel] + np.arange(self.bins)
        folded_index = np.where(absolute >= 0, absolute, -absolute - 1)
        counts = np.bincount(folded_index, weights=self.counts[channel])
        occupied = np.flatnonzero(counts)
        return counts[:int(occupied[-1]) + 1], float(np.ldexp(1.0, self.exponent[channel]))
