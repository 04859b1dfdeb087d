"""Automatic post-training quantization: try PTQ recipes, fall back layer by layer, then QAT.

:func:`auto` climbs a ladder of increasingly expensive remedies and stops as soon as the
quantized model scores within ``tolerance`` of the float model (``eval_fn``, higher is
better):

1. **PTQ variants** through :func:`tfquant.ptq.ptq`: each activation observer (``minmax``,
   ``percentile``, ``mse``), then, with the best observer, bias correction, CLE, CLE + bias
   correction and CLE + bias correction + AdaRound. The best-scoring model is kept.
2. **Per-layer sensitivity** of the best model: each layer (with its folded BN and fused
   activation) is left in float, either by disabling its quantizers (``"disable"``, cheap) or by
   re-running PTQ with the layer skipped in the config (``"skip"``, exact); the score gained
   ranks the layers.
3. **Mixed precision**: the ``k = 1 .. max_fallback_layers`` most sensitive layers are kept in
   float (``fallback="float"``: a config ``skip``) or get 16-bit activations
   (``fallback="int16"``), and PTQ is re-run with the best recipe.
4. **QAT**: when ``qat_data`` is given, a short quantization-aware fine-tuning of the best model.

Every step tried is recorded with its score in the returned :class:`AutoReport`. The float
model passed in is never modified.

The rungs live next to this module: the PTQ recipes and the search state in
:mod:`tfquant.ptq.auto_search`, sensitivity, mixed precision and QAT in
:mod:`tfquant.ptq.auto_escalation`, the report in :mod:`tfquant.ptq.auto_report`. Their public
names are re-exported here.

Example:
    >>> def accuracy(m):
    ...     return float(np.mean(np.argmax(m.predict(x_val, verbose=0), -1) == y_val))
    >>> qmodel, report = auto(model, x_calib, accuracy, tolerance=0.01)
    >>> print(report)
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import keras

from tfquant.annotate import _check_model
from tfquant.observers import OBSERVERS
from tfquant.ptq.adaround import adaround
from tfquant.ptq.data import is_one_shot
from tfquant.ptq.pipeline import _Options
from tfquant.ptq.auto_escalation import _maybe_qat, _raise_precision, _rank_layers, layer_groups
from tfquant.ptq.auto_report import AutoQuantError, AutoReport, AutoStep
from tfquant.ptq.auto_search import _Runner, _Search, _search_ptq
from tfquant.specs import QuantConfig

#: Method sets tried (with the best observer) after the observers, cheapest first.
DEFAULT_METHOD_SETS: tuple[tuple[str, ...], ...] = (
    ("bias_correction",),
    ("cle",),
    ("cle", "bias_correction"),
    ("cle", "bias_correction", "adaround"),
)
FALLBACKS = ("float", "int16")
SENSITIVITY_MODES = ("disable", "skip")

__all__ = ["auto", "AutoReport", "AutoStep", "AutoQuantError", "layer_groups",
           "DEFAULT_METHOD_SETS"]


def _check_options(ptq_options: Mapping[str, Any], adaround_options: Mapping[str, Any]) -> None:
    """Unknown keys of ``ptq_options``/``adaround_options`` raise before anything runs (a
    typo would otherwise surface only at the first PTQ variant that uses the option)."""
    known = {f.name for f in dataclasses.fields(_Options)}
    unknown = sorted(set(ptq_options) - known)
    if unknown:
        raise ValueError(f"unknown ptq_options key(s) {unknown}; valid keys: {sorted(known)} "
                         "(AdaRound's go in adaround_options)")
    known = set(inspect.signature(adaround).parameters) - {"qmodel", "data"}
    unknown = sorted(set(adaround_options) - known)
    if unknown:
        raise ValueError(f"unknown adaround_options key(s) {unknown}; valid keys: "
                         f"{sorted(known)}")


def _check_args(model, eval_fn, tolerance, observers, method_sets, sensitivity, fallback,
                max_fallback_layers, qat_epochs) -> None:
    _check_model(model)
    if not callable(eval_fn):
        raise TypeError(f"eval_fn must be callable (model -> float), got "
                        f"{type(eval_fn).__name__}")
    if not (isinstance(tolerance, (int, float)) and tolerance >= 0 and math.isfinite(tolerance)):
        raise ValueError(f"tolerance={tolerance!r} must be a finite number >= 0")
    unknown = [o for o in observers if o not in OBSERVERS]
    if not observers or unknown:
        raise ValueError(f"observers={list(observers)!r}: need at least one of "
                         f"{sorted(OBSERVERS)}")
    for methods in method_sets:
        bad = [m for m in methods if m not in ("cle", "bias_correction", "adaround")]
        if bad:
            raise ValueError(f"method set {methods!r} has unknown method(s) {bad}")
    if sensitivity not in SENSITIVITY_MODES:
        raise ValueError(f"sensitivity={sensitivity!r} must be one of {SENSITIVITY_MODES}")
    if fallback not in FALLBACKS:
        raise ValueError(f"fallback={fallback!r} must be one of {FALLBACKS}")
    if max_fallback_layers < 0:
        raise ValueError(f"max_fallback_layers={max_fallback_layers!r} must be >= 0")
    if qat_epochs < 1:
        raise ValueError(f"qat_epochs={qat_epochs!r} must be >= 1")


def auto(model: keras.Model, data: Any, eval_fn: Callable[[keras.Model], float],
         tolerance: float = 0.01, qat_data: Any = None,
         config: QuantConfig | str | dict = "tflite_int8", *,
         observers: Sequence[str] = ("minmax", "percentile", "mse"),
         method_sets: Iterable[Sequence[str]] = DEFAULT_METHOD_SETS,
         stop_early: bool = True, sensitivity: str = "disable", fallback: str = "float",
         max_fallback_layers: int = 3, adaround_options: Mapping[str, Any] | None = None,
         ptq_options: Mapping[str, Any] | None = None, qat_epochs: int = 1,
         qat_learning_rate: float = 1e-5, qat_loss: Any = "sparse_categorical_crossentropy",
         qat_batch_size: int = 32, verbose: int = 1) -> tuple[keras.Model, AutoReport]:
    """Finds a quantized model within ``tolerance`` of the float model, as cheaply as it can.

    Args:
        model: the float Functional or Sequential model (never modified).
        data: calibration data for :func:`tfquant.ptq.ptq` (array, dataset, list of batches;
            it is read several times).
        eval_fn: ``eval_fn(model) -> float``, higher is better (e.g. accuracy on a validation
            set). Called on the float model and on each candidate. Keras' cached
            predict/evaluate functions of a candidate are reset before each call; an
            ``eval_fn`` that keeps its own ``tf.function`` across calls would not see
            sensitivity analysis' disabled quantizers.
        tolerance: the largest acceptable ``float_score - score`` (same units as ``eval_fn``:
            0.01 is one percentage point of accuracy).
        qat_data: when given, ``(x, y)`` arrays or a dataset of ``(x, y)`` batches for a final
            short QAT from the best model if the tolerance is still not met.
        config: the quantization config (preset name, dict or :class:`QuantConfig`).
        observers: activation observers tried (a name or a sequence of names).
        method_sets: PTQ method combinations tried with the best observer.
        stop_early: stop at the first model within tolerance (False: try every PTQ variant).
        sensitivity: ``"disable"`` (switch a layer's quantizers off in the best model) or
            ``"skip"`` (re-run PTQ with the layer skipped by the config; slower, exact). An
            ``eval_fn`` that scores the exported TFLite model needs ``"skip"`` and
            ``tfquant.export.tflite(..., strict=False)``: a model with disabled quantizers or
            float layers does not convert to full int8.
        fallback: ``"float"`` (the most sensitive layers stay float; a TFLite export then
            needs ``strict=False`` and runs them in float) or ``"int16"`` (16-bit activations
            for them: a simulated/int16x8-style model).
        max_fallback_layers: at most this many layers get higher precision (0: no fallback).
        adaround_options: options for :func:`tfquant.ptq.adaround.adaround`
            (``iterations``, ...).
        ptq_options: other options for :func:`tfquant.ptq.ptq` (``steps``, ``batch_size``...).
        qat_epochs: epochs of the final QAT.
        qat_learning_rate: Adam learning rate of the final QAT.
        qat_loss: loss of the final QAT.
        qat_batch_size: batch size of the final QAT (array data).
        verbose: 0 silent, 1 one line per step (and the PTQ steps' own output).

    Returns:
        ``(qmodel, report)``: the best model found and the :class:`AutoReport` of every step.

    Raises:
        AutoQuantError: ``eval_fn`` (or PTQ, or QAT) raised or returned something that is not
            a finite number; the message names the step, the original error is chained, and
            ``model`` is unchanged.
        ValueError, TypeError: invalid arguments (checked before anything runs).

    Example:
        >>> qmodel, report = auto(model, x_calib, accuracy, tolerance=0.005,
        ...                       qat_data=(x_train, y_train), verbose=0)
        >>> report.met, report.best
        (True, 'ptq[percentile+bias_correction]')
    """
    observers = [observers] if isinstance(observers, str) else list(observers)
    if isinstance(method_sets, str) or any(isinstance(m, str) for m in method_sets):
        raise TypeError(f"method_sets={method_sets!r} must be a sequence of method sets, e.g. "
                        "[('cle',), ('cle', 'bias_correction')]")
    method_sets = [tuple(m) for m in method_sets]
    _check_args(model, eval_fn, tolerance, observers, method_sets, sensitivity, fallback,
                max_fallback_layers, qat_epochs)
    _check_options(dict(ptq_options or {}), dict(adaround_options or {}))
    if is_one_shot(data):
        raise ValueError("auto runs PTQ several times and reads the calibration data each "
                         "time; pass an array, a tf.data.Dataset or a list of batches, not a "
                         "one-shot generator.")
    config = QuantConfig.coerce(config)
    base_options = {"verbose": verbose, **dict(ptq_options or {})}
    ada_options = dict(adaround_options or {})
    runner = _Runner(eval_fn, float(tolerance), verbose)
    report = runner.report

    t0 = time.perf_counter()
    report.float_score = runner.evaluate("float", model)
    report.steps.append(AutoStep("float", "float", report.float_score, 0.0, {},
                                 time.perf_counter() - t0))
    if verbose:
        print(f"[auto] float: score {report.float_score:.4f}")

    search = _Search(model, data, runner, tolerance, stop_early, base_options, ada_options)
    best = search.best
    # 1. PTQ variants -----------------------------------------------------------------
    if _search_ptq(search, observers, method_sets, config):
        return best["model"], report
    if search.within(best["step"]) or max_fallback_layers == 0:
        return _maybe_qat(best, runner, qat_data, qat_epochs, qat_learning_rate, qat_loss,
                          qat_batch_size, verbose)

    # 2. sensitivity ------------------------------------------------------------------
    groups = layer_groups(best["model"])
    report.sensitivity = _rank_layers(search, groups, config, sensitivity)

    # 3. higher precision for the most sensitive layers ---------------------------------
    if _raise_precision(search, groups, config, fallback, max_fallback_layers):
        return best["model"], report

    # 4. QAT --------------------------------------------------------------------------
    return _maybe_qat(best, runner, qat_data, qat_epochs, qat_learning_rate, qat_loss,
                      qat_batch_size, verbose)
