"""Per-layer quantization sensitivity: which layer costs the metric, and how much.

One quantized copy of the float model is made and calibrated; every configuration is then
obtained by toggling ``Quantizer.enabled`` on that copy (no re-quantization per layer):

* float: every quantizer off; quantized: every quantizer on;
* per layer: only its weight quantizers on, only its activation quantizers on, and everything
  on except its quantizers;
* per layer SQNR of its output: with every quantizer on (accumulated error) and with only its
  own quantizers on (isolated error).

The result's dataclasses (:class:`SensitivityRecord`, :class:`SensitivityTable`, with CSV
output) live in :mod:`tfquant.analysis.sensitivity_table` and are re-exported here.

Example:
    >>> def accuracy(model):                          # metric_fn(model) -> float
    ...     return float(np.mean(np.argmax(model(x_val), -1) == y_val))
    >>> table = sensitivity(model, x_val, accuracy, config="lsq_w4a4")
    >>> print(table)
    >>> table.to_csv("sensitivity.csv")
"""

from __future__ import annotations

import inspect
import math
import warnings
from typing import Any, Callable

import keras
import numpy as np
from keras import tree

from tfquant.analysis.sensitivity_table import FIELDS  # noqa: F401 - re-exported
from tfquant.analysis.sensitivity_table import SensitivityRecord, SensitivityTable
from tfquant.analysis.sqnr import (Batch, _is_xy, enabled_only, group_sqnr, layer_groups,
                                   load_batches, predict)
from tfquant.annotate import quantize_model
from tfquant.layers.wrapper import QuantizeWrapper
from tfquant.ptq.calibrate import calibrate
from tfquant.ptq.data import input_specs
from tfquant.quantizers import Quantizer
from tfquant.specs import QuantConfig

MetricFn = Callable[..., Any]
METRIC_INPUTS = ("auto", "model", "labels")


# ------------------------------------------------------------------------ metric
def metric_inputs(metric_fn: MetricFn) -> str:
    """``"model"`` for ``metric_fn(model)``, ``"labels"`` for ``metric_fn(y_true, y_pred)``.

    A ``keras.metrics.Metric`` instance, or a callable with two or more required positional
    parameters, takes labels; anything else takes the model.
    """
    if isinstance(metric_fn, keras.metrics.Metric):
        return "labels"
    try:
        params = inspect.signature(metric_fn).parameters.values()
    except (TypeError, ValueError):
        return "model"
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                  and p.default is p.empty]
    return "labels" if len(positional) >= 2 else "model"


def _scalar(value: Any, where: str) -> float:
    if value is None:
        raise ValueError(f"{where} returned None, not a number")
    try:
        arr = np.asarray(keras.ops.convert_to_numpy(value) if not isinstance(value, (int, float))
                         else value, np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where} must return a number, got {value!r}") from err
    if arr.size == 0:
        raise ValueError(f"{where} returned an empty value")
    score = float(np.mean(arr))
    if not np.isfinite(score):
        raise ValueError(f"{where} returned {score}, not a finite number")
    return score


class _Evaluator:
    """Evaluates the metric on the quantized model in its current quantizer configuration."""

    def __init__(self, qmodel: keras.Model, metric_fn: MetricFn, kind: str,
                 batches: list[Batch], eager: bool):
        self.qmodel, self.metric_fn, self.kind = qmodel, metric_fn, kind
        self.batches, self.eager = batches, eager
        self.calls = 0
        if kind == "labels":
            if any(b.y is None for b in batches):
                raise ValueError("metric_fn(y_true, y_pred) needs labels: pass data as (x, y) "
                                 "arrays, or a dataset / iterable yielding (x, y) batches; or "
                                 "use a metric_fn(model) -> float.")
            self.y_true = tree.map_structure(lambda *p: np.concatenate(p, axis=0),
                                             *[b.y for b in batches])

    def __call__(self) -> float:
        self.calls += 1
        if self.kind == "model":
            return _scalar(self.metric_fn(self.qmodel), "metric_fn(model)")
        y_pred = predict(self.qmodel, self.batches, self.eager)
        if isinstance(self.metric_fn, keras.metrics.Metric):
            self.metric_fn.reset_state()
            self.metric_fn.update_state(self.y_true, y_pred)
            return _scalar(self.metric_fn.result(), "metric")
        return _scalar(self.metric_fn(self.y_true, y_pred), "metric_fn(y_true, y_pred)")


