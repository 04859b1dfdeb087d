"""auto_escalation._rank_layers in "disable" mode leaves every quantizer's enable flag as it was."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import tfquant
from tfquant.ptq.auto_escalation import _rank_layers, layer_groups
from tfquant.ptq.auto_report import AutoQuantError, AutoStep
from tfquant.ptq.auto_search import _Runner, _Search
from tfquant.specs import QuantConfig


def _qmodel():
    rng = np.random.default_rng(0)
    inp = keras.Input((8,))
    h = keras.layers.Dense(6, activation="relu", name="d1")(inp)
    h = keras.layers.Dense(5, name="d2")(h)
    out = keras.layers.Dense(3, name="d3")(h)
    model = keras.Model(inp, out)
    x = rng.normal(size=(64, 8)).astype("float32")
    qmodel = tfquant.quantize_model(model)
    tfquant.calibrate(qmodel, x, verbose=0)
    return qmodel, x


def _flags(qmodel):
    return {(layer.layer.name, key): q.enabled
            for layer in qmodel.layers if isinstance(layer, tfquant.QuantizeWrapper)
            for key, q in layer.quantizers.items()}


def _search(qmodel, x, eval_fn):
    runner = _Runner(eval_fn, 0.0, 0)
    runner.report.float_score = 0.0
    search = _Search(qmodel, x, runner, 0.0, False, {}, {})
    search.best.update(model=qmodel, step=AutoStep("ptq[minmax]", "ptq", -1.0, 1.0),
                       recipe={"observer": "minmax", "methods": ()})
    return search


def _disable_one(qmodel):
    """Turns off one quantizer of d2 (the user's choice before ranking) and returns its key."""
    wrapper = next(layer for layer in qmodel.layers
                   if isinstance(layer, tfquant.QuantizeWrapper) and layer.layer.name == "d2")
    key = sorted(wrapper.quantizers)[0]
    wrapper.quantizers[key].enabled = False
    return ("d2", key)


def test_disable_mode_restores_previous_enable_flags():
    qmodel, x = _qmodel()
    off = _disable_one(qmodel)
    before = _flags(qmodel)
    assert before[off] is False and sum(not v for v in before.values()) == 1
    seen = []

    def eval_fn(m):
        seen.append(_flags(m))
        return -1.0

    groups = layer_groups(qmodel)
    assert {"d1", "d2", "d3"} <= set(groups)
    gains = _rank_layers(_search(qmodel, x, eval_fn), groups, QuantConfig.coerce("tflite_int8"),
                         "disable")
    assert set(gains) == set(groups)
    # while a unit was ranked, its quantizers were off
    assert len(seen) == len(groups)
    for flags, members in zip(seen, groups.values()):
        assert all(not v for (name, _), v in flags.items() if name in members)
    # afterwards every flag is what it was: the one disabled before stays disabled
    assert _flags(qmodel) == before


def test_disable_mode_restores_flags_when_eval_fails():
    qmodel, x = _qmodel()
    _disable_one(qmodel)
    before = _flags(qmodel)
    calls = []

    def eval_fn(m):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return -1.0

    with pytest.raises(AutoQuantError, match="boom"):
        _rank_layers(_search(qmodel, x, eval_fn), layer_groups(qmodel),
                     QuantConfig.coerce("tflite_int8"), "disable")
    assert _flags(qmodel) == before
