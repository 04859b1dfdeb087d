"""Histogram-based observers: percentile, MSE-optimal clipping, entropy (KL) calibration.

All three keep a :class:`~tfquant.observers.histogram.StreamingHistogram` (bounded memory) and
derive the range from it when :meth:`~tfquant.observers.base.Observer.range` is called. The
MSE search evaluates every candidate range on the grid produced by
:func:`tfquant.qparams.nudge` (TF's FakeQuant nudging), i.e. the grid the range will really get.
"""

from __future__ import annotations

import numpy as np

from tfquant.observers.base import Observer, finalize_range
from tfquant.observers.histogram import StreamingHistogram
from tfquant.qparams import nudge

# Upper bound on the number of float64 elements of a (candidates x bins) work array.
_CHUNK_ELEMENTS = 1 << 19


class _HistogramObserver(Observer):
    """Shared state of the histogram observers."""

    def __init__(self, axis: int | None = None, bins: int = 2048):
        self._histogram = StreamingHistogram(bins)
        super().__init__(axis)

    @property
    def bins(self) -> int:
        """Number of histogram bins kept per channel."""
        return self._histogram.bins

    @property
    def histogram(self) -> StreamingHistogram:
        """The underlying streaming histogram (read-only use)."""
        return self._histogram

    def _reset_state(self) -> None:
        self._histogram.reset()

    def _update(self, values: np.ndarray) -> None:
        self._histogram.add(values)

    def _per_channel(self, fn) -> tuple[np.ndarray, np.ndarray]:
        pairs = [fn(c) for c in range(self._histogram.counts.shape[0])]
        return (np.array([p[0] for p in pairs], np.float64),
                np.array([p[1] for p in pairs], np.float64))


# ------------------------------------------------------------------------------- percentile
def _quantile(lower: np.ndarray, upper: np.ndarray, counts: np.ndarray, q: float) -> float:
    """Value below which a fraction ``q`` of the mass lies, linear inside a bin."""
    cumulative = np.cumsum(counts)
    target = q * cumulative[-1]
    j = min(int(np.searchsorted(cumulative, target, side="left")), len(counts) - 1)
    before = cumulative[j - 1] if j > 0 else 0.0
    fraction = np.clip((target - before) / counts[j], 0.0, 1.0)
    return float(lower[j] + fraction * (upper[j] - lower[j]))


class PercentileObserver(_HistogramObserver):
    """Clips at a percentile of the data, read from a streaming histogram.

    Asymmetric ranges are ``[P(100 - p), P(p)]`` of ``x``; symmetric ranges cover ``P(p)`` of
    ``|x|``. Accuracy is within one histogram bin (the data range over ``bins``).

    Args:
        axis: kept axis for per-channel ranges, or None.
        percentile: ``p`` in [50, 100].
        bins: histogram bins per channel.

    Example:
        >>> obs = PercentileObserver(percentile=99.0)
        >>> obs.update(np.linspace(0.0, 1.0, 10001))
        >>> round(float(obs.range()[1]), 2)
        0.99
    """

    name = "percentile"

    def __init__(self, axis: int | None = None, percentile: float = 99.99, bins: int = 2048):
        if not 50.0 <= float(percentile) <= 100.0:
            raise ValueError(f"percentile={percentile!r} must be in [50, 100].")
        self.percentile = float(percentile)
        super().__init__(axis, bins)

    def _raw_range(self, bits, symmetric, narrow_range):
        q = self.percentile / 100.0
        hist = self._histogram

        def one(c):
            if symmetric:
                counts, width = hist.folded(c)
                abs_max = max(-hist.data_min[c], hist.data_max[c])
                lower = np.arange(len(counts)) * width
                upper = np.minimum(lower + width, abs_max)
                keep = counts > 0
                t = _quantile(lower[keep], upper[keep], counts[keep], q)
                return -t, t
            lower, upper, counts = hist.nonzero_bins(c)
            return (_quantile(lower, upper, counts, 1.0 - q), _quantile(lower, upper, counts, q))

        return self._per_channel(one)


