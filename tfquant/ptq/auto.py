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

Example:
    >>> def accuracy(m):
    ...     return float(np.mean(np.argmax(m.predict(x_val, verbose=0), -1) == y_val))
    >>> qmodel, report = auto(model, x_calib, accuracy, tolerance=0.01)
    >>> print(report)
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import keras
import numpy as np

from tfquant.annotate import _check_model
from tfquant.layers.registry import activation_name
from tfquant.layers.wrapper import QuantizeWrapper
from tfquant.observers import OBSERVERS
from tfquant.ptq.adaround import RECONSTRUCT_AFTER, layer_consumers
from tfquant.ptq.pipeline import ptq
from tfquant.quantizers import Quantizer
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


class AutoQuantError(RuntimeError):
    """A step of :func:`auto` failed; ``step`` names it, ``report`` holds the steps done.

    The original exception is chained (``__cause__``).
    """

    def __init__(self, message: str, step: str, report: "AutoReport"):
        super().__init__(message)
        self.step = step
        self.report = report


@dataclasses.dataclass
class AutoStep:
    """One thing :func:`auto` tried.

    Attributes:
        name: e.g. ``"float"``, ``"ptq[mse]"``, ``"ptq[mse+cle+bias_correction]"``,
            ``"sensitivity[conv2]"``, ``"fallback[k=1]"``, ``"qat"``.
        kind: ``"float"``, ``"ptq"``, ``"sensitivity"``, ``"fallback"`` or ``"qat"``.
        score: ``eval_fn``'s value.
        drop: float score minus this score (positive: worse than float).
        settings: what was run (observer, methods, layers kept in higher precision, ...).
        seconds: wall time of the step, evaluation included.
    """

    name: str
    kind: str
    score: float
    drop: float
    settings: dict = dataclasses.field(default_factory=dict)
    seconds: float = 0.0


@dataclasses.dataclass
class AutoReport:
    """Everything :func:`auto` tried, with scores, and what it returned.

    Attributes:
        float_score: ``eval_fn`` of the float model.
        tolerance: the allowed drop.
        steps: every step tried, in order.
        best: name of the step whose model was returned.
        sensitivity: layer name -> score gained when that layer stays float (largest first).
        raised_layers: layers given higher precision in the returned model.
        fallback: how those layers were raised (``"float"`` or ``"int16"``), None if none.

    Example:
        >>> report.met, report.best, report.best_score
        (True, 'ptq[mse+cle+bias_correction]', 0.981)
    """

    float_score: float
    tolerance: float
    steps: list[AutoStep] = dataclasses.field(default_factory=list)
    best: str | None = None
    sensitivity: dict[str, float] = dataclasses.field(default_factory=dict)
    raised_layers: list[str] = dataclasses.field(default_factory=list)
    fallback: str | None = None

    @property
    def best_step(self) -> AutoStep | None:
        """The :class:`AutoStep` of the returned model."""
        return next((s for s in self.steps if s.name == self.best), None)

    @property
    def best_score(self) -> float | None:
        """Score of the returned model."""
        step = self.best_step
        return None if step is None else step.score

    @property
    def met(self) -> bool:
        """Whether the returned model is within ``tolerance`` of the float model."""
        step = self.best_step
        return step is not None and step.drop <= self.tolerance

    def to_dict(self) -> dict:
        """A JSON-friendly dict."""
        return {"float_score": self.float_score, "tolerance": self.tolerance,
                "best": self.best, "best_score": self.best_score, "met": self.met,
                "raised_layers": list(self.raised_layers), "fallback": self.fallback,
                "sensitivity": dict(self.sensitivity),
                "steps": [dataclasses.asdict(s) for s in self.steps]}

    def __str__(self) -> str:
        width = max([len(s.name) for s in self.steps] + [4])
        lines = [f"auto quantization: float score {self.float_score:.4f}, tolerance "
                 f"{self.tolerance:g}; returned {self.best!r} "
                 f"({'within' if self.met else 'NOT within'} tolerance)"]
        lines.append(f"  {'step':<{width}}  {'score':>8}  {'drop':>8}  {'time':>7}")
        for s in self.steps:
            mark = " *" if s.name == self.best else ""
            lines.append(f"  {s.name:<{width}}  {s.score:8.4f}  {s.drop:8.4f}  "
                         f"{s.seconds:6.1f}s{mark}")
        if self.raised_layers:
            lines.append(f"  higher precision ({self.fallback}): {', '.join(self.raised_layers)}")
        return "\n".join(lines)


