"""Tables and checks of ``benchmarks/accuracy.py`` results, for one seed or several.

This module imports only the standard library and ``common`` (no TensorFlow), so results files
can be re-tabulated, and the aggregation tested, without the training stack:

* :func:`targets` / :func:`accuracy_table`: the target checks and the accuracy table of one run
  (``{dataset: {model: {variant: {"accuracy": ...}}}}``);
* :func:`resolve_variants`: the ``--variants`` names checked, plus the rows they need;
* :func:`tfmot_row` / :func:`with_tfmot_rows`: the ``tfmot_qat`` rows from the worker jobs;
* :func:`seed_summary`: per (dataset, model, variant), the accuracy of every seed and their
  mean, min, max and sample standard deviation;
* :func:`qat_vs_tfmot`: the paired comparison of tfquant QAT with tfmot QAT over seeds;
* :func:`seeds_report`: both, with their markdown tables.

Example::

    per_seed = {0: {"digits": {"small_cnn": {"qat": {"accuracy": 0.97},
                                             "tfmot_qat": {"accuracy": 0.96}}}},
                1: {"digits": {"small_cnn": {"qat": {"accuracy": 0.95},
                                             "tfmot_qat": {"accuracy": 0.96}}}}}
    qat_vs_tfmot(per_seed)[0]["diff_mean_pp"]   # 0.0 (+1 pp and -1 pp)
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Mapping, Sequence

from common import markdown_table

OBSERVERS = ("minmax", "percentile", "mse")
VARIANTS = ("float", "tflite_ptq", *(f"ptq_{o}" for o in OBSERVERS), "ptq_cle_bc_adaround",
            "qat", "qat_from_ptq", "tfmot_qat", "w4a8_nearest", "w4a8_adaround", "w8a8_per_tensor",
            "w8a8_per_tensor_cle")

Results = Mapping[str, Mapping[str, Mapping[str, Any]]]   # dataset -> model -> variant -> row


def _acc(rows: Mapping[str, Any], variant: str) -> float | None:
    return (rows.get(variant) or {}).get("accuracy")


def _pct(v: float) -> str:
    return f"{100 * v:.2f}"


def targets(results: Results, observer: str = "mse") -> list[dict[str, Any]]:
    """Checks the benchmark's targets on every (dataset, model) pair of one run.

    The int8 PTQ targets use the variant fixed in advance (``ptq_<observer>``, the observer of
    ``--observer``), not the best row chosen on the test split; the best row is shown too.
    A target whose variants were not run has ``met`` None.

    Example::

        targets({"digits": {"small_cnn": {"qat": {"accuracy": 0.97},
                                          "tfmot_qat": {"accuracy": 0.96}}}})
    """
    rows = []
    for dataset, per_model in results.items():
        for name, r in per_model.items():
            f, conv = _acc(r, "float"), _acc(r, "tflite_ptq")
            int8 = _acc(r, f"ptq_{observer}")
            tried = {v: _acc(r, v) for v in (*(f"ptq_{o}" for o in OBSERVERS),
                                             "ptq_cle_bc_adaround") if _acc(r, v) is not None}
            best = max(tried, key=tried.get) if tried else None
            qat, tfmot = _acc(r, "qat"), _acc(r, "tfmot_qat")
            tfmot_float = (r.get("tfmot_qat") or {}).get("float_keras_accuracy")
            keras_float = (r.get("float") or {}).get("keras_accuracy")
            qat_ptq = _acc(r, "qat_from_ptq")
            near, ada = _acc(r, "w4a8_nearest"), _acc(r, "w4a8_adaround")
            pt, pt_cle = _acc(r, "w8a8_per_tensor"), _acc(r, "w8a8_per_tensor_cle")

            def row(target, value, met):
                rows.append({"dataset": dataset, "model": name, "target": target,
                             "value": value, "met": None if met is None else bool(met)})

            ok = None if None in (int8, conv) else int8 >= conv
            row(f"tfquant int8 PTQ (ptq_{observer}) >= TFLite converter PTQ",
                None if ok is None else f"{_pct(int8)} vs {_pct(conv)} (best tfquant row: "
                f"{best} {_pct(tried[best])})", ok)
            ok = None if None in (int8, f) else f - int8 <= 0.003 + 1e-9
            row(f"tfquant int8 PTQ (ptq_{observer}) within 0.3 pp of float",
                None if ok is None else f"drop {100 * (f - int8):.2f} pp", ok)
            ok = None if None in (qat, tfmot) else qat >= tfmot
            value = None
            if ok is not None:
                value = f"{_pct(qat)} vs {_pct(tfmot)}"
                if qat_ptq is not None:
                    value += f" (qat_from_ptq {_pct(qat_ptq)})"
                if tfmot_float is not None and keras_float is not None:
                    same = abs(tfmot_float - keras_float) < 1e-9
                    value += (f"; same float start: {'yes' if same else 'NO'} (Keras "
                              f"{_pct(keras_float)}, tf_keras {_pct(tfmot_float)})")
            row("tfquant QAT >= tfmot QAT", value, ok)
            if None not in (f, near, ada):
                gap = f - near
                recovered = 1.0 if gap <= 0 else (ada - near) / gap
                row("AdaRound recovers >= 80% of the W4A8 gap",
                    f"{100 * recovered:.0f}% of {100 * gap:.2f} pp", recovered >= 0.8 - 1e-9)
            else:
                row("AdaRound recovers >= 80% of the W4A8 gap", None, None)
            if name == "mobilenet_v2_style":
                ok = None if None in (pt, pt_cle) else pt_cle > pt
                row("CLE improves per-tensor MobileNetV2-style",
                    None if ok is None else f"{_pct(pt)} -> {_pct(pt_cle)} (float {_pct(f)})", ok)
    return rows


def resolve_variants(names: list[str], observer: str) -> list[str]:
    """The variants to run: ``names`` plus what they need, in ``VARIANTS`` order.

    ``qat_from_ptq`` starts from the calibrated ``ptq_<observer>`` model, so that row is run too
    (when ``observer`` is one of ``OBSERVERS``; otherwise ``qat_from_ptq`` is skipped, as
    before). The float model is always trained; ``float`` is its TFLite row.

    Raises:
        ValueError: for names not in ``VARIANTS`` (the message names them and the valid ones).

    Example::

        resolve_variants(["qat_from_ptq"], "mse")   # ['ptq_mse', 'qat_from_ptq']
    """
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; valid names: {', '.join(VARIANTS)}")
    chosen = set(names)
    if "qat_from_ptq" in chosen and observer in OBSERVERS:
        chosen.add(f"ptq_{observer}")
    return [v for v in VARIANTS if v in chosen]


def tfmot_row(future: Any) -> dict[str, Any]:
    """The ``tfmot_qat`` row from a finished (or failed) tfmot job (a future of
    ``common.run_tfmot``'s result; None: the baseline was not run)."""
    if future is None:
        return {"accuracy": None, "error": "tfmot baseline not run"}
    try:
        r = future.result()
    except Exception as err:
        return {"accuracy": None, "error": f"{type(err).__name__}: {err}"[:3000]}
    return {"accuracy": (r.get("tflite") or {}).get("accuracy"),
            "float_keras_accuracy": r["float"]["test_accuracy"],
            "qat_keras_accuracy_before_training": r["qat"].get("test_accuracy_before_training"),
            "qat_keras_accuracy": r["qat"]["test_accuracy"],
            "init_weights": "same float weights as tfquant (npz)",
            "fixed_order": r.get("fixed_order"),
            "error": (r.get("tflite") or {}).get("error"), "wall_s": r.get("wall_s")}


def with_tfmot_rows(results: Results, futures: Mapping[tuple, Any], seed: int,
                    final: bool) -> dict[str, dict[str, dict[str, Any]]]:
    """A copy of one seed's ``results`` with the ``tfmot_qat`` rows of its jobs.

    Args:
        results: ``{dataset: {model: {variant: row}}}`` of seed ``seed``.
        futures: ``{(seed, dataset, model): future or None}``; pairs without an entry get no
            ``tfmot_qat`` row, None gives the "not run" row.
        seed: the seed of ``results``.
        final: wait for unfinished jobs (otherwise they get a "not finished" row).

    Example::

        with_tfmot_rows({"d": {"m": {}}}, {(0, "d", "m"): None}, 0, final=True)
        # {'d': {'m': {'tfmot_qat': {'accuracy': None, 'error': 'tfmot baseline not run'}}}}
    """
    out = {}
    for d, per in results.items():
        out[d] = {}
        for m, r in per.items():
            out[d][m] = dict(r)
            if (seed, d, m) not in futures:
                continue
            future = futures[(seed, d, m)]
            out[d][m]["tfmot_qat"] = (
                tfmot_row(future) if final or future is None or future.done()
                else {"accuracy": None, "error": "not finished"})
    return out


def _variants_present(per_run: Sequence[Results]) -> list[str]:
    """The variants of ``VARIANTS`` (in that order, then any others) some run has a row for."""
    seen = {v for results in per_run for per in results.values() for r in per.values()
            for v in r}
    return [v for v in VARIANTS if v in seen] + sorted(seen - set(VARIANTS))


def accuracy_table(results: Results) -> str:
    """Markdown table of one run: a row per variant that was run, a column per pair, in %."""
    columns = [f"{d}/{m}" for d, per in results.items() for m in per]
    rows = []
    for variant in _variants_present([results]):
        row = {"variant": variant}
        for d, per in results.items():
            for m, r in per.items():
                a = _acc(r, variant)
                row[f"{d}/{m}"] = None if a is None else round(100 * a, 2)
        rows.append(row)
    return markdown_table(rows, ["variant", *columns], floatfmt=".2f")


def _stats_pct(values: Sequence[float]) -> dict[str, float | None]:
    """Mean, min, max and sample standard deviation (n - 1; None below 2 values), in %."""
    pct = [100 * v for v in values]
    if not pct:
        return {"mean_pct": None, "min_pct": None, "max_pct": None, "std_pct": None}
    return {"mean_pct": round(statistics.fmean(pct), 4), "min_pct": round(min(pct), 4),
            "max_pct": round(max(pct), 4),
            "std_pct": round(statistics.stdev(pct), 4) if len(pct) > 1 else None}


def seed_summary(per_seed: Mapping[Any, Results]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per (dataset, model, variant): the accuracy of each seed and their statistics.

    Args:
        per_seed: ``{seed: {dataset: {model: {variant: {"accuracy": a, ...}}}}}``.

    Returns:
        ``{dataset: {model: {variant: {"accuracy_per_seed": {seed: a}, "n": k,
        "failed_seeds": [...], "mean_pct", "min_pct", "max_pct", "std_pct"}}}}``; statistics
        over the seeds whose accuracy is not None; ``std_pct`` is the sample standard
        deviation (n - 1), None with fewer than 2 seeds.

    Example::

        seed_summary({0: {"d": {"m": {"qat": {"accuracy": 0.9}}}},
                      1: {"d": {"m": {"qat": {"accuracy": 0.8}}}}})["d"]["m"]["qat"]["mean_pct"]
        # 85.0
    """
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    variants = _variants_present(list(per_seed.values()))
    for seed, results in per_seed.items():
        for dataset, per_model in results.items():
            for name in per_model:
                summary.setdefault(dataset, {}).setdefault(name, {})
    for dataset, per_model in summary.items():
        for name in per_model:
            for variant in variants:
                per = {str(s): _acc(res.get(dataset, {}).get(name, {}), variant)
                       for s, res in per_seed.items()
                       if variant in res.get(dataset, {}).get(name, {})}
                if not per:
                    continue
                ok = [a for a in per.values() if a is not None]
                per_model[name][variant] = {
                    "accuracy_per_seed": per, "n": len(ok),
                    "failed_seeds": [s for s, a in per.items() if a is None], **_stats_pct(ok)}
    return summary


def qat_vs_tfmot(per_seed: Mapping[Any, Results],
                 n_test: Mapping[str, int] | None = None) -> list[dict[str, Any]]:
    """The "tfquant QAT >= tfmot QAT" target over seeds, paired by seed, per (dataset, model).

    Args:
        per_seed: as for :func:`seed_summary`.
        n_test: test-split size per dataset (optional): the mean difference is given in test
            images too.

    Returns:
        One dict per pair that has ``qat`` or ``tfmot_qat`` rows: the seeds with both
        accuracies (``n``), per-seed accuracies (%) and differences (pp), the means (%), the
        number of seeds where tfquant >= tfmot, and the paired mean difference tfquant - tfmot
        in pp with its standard error (sample std of the differences / sqrt(n); None for
        n < 2).

    Example::

        qat_vs_tfmot({0: {"d": {"m": {"qat": {"accuracy": 0.97},
                                      "tfmot_qat": {"accuracy": 0.96}}}}})[0]["n_tfquant_ge"]
        # 1
    """
    rows = []
    pairs = {(d, m): None for res in per_seed.values() for d, per in res.items() for m in per}
    for dataset, name in pairs:
        per = {str(s): (_acc(res.get(dataset, {}).get(name, {}), "qat"),
                        _acc(res.get(dataset, {}).get(name, {}), "tfmot_qat"))
               for s, res in per_seed.items()}
        if all(q is None and t is None for q, t in per.values()):
            continue
        both = {s: (q, t) for s, (q, t) in per.items() if q is not None and t is not None}
        diffs = [100 * (q - t) for q, t in both.values()]
        n = len(both)
        mean = statistics.fmean(diffs) if diffs else None
        se = statistics.stdev(diffs) / math.sqrt(n) if n > 1 else None
        row = {
            "dataset": dataset, "model": name, "n": n,
            "seeds_missing_a_side": [s for s in per if s not in both],
            "tfquant_pct_per_seed": {s: round(100 * q, 4) for s, (q, _) in both.items()},
            "tfmot_pct_per_seed": {s: round(100 * t, 4) for s, (_, t) in both.items()},
            "diff_pp_per_seed": {s: round(100 * (q - t), 4) for s, (q, t) in both.items()},
            "tfquant_mean_pct": round(100 * statistics.fmean(q for q, _ in both.values()), 4)
            if n else None,
            "tfmot_mean_pct": round(100 * statistics.fmean(t for _, t in both.values()), 4)
            if n else None,
            "n_tfquant_ge": sum(q >= t for q, t in both.values()),
            "diff_mean_pp": None if mean is None else round(mean, 4),
            "diff_se_pp": None if se is None else round(se, 4),
        }
        if n_test and dataset in n_test and mean is not None:
            row["diff_mean_test_images"] = round(mean / 100 * n_test[dataset], 2)
        rows.append(row)
    return rows


def _fmt_pm(mean: float | None, spread: float | None) -> str | None:
    if mean is None:
        return None
    return f"{mean:+.2f}" + ("" if spread is None else f" ± {spread:.2f}")


def qat_vs_tfmot_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Markdown table of :func:`qat_vs_tfmot` rows."""
    table = [{"dataset": r["dataset"], "model": r["model"], "seeds": r["n"],
              "tfquant QAT mean %": r["tfquant_mean_pct"], "tfmot QAT mean %": r["tfmot_mean_pct"],
              "tfquant >= tfmot": f"{r['n_tfquant_ge']}/{r['n']}",
              "diff pp (mean ± SE)": _fmt_pm(r["diff_mean_pp"], r["diff_se_pp"]),
              "diff images": r.get("diff_mean_test_images"),
              "per-seed diff pp": ", ".join(f"{s}: {d:+.2f}"
                                            for s, d in r["diff_pp_per_seed"].items())}
             for r in rows]
    return markdown_table(table, ["dataset", "model", "seeds", "tfquant QAT mean %",
                                  "tfmot QAT mean %", "tfquant >= tfmot", "diff pp (mean ± SE)",
                                  "diff images", "per-seed diff pp"], floatfmt=".2f")


def summary_table(summary: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
    """Markdown table of :func:`seed_summary`: "mean ± std [min, max]" (%) per variant/pair."""
    columns = [f"{d}/{m}" for d, per in summary.items() for m in per]
    seen = {v for per in summary.values() for r in per.values() for v in r}
    rows = []
    for variant in [v for v in VARIANTS if v in seen] + sorted(seen - set(VARIANTS)):
        row = {"variant": variant}
        for d, per in summary.items():
            for m, r in per.items():
                s = r.get(variant)
                if s and s["mean_pct"] is not None:
                    row[f"{d}/{m}"] = (f"{s['mean_pct']:.2f}"
                                       + ("" if s["std_pct"] is None else f" ± {s['std_pct']:.2f}")
                                       + f" [{s['min_pct']:.2f}, {s['max_pct']:.2f}]"
                                       + (f" ({len(s['failed_seeds'])} failed)"
                                          if s["failed_seeds"] else ""))
        rows.append(row)
    return markdown_table(rows, ["variant", *columns])


def seeds_report(per_seed: Mapping[Any, Results], observer: str = "mse",
                 n_test: Mapping[str, int] | None = None) -> dict[str, Any]:
    """Summary, QAT comparison, per-seed targets and markdown tables of a multi-seed run.

    Example::

        report = seeds_report(per_seed)        # per_seed as for seed_summary
        print(report["markdown"]["qat_vs_tfmot"])
    """
    summary = seed_summary(per_seed)
    qat = qat_vs_tfmot(per_seed, n_test)
    return {"summary": summary, "qat_vs_tfmot": qat,
            "targets_per_seed": {str(s): targets(r, observer) for s, r in per_seed.items()},
            "markdown": {"summary": summary_table(summary),
                         "qat_vs_tfmot": qat_vs_tfmot_table(qat)}}