# ---------------------------------------------------------------------------------------- MSE
def _cumulative_round_error(u: np.ndarray) -> np.ndarray:
    """``G(u) = integral from -1/2 to u of (t - round(t))^2 dt`` (one period integrates to 1/12)."""
    n = np.floor(u + 0.5)
    v = u - n
    return n * (1.0 / 12.0) + (v * v * v + 0.125) * (1.0 / 3.0)


def expected_squared_error(lower: np.ndarray, upper: np.ndarray, counts: np.ndarray,
                           scale: np.ndarray, grid_min: np.ndarray,
                           grid_max: np.ndarray) -> np.ndarray:
    """Sum of squared quantization errors of histogram data, for several grids at once.

    The data of each bin is taken as uniform on ``[lower, upper]``; the error of a value is its
    distance to the nearest grid point ``scale * j`` inside ``[grid_min, grid_max]`` (rounding
    error inside, clipping error outside). The integrals are exact for that model.

    Args:
        lower: bin lower edges, ``(N,)``.
        upper: bin upper edges, ``(N,)``.
        counts: bin counts, ``(N,)``.
        scale: grid steps, ``(K,)``.
        grid_min: lowest grid points (nudged minima), ``(K,)``.
        grid_max: highest grid points (nudged maxima), ``(K,)``.

    Returns:
        ``(K,)`` expected sums of squared errors.

    Example:
        >>> e = expected_squared_error(np.array([0.0]), np.array([1.0]), np.array([1.0]),
        ...                            np.array([1.0]), np.array([0.0]), np.array([1.0]))
        >>> round(float(e[0]), 6)  # uniform on one step: step^2 / 12
        0.083333
    """
    a, b = lower[None, :], upper[None, :]
    s, lo, hi = scale[:, None], grid_min[:, None], grid_max[:, None]

    def cube(v):
        return v * v * v

    # Clipping error: the parts of [a, b] below lo and above hi (zero-length when inside).
    clipped = (cube(np.minimum(b, lo) - lo) - cube(np.minimum(a, lo) - lo)
               + cube(np.maximum(b, hi) - hi) - cube(np.maximum(a, hi) - hi)) / 3.0
    inside = cube(s) * (_cumulative_round_error(np.clip(b, lo, hi) / s)
                        - _cumulative_round_error(np.clip(a, lo, hi) / s))
    width = b - a
    wide = width > 1e-9 * s
    mean_error = (clipped + inside) / np.where(wide, width, 1.0)
    if not wide.all():
        middle = 0.5 * (a + b)
        point = middle - np.clip(s * np.floor(middle / s + 0.5), lo, hi)
        mean_error = np.where(wide, mean_error, point * point)
    return (np.maximum(mean_error, 0.0) * counts[None, :]).sum(axis=1)


