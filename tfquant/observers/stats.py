"""Observers built on running statistics: min/max, EMA of batch extremes, mean + n * std."""

from __future__ import annotations

import numpy as np

from tfquant.observers.base import Observer


class MinMaxObserver(Observer):
    """Running minimum and maximum over every batch seen.

    Args:
        axis: kept axis for per-channel ranges, or None.

    Example:
        >>> obs = MinMaxObserver(axis=-1)
        >>> obs.update(np.array([[-1.0, 2.0], [0.5, 4.0]]))
        >>> [v.tolist() for v in obs.range()]
        [[-1.0, 0.0], [0.5, 4.0]]
    """

    name = "minmax"

    def _reset_state(self) -> None:
        self.min: np.ndarray | None = None
        self.max: np.ndarray | None = None

    def _update(self, values: np.ndarray) -> None:
        self._merge(values.min(axis=1), values.max(axis=1))

    def _merge(self, batch_min: np.ndarray, batch_max: np.ndarray) -> None:
        if self.min is None:
            self.min, self.max = batch_min, batch_max
        else:
            self._combine(batch_min, batch_max)

    def _combine(self, batch_min: np.ndarray, batch_max: np.ndarray) -> None:
        """Merges a later batch's extremes into the running statistics."""
        self.min = np.minimum(self.min, batch_min)
        self.max = np.maximum(self.max, batch_max)

    def _raw_range(self, bits, symmetric, narrow_range):
        return self.min, self.max


class EMAObserver(MinMaxObserver):
    """Exponential moving average of per-batch minima and maxima.

    The first batch initialises the averages; afterwards
    ``avg = decay * avg + (1 - decay) * batch_extreme``.

    Args:
        axis: kept axis for per-channel ranges, or None.
        decay: weight of the history, in [0, 1).

    Example:
        >>> obs = EMAObserver(decay=0.5)
        >>> obs.update(np.array([0.0, 2.0])); obs.update(np.array([0.0, 4.0]))
        >>> float(obs.range()[1])
        3.0
    """

    name = "ema"

    def __init__(self, axis: int | None = None, decay: float = 0.99):
        if not 0.0 <= float(decay) < 1.0:
            raise ValueError(f"decay={decay!r} must be in [0, 1).")
        self.decay = float(decay)
        super().__init__(axis)

    def _combine(self, batch_min: np.ndarray, batch_max: np.ndarray) -> None:
        self.min = self.decay * self.min + (1.0 - self.decay) * batch_min
        self.max = self.decay * self.max + (1.0 - self.decay) * batch_max


class _Moments:
    """Streaming count / mean / sum of squared deviations (Chan et al. pairwise merge)."""

    def __init__(self):
        self.count = 0.0
        self.mean: np.ndarray | float = 0.0
        self.m2: np.ndarray | float = 0.0

    def add(self, count: float, mean: np.ndarray, m2: np.ndarray) -> None:
        total = self.count + count
        delta = mean - self.mean
        self.mean = self.mean + delta * (count / total)
        self.m2 = self.m2 + m2 + delta * delta * (self.count * count / total)
        self.count = total

    def std(self) -> np.ndarray:
        return np.sqrt(np.maximum(self.m2, 0.0) / self.count)

    @property
    def state_nbytes(self) -> int:
        return sum(np.asarray(v).nbytes for v in (self.mean, self.m2))


class MeanStdObserver(MinMaxObserver):
    """Mean plus/minus ``n_std`` standard deviations, bounded by the true min/max (Distiller).

    With ``source="extremes"`` (the default) the statistics are those of the per-batch extremes:
    ``max = min(true_max, mean(batch_max) + n_std * std(batch_max))`` and likewise
    ``min = max(true_min, mean(batch_min) - n_std * std(batch_min))``. With
    ``source="values"`` they are the mean and standard deviation of all values, as in
    Distiller's ``N_STD`` clipping: ``[max(true_min, mean - n std), min(true_max, mean + n std)]``.
    Standard deviations are population ones (``ddof=0``), accumulated with a numerically stable
    streaming merge.

    Args:
        axis: kept axis for per-channel ranges, or None.
        n_std: number of standard deviations (>= 0).
        source: ``"extremes"`` or ``"values"``.

    Example:
        >>> obs = MeanStdObserver(n_std=1.0)
        >>> obs.update(np.array([-1.0, 1.0])); obs.update(np.array([-1.0, 3.0]))
        >>> float(obs.range()[1])  # mean(1, 3) + 1 * std(1, 3) = 3, bounded by max 3
        3.0
    """

    name = "mean_std"
    SOURCES = ("extremes", "values")

    def __init__(self, axis: int | None = None, n_std: float = 3.0, source: str = "extremes"):
        if not float(n_std) >= 0.0:
            raise ValueError(f"n_std={n_std!r} must be >= 0.")
        if source not in self.SOURCES:
            raise ValueError(f"source={source!r} must be one of {self.SOURCES}.")
        self.n_std = float(n_std)
        self.source = source
        super().__init__(axis)

    def _reset_state(self) -> None:
        super()._reset_state()
        self._low = _Moments()   # of batch minima ("extremes") or of all values ("values")
        self._high = _Moments()  # of batch maxima ("extremes"); unused for "values"

    def _update(self, values: np.ndarray) -> None:
        batch_min, batch_max = values.min(axis=1), values.max(axis=1)
        self._merge(batch_min, batch_max)
        if self.source == "extremes":
            zeros = np.zeros_like(batch_min)
            self._low.add(1.0, batch_min, zeros)
            self._high.add(1.0, batch_max, zeros)
        else:
            mean = values.mean(axis=1)
            m2 = np.square(values - mean[:, None]).sum(axis=1)
            self._low.add(float(values.shape[1]), mean, m2)

    def _raw_range(self, bits, symmetric, narrow_range):
        if self.source == "extremes":
            lo = self._low.mean - self.n_std * self._low.std()
            hi = self._high.mean + self.n_std * self._high.std()
        else:
            spread = self.n_std * self._low.std()
            lo, hi = self._low.mean - spread, self._low.mean + spread
        return np.maximum(lo, self.min), np.minimum(hi, self.max)
