"""Post-training calibration: activation ranges from data, weight ranges from the weights.

The quantized model runs eagerly on the calibration data with every quantizer intercepted
(:func:`intercept`): activation quantizers hand their float input to a streaming observer and
pass it through unquantized, weights stay float too, so each observer sees the float model's
activations (as TFLite's converter calibrates). Afterwards each quantizer receives its range
through ``set_range``: the same variables QAT trains, so a calibrated model exports as is, or
fine-tunes with QAT (EMA activation ranges then continue from the calibrated ones instead of
restarting from the first training batch).

Example:
    >>> qmodel = tfquant.quantize_model(model)
    >>> report = calibrate(qmodel, x_calib, observer="percentile", percentile=99.99)
    >>> data = tfquant.export.tflite(qmodel, input_type="int8")
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfquant.export.tflite import all_quantizers
from tfquant.fake_quant import _to_channels_last
from tfquant.layers.wrapper import QuantizeWrapper
from tfquant.observers import get_observer
from tfquant.ptq.data import input_specs, iter_batches, num_batches, pack_inputs
from tfquant.quantizers import Quantizer

Hook = Callable[[Quantizer, tf.Tensor], tf.Tensor]


@contextlib.contextmanager
def intercept(quantizers: Iterable[Quantizer], hook: Hook) -> Iterator[None]:
    """While active, ``hook(quantizer, x)`` replaces each quantizer's fake-quant op.

    The one place where PTQ code reaches into quantizers' forward passes. Only eager calls see
    the hook (a traced function keeps what it traced).

    Example:
        >>> with intercept(qs, lambda q, x: x):   # every quantizer passes values through
        ...     y = qmodel(x, training=False)
    """
    quantizers = list(quantizers)
    for q in quantizers:
        q.calibration_hook = hook
    try:
        yield
    finally:
        for q in quantizers:
            q.calibration_hook = None


@dataclasses.dataclass
class CalibrationReport:
    """What :func:`calibrate` did.

    Attributes:
        observer: activation observer name.
        weight_observer: weight observer name.
        batches: batches run through the model.
        samples: samples run through the model.
        ranges: ``label -> (min, max)``: the range each calibrated quantizer now uses (after its
            own rules: 0 inside, symmetric), labelled ``layer/role`` like the exporters.
        skipped: ``label -> reason`` for quantizers left as they were.
        observer_nbytes: bytes of observer state at the end (bounded, whatever the data size).
    """

    observer: str
    weight_observer: str
    batches: int = 0
    samples: int = 0
    ranges: dict[str, tuple[np.ndarray, np.ndarray]] = dataclasses.field(default_factory=dict)
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)
    observer_nbytes: int = 0

    def __str__(self) -> str:
        lines = [f"calibrated {len(self.ranges)} quantizers on {self.samples} samples "
                 f"({self.batches} batches; observers {self.observer!r} / "
                 f"{self.weight_observer!r})"]
        for label, (lo, hi) in self.ranges.items():
            if np.ndim(lo) == 0:
                lines.append(f"  {label}: [{float(lo):.6g}, {float(hi):.6g}]")
            else:
                lines.append(f"  {label}: {np.size(lo)} channels, max |range| "
                             f"{float(np.max(np.maximum(-lo, hi))):.6g}")
        lines += [f"  {label}: skipped ({why})" for label, why in self.skipped.items()]
        return "\n".join(lines)


def _symmetric(q: Quantizer) -> bool:
    return bool(q.spec.symmetric or getattr(q, "symmetric", False))


def _calibratable(q: Quantizer) -> str | None:
    """None when ``q`` takes a calibrated range, else why not."""
    if q.spec.learner == "fixed":
        return "fixed range"
    if type(q).set_range is Quantizer.set_range:
        return f"{type(q).__name__} has no set_range"
    return None


def _channels_last_2d(x: tf.Tensor, axis) -> tf.Tensor:
    """``x`` as ``(values, channels)`` for a per-axis quantizer (unchanged per-tensor)."""
    if axis is None:
        return x
    moved, _ = _to_channels_last(x, axis)
    return tf.reshape(moved, [-1, moved.shape[-1]])


def _range_to_set(q: Quantizer, observer) -> tuple[np.ndarray, np.ndarray]:
    """The observer's range for ``q``'s grid, as the raw statistics ``q.set_range`` expects.

    Symmetric observer ranges are ``symmetric_range(a)`` (one extra negative level without
    narrow range); the quantizer re-derives that from ``(-a, a)``, so hand it ``(-a, a)``.
    """
    lo, hi = observer.range(q.spec.bits, _symmetric(q), q.spec.narrow_range)
    if _symmetric(q):
        return -hi, hi
    return lo, hi


def _observer(name: str, axis, options: dict):
    return get_observer(name, axis=None if axis is None else -1, **options)


def weight_ranges(qmodel: keras.Model, observer: str = "minmax", **options: Any
                  ) -> dict[str, tuple[Quantizer, tuple[np.ndarray, np.ndarray]]]:
    """Ranges of every weight quantizer from its (BN-folded) weights, nothing assigned yet.

    Returns:
        ``label -> (quantizer, (min, max))``, the range in the form ``set_range`` takes.
    """
    found = {}
    for layer in _wrappers(qmodel):
        weights = layer.folded_weights()
        for attr, q in layer.weight_quantizers.items():
            if _calibratable(q) is not None or not q.enabled:
                continue
            obs = _observer(observer, q.axis, options)
            obs.update(_channels_last_2d(weights[attr], q.axis))
            found[f"{layer.layer.name}/weights/{attr}"] = (q, _range_to_set(q, obs))
    return found


def calibrate_weights(qmodel: keras.Model, observer: str = "minmax", **options: Any
                      ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Sets every weight quantizer's range from the current weights (per channel if per-axis).

    Args:
        qmodel: a quantized model.
        observer: observer name (``"minmax"``: the exact extremes; ``"mse"``: MSE-optimal
            clipping).
        **options: observer options.

    Returns:
        ``label -> (min, max)`` now used by each weight quantizer.

    Example:
        >>> calibrate_weights(qmodel, observer="mse")
    """
    found = weight_ranges(qmodel, observer, **options)
    for q, (lo, hi) in found.values():
        q.set_range(lo, hi)
    return {label: _current(q) for label, (q, _) in found.items()}


