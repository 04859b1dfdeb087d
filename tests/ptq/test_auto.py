"""auto(): the PTQ ladder, sensitivity, fallback, QAT and error handling on a tiny model.

The score is the negative mean squared difference to the float model's output on held-out
images: 0 for the float model, below 0 for any quantized model, so a tolerance of 0 forces the
whole ladder while a loose one stops at the first variant.
"""

from __future__ import annotations

import re

import keras
import numpy as np
import pytest

import tfquant
from tfquant.datasets import load_digits
from tfquant.ptq.auto import AutoQuantError, auto, layer_groups
from tfquant.zoo import small_cnn


@pytest.fixture(scope="module")
def setup():
    (x, y), (xt, _) = load_digits()
    model = small_cnn((8, 8, 1), 10, widths=(4, 8), seed=1)
    x_val = xt[:128]
    reference = np.asarray(model(x_val, training=False))

    def score(m):
        return -float(np.mean((np.asarray(m(x_val, training=False)) - reference) ** 2))

    return model, x[:128], (x[:256], y[:256]), score


def _weights(model):
    return [w.copy() for w in model.get_weights()]


def test_stops_at_first_variant_within_tolerance(setup):
    model, x_cal, _, score = setup
    qmodel, report = auto(model, x_cal, score, tolerance=1.0, verbose=0)
    assert [s.name for s in report.steps] == ["float", "ptq[minmax]"]
    assert report.best == "ptq[minmax]" and report.met
    assert report.float_score == 0.0
    assert isinstance(qmodel, keras.Model)
    assert any(isinstance(layer, tfquant.QuantizeWrapper) for layer in qmodel.layers)


def test_full_ladder_when_tolerance_cannot_be_met(setup):
    model, x_cal, qat_data, score = setup
    before = _weights(model)
    calls = []

    def counted(m):
        calls.append(m)
        return score(m)

    qmodel, report = auto(model, x_cal, counted, tolerance=0.0, qat_data=qat_data,
                          observers=("minmax", "mse"),
                          method_sets=(("bias_correction",), ("cle", "bias_correction",
                                                              "adaround")),
                          adaround_options={"iterations": 20}, max_fallback_layers=2,
                          qat_epochs=1, verbose=0)
    names = [s.name for s in report.steps]
    assert names[:3] == ["float", "ptq[minmax]", "ptq[mse]"]
    best_observer = report.steps[3].settings["observer"]
    assert names[3:5] == [f"ptq[{best_observer}+bias_correction]",
                          f"ptq[{best_observer}+cle+bias_correction+adaround]"]
    kinds = [s.kind for s in report.steps]
    for kind in ("float", "ptq", "sensitivity", "fallback", "qat"):
        assert kind in kinds, kinds
    assert len(calls) == len(report.steps)            # every evaluation is reported
    assert all(np.isfinite(s.score) for s in report.steps)
    ptq_steps = [s for s in report.steps if s.kind == "ptq"]
    assert len(ptq_steps) == 4
    assert any("adaround" in s.settings["methods"] for s in ptq_steps)
    # sensitivity covers each quantized unit once (conv + fused ReLU together)
    groups = layer_groups(calls[1])
    assert set(report.sensitivity) == set(groups)
    assert groups["conv1"] == ["conv1", "relu1"]   # ptq folds bn1 into conv1 first
    assert list(report.sensitivity.values()) == sorted(report.sensitivity.values(),
                                                       reverse=True)
    # keeping the most sensitive layer in float helps
    fallbacks = [s for s in report.steps if s.kind == "fallback"]
    assert [s.settings["layers"] for s in fallbacks] == [
        list(report.sensitivity)[:1], list(report.sensitivity)[:2]]
    assert fallbacks[0].score > max(s.score for s in ptq_steps)
    # the returned model is the best one tried, and is what its score says
    quantized = [s for s in report.steps if s.kind in ("ptq", "fallback", "qat")]
    assert report.best_score == max(s.score for s in quantized)
    assert score(qmodel) == pytest.approx(report.best_score, rel=1e-5, abs=1e-9)
    assert not report.met
    if report.best.startswith("fallback"):
        assert report.raised_layers and report.fallback == "float"
        entries = {e.name: e.action for e in qmodel.quantization_report.entries}
        assert all(entries[name] == "float" for name in report.raised_layers)
    text = str(report)
    assert "sensitivity[conv1]" in text and "NOT within tolerance" in text
    assert report.to_dict()["steps"][0]["name"] == "float"
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_skip_sensitivity_mode(setup):
    model, x_cal, _, score = setup
    _, report = auto(model, x_cal, score, tolerance=0.0, observers=("minmax",), method_sets=(),
                     sensitivity="skip", max_fallback_layers=1, verbose=0)
    sens = [s for s in report.steps if s.kind == "sensitivity"]
    assert sens and all(s.settings["mode"] == "skip" for s in sens)
    assert report.steps[-1].name == "fallback[k=1]"