# ----------------------------------------------------------------------- helpers
def is_quantized(model: keras.Model) -> bool:
    """True when ``model`` holds tfquant quantizers (it is a quantized model)."""
    stack = list(model.layers)
    while stack:
        layer = stack.pop()
        if isinstance(layer, (QuantizeWrapper, Quantizer)):
            return True
        if isinstance(layer, keras.Model):
            stack.extend(layer.layers)
    return False


def _copy_compile(model: keras.Model, qmodel: keras.Model) -> None:
    """Compiles ``qmodel`` like ``model`` so a ``metric_fn(model)`` may call ``evaluate``."""
    if not getattr(model, "compiled", False) or getattr(qmodel, "compiled", False):
        return
    try:
        qmodel.compile_from_config(model.get_compile_config())
    except Exception as err:  # noqa: BLE001 - custom losses may not serialise
        warnings.warn(f"sensitivity: could not compile the quantized copy like {model.name!r} "
                      f"({err}); compile it yourself inside metric_fn if it calls evaluate().",
                      stacklevel=3)


def prepare(model: keras.Model, config: QuantConfig | str | dict | None = "tflite_int8",
            calibration: Any = None, qmodel: keras.Model | None = None, data: Any = None,
            observer: str = "minmax", batch_size: int = 32, steps: int | None = None
            ) -> keras.Model:
    """The quantized model an analysis runs on: ``qmodel`` (or ``model`` itself when it is
    already quantized), else a calibrated quantized copy of ``model``.

    The copy is calibrated with ``calibration`` (or ``data`` when None) using ``observer``.
    """
    if qmodel is not None:
        if not is_quantized(qmodel):
            raise ValueError(f"qmodel {qmodel.name!r} has no quantizers; pass a model from "
                             "tfquant.quantize_model (or leave qmodel=None).")
        return qmodel
    if model is None:
        raise ValueError("pass the float model (or a quantized model as qmodel=...)")
    if is_quantized(model):
        return model
    qmodel = quantize_model(model, config)
    source = data if calibration is None else calibration
    if source is None:
        raise ValueError("no calibration data: pass data or calibration=...")
    if _is_xy(source):  # (x, y) arrays: calibrate reads a tuple as a list of batches
        source = x_only(qmodel, load_batches(qmodel, source, batch_size, steps))
    calibrate(qmodel, source, observer=observer, batch_size=batch_size, steps=steps, verbose=0)
    return qmodel


def x_only(model: keras.Model, batches: list[Batch]) -> list[Any]:
    """The batches' inputs as calibration items: an array, or a dict keyed by input name."""
    names = [s.name for s in input_specs(model)]
    return [b.x[0] if len(b.x) == 1 else dict(zip(names, b.x)) for b in batches]


def _drop(reference: float, value: float | None, sign: float) -> float | None:
    return None if value is None else sign * (reference - value) + 0.0  # no -0.0