# ------------------------------------------------------------------------------ helpers
def layer_groups(qmodel: keras.Model) -> dict[str, list[str]]:
    """Units of sensitivity analysis: each quantized layer with what TFLite fuses into it.

    Returns:
        layer name -> names of the float-model layers of the unit: a weighted layer, the
        BatchNormalization folded into it and the ReLU/ReLU6 fused after it; or an output
        layer (Add, pooling, ...) alone.

    Example:
        >>> layer_groups(qmodel)["conv1"]
        ['conv1', 'bn1', 'relu1']
    """
    consumers = layer_consumers(qmodel)
    groups: dict[str, list[str]] = {}
    fused_into: set[int] = set()
    for op in qmodel.operations:
        if not isinstance(op, QuantizeWrapper) or id(op) in fused_into:
            continue
        names = [op.layer.name]
        if op.rule.kind == "weighted" and not op.quantize_output:
            follower = op
            while True:
                nxt = consumers.get(id(follower), [])
                if len(nxt) != 1:
                    break
                follower = nxt[0]
                if isinstance(follower, keras.layers.Identity):   # a folded BN
                    names.append(follower.name)
                    continue
                if (isinstance(follower, QuantizeWrapper) and follower.rule.kind == "activation"
                        and activation_name(follower.layer) in RECONSTRUCT_AFTER):
                    names.append(follower.layer.name)
                    fused_into.add(id(follower))
                break
        elif op.batchnorm is not None:
            names.append(op.batchnorm.name)
        groups[op.layer.name] = names
    return groups


def _group_quantizers(qmodel: keras.Model, names: Sequence[str]) -> list[Quantizer]:
    found = []
    wanted = set(names)
    for layer in qmodel.layers:
        if isinstance(layer, QuantizeWrapper) and layer.layer.name in wanted:
            found.extend(layer.quantizers.values())
    return found


def _forget_traces(model: keras.Model) -> None:
    """Drops Keras' cached predict/evaluate/train functions (quantizer flags are read when a
    function is traced)."""
    for attr in ("predict_function", "test_function", "train_function"):
        if hasattr(model, attr):
            setattr(model, attr, None)


def _variant_name(observer: str, methods: Sequence[str]) -> str:
    return f"ptq[{'+'.join([observer, *methods])}]"


def _as_fit_args(qat_data: Any) -> tuple[Any, Any]:
    if isinstance(qat_data, tuple) and len(qat_data) == 2 and not hasattr(qat_data, "element_spec"):
        return qat_data
    return qat_data, None