@pytest.mark.parametrize("fail_at,step", [(1, "float"), (3, "ptq[percentile]")])
def test_eval_fn_error_names_the_step(setup, fail_at, step):
    model, x_cal, _, score = setup
    before = _weights(model)
    calls = []

    def flaky(m):
        calls.append(1)
        if len(calls) == fail_at:
            raise RuntimeError("validation set missing")
        return score(m)

    pattern = rf"step '{re.escape(step)}'.*validation set missing"
    with pytest.raises(AutoQuantError, match=pattern) as info:
        auto(model, x_cal, flaky, tolerance=0.0, verbose=0)
    assert info.value.step == step
    assert isinstance(info.value.__cause__, RuntimeError)
    assert len(info.value.report.steps) == fail_at - 1
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("value", [None, float("nan"), "high"])
def test_eval_fn_must_return_a_number(setup, value):
    model, x_cal, _, _ = setup
    with pytest.raises(AutoQuantError, match="step 'float'"):
        auto(model, x_cal, lambda m: value, verbose=0)


def test_bad_arguments_fail_before_anything_runs(setup):
    model, x_cal, _, _ = setup
    calls = []

    def never(m):
        calls.append(m)
        return 0.0

    with pytest.raises(ValueError, match="tolerance"):
        auto(model, x_cal, never, tolerance=-0.1)
    with pytest.raises(ValueError, match="observers"):
        auto(model, x_cal, never, observers=("median",))
    with pytest.raises(ValueError, match="sensitivity"):
        auto(model, x_cal, never, sensitivity="guess")
    with pytest.raises(ValueError, match="unknown method"):
        auto(model, x_cal, never, method_sets=(("magic",),))
    with pytest.raises(TypeError, match="eval_fn"):
        auto(model, x_cal, "accuracy")
    # a flat method list (meant as one set) would be read letter by letter
    with pytest.raises(TypeError, match="sequence of method sets"):
        auto(model, x_cal, never, method_sets=("cle", "bias_correction"))
    # option typos: before the first PTQ variant, not when AdaRound finally runs
    with pytest.raises(ValueError, match=r"adaround_options key\(s\) \['iteratons'\]"):
        auto(model, x_cal, never, adaround_options={"iteratons": 20})
    with pytest.raises(ValueError, match=r"ptq_options key\(s\) \['stpes'\]"):
        auto(model, x_cal, never, ptq_options={"stpes": 2})
    # auto calibrates once per variant: a one-shot generator would be empty the second time
    with pytest.raises(ValueError, match="one-shot generator"):
        auto(model, (b for b in np.array_split(x_cal, 4)), never)
    assert calls == []


def test_a_single_observer_name_is_one_observer(setup):
    model, x_cal, _, score = setup
    _, report = auto(model, x_cal, score, tolerance=1.0, observers="mse",
                     method_sets=(), verbose=0)
    assert [s.name for s in report.steps] == ["float", "ptq[mse]"]
