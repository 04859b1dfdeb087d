"""LSQ W4A4 on the MobileNetV2-style model: accuracy vs float, and what TFLite makes of it.

Train ``zoo.mobilenet_v2_style`` in float once (seed 0, Adam ``--lr``, ``--float-epochs``,
batch ``--batch-size``), then, once per seed of ``--seeds``: quantize it with
``config="lsq_w4a4"`` (4-bit per-channel LSQ weights, 4-bit LSQ+ activations, 8-bit first/last
layers), fine-tune ``--qat-epochs`` epochs, export with ``tfquant.export.tflite`` (float32
input/output) and report

* float, Keras W4A4 and TFLite accuracies on the test split, and the argmax agreement of the
  TFLite model with the Keras model, for the reference kernels (``BUILTIN_REF``) and the
  default XNNPACK path; per seed, and the mean over seeds (single runs differ by ~1 pp);
* a per-layer table (teacher forcing: every Keras layer is run on TFLite's own input tensor,
  reference kernels): the largest difference in b-bit steps and the fraction of elements off.

The QAT recipe (defaults; each switch is an option, so the plain LSQ recipe is
``--init first_batch --bn-freeze-step -1 --lr-schedule constant --qat-batch-size 64``):

* ranges start from ``tfquant.calibrate`` with the MSE observer (512 training images) instead of
  LSQ's first-batch rule (at 4 bits a min/max first batch leaves most levels unused);
* folded BatchNorms keep their moving statistics (``bn_freeze_step=0``), so the short
  fine-tuning trains exactly the inference-time folded weights (as AIMET folds BN before QAT);
* Adam ``--qat-lr`` 1e-3 with cosine decay to 0 over the QAT steps, batch 32.

``--container padded`` re-exports with the previous representation (the b-bit grid padded to
256 levels, same step) for comparison; ``fine`` (default) is the shipped one (b-bit integers
shifted left by ``8 - b``).

Usage::

    .venv/bin/python benchmarks/lsq_w4a4_tflite.py --dataset digits
    .venv/bin/python benchmarks/lsq_w4a4_tflite.py --dataset mnist --float-epochs 15 \
        --float-cache /tmp/mnist_float.keras

Writes ``benchmarks/results/lsq_w4a4_tflite_<dataset>[_padded][_<tag>].json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import contextlib
import io
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_results  # noqa: E402

import numpy as np  # noqa: E402


def _run_tflite(flatbuffer: bytes, x: np.ndarray, reference: bool):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    kwargs = {}
    if reference:
        kwargs = dict(experimental_op_resolver_type=OpResolverType.BUILTIN_REF,
                      experimental_preserve_all_tensors=True)
    interp = Interpreter(model_content=bytes(flatbuffer), **kwargs)
    inp = interp.get_input_details()[0]
    interp.resize_tensor_input(inp["index"], [len(x), *x.shape[1:]])
    interp.allocate_tensors()
    interp.set_tensor(inp["index"], x.astype(np.float32))
    interp.invoke()
    return interp


def per_layer_table(qmodel, interp, x) -> list:
    """Teacher-forced per-layer comparison (see the module docstring)."""
    import keras

    from tfquant.layers import QuantizeWrapper

    details = {t["index"]: t for t in interp.get_tensor_details()}
    names = [layer.name for layer in qmodel.layers]
    last = {}
    for op in interp._get_ops_details():  # noqa: SLF001
        out = op["outputs"][0]
        tensor_name = details[out]["name"]
        hits = [n for n in names if f"{n}_1/" in tensor_name]
        if hits:
            last[min(hits, key=lambda n: tensor_name.find(f"{n}_1/"))] = (out, op["op_name"])

    def dequantized(index):
        scale, zero = details[index]["quantization"]
        return (interp.get_tensor(index).astype(np.float32) - zero) * scale

    values = {names[0]: x.astype(np.float32)}
    rows = []
    for layer in qmodel.layers[1:]:
        sources = [t._keras_history.operation.name
                   for t in layer._inbound_nodes[0].input_tensors]
        inputs = [values[s] for s in sources]
        y = np.asarray(layer(inputs if len(inputs) > 1 else inputs[0], training=False))
        values[layer.name] = y
        if not (isinstance(layer, QuantizeWrapper) and layer.output_quantizer is not None):
            continue
        if layer.name not in last or layer.name == "quant_predictions":
            continue
        params = layer.output_quantizer.quant_params()
        got = dequantized(last[layer.name][0])
        off = np.abs(got - y) / float(params.scale)
        rows.append({"layer": layer.layer.name, "type": type(layer.layer).__name__,
                     "bits": params.bits, "max_diff_steps": round(float(off.max()), 3),
                     "fraction_off": float(np.mean(off > 0.5)), "elements": int(off.size)})
        values[layer.name] = got
    del keras
    return rows


def _train_float(args, x_train, y_train):
    import keras

    from tfquant import zoo

    keras.utils.set_random_seed(0)
    cache = Path(args.float_cache) if args.float_cache else None
    if cache is not None and cache.exists():
        return keras.models.load_model(cache)
    model = zoo.mobilenet_v2_style(x_train.shape[1:], 10, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(args.lr),
                  loss="sparse_categorical_crossentropy")
    model.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.float_epochs, verbose=0)
    if cache is not None:
        model.save(cache)
    return model


def _qat(args, model, seed, x_train, y_train, x_test, y_test):
    """One seeded W4A4 QAT run; returns the model and its accuracy before and after QAT."""
    import keras

    import tfquant

    keras.utils.set_random_seed(seed)
    config = tfquant.QuantConfig.preset("lsq_w4a4")
    if args.bn_freeze_step is not None:
        config.global_spec = dataclasses.replace(config.global_spec,
                                                 bn_freeze_step=args.bn_freeze_step)
    if args.init == "adaround":
        qmodel = tfquant.ptq(model, x_train[:args.calibration_samples], config=config,
                             methods=("adaround",), observer="mse", weight_observer="mse",
                             iterations=args.adaround_iterations, verbose=0)
    else:
        qmodel = tfquant.quantize_model(model, config=config)
    if args.init == "mse":
        tfquant.calibrate(qmodel, x_train[:args.calibration_samples], observer="mse",
                          weight_observer="mse", verbose=0)
    before = float(np.mean(qmodel.predict(x_test, verbose=0).argmax(-1) == y_test))
    lr = args.qat_lr
    if args.lr_schedule == "cosine":
        steps = args.qat_epochs * int(np.ceil(len(x_train) / args.qat_batch_size))
        lr = keras.optimizers.schedules.CosineDecay(args.qat_lr, steps)
    qmodel.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy")
    qmodel.fit(x_train, y_train, batch_size=args.qat_batch_size, epochs=args.qat_epochs,
               verbose=0)
    return qmodel, before


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="digits", choices=("digits", "mnist"))
    p.add_argument("--float-epochs", type=int, default=20)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=64, help="float training batch size")
    p.add_argument("--qat-epochs", type=int, default=2)
    p.add_argument("--qat-lr", type=float, default=1e-3)
    p.add_argument("--qat-batch-size", type=int, default=32)
    p.add_argument("--lr-schedule", default="cosine", choices=("constant", "cosine"),
                   help="QAT learning rate: constant, or cosine decay to 0 over the QAT steps")
    p.add_argument("--adaround-iterations", type=int, default=1000)
    p.add_argument("--init", default="mse", choices=("first_batch", "mse", "adaround"),
                   help="ranges before QAT: LSQ's first-batch rule, tfquant.calibrate (MSE "
                        "observer for weights and activations), or tfquant.ptq with AdaRound "
                        "(BN folded, MSE ranges, --adaround-iterations)")
    p.add_argument("--calibration-samples", type=int, default=512)
    p.add_argument("--bn-freeze-step", type=int, default=0,
                   help="folded BNs use their moving statistics from this QAT step on "
                        "(-1: never, batch statistics throughout)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                   help="one QAT run per seed (same float model)")
    p.add_argument("--container", default="fine", choices=("fine", "padded"))
    p.add_argument("--float-cache", default=None, help="load/save the float model here")
    p.add_argument("--tag", default="", help="appended to the results file name")
    args = p.parse_args(argv)
    if args.bn_freeze_step < 0:
        args.bn_freeze_step = None

    import tfquant
    import tfquant.fake_quant as fq
    from tfquant import datasets

    if args.container == "padded":  # the previous representation, for comparison only
        padded = fq._padded_container_range
        fq._fine_container_range = lambda lo, hi, bits, narrow: padded(lo, hi, bits, narrow)[2:]

    (x_train, y_train), (x_test, y_test) = datasets.load(args.dataset)
    t0 = time.perf_counter()
    model = _train_float(args, x_train, y_train)
    float_acc = float(np.mean(model.predict(x_test, verbose=0).argmax(-1) == y_test))

    runs, per_layer = [], None
    for seed in args.seeds:
        qmodel, before = _qat(args, model, seed, x_train, y_train, x_test, y_test)
        keras_pred = qmodel.predict(x_test, verbose=0).argmax(-1)
        keras_acc = float(np.mean(keras_pred == y_test))
        with contextlib.redirect_stdout(io.StringIO()):
            flatbuffer = tfquant.export.tflite(qmodel)
        run = {"seed": seed, "before_qat_acc": before, "keras_w4a4_acc": keras_acc,
               "delta_keras_pp": round(100 * (keras_acc - float_acc), 2)}
        for label, reference in (("reference", True), ("xnnpack", False)):
            interp = _run_tflite(flatbuffer, x_test, reference)
            pred = interp.get_tensor(interp.get_output_details()[0]["index"]).argmax(-1)
            run[f"tflite_{label}_acc"] = float(np.mean(pred == y_test))
            run[f"tflite_{label}_agreement"] = float(np.mean(pred == keras_pred))
        runs.append(run)
        print(run, flush=True)
        if per_layer is None:
            n = min(len(x_test), 300)
            per_layer = per_layer_table(qmodel, _run_tflite(flatbuffer, x_test[:n], True),
                                        x_test[:n])

    def mean(key):
        return round(float(np.mean([r[key] for r in runs])), 4)

    result = {"dataset": args.dataset, "container": args.container,
              "float_epochs": args.float_epochs, "qat_epochs": args.qat_epochs,
              "qat_lr": args.qat_lr, "qat_batch_size": args.qat_batch_size,
              "lr_schedule": args.lr_schedule, "init": args.init,
              "bn_freeze_step": args.bn_freeze_step, "seeds": args.seeds,
              "float_acc": float_acc, "keras_w4a4_acc_mean": mean("keras_w4a4_acc"),
              "delta_keras_pp_mean": round(100 * (mean("keras_w4a4_acc") - float_acc), 2),
              "delta_keras_pp_worst": min(r["delta_keras_pp"] for r in runs),
              "tflite_reference_acc_mean": mean("tflite_reference_acc"),
              "tflite_xnnpack_acc_mean": mean("tflite_xnnpack_acc"),
              "target": "Keras W4A4 within 1 pp of float",
              "runs": runs, "per_layer_reference": per_layer,
              "per_layer_reference_seed": args.seeds[0]}
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    suffix = ("" if args.container == "fine" else f"_{args.container}") + (
        f"_{args.tag}" if args.tag else "")
    write_results(f"lsq_w4a4_tflite_{args.dataset}{suffix}", result)
    for key, value in result.items():
        if key not in ("per_layer_reference", "runs"):
            print(f"{key}: {value}")
    print("| layer | type | bits | max diff (steps) | fraction off |")
    print("|---|---|---|---|---|")
    for row in per_layer:
        print(f"| {row['layer']} | {row['type']} | {row['bits']} | {row['max_diff_steps']} | "
              f"{100 * row['fraction_off']:.3f} % |")
    return result


if __name__ == "__main__":
    main()