# --------------------------------------------------------------------------------- auto
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
        _forget_traces(model)
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
        observers: activation observers tried.
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
    observers = list(observers)
    method_sets = [tuple(m) for m in method_sets]
    _check_args(model, eval_fn, tolerance, observers, method_sets, sensitivity, fallback,
                max_fallback_layers, qat_epochs)
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

    best: dict[str, Any] = {"model": None, "step": None, "recipe": None}

    def within(step: AutoStep) -> bool:
        return step.drop <= tolerance

    def consider(qmodel: keras.Model, step: AutoStep, recipe: dict) -> None:
        if best["step"] is None or step.score > best["step"].score:
            best.update(model=qmodel, step=step, recipe=recipe)
            report.best = step.name

    def build_ptq(observer: str, methods: Sequence[str], cfg: QuantConfig):
        options = dict(base_options)
        if "adaround" in methods:
            options.update(ada_options)
        return lambda: ptq(model, data, cfg, methods=methods, observer=observer, **options)

    def done() -> bool:
        return stop_early and best["step"] is not None and within(best["step"])

    # 1. PTQ variants -----------------------------------------------------------------
    for observer in observers:
        qmodel, step = runner.run(_variant_name(observer, ()), "ptq",
                                  build_ptq(observer, (), config),
                                  {"observer": observer, "methods": []})
        consider(qmodel, step, {"observer": observer, "methods": ()})
        if done():
            return best["model"], report
    best_observer = best["recipe"]["observer"]
    for methods in method_sets:
        if not methods:
            continue
        qmodel, step = runner.run(_variant_name(best_observer, methods), "ptq",
                                  build_ptq(best_observer, methods, config),
                                  {"observer": best_observer, "methods": list(methods)})
        consider(qmodel, step, {"observer": best_observer, "methods": tuple(methods)})
        if done():
            return best["model"], report
    if within(best["step"]) or max_fallback_layers == 0:
        return _maybe_qat(best, runner, qat_data, qat_epochs, qat_learning_rate, qat_loss,
                          qat_batch_size, verbose)

    # 2. sensitivity ------------------------------------------------------------------
    recipe = best["recipe"]
    ptq_best = best["model"]
    groups = layer_groups(ptq_best)
    best_score = best["step"].score
    gains: dict[str, float] = {}
    for name, members in groups.items():
        step_name = f"sensitivity[{name}]"
        settings = {"layers": members, "mode": sensitivity}
        if sensitivity == "disable":
            quantizers = _group_quantizers(ptq_best, members)

            def build(quantizers=quantizers):
                for q in quantizers:
                    q.enabled = False
                return ptq_best
            try:
                _, step = runner.run(step_name, "sensitivity", build, settings)
            finally:
                for q in quantizers:
                    q.enabled = True
                _forget_traces(ptq_best)
        else:
            cfg = config.with_overrides(by_name={m: {"skip": True} for m in members})
            _, step = runner.run(step_name, "sensitivity",
                                 build_ptq(recipe["observer"], recipe["methods"], cfg), settings)
        gains[name] = step.score - best_score
    report.sensitivity = dict(sorted(gains.items(), key=lambda kv: -kv[1]))

    # 3. higher precision for the most sensitive layers ---------------------------------
    ranked = list(report.sensitivity)
    for k in range(1, min(max_fallback_layers, len(ranked)) + 1):
        chosen = ranked[:k]
        members = [m for name in chosen for m in groups[name]]
        if fallback == "float":
            overrides = {m: {"skip": True} for m in members}
        else:
            overrides = {m: {"activations": {"bits": 16, "symmetric": True}} for m in members}
        cfg = config.with_overrides(by_name=overrides)
        qmodel, step = runner.run(f"fallback[k={k}]", "fallback",
                                  build_ptq(recipe["observer"], recipe["methods"], cfg),
                                  {**{"observer": recipe["observer"],
                                      "methods": list(recipe["methods"])},
                                   "layers": chosen, "fallback": fallback})
        previous = best["step"]
        consider(qmodel, step, recipe)
        if best["step"] is not previous:
            report.raised_layers, report.fallback = chosen, fallback
        if within(step):
            return best["model"], report

    # 4. QAT --------------------------------------------------------------------------
    return _maybe_qat(best, runner, qat_data, qat_epochs, qat_learning_rate, qat_loss,
                      qat_batch_size, verbose)


def _maybe_qat(best: dict, runner: _Runner, qat_data: Any, epochs: int, learning_rate: float,
               loss: Any, batch_size: int, verbose: int) -> tuple[keras.Model, AutoReport]:
    report = runner.report
    if qat_data is None or best["step"].drop <= report.tolerance:
        return best["model"], report
    qmodel = best["model"]
    saved = [np.array(v) for v in qmodel.get_weights()]

    def build():
        qmodel.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss)
        x, y = _as_fit_args(qat_data)
        qmodel.fit(x, y, epochs=epochs, batch_size=None if y is None else batch_size,
                   verbose=1 if verbose > 1 else 0)
        return qmodel

    try:
        _, step = runner.run("qat", "qat", build, {"epochs": epochs,
                                                    "learning_rate": learning_rate,
                                                    "from": best["step"].name})
    except AutoQuantError:
        qmodel.set_weights(saved)
        raise
    if step.score > best["step"].score:
        best["step"] = step
        report.best = step.name
    else:  # QAT did not help: back to the PTQ weights
        qmodel.set_weights(saved)
        _forget_traces(qmodel)
    return qmodel, report