def _current(q: Quantizer) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = q.current_range()
    return np.asarray(lo), np.asarray(hi)


def _wrappers(model: keras.Model) -> Iterator[QuantizeWrapper]:
    for layer in model.layers:
        if isinstance(layer, QuantizeWrapper):
            yield layer
        elif isinstance(layer, keras.Model):
            yield from _wrappers(layer)


def calibrate(qmodel: keras.Model, data: Any, observer: str = "minmax", steps: int | None = None,
              batch_size: int = 32, weight_observer: str | None = None, verbose: int = 1,
              **observer_options: Any) -> CalibrationReport:
    """Sets the ranges of a quantized model from calibration data (post-training quantization).

    Activation quantizers observe the float activations of ``data`` (weights and activations
    pass through unquantized while observing); each then takes its range from its observer.
    Weight quantizers take their range from the weights (per channel when the spec is
    per-axis). Fixed ranges (sigmoid/softmax/tanh outputs) are kept.

    Args:
        qmodel: a model from :func:`tfquant.quantize_model` (modified in place).
        data: a ``tf.data.Dataset`` of ``x`` or ``(x, y)``, a numpy array, a dict of arrays
            keyed by input name, or an iterable of batches.
        observer: activation observer: ``"minmax"``, ``"ema"``, ``"percentile"``, ``"mse"``,
            ``"entropy"`` or ``"mean_std"``.
        steps: number of batches to use (None: all).
        batch_size: batch size for arrays and unbatched datasets.
        weight_observer: weight observer (default ``"minmax"``; ``"mse"`` is an option).
        verbose: 0 silent, 1 a ``keras.utils.Progbar``.
        **observer_options: options of the activation observer (e.g. ``percentile=99.99``).

    Returns:
        A :class:`CalibrationReport`.

    Raises:
        ValueError: empty data, a batch of the wrong shape or dtype (the message gives the
            expected shape), non-finite values, an unknown observer, or a model without
            quantizers. The model is unchanged when this is raised.

    Example:
        >>> qmodel = tfquant.quantize_model(model)
        >>> tfquant.calibrate(qmodel, dataset.take(100), observer="mse")
    """
    if not isinstance(qmodel, keras.Model):
        raise TypeError(f"calibrate needs a keras.Model, got {type(qmodel).__name__}")
    if not tf.executing_eagerly():
        raise RuntimeError("calibrate runs the model eagerly; do not call it inside "
                           "tf.function.")
    weight_observer = weight_observer or "minmax"
    quantizers = list(all_quantizers(qmodel))
    if not quantizers:
        raise ValueError(f"model {qmodel.name!r} has no quantizers; quantize it first "
                         "(tfquant.quantize_model).")
    report = CalibrationReport(observer, weight_observer)
    observers: dict[int, Any] = {}
    labels: dict[int, str] = {}
    for label, q in quantizers:
        if q.for_weights:
            if _calibratable(q) is not None:
                report.skipped[label] = _calibratable(q)
            continue
        reason = _calibratable(q) or (None if q.enabled else "disabled")
        if reason is not None:
            report.skipped[label] = reason
            continue
        observers[id(q)] = _observer(observer, q.axis, observer_options)
        labels[id(q)] = label
    get_observer(weight_observer)  # unknown names fail before any data is read

    by_id = {id(q): q for _, q in quantizers}

    def observe(q: Quantizer, x: tf.Tensor) -> tf.Tensor:
        obs = observers.get(id(q))
        if obs is not None:
            obs.update(_channels_last_2d(x, q.axis))
        return x

    specs = input_specs(qmodel)
    progbar = keras.utils.Progbar(num_batches(data, batch_size, steps), verbose=verbose,
                                  unit_name="batch")
    with intercept(by_id.values(), observe):
        for arrays in iter_batches(data, specs, batch_size, steps):
            qmodel(pack_inputs(qmodel, arrays), training=False)
            report.batches += 1
            report.samples += int(arrays[0].shape[0])
            progbar.update(report.batches)
    report.observer_nbytes = int(sum(o.state_nbytes for o in observers.values()))

    # Every range is computed before any is assigned: an error leaves the model unchanged.
    pending = []
    for key, obs in observers.items():
        if obs.num_batches == 0:
            report.skipped[labels[key]] = "never called on the calibration data"
            continue
        pending.append((labels[key], by_id[key], _range_to_set(by_id[key], obs)))
    for label, (q, bounds) in weight_ranges(qmodel, weight_observer).items():
        pending.append((label, q, bounds))
    for label, q, (lo, hi) in pending:
        q.set_range(lo, hi)
        report.ranges[label] = _current(q)
    return report