# -------------------------------------------------------------------------- main
def sensitivity(model: keras.Model, data: Any, metric_fn: MetricFn,
                config: QuantConfig | str | dict | None = "tflite_int8",
                calibration: Any = None, *, qmodel: keras.Model | None = None,
                observer: str = "minmax", higher_is_better: bool = True,
                metric_signature: str = "auto", batch_size: int = 32,
                steps: int | None = None, sqnr: bool = True, eager: bool = False
                ) -> SensitivityTable:
    """Per-layer quantization sensitivity of ``model`` on ``data``.

    A quantized copy of the float ``model`` is made with ``config`` and calibrated on
    ``calibration`` (default: ``data``); pass ``qmodel=`` (or a quantized ``model``) to analyse
    a model you quantized, trained or calibrated yourself instead. Configurations are made by
    toggling ``Quantizer.enabled`` on that one copy; its flags are restored afterwards and the
    float ``model`` is never modified.

    ``metric_fn`` is called in one of two ways (``metric_signature="auto"`` decides from the
    signature: two required positional parameters, or a ``keras.metrics.Metric``, mean labels):

    * ``metric_fn(model) -> float``: receives the quantized model in the configuration under
      test. It may call the model directly or use ``predict``/``evaluate`` (the cached Keras
      functions are dropped before each call, so they re-trace; the copy is compiled like
      ``model`` when ``model`` is compiled). It must not wrap the model in its own cached
      ``tf.function``. ``data`` then serves for calibration and SQNR only.
    * ``metric_fn(y_true, y_pred) -> float``: ``data`` must carry labels (``(x, y)`` arrays,
      or a dataset/iterable of ``(x, y)`` batches); predictions over all of ``data`` are
      passed at once. An array result is averaged; a ``keras.metrics.Metric`` is reset,
      updated and read.

    Args:
        model: the float Functional/Sequential model (or an already quantized model).
        data: evaluation data (see :func:`tfquant.analysis.sqnr.load_batches`); it is read into
            memory once, so pass a representative subset.
        metric_fn: the metric, see above; higher is better unless ``higher_is_better=False``.
        config: quantization config for the copy (a preset name, ``QuantConfig`` or dict).
        calibration: calibration data for the copy (default: ``data``).
        qmodel: an existing quantized model to analyse instead of a fresh copy.
        observer: calibration observer for the copy (``"minmax"``, ``"percentile"``, ...).
        higher_is_better: the metric's direction (False for a loss).
        metric_signature: ``"auto"``, ``"model"`` or ``"labels"``.
        batch_size: batch size for arrays.
        steps: use at most this many batches of ``data`` (and of the calibration data).
        sqnr: also measure per-layer SQNR (two extra passes plus one per layer).
        eager: run the forward passes eagerly instead of tracing one function per
            configuration (faster for a few small batches).

    Returns:
        A :class:`SensitivityTable`, largest impact first. The metric is evaluated
        ``2 + (weights, activations, all-but) per layer`` times.

    Raises:
        ValueError: bad data, labels missing for a label metric, a model without quantizers.

    Example:
        >>> table = sensitivity(model, (x_val, y_val),
        ...                     keras.metrics.SparseCategoricalAccuracy(),
        ...                     config=QuantConfig.preset("lsq_w4a4"), steps=8)
        >>> table.records[0].layer, table.records[0].impact
        ('conv1', 0.31)
        >>> tfquant.analysis.plot_sensitivity(table, "sens.png")
    """
    if metric_signature not in METRIC_INPUTS:
        raise ValueError(f"metric_signature={metric_signature!r}; expected one of "
                         f"{METRIC_INPUTS}")
    if not callable(metric_fn):
        raise TypeError(f"metric_fn must be callable, got {type(metric_fn).__name__}")
    kind = metric_inputs(metric_fn) if metric_signature == "auto" else metric_signature
    qmodel = prepare(model, config, calibration, qmodel, data, observer, batch_size, steps)
    if qmodel is not model and model is not None and kind == "model":
        _copy_compile(model, qmodel)
    batches = load_batches(qmodel, data, batch_size, steps)
    groups = layer_groups(qmodel)
    if not groups:
        raise ValueError(f"model {qmodel.name!r} has no enabled quantizers to analyse.")
    evaluate = _Evaluator(qmodel, metric_fn, kind, batches, eager)
    everything = [q for g in groups for q in g.quantizers.values()]

    with enabled_only(qmodel, []):
        float_metric = evaluate()
    with enabled_only(qmodel, everything):
        quant_metric = evaluate()

    sqnr_acc, sqnr_iso = group_sqnr(qmodel, groups, batches, eager) if sqnr else ({}, {})
    sign = 1.0 if higher_is_better else -1.0
    records = []
    for g in groups:
        w_metric = a_metric = None
        if g.weight_quantizers:
            with enabled_only(qmodel, g.weight_quantizers.values()):
                w_metric = evaluate()
        if g.activation_quantizers:
            with enabled_only(qmodel, g.activation_quantizers.values()):
                a_metric = evaluate()
        own = {id(q) for q in g.quantizers.values()}
        with enabled_only(qmodel, [q for q in everything if id(q) not in own]):
            all_but = evaluate()
        drops = (_drop(float_metric, w_metric, sign), _drop(float_metric, a_metric, sign),
                 _drop(all_but, quant_metric, sign))
        known = [d for d in drops if d is not None and not math.isnan(d)]
        records.append(SensitivityRecord(
            layer=g.name, type=g.type, index=g.index, weights_metric=w_metric,
            activations_metric=a_metric, all_but_metric=all_but, weights_drop=drops[0],
            activations_drop=drops[1], recovery=drops[2],
            impact=max(known) if known else math.nan, sqnr_db=sqnr_acc.get(g.name),
            sqnr_isolated_db=sqnr_iso.get(g.name), quantizers=tuple(g.quantizers)))
    name = getattr(metric_fn, "name", None) or getattr(metric_fn, "__name__", None) or \
        type(metric_fn).__name__
    return SensitivityTable(records, float_metric, quant_metric, metric_name=str(name),
                            higher_is_better=higher_is_better,
                            samples=sum(b.size for b in batches))
