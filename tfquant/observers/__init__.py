"""Streaming calibration statistics that turn data into a float range ``(min, max)``.

Observers are plain Python objects (numpy in, numpy out) with bounded memory: feed batches with
``update(x)`` and read ``range(bits, symmetric, narrow_range)``; the range is turned into scale
and zero point by :meth:`tfquant.qparams.QuantParams.from_min_max`.

=============  ================================================================  ===========
name           range                                                             per-channel
=============  ================================================================  ===========
``minmax``     running min / max                                                 yes
``ema``        exponential moving average of per-batch min / max                 yes
``percentile`` percentile of the data, from a streaming histogram                yes
``mse``        expected-squared-error optimal clipping on the real nudged grid   yes
``entropy``    TensorRT KL-divergence threshold on a 2048-bin histogram          no
``mean_std``   mean +/- n std of per-batch extremes (or of values), in min/max   yes
=============  ================================================================  ===========

Example:
    >>> import numpy as np
    >>> from tfquant.observers import get_observer
    >>> from tfquant.qparams import QuantParams
    >>> obs = get_observer("minmax")
    >>> obs.update(np.array([-1.0, 0.5, 2.0]))
    >>> lo, hi = obs.range(bits=8)
    >>> QuantParams.from_min_max(lo, hi, bits=8).bits
    8
"""

from __future__ import annotations

from typing import Any

from tfquant.observers.base import MIN_RANGE_WIDTH, Observer, finalize_range
from tfquant.observers.histogram import StreamingHistogram
from tfquant.observers.search import (EntropyObserver, MSEObserver, PercentileObserver,
                                      expected_squared_error)
from tfquant.observers.stats import EMAObserver, MeanStdObserver, MinMaxObserver

#: Observer classes by registry name.
OBSERVERS: dict[str, type] = {
    cls.name: cls for cls in (MinMaxObserver, EMAObserver, PercentileObserver, MSEObserver,
                              EntropyObserver, MeanStdObserver)
}


def get_observer(name: str, **options: Any) -> Observer:
    """Builds an observer by registry name.

    Args:
        name: one of ``OBSERVERS`` (``"minmax"``, ``"ema"``, ``"percentile"``, ``"mse"``,
            ``"entropy"``, ``"mean_std"``); case-insensitive.
        **options: constructor options, e.g. ``axis=-1``, ``decay=0.9``, ``percentile=99.9``.

    Returns:
        A fresh observer.

    Raises:
        ValueError: unknown name (the message lists the valid ones) or invalid option value.
        TypeError: option the observer does not take.

    Example:
        >>> get_observer("percentile", percentile=99.9).percentile
        99.9
    """
    if not isinstance(name, str):
        raise TypeError(f"observer name must be a string, got {type(name).__name__}")
    cls = OBSERVERS.get(name.lower())
    if cls is None:
        raise ValueError(f"unknown observer {name!r}; valid names: {', '.join(OBSERVERS)}.")
    try:
        return cls(**options)
    except TypeError as err:
        raise TypeError(f"observer {name!r}: {err}") from err


__all__ = [
    "EMAObserver", "EntropyObserver", "MIN_RANGE_WIDTH", "MSEObserver", "MeanStdObserver",
    "MinMaxObserver", "OBSERVERS", "Observer", "PercentileObserver", "StreamingHistogram",
    "expected_squared_error", "finalize_range", "get_observer",
]
