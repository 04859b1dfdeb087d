"""tfquant.analysis.sqnr: the dB formula, per-layer SQNR against numpy, flag handling, data."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfquant.analysis import enabled_only, layer_groups, layer_sqnr, load_batches, sqnr
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


def test_enabled_only_restores_flags_and_cached_functions(weight_qmodel, x_data):
    quantizers = all_model_quantizers(weight_qmodel)
    weight_qmodel.predict(x_data[:4], verbose=0)
    assert weight_qmodel.predict_function is not None
    with pytest.raises(RuntimeError):
        with enabled_only(weight_qmodel, quantizers[:1]):
            assert [q.enabled for q in quantizers] == [True] + [False] * (len(quantizers) - 1)
            assert weight_qmodel.predict_function is None
            raise RuntimeError("boom")
    assert all(q.enabled for q in quantizers)
    assert weight_qmodel.predict_function is None  # re-traced with the restored flags


def test_load_batches_accepts_arrays_tuples_and_datasets(weight_qmodel, x_data):
    y = np.arange(len(x_data))
    batches = load_batches(weight_qmodel, (x_data[:40], y[:40]), batch_size=16)
    assert [b.size for b in batches] == [16, 16, 8]
    np.testing.assert_array_equal(batches[2].y, y[32:40])
    ds = tf.data.Dataset.from_tensor_slices((x_data[:40], y[:40]))  # unbatched elements
    from_ds = load_batches(weight_qmodel, ds, batch_size=16, steps=2)
    assert [b.size for b in from_ds] == [16, 16]
    np.testing.assert_array_equal(from_ds[1].y, y[16:32])
    assert load_batches(weight_qmodel, x_data[:10], batch_size=4)[0].y is None
    gen = ((x_data[i:i + 5], y[i:i + 5]) for i in range(0, 20, 5))
    assert [b.size for b in load_batches(weight_qmodel, gen)] == [5, 5, 5, 5]
    with pytest.raises(ValueError, match="shape"):
        load_batches(weight_qmodel, np.zeros((4, 3), np.float32))
