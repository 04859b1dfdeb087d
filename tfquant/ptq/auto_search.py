"""The first rung of :func:`tfquant.ptq.auto.auto`: PTQ recipes, and the state of the search.

:class:`_Runner` builds and scores one candidate model, recording it as an
:class:`~tfquant.ptq.auto_report.AutoStep` (a failure becomes an
:class:`~tfquant.ptq.auto_report.AutoQuantError` naming the step). :class:`_Search` holds what
every rung shares: the best model so far, its PTQ recipe and how PTQ is run.
:func:`_search_ptq` tries each activation observer, then the method sets with the best
observer. The later rungs are in :mod:`tfquant.ptq.auto_escalation`.

Example:
    >>> runner = _Runner(accuracy, tolerance=0.01, verbose=0)
    >>> runner.report.float_score = runner.evaluate("float", model)
    >>> search = _Search(model, x_calib, runner, 0.01, True, {"verbose": 0}, {})
    >>> _search_ptq(search, ["minmax", "mse"], [("cle",)], QuantConfig.coerce("tflite_int8"))
    >>> search.best["step"].name
    'ptq[mse+cle]'
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Mapping, Sequence

import keras

from tfquant._retracing import reset_compiled_functions
from tfquant.ptq.auto_report import AutoQuantError, AutoReport, AutoStep
from tfquant.ptq.pipeline import ptq
from tfquant.specs import QuantConfig


def _variant_name(observer: str, methods: Sequence[str]) -> str:
    return f"ptq[{'+'.join([observer, *methods])}]"


class _Runner:
    """Evaluates models and records steps, turning failures into :class:`AutoQuantError`."""

    def __init__(self, eval_fn: Callable[[keras.Model], float], tolerance: float,
                 verbose: int):
        self.eval_fn = eval_fn
        self.verbose = verbose
        self.report = AutoReport(float("nan"), tolerance)

    def fail(self, step: str, err: Exception, what: str):
        raise AutoQuantError(f"auto quantization failed at step {step!r}: {what} raised "
                             f"{type(err).__name__}: {err}", step, self.report) from err

    def evaluate(self, step: str, model: keras.Model) -> float:
        reset_compiled_functions(model)
        try:
            value = self.eval_fn(model)
        except Exception as err:  # noqa: BLE001 - re-raised with the step named
            self.fail(step, err, "eval_fn")
        try:
            score = float(value)
        except (TypeError, ValueError) as err:
            raise AutoQuantError(f"auto quantization failed at step {step!r}: eval_fn returned "
                                 f"{value!r}, not a number", step, self.report) from err
        if not math.isfinite(score):
            raise AutoQuantError(f"auto quantization failed at step {step!r}: eval_fn returned "
                                 f"{score}, not a finite number", step, self.report)
        return score

    def run(self, step: str, kind: str, build: Callable[[], keras.Model],
            settings: Mapping[str, Any]) -> tuple[keras.Model, AutoStep]:
        t0 = time.perf_counter()
        try:
            model = build()
        except AutoQuantError:
            raise
        except Exception as err:  # noqa: BLE001 - re-raised with the step named
            self.fail(step, err, "building the model")
        score = self.evaluate(step, model)
        record = AutoStep(step, kind, score, self.report.float_score - score, dict(settings),
                          time.perf_counter() - t0)
        self.report.steps.append(record)
        if self.verbose:
            print(f"[auto] {step}: score {score:.4f} (drop {record.drop:+.4f}, "
                  f"{record.seconds:.1f}s)")
        return model, record


class _Search:
    """What the rungs of :func:`~tfquant.ptq.auto.auto` share: the best model so far (``best``:
    its ``model``, ``step`` and PTQ ``recipe``) and how PTQ is run."""

    def __init__(self, model: keras.Model, data: Any, runner: _Runner, tolerance: float,
                 stop_early: bool, base_options: Mapping[str, Any],
                 ada_options: Mapping[str, Any]):
        self.model, self.data, self.runner = model, data, runner
        self.tolerance, self.stop_early = tolerance, stop_early
        self.base_options, self.ada_options = base_options, ada_options
        self.best: dict[str, Any] = {"model": None, "step": None, "recipe": None}

    def within(self, step: AutoStep) -> bool:
        return step.drop <= self.tolerance

    def consider(self, qmodel: keras.Model, step: AutoStep, recipe: dict) -> None:
        best = self.best
        if best["step"] is None or step.score > best["step"].score:
            best.update(model=qmodel, step=step, recipe=recipe)
            self.runner.report.best = step.name

    def build_ptq(self, observer: str, methods: Sequence[str], cfg: QuantConfig
                  ) -> Callable[[], keras.Model]:
        options = dict(self.base_options)
        if "adaround" in methods:
            options.update(self.ada_options)
        model, data = self.model, self.data
        return lambda: ptq(model, data, cfg, methods=methods, observer=observer, **options)

    def done(self) -> bool:
        step = self.best["step"]
        return self.stop_early and step is not None and self.within(step)


def _search_ptq(search: _Search, observers: Sequence[str],
                method_sets: Sequence[Sequence[str]], config: QuantConfig) -> bool:
    """Rung 1: every observer, then every method set with the best observer.

    Returns:
        True when the search is done (``stop_early`` and a model within tolerance).
    """
    runner = search.runner
    for observer in observers:
        qmodel, step = runner.run(_variant_name(observer, ()), "ptq",
                                  search.build_ptq(observer, (), config),
                                  {"observer": observer, "methods": []})
        search.consider(qmodel, step, {"observer": observer, "methods": ()})
        if search.done():
            return True
    best_observer = search.best["recipe"]["observer"]
    for methods in method_sets:
        if not methods:
            continue
        qmodel, step = runner.run(_variant_name(best_observer, methods), "ptq",
                                  search.build_ptq(best_observer, methods, config),
                                  {"observer": best_observer, "methods": list(methods)})
        search.consider(qmodel, step, {"observer": best_observer, "methods": tuple(methods)})
        if search.done():
            return True
    return False
