"""tfquant.analysis.sqnr: the dB formula, per-layer SQNR against numpy, the re-exported names."""

from __future__ import annotations

import importlib
import math

import keras
import numpy as np
import pytest

from tfquant.analysis import batches, groups, layer_groups, layer_sqnr, sqnr
from tfquant.analysis.sqnr import all_model_quantizers


def np_sqnr(ref, q):
    ref, q = np.asarray(ref, np.float64), np.asarray(q, np.float64)
    return 10.0 * np.log10(np.mean(ref ** 2) / np.mean((q - ref) ** 2))


def test_sqnr_formula(rng):
    assert sqnr([1.0, -1.0], [1.1, -0.9]) == pytest.approx(20.0)
    assert sqnr(np.ones(4), np.ones(4)) == math.inf
    assert sqnr(np.zeros(4), np.ones(4)) == -math.inf
    a = rng.normal(size=(3, 5)).astype(np.float32)
    b = a + rng.normal(scale=0.01, size=a.shape).astype(np.float32)
    assert sqnr(a, b) == pytest.approx(np_sqnr(a, b), rel=1e-9)
    with pytest.raises(ValueError, match="shapes differ"):
        sqnr(np.ones(3), np.ones(4))


def _outputs(qmodel, x, names, enabled):
    """Layer outputs computed independently: flags set by hand, one eager call."""
    tensors = {g.name: g.layer.output for g in layer_groups(qmodel) if g.name in names}
    probe = keras.Model(qmodel.inputs, tensors)
    quantizers = all_model_quantizers(qmodel)
    saved = [q.enabled for q in quantizers]
    try:
        for q in quantizers:
            q.enabled = enabled(q)
        return {k: np.asarray(v) for k, v in probe([x], training=False).items()}
    finally:
        for q, flag in zip(quantizers, saved):
            q.enabled = flag


def test_layer_sqnr_matches_numpy_on_the_same_tensors(weight_fragile, weight_qmodel,
                                                      weight_table):
    _, x, _ = weight_fragile
    names = ["x_quantizer", "fc1", "fragile", "head"]
    ref = _outputs(weight_qmodel, x, names, lambda q: False)
    full = _outputs(weight_qmodel, x, names, lambda q: True)
    accumulated = layer_sqnr(weight_qmodel, x, batch_size=50)
    assert list(accumulated) == names
    for n in names:
        assert accumulated[n] == pytest.approx(np_sqnr(ref[n], full[n]), abs=1e-3), n
    assert accumulated["fragile"] < 3.0 < 20.0 < accumulated["fc1"]

    isolated = layer_sqnr(weight_qmodel, x, isolated=True, eager=True)
    own = {id(q) for q in layer_groups(weight_qmodel)[1].quantizers.values()}  # fc1's
    fc1_only = _outputs(weight_qmodel, x, ["fc1"], lambda q: id(q) in own)
    assert isolated["fc1"] == pytest.approx(np_sqnr(ref["fc1"], fc1_only["fc1"]), abs=1e-3)
    assert isolated["head"] > accumulated["head"] + 10  # its own error only

    # the sensitivity table (same float model, same calibration) reports the same numbers
    table, _ = weight_table
    for n in names:
        assert table[n].sqnr_db == pytest.approx(accumulated[n], abs=1e-3), n
        assert table[n].sqnr_isolated_db == pytest.approx(isolated[n], abs=1e-3), n


def test_moved_names_stay_importable_from_sqnr():
    module = importlib.import_module("tfquant.analysis.sqnr")  # tfquant.analysis.sqnr: the function
    for name in ("LayerGroup", "layer_groups", "all_model_quantizers", "enabled_only", "_walk"):
        assert getattr(module, name) is getattr(groups, name), name
    for name in ("Batch", "load_batches", "predict", "_is_xy", "_slice", "_signature"):
        assert getattr(module, name) is getattr(batches, name), name
