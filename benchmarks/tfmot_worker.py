"""tfmot baseline worker: float training, tfmot QAT and TFLite int8 accuracy.

Runs in the separate ``.venv-tfmot`` virtual environment (TensorFlow + legacy
``tf_keras`` + ``tensorflow-model-optimization``) with ``TF_USE_LEGACY_KERAS=1``,
normally launched by :func:`benchmarks.common.run_tfmot`. It builds the *same*
architecture as the tfquant side (``tfquant/zoo.py`` with ``keras_module=tf_keras``)
on the same bundled data (``tfquant/datasets.py``), both loaded by file path so that
nothing else of ``tfquant`` (which needs Keras 3) is imported.

Protocol (each phase runs ``warmup_epochs + epochs`` epochs in one ``fit`` call; the
first ``warmup_epochs`` include tracing and are excluded from the steady per-epoch
time):

1. float: build, compile (Adam, sparse categorical cross-entropy), train, evaluate; or,
   with ``--init-weights W.npz`` (written by ``common.save_layer_weights`` from the Keras 3
   model of the same architecture), load those trained weights, train ``--epochs`` more
   (normally 0) and evaluate: then tfmot's QAT starts from exactly the float model the
   tfquant side quantizes;
2. QAT: ``tfmot.quantization.keras.quantize_model`` (or ``quantize_apply`` with the
   n-bit scheme), recompile, train, evaluate;
3. optionally convert the QAT model with ``Optimize.DEFAULT`` and int8 input/output and
   measure the accuracy of the TFLite interpreter on the test split.

With ``--fixed-order`` every ``fit`` runs one epoch at a time on the samples in the order
of ``common.epoch_orders(n, epochs, seed)`` (``shuffle=False``), the same batches in the
same order as the tfquant side sees with that helper.

Exactly one JSON object is printed on stdout (everything else goes to stderr); on
failure it has ``"ok": false`` with the error and traceback, and the exit code is 1.

Example::

    TF_USE_LEGACY_KERAS=1 .venv-tfmot/bin/python benchmarks/tfmot_worker.py \\
        --model small_cnn --dataset digits --epochs 1 --qat-epochs 1
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import statistics
import sys
import time
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, List, Optional, Sequence, Tuple

REPO_ROOT = Path(__file__).resolve().parents[1]


def _load_module_by_path(name: str, path: Path) -> ModuleType:
    """Imports one source file as a standalone module (no package ``__init__``).

    Args:
        name: Name to register in ``sys.modules``.
        path: The ``.py`` file.

    Returns:
        The executed module.
    """
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def parse_scheme(scheme: str) -> Tuple[str, int, int]:
    """Parses a ``--scheme`` value.

    Args:
        scheme: ``"8bit"`` / ``"default_8bit"`` (tfmot's default 8-bit scheme), or
            ``"w{W}a{A}"`` (e.g. ``"w4a4"``) or ``"nbit"`` (= ``"w4a4"``) for
            ``tfmot.quantization.keras.experimental.default_n_bit``.

    Returns:
        ``(kind, weight_bits, activation_bits)`` with ``kind`` ``"default_8bit"`` or
        ``"default_n_bit"``.

    Raises:
        ValueError: For an unknown scheme.
    """
    s = scheme.strip().lower()
    if s in ("8bit", "default_8bit", "default", "int8"):
        return "default_8bit", 8, 8
    if s in ("nbit", "default_n_bit", "n_bit"):
        return "default_n_bit", 4, 4
    m = re.fullmatch(r"w(\d+)a(\d+)", s)
    if m:
        return "default_n_bit", int(m.group(1)), int(m.group(2))
    raise ValueError(f"unknown scheme {scheme!r}; use '8bit', 'nbit' or 'w<bits>a<bits>'")


def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="small_cnn", help="builder name in tfquant/zoo.py")
    p.add_argument("--dataset", default="digits", choices=("digits", "mnist"))
    p.add_argument("--epochs", type=int, default=1, help="timed float epochs")
    p.add_argument("--qat-epochs", type=int, default=1, help="timed QAT epochs")
    p.add_argument("--warmup-epochs", type=int, default=1,
                   help="untimed epochs before the timed ones, in each phase")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", type=float, default=0.2, help="test fraction")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate, float")
    p.add_argument("--qat-lr", type=float, default=1e-4, help="Adam learning rate, QAT")
    p.add_argument("--scheme", default="8bit", help="'8bit', 'nbit' or 'w<bits>a<bits>'")
    p.add_argument("--tflite", action=argparse.BooleanOptionalAction, default=True,
                   help="convert the QAT model to int8 TFLite and measure its accuracy")
    p.add_argument("--save-tflite", default=None, help="write the .tflite file here")
    p.add_argument("--init-weights", default=None,
                   help=".npz of trained float weights by layer name (common.save_layer_weights)")
    p.add_argument("--fixed-order", action=argparse.BooleanOptionalAction, default=False,
                   help="train on common.epoch_orders(n, epochs, seed), one fit per epoch")
    p.add_argument("--threads", type=int, default=0,
                   help="TF intra/inter-op threads (0: TensorFlow's default)")
    return p.parse_args(argv)


class _EpochTimer:
    """Builds a tf_keras callback that records the wall time of every epoch."""

    @staticmethod
    def make(keras: Any, times: List[float]) -> Any:
        class EpochTimer(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
                self._t0 = time.perf_counter()

            def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
                times.append(time.perf_counter() - self._t0)

        return EpochTimer()


def _timing(times: List[float], warmup: int) -> Dict[str, Any]:
    timed = times[warmup:]
    return {
        "epoch_times_s": [round(t, 4) for t in times],
        "warmup_epochs": min(warmup, len(times)),
        "epoch_s": round(statistics.fmean(timed), 4) if timed else None,
        "epoch_s_median": round(statistics.median(timed), 4) if timed else None,
    }


def _fit(keras: Any, model: Any, x: Any, y: Any, epochs: int, args: argparse.Namespace,
         lr: float) -> Tuple[List[float], Dict[str, float]]:
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=lr),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=["accuracy"],
    )
    times: List[float] = []
    logs: Dict[str, float] = {}
    if epochs > 0 and args.fixed_order:
        from common import epoch_orders

        for order in epoch_orders(len(x), epochs, args.seed):
            hist = model.fit(x[order], y[order], batch_size=args.batch_size, epochs=1,
                             shuffle=False, verbose=0, callbacks=[_EpochTimer.make(keras, times)])
            logs = {k: float(v[-1]) for k, v in hist.history.items()}
    elif epochs > 0:
        hist = model.fit(x, y, batch_size=args.batch_size, epochs=epochs, shuffle=True,
                         verbose=0, callbacks=[_EpochTimer.make(keras, times)])
        logs = {k: float(v[-1]) for k, v in hist.history.items()}
    return times, logs


def _evaluate(model: Any, x: Any, y: Any, batch_size: int) -> Dict[str, float]:
    loss, acc = model.evaluate(x, y, batch_size=max(batch_size, 256), verbose=0)
    return {"test_loss": float(loss), "test_accuracy": float(acc)}


def _tflite_int8(tf: Any, qat_model: Any, x_test: Any, y_test: Any,
                 save_path: Optional[str]) -> Dict[str, Any]:
    import numpy as np

    t0 = time.perf_counter()
    converter = tf.lite.TFLiteConverter.from_keras_model(qat_model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    flatbuffer = converter.convert()
    convert_s = time.perf_counter() - t0
    if save_path:
        Path(save_path).parent.mkdir(parents=True, exist_ok=True)
        Path(save_path).write_bytes(flatbuffer)

    try:
        from ai_edge_litert.interpreter import Interpreter  # type: ignore[import-not-found]
        interpreter_name = "ai_edge_litert"
    except ImportError:
        Interpreter = tf.lite.Interpreter
        interpreter_name = "tf.lite"
    interp = Interpreter(model_content=flatbuffer)
    inp = interp.get_input_details()[0]
    interp.resize_tensor_input(inp["index"], [len(x_test), *x_test.shape[1:]])
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    out = interp.get_output_details()[0]
    in_scale, in_zp = inp["quantization"]
    out_scale, out_zp = out["quantization"]
    xq = np.clip(np.round(x_test / in_scale) + in_zp, -128, 127).astype(inp["dtype"])
    interp.set_tensor(inp["index"], xq)
    interp.invoke()
    yq = interp.get_tensor(out["index"])
    accuracy = float(np.mean(np.argmax(yq, axis=-1) == y_test))
    tensor_types = sorted({str(np.dtype(d["dtype"])) for d in interp.get_tensor_details()})
    return {
        "accuracy": accuracy,
        "size_bytes": len(flatbuffer),
        "convert_s": round(convert_s, 4),
        "input_dtype": str(np.dtype(inp["dtype"])),
        "output_dtype": str(np.dtype(out["dtype"])),
        "input_quantization": [float(in_scale), int(in_zp)],
        "output_quantization": [float(out_scale), int(out_zp)],
        "tensor_dtypes": tensor_types,
        "interpreter": interpreter_name,
    }


def run(args: argparse.Namespace) -> Dict[str, Any]:
    """Runs the whole protocol and returns the result dictionary."""
    t_start = time.perf_counter()
    if os.environ.get("TF_USE_LEGACY_KERAS") != "1":
        os.environ["TF_USE_LEGACY_KERAS"] = "1"
    zoo = _load_module_by_path("tfquant_zoo", REPO_ROOT / "tfquant" / "zoo.py")
    datasets = _load_module_by_path("tfquant_datasets", REPO_ROOT / "tfquant" / "datasets.py")

    import numpy as np
    import tensorflow as tf

    if args.threads > 0:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    import tf_keras as keras
    import tensorflow_model_optimization as tfmot

    kind, w_bits, a_bits = parse_scheme(args.scheme)
    keras.utils.set_random_seed(args.seed)

    (x_train, y_train), (x_test, y_test) = datasets.load(
        args.dataset, split=args.split, seed=args.seed)
    num_classes = int(np.max(y_train)) + 1
    t_import = time.perf_counter() - t_start

    model = zoo.build(args.model, x_train.shape[1:], num_classes, seed=args.seed,
                      keras_module=keras)
    warmup = max(args.warmup_epochs, 0)
    if args.init_weights:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from common import load_layer_weights

        load_layer_weights(model, Path(args.init_weights))
        warmup = 0 if args.epochs == 0 else warmup

    # 1. float training (or the given weights).
    float_epochs = warmup + args.epochs
    float_times, float_logs = _fit(keras, model, x_train, y_train, float_epochs, args, args.lr)
    float_result: Dict[str, Any] = {"epochs": args.epochs, **_timing(float_times, warmup)}
    float_result["init_weights"] = args.init_weights
    float_result["train_accuracy"] = float_logs.get("accuracy")
    float_result.update(_evaluate(model, x_test, y_test, args.batch_size))

    # 2. QAT.
    t0 = time.perf_counter()
    qk = tfmot.quantization.keras
    if kind == "default_8bit":
        qat_model = qk.quantize_model(model)
    else:
        n_bit = qk.experimental.default_n_bit
        scheme = n_bit.DefaultNBitQuantizeScheme(num_bits_weight=w_bits,
                                                 num_bits_activation=a_bits)
        with qk.quantize_scope():
            qat_model = qk.quantize_apply(qk.quantize_annotate_model(model), scheme=scheme)
    quantize_s = time.perf_counter() - t0
    qat_model.compile(loss=keras.losses.SparseCategoricalCrossentropy(), metrics=["accuracy"])
    before = _evaluate(qat_model, x_test, y_test, args.batch_size)["test_accuracy"]
    qat_times, qat_logs = _fit(keras, qat_model, x_train, y_train, warmup + args.qat_epochs,
                               args, args.qat_lr)
    qat_result: Dict[str, Any] = {"epochs": args.qat_epochs, **_timing(qat_times, warmup)}
    qat_result["quantize_model_s"] = round(quantize_s, 4)
    qat_result["test_accuracy_before_training"] = before
    qat_result["train_accuracy"] = qat_logs.get("accuracy")
    qat_result.update(_evaluate(qat_model, x_test, y_test, args.batch_size))
    qat_result["params"] = int(qat_model.count_params())

    # 3. TFLite int8.
    tflite_result: Optional[Dict[str, Any]] = None
    if args.tflite:
        try:
            tflite_result = _tflite_int8(tf, qat_model, x_test, y_test, args.save_tflite)
        except Exception as err:  # reported, not fatal: the timings are still valid
            tflite_result = {"error": f"{type(err).__name__}: {err}"}

    return {
        "ok": True,
        "framework": "tfmot",
        "model": args.model,
        "dataset": args.dataset,
        "input_shape": list(x_train.shape[1:]),
        "num_classes": num_classes,
        "n_train": int(len(x_train)),
        "n_test": int(len(x_test)),
        "batch_size": args.batch_size,
        "steps_per_epoch": -(-len(x_train) // args.batch_size),
        "seed": args.seed,
        "lr": args.lr,
        "qat_lr": args.qat_lr,
        "fixed_order": bool(args.fixed_order),
        "scheme": {"name": kind, "weight_bits": w_bits, "activation_bits": a_bits},
        "params": int(model.count_params()),
        "float": float_result,
        "qat": qat_result,
        "tflite": tflite_result,
        "setup_s": round(t_import, 4),
        "wall_s": round(time.perf_counter() - t_start, 4),
        "versions": {
            "python": platform.python_version(),
            "tensorflow": tf.__version__,
            "tf_keras": keras.__version__,
            "tfmot": getattr(tfmot, "__version__", "unknown"),
            "numpy": np.__version__,
        },
        "host": {
            "cpu_count": os.cpu_count(),
            "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
            "platform": platform.platform(),
        },
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point: runs the protocol and prints one JSON object on stdout.

    Args:
        argv: Command-line arguments (``sys.argv[1:]`` when ``None``).

    Returns:
        The process exit code (0 on success, 1 on failure).
    """
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = _parse_args(argv)
    real_stdout = sys.stdout
    sys.stdout = sys.stderr  # keep stdout for the single JSON line
    try:
        result = run(args)
        code = 0
    except Exception as err:
        result = {
            "ok": False,
            "framework": "tfmot",
            "error": f"{type(err).__name__}: {err}",
            "traceback": traceback.format_exc(),
            "args": vars(args),
        }
        code = 1
    finally:
        sys.stdout = real_stdout
    real_stdout.write(json.dumps(result) + "\n")
    real_stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
