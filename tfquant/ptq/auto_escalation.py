"""The later rungs of :func:`tfquant.ptq.auto.auto`: per-layer sensitivity, mixed precision, QAT.

When no PTQ recipe is within tolerance, :func:`_rank_layers` measures what leaving each unit of
:func:`layer_groups` in float gains, :func:`_raise_precision` gives the most sensitive units
float or 16-bit activations, and :func:`_maybe_qat` fine-tunes the best model with a short QAT.
The PTQ rung and the shared state are in :mod:`tfquant.ptq.auto_search`.

Example:
    >>> groups = layer_groups(search.best["model"])
    >>> report.sensitivity = _rank_layers(search, groups, config, "disable")
    >>> _raise_precision(search, groups, config, "float", max_fallback_layers=3)
"""

from __future__ import annotations

from typing import Any, Sequence

import keras
import numpy as np

from tfquant._retracing import reset_compiled_functions
from tfquant.layers.wrapper import QuantizeWrapper
from tfquant.ptq.adaround_graph import layer_consumers, relu_after
from tfquant.ptq.auto_report import AutoQuantError, AutoReport
from tfquant.ptq.auto_search import _Runner, _Search
from tfquant.quantizers import Quantizer
from tfquant.specs import QuantConfig

__all__ = ["layer_groups"]


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
            relu, folded_bns = relu_after(op, consumers)
            names.extend(bn.name for bn in folded_bns)
            if relu is not None:
                names.append(relu.layer.name)
                fused_into.add(id(relu))
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


def _as_fit_args(qat_data: Any) -> tuple[Any, Any]:
    if isinstance(qat_data, tuple) and len(qat_data) == 2 and not hasattr(qat_data, "element_spec"):
        return qat_data
    return qat_data, None


def _rank_layers(search: _Search, groups: dict[str, list[str]], config: QuantConfig,
                 mode: str) -> dict[str, float]:
    """Rung 2: the score gained when each unit of ``groups`` stays float in the best model
    (``mode``: ``"disable"`` its quantizers, or ``"skip"`` it in the config and re-run PTQ).

    Returns:
        layer name -> gain, largest first.
    """
    runner, recipe = search.runner, search.best["recipe"]
    ptq_best = search.best["model"]
    best_score = search.best["step"].score
    gains: dict[str, float] = {}
    for name, members in groups.items():
        step_name = f"sensitivity[{name}]"
        settings = {"layers": members, "mode": mode}
        if mode == "disable":
            quantizers = _group_quantizers(ptq_best, members)
            previous = [q.enabled for q in quantizers]

            def build(quantizers=quantizers):
                for q in quantizers:
                    q.enabled = False
                return ptq_best
            try:
                _, step = runner.run(step_name, "sensitivity", build, settings)
            finally:  # back to each quantizer's own flag: one disabled before stays disabled
                for q, enabled in zip(quantizers, previous):
                    q.enabled = enabled
                reset_compiled_functions(ptq_best)
        else:
            cfg = config.with_overrides(by_name={m: {"skip": True} for m in members})
            _, step = runner.run(step_name, "sensitivity",
                                 search.build_ptq(recipe["observer"], recipe["methods"], cfg),
                                 settings)
        gains[name] = step.score - best_score
    return dict(sorted(gains.items(), key=lambda kv: -kv[1]))


def _raise_precision(search: _Search, groups: dict[str, list[str]], config: QuantConfig,
                     fallback: str, max_fallback_layers: int) -> bool:
    """Rung 3: the ``k = 1 .. max_fallback_layers`` most sensitive units (the report's
    ``sensitivity``) kept float or given 16-bit activations, PTQ re-run with the best recipe.

    Returns:
        True when a model within tolerance was found.
    """
    runner, recipe = search.runner, search.best["recipe"]
    report = runner.report
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
                                  search.build_ptq(recipe["observer"], recipe["methods"], cfg),
                                  {**{"observer": recipe["observer"],
                                      "methods": list(recipe["methods"])},
                                   "layers": chosen, "fallback": fallback})
        previous = search.best["step"]
        search.consider(qmodel, step, recipe)
        if search.best["step"] is not previous:
            report.raised_layers, report.fallback = chosen, fallback
        if search.within(step):
            return True
    return False


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
        reset_compiled_functions(qmodel)
    return qmodel, report