class MSEObserver(_HistogramObserver):
    """The range minimising the expected squared quantization error (clipping included).

    Candidate ranges ``[alpha * min, beta * max]`` (a single ``alpha = beta`` scale of
    ``max |x|`` when symmetric) are searched coarse-to-fine; each candidate is finalised and
    nudged exactly as :class:`~tfquant.qparams.QuantParams` will do for the requested
    ``bits`` / ``symmetric`` / ``narrow_range``, and its error is evaluated on the histogram by
    :func:`expected_squared_error`. The full min/max range is always a candidate, so the
    result is never worse than min/max on the histogram model.

    Args:
        axis: kept axis for per-channel ranges, or None.
        bins: histogram bins per channel.
        steps: candidates per dimension in the coarse search.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> obs = MSEObserver()
        >>> obs.update(np.append(rng.laplace(size=10000), 60.0))
        >>> bool(obs.range(bits=4, symmetric=True)[1] < 60.0)
        True
    """

    name = "mse"

    def __init__(self, axis: int | None = None, bins: int = 2048, steps: int = 100):
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 4:
            raise ValueError(f"steps={steps!r} must be an integer >= 4.")
        self.steps = int(steps)
        super().__init__(axis, bins)

    #: Channels searched together (one nudge call per stage and block).
    _BLOCK = 256

    def _candidates(self, stage: int, best: np.ndarray, spacing: float, two_d: bool):
        """``(alphas, betas)`` of one search stage around ``best`` (always adds 1 and best)."""
        if stage == 0:
            n = max(8, self.steps // 5) if two_d else self.steps
            axes = [np.arange(1, n + 1) / n] * (2 if two_d else 1)
        else:
            refine = 9 if two_d else 17
            axes = [np.unique(np.clip(np.linspace(center - spacing, center + spacing, refine),
                                      1e-4, 1.0)) for center in best[:2 if two_d else 1]]
        if two_d:
            alphas, betas = (g.ravel() for g in np.meshgrid(*axes))
        else:
            alphas = betas = axes[0]
        return np.append(alphas, [1.0, best[0]]), np.append(betas, [1.0, best[1]])

    def _raw_range(self, bits, symmetric, narrow_range):
        hist = self._histogram
        data_min = np.minimum(hist.data_min, 0.0)
        data_max = np.maximum(hist.data_max, 0.0)
        if symmetric:
            abs_max = np.maximum(-data_min, data_max)
            data_min, data_max = -abs_max, abs_max
        # Symmetric and one-signed data have one free parameter; mixed-sign asymmetric two.
        two_d = (not symmetric) & (data_min < 0.0) & (data_max > 0.0)
        best = np.ones((len(data_min), 2))
        active = np.flatnonzero(data_max > data_min)
        for block_start in range(0, len(active), self._BLOCK):
            block = active[block_start:block_start + self._BLOCK]
            bins_ = [hist.nonzero_bins(c) for c in block]
            spacing = np.where(two_d[block], 1.0 / max(8, self.steps // 5), 1.0 / self.steps)
            for stage in range(3):
                cands = [self._candidates(stage, best[c], spacing[i], bool(two_d[c]))
                         for i, c in enumerate(block)]
                lo = np.concatenate([a * data_min[c] for (a, _), c in zip(cands, block)])
                hi = np.concatenate([b * data_max[c] for (_, b), c in zip(cands, block)])
                # The grid each candidate really gets: finalised, then nudged like QuantParams.
                lo, hi = finalize_range(lo, hi, bits, symmetric, narrow_range)
                scale, _, grid_min, grid_max = (np.asarray(t, np.float64)
                                                for t in nudge(lo, hi, bits, narrow_range))
                offset = 0
                for i, c in enumerate(block):
                    alphas, betas = cands[i]
                    part = slice(offset, offset + len(alphas))
                    offset += len(alphas)
                    errors = _chunked_errors(bins_[i], scale[part], grid_min[part],
                                             grid_max[part])
                    k = int(np.argmin(errors))
                    best[c] = alphas[k], betas[k]
                if stage > 0:
                    spacing = spacing * 2.0 / np.where(two_d[block], 8, 16)
        return best[:, 0] * data_min, best[:, 1] * data_max


def _chunked_errors(bins_, scale, grid_min, grid_max) -> np.ndarray:
    """:func:`expected_squared_error` over candidates in chunks of bounded memory."""
    lower, upper, counts = bins_
    rows = max(1, _CHUNK_ELEMENTS // max(1, len(counts)))
    return np.concatenate([
        expected_squared_error(lower, upper, counts, scale[i:i + rows], grid_min[i:i + rows],
                               grid_max[i:i + rows])
        for i in range(0, len(scale), rows)])


# ------------------------------------------------------------------------------------ entropy
def _kl_divergences(counts: np.ndarray, starts: np.ndarray, stops: np.ndarray,
                    levels: int) -> np.ndarray:
    """TensorRT-style KL divergence of each candidate window ``[start, stop)`` of a histogram.

    ``P`` is the histogram restricted to the window with the mass outside added to its first /
    last bin; ``Q`` is the window (without that mass) merged into ``levels`` groups of bins and
    expanded back, each group's mass spread evenly over its non-empty bins. Both are normalised;
    ``Q`` is floored at a tiny value where ``P`` is positive.
    """
    n = len(counts)
    cumulative = np.concatenate([[0.0], np.cumsum(counts)])
    occupied = counts > 0
    position = np.arange(n)[None, :]
    rows = max(1, _CHUNK_ELEMENTS // n)
    result = []
    for i in range(0, len(starts), rows):
        start, stop = starts[i:i + rows, None], stops[i:i + rows, None]
        r = len(start)
        window = (position >= start) & (position < stop)
        p = np.where(window, counts[None, :], 0.0)
        idx = np.arange(r)
        p[idx, start[:, 0]] += cumulative[start[:, 0]]
        p[idx, stop[:, 0] - 1] += cumulative[-1] - cumulative[stop[:, 0]]
        group = ((position - start) * levels) // (stop - start)
        group = np.clip(group, 0, levels - 1) + (idx * levels)[:, None]
        flat = group[window]
        weights = np.broadcast_to(counts, (r, n))[window]
        sums = np.bincount(flat, weights=weights, minlength=r * levels)
        nonempty = np.bincount(flat, weights=np.broadcast_to(occupied, (r, n))[window],
                               minlength=r * levels)
        q = np.where(window & occupied[None, :],
                     sums[group] / np.maximum(nonempty[group], 1.0), 0.0)
        p /= np.maximum(p.sum(axis=1, keepdims=True), 1e-300)
        q /= np.maximum(q.sum(axis=1, keepdims=True), 1e-300)
        positive = p > 0
        ratio = np.where(positive, p, 1.0) / np.maximum(q, 1e-12)
        result.append(np.where(positive, p * np.log(ratio), 0.0).sum(axis=1))
    return np.concatenate(result)


def _resample(lower: np.ndarray, upper: np.ndarray, counts: np.ndarray,
              edges: np.ndarray) -> np.ndarray:
    """Histogram mass between consecutive ``edges`` (the last edge closed).

    The mass of a bin is taken as uniform on ``[lower, upper]``; a bin with ``lower == upper``
    is a point mass.
    """
    wide = upper > lower
    before = np.cumsum(counts[wide]) - counts[wide]
    knots = np.stack([lower[wide], upper[wide]], axis=1).ravel()
    mass = np.stack([before, before + counts[wide]], axis=1).ravel()
    below = np.interp(edges, knots, mass) if knots.size else np.zeros(len(edges))
    points = np.concatenate([[0.0], np.cumsum(counts[~wide])])
    below += points[np.searchsorted(lower[~wide], edges, side="left")]
    below[-1] = counts.sum()
    return np.maximum(np.diff(below), 0.0)


class EntropyObserver(_HistogramObserver):
    """Entropy calibration: the clipping threshold minimising the KL divergence (TensorRT).

    The streaming histogram (``bins`` bins of ``x``) is resampled, for the search, onto
    ``kl_bins`` bins of width ``max|x| / kl_bins`` anchored at 0. Symmetric ranges search a
    threshold ``t`` on the histogram of ``|x|`` with ``2^(bits-1)`` levels (128 for int8), as
    TensorRT does. Asymmetric ranges search windows ``[max(min, -t), min(max, t)]`` of the
    histogram of ``x`` with ``2^bits - narrow_range`` levels, which for one-signed data (e.g.
    after a ReLU) is TensorRT's search on ``[0, t]``. Thresholds are bin edges; when a window
    needs more levels than there are bins (e.g. 16-bit grids) no clipping is searched and the
    full range is returned. Per-tensor only.

    A spike of exact zeros (ReLU outputs, padding) inflates the divergence of every window that
    merges the zero bin with its neighbours and pushes the threshold down;
    ``ignore_zero_spike=True`` caps the count of the bin starting at 0 by its neighbours' for
    the search (the default follows the plain TensorRT algorithm).

    Args:
        bins: streaming histogram bins.
        kl_bins: bins of ``|x|`` over ``[0, max|x|]`` used by the search (TensorRT: 2048).
        ignore_zero_spike: cap the zero bin as described above.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> x = np.append(rng.normal(size=100000), [-12.0, 12.0])  # Gaussian + 2 outliers
        >>> obs = EntropyObserver()
        >>> obs.update(x)
        >>> lo, hi = obs.range(bits=8, symmetric=True)
        >>> bool(hi < 6.0)
        True
    """

    name = "entropy"
    supports_per_channel = False

    def __init__(self, axis: int | None = None, bins: int = 8192, kl_bins: int = 2048,
                 ignore_zero_spike: bool = False):
        if isinstance(kl_bins, bool) or not isinstance(kl_bins, (int, np.integer)) \
                or kl_bins < 16:
            raise ValueError(f"kl_bins={kl_bins!r} must be an integer >= 16.")
        self.kl_bins = int(kl_bins)
        self.ignore_zero_spike = bool(ignore_zero_spike)
        super().__init__(axis, bins)

    def _cap_zero_bin(self, counts: np.ndarray, zero: int) -> np.ndarray:
        if not self.ignore_zero_spike or not 0 <= zero < len(counts):
            return counts
        neighbours = counts[max(zero - 1, 0):zero + 2]
        neighbours = np.delete(neighbours, min(zero, 1))
        counts = counts.copy()
        counts[zero] = min(counts[zero], neighbours.max() if neighbours.size else 0.0)
        return counts

    def _raw_range(self, bits, symmetric, narrow_range):
        hist = self._histogram
        data_min, data_max = float(hist.data_min[0]), float(hist.data_max[0])
        abs_max = max(-data_min, data_max)
        if abs_max <= 0.0:
            return np.zeros(1), np.zeros(1)
        width = abs_max / self.kl_bins
        if symmetric:
            fine, fine_width = hist.folded(0)
            lower = np.arange(len(fine)) * fine_width
            upper = np.minimum(lower + fine_width, abs_max)
            keep = fine > 0
            counts = _resample(lower[keep], upper[keep], fine[keep],
                               np.arange(self.kl_bins + 1) * width)
            counts = self._cap_zero_bin(counts, 0)
            levels = 1 << (bits - 1)
            stops = np.arange(levels, self.kl_bins + 1)
            if len(stops) <= 1:
                return np.array([-abs_max]), np.array([abs_max])
            kl = _kl_divergences(counts, np.zeros_like(stops), stops, levels)
            t = min(float(stops[int(np.argmin(kl))]) * width, abs_max)
            return np.array([-t]), np.array([t])
        first = int(np.floor(data_min / width)) if data_min < 0.0 else 0
        last = int(np.ceil(data_max / width)) if data_max > 0.0 else 0
        counts = _resample(*hist.nonzero_bins(0), np.arange(first, last + 1) * width)
        zero, n = -first, len(counts)
        counts = self._cap_zero_bin(counts, zero)
        levels = (1 << bits) - int(narrow_range)
        reach = np.arange(1, max(zero, n - zero) + 1)
        starts = np.clip(zero - reach, 0, n)
        stops = np.clip(zero + reach, 0, n)
        keep = (stops - starts) >= levels
        pairs = np.unique(np.stack([starts[keep], stops[keep]], axis=1), axis=0)
        if len(pairs) <= 1:
            return np.array([data_min]), np.array([data_max])
        kl = _kl_divergences(counts, pairs[:, 0], pairs[:, 1], levels)
        start, stop = pairs[int(np.argmin(kl))]
        lo = data_min if start == 0 else max(data_min, (start - zero) * width)
        hi = data_max if stop == n else min(data_max, (stop - zero) * width)
        return np.array([lo]), np.array([hi])
