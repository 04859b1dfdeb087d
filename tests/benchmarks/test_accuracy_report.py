"""The multi-seed aggregation of ``benchmarks/accuracy.py`` (``benchmarks/accuracy_report.py``),
checked against hand-worked statistics. No TensorFlow: the module is pure Python."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import accuracy_report  # noqa: E402


def _run(qat, tfmot, float_acc="not run"):
    """One seed's results; an accuracy of None is a failed row."""
    rows = {"qat": {"accuracy": qat}, "tfmot_qat": {"accuracy": tfmot}}
    if float_acc != "not run":
        rows["float"] = {"accuracy": float_acc}
    return {"digits": {"small_cnn": rows}}


PER_SEED = {
    0: _run(0.97, 0.96, 0.90),
    1: _run(0.95, 0.96, 0.80),
    2: _run(0.96, 0.96, None),   # float failed on this seed
    3: _run(0.98, None, 0.85),   # tfmot failed on this seed
}


def test_qat_vs_tfmot_pairs_by_seed_and_skips_a_missing_side():
    (row,) = accuracy_report.qat_vs_tfmot(PER_SEED, n_test={"digits": 359})
    # seeds 0..2 paired: differences +1, -1, 0 pp
    assert row["n"] == 3
    assert row["seeds_missing_a_side"] == ["3"]
    assert row["n_tfquant_ge"] == 2                      # +1 and the tie
    assert row["tfquant_mean_pct"] == pytest.approx(96.0)
    assert row["tfmot_mean_pct"] == pytest.approx(96.0)
    assert row["diff_mean_pp"] == pytest.approx(0.0, abs=1e-9)
    # sample std of (1, -1, 0) is 1, so SE = 1 / sqrt(3)
    assert row["diff_se_pp"] == pytest.approx(1 / math.sqrt(3), abs=1e-4)
    assert row["diff_pp_per_seed"] == pytest.approx({"0": 1.0, "1": -1.0, "2": 0.0})


def test_qat_vs_tfmot_difference_in_test_images():
    per_seed = {0: _run(0.97, 0.96), 1: _run(0.96, 0.96)}
    (row,) = accuracy_report.qat_vs_tfmot(per_seed, n_test={"digits": 359})
    assert row["diff_mean_pp"] == pytest.approx(0.5)
    assert row["diff_mean_test_images"] == pytest.approx(0.005 * 359, abs=0.01)
    assert row["diff_se_pp"] == pytest.approx(0.5)       # std of (1, 0) = 1/sqrt(2); / sqrt(2)


def test_seed_summary_statistics_over_the_seeds_that_ran():
    summary = accuracy_report.seed_summary(PER_SEED)["digits"]["small_cnn"]
    f = summary["float"]
    assert f["n"] == 3 and f["failed_seeds"] == ["2"]
    assert f["mean_pct"] == pytest.approx(85.0)
    assert (f["min_pct"], f["max_pct"]) == pytest.approx((80.0, 90.0))
    assert f["std_pct"] == pytest.approx(5.0)            # sample std of 90, 80, 85
    t = summary["tfmot_qat"]
    assert t["n"] == 3 and t["failed_seeds"] == ["3"] and t["std_pct"] == pytest.approx(0.0)


def test_one_seed_has_no_spread():
    s = accuracy_report.seed_summary({0: _run(0.9, 0.8)})["digits"]["small_cnn"]["qat"]
    assert s["std_pct"] is None and s["mean_pct"] == pytest.approx(90.0)
    (row,) = accuracy_report.qat_vs_tfmot({0: _run(0.9, 0.8)})
    assert row["diff_se_pp"] is None and row["diff_mean_pp"] == pytest.approx(10.0)


def test_resolve_variants_adds_dependencies_and_names_unknown_ones():
    assert accuracy_report.resolve_variants(["qat_from_ptq", "float"], "mse") == [
        "float", "ptq_mse", "qat_from_ptq"]
    with pytest.raises(ValueError, match=r"\['bogus', 'qat_tfmot'\]"):
        accuracy_report.resolve_variants(["qat", "bogus", "qat_tfmot"], "mse")


def test_with_tfmot_rows_marks_unfinished_and_missing_jobs():
    class Pending:
        def done(self):
            return False

    results = {"digits": {"small_cnn": {"qat": {"accuracy": 0.9}}, "resnet_style": {}}}
    futures = {(0, "digits", "small_cnn"): Pending(), (0, "digits", "resnet_style"): None}
    out = accuracy_report.with_tfmot_rows(results, futures, 0, final=False)
    assert out["digits"]["small_cnn"]["tfmot_qat"]["error"] == "not finished"
    assert out["digits"]["resnet_style"]["tfmot_qat"]["error"] == "tfmot baseline not run"
    assert "tfmot_qat" not in results["digits"]["small_cnn"]     # the input is not changed
