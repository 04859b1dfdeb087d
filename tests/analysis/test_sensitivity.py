"""tfquant.analysis.sensitivity: fragile layers rank first, the float model is untouched."""

from __future__ import annotations

import csv

import keras
import numpy as np
import pytest

import tfquant
from tfquant.analysis import SensitivityTable, metric_inputs, sensitivity
from tfquant.analysis.sensitivity import FIELDS
from tfquant.analysis.sqnr import all_model_quantizers


def test_outlier_weights_rank_their_layer_first(weight_fragile, weight_table):
    model, _, _ = weight_fragile
    table, before = weight_table
    assert table.float_metric == 1.0  # every quantizer off reproduces the float model
    top = table.records[0]
    assert top.layer == "fragile", str(table)
    # quantizing only its weights destroys the output; keeping it float recovers the most
    assert top.weights_drop > 0.3 and top.weights_drop > top.activations_drop + 0.2
    assert top.recovery == max(r.recovery for r in table)
    assert top.impact > 2 * table.records[1].impact
    assert table.quantized_metric < table.float_metric
    # the float model passed in is unchanged and holds no quantizer
    for w0, w1 in zip(before, model.get_weights()):
        np.testing.assert_array_equal(w0, w1)
    assert not any(isinstance(layer, (tfquant.QuantizeWrapper, tfquant.Quantizer))
                   for layer in model.layers)


def test_huge_activation_range_ranks_its_layer_first_with_a_model_metric(activation_fragile,
                                                                       a4_config):
    model, x = activation_fragile
    reference = np.asarray(model(x))

    def mse(qmodel):  # metric_fn(model), lower is better
        return float(np.mean((np.asarray(qmodel([x], training=False)) - reference) ** 2))

    table = sensitivity(model, x, mse, config=a4_config, higher_is_better=False, eager=True,
                        sqnr=False)
    assert table.float_metric == pytest.approx(0.0, abs=1e-10)
    top = table.records[0]
    assert top.layer == "wide", str(table)
    assert top.activations_drop > 10 * max(top.weights_drop, 1e-6)
    assert top.activations_drop > 5 * table.records[1].impact
    assert all(r.sqnr_db is None for r in table)  # sqnr=False


def test_table_api(weight_table, tmp_path):
    table, _ = weight_table
    assert isinstance(table, SensitivityTable)
    assert set(table.layers) == {"x_quantizer", "fc1", "fragile", "head"}
    impacts = [r.impact for r in table]
    assert impacts == sorted(impacts, reverse=True)
    assert table["fragile"] is table.records[0]
    with pytest.raises(KeyError, match="nope"):
        table["nope"]
    assert [r.index for r in table.in_model_order()] == [0, 1, 2, 3]
    # an input quantizer has no weights: that configuration does not exist
    assert table["x_quantizer"].weights_metric is None
    assert table["x_quantizer"].quantizers == ("x_quantizer",)
    assert table["fc1"].quantizers == ("fc1/weights/kernel", "fc1/output")

    records = table.to_records()
    assert records[0]["layer"] == "fragile" and set(records[0]) == set(FIELDS)
    path = table.to_csv(tmp_path / "sens.csv")
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert tuple(rows[0]) == FIELDS and len(rows) == 1 + len(table)
    row = dict(zip(rows[0], rows[1]))
    assert row["layer"] == "fragile"
    assert float(row["impact"]) == pytest.approx(table.records[0].impact)
    assert dict(zip(rows[0], rows[-1]))["layer"] == table.records[-1].layer

    text = str(table).splitlines()
    assert "sparse_categorical_accuracy" in text[0] and "float 1" in text[0]
    assert text[3].startswith("fragile")


def test_metric_signature_detection():
    assert metric_inputs(lambda model: 0.0) == "model"
    assert metric_inputs(lambda y_true, y_pred: 0.0) == "labels"
    assert metric_inputs(keras.metrics.SparseCategoricalAccuracy()) == "labels"
    assert metric_inputs(keras.metrics.sparse_categorical_accuracy) == "labels"
    assert metric_inputs(keras.losses.MeanSquaredError()) == "labels"


def test_given_qmodel_keeps_its_state(weight_fragile, weight_qmodel):
    model, x, y = weight_fragile
    quantizers = all_model_quantizers(weight_qmodel)
    off = weight_qmodel.get_layer("quant_head").output_quantizer
    off.enabled = False  # switched off by the user: not analysed, still off afterwards
    ranges = [[np.asarray(v) for v in q.current_range()] for q in quantizers]
    try:
        table = sensitivity(None, (x[:32], y[:32]), lambda yt, yp: np.argmax(yp, -1) == yt,
                            qmodel=weight_qmodel, eager=True, sqnr=False)
        assert "head/output" not in table["head"].quantizers
        assert table["head"].activations_metric is None
        assert [q.enabled for q in quantizers] == [q is not off for q in quantizers]
        for q, (lo, hi) in zip(quantizers, ranges):
            np.testing.assert_array_equal(np.asarray(q.current_range()[0]), lo)
            np.testing.assert_array_equal(np.asarray(q.current_range()[1]), hi)
    finally:
        off.enabled = True


def test_label_metric_without_labels_is_explained(weight_fragile, weight_qmodel):
    _, x, _ = weight_fragile
    with pytest.raises(ValueError, match="needs labels"):
        sensitivity(None, x, keras.metrics.SparseCategoricalAccuracy(), qmodel=weight_qmodel)


@pytest.mark.parametrize("value, message", [(None, "returned None"),
                                            (float("nan"), "returned nan"),
                                            ("high", "must return a number")])
def test_a_metric_that_returns_no_number_is_refused(weight_fragile, weight_qmodel, value,
                                                    message):
    """A metric returning None/NaN/a string raised nothing and gave a table of NaNs."""
    _, x, _ = weight_fragile
    with pytest.raises(ValueError, match=message):
        sensitivity(None, x, lambda model: value, qmodel=weight_qmodel)
