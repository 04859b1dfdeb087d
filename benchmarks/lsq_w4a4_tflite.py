"""LSQ W4A4 on the MobileNetV2-style model: accuracy vs float, and what TFLite makes of it.

One run (seed 0): train ``zoo.mobilenet_v2_style`` in float (Adam ``--lr``, ``--float-epochs``),
quantize it with ``config="lsq_w4a4"`` (4-bit per-channel LSQ weights, 4-bit LSQ+ activations,
8-bit first/last layers), fine-tune ``--qat-epochs`` epochs (Adam ``--qat-lr``), export with
``tfquant.export.tflite`` (float32 input/output) and report

* float, Keras W4A4 and TFLite accuracies on the test split, and the argmax agreement of the
  TFLite model with the Keras model, for the reference kernels (``BUILTIN_REF``) and the
  default XNNPACK path;
* a per-layer table (teacher forcing: every Keras layer is run on TFLite's own input tensor,
  reference kernels): the largest difference in b-bit steps and the fraction of elements off.

``--container padded`` re-exports with the previous representation (the b-bit grid padded to
256 levels, same step) for comparison; ``fine`` (default) is the shipped one (b-bit integers
shifted left by ``8 - b``).

Usage::

    .venv/bin/python benchmarks/lsq_w4a4_tflite.py --dataset digits
    .venv/bin/python benchmarks/lsq_w4a4_tflite.py --dataset mnist --float-epochs 15

Writes ``benchmarks/results/lsq_w4a4_tflite_<dataset>[_padded].json``.
"""

from __future__ import annotations

import argparse
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


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="digits", choices=("digits", "mnist"))
    p.add_argument("--float-epochs", type=int, default=20)
    p.add_argument("--qat-epochs", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--qat-lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--container", default="fine", choices=("fine", "padded"))
    p.add_argument("--float-cache", default=None, help="load/save the float model here")
    args = p.parse_args(argv)

    import keras

    import tfquant
    import tfquant.fake_quant as fq
    from tfquant import datasets, zoo

    if args.container == "padded":  # the previous representation, for comparison only
        padded = fq._padded_container_range
        fq._fine_container_range = lambda lo, hi, bits, narrow: padded(lo, hi, bits, narrow)[2:]

    (x_train, y_train), (x_test, y_test) = datasets.load(args.dataset)
    keras.utils.set_random_seed(0)
    t0 = time.perf_counter()
    cache = Path(args.float_cache) if args.float_cache else None
    if cache is not None and cache.exists():
        model = keras.models.load_model(cache)
    else:
        model = zoo.mobilenet_v2_style(x_train.shape[1:], 10, seed=0)
        model.compile(optimizer=keras.optimizers.Adam(args.lr),
                      loss="sparse_categorical_crossentropy")
        model.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.float_epochs,
                  verbose=0)
        if cache is not None:
            model.save(cache)
    float_acc = float(np.mean(model.predict(x_test, verbose=0).argmax(-1) == y_test))

    keras.utils.set_random_seed(0)
    qmodel = tfquant.quantize_model(model, config="lsq_w4a4")
    qmodel.compile(optimizer=keras.optimizers.Adam(args.qat_lr),
                   loss="sparse_categorical_crossentropy")
    qmodel.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.qat_epochs, verbose=0)
    keras_pred = qmodel.predict(x_test, verbose=0).argmax(-1)
    keras_acc = float(np.mean(keras_pred == y_test))
    with contextlib.redirect_stdout(io.StringIO()):
        flatbuffer = tfquant.export.tflite(qmodel)

    result = {"dataset": args.dataset, "container": args.container,
              "float_epochs": args.float_epochs, "qat_epochs": args.qat_epochs,
              "qat_lr": args.qat_lr, "float_acc": float_acc, "keras_w4a4_acc": keras_acc,
              "delta_keras_pp": round(100 * (keras_acc - float_acc), 2)}
    for label, reference in (("reference", True), ("xnnpack", False)):
        interp = _run_tflite(flatbuffer, x_test, reference)
        pred = interp.get_tensor(interp.get_output_details()[0]["index"]).argmax(-1)
        result[f"tflite_{label}_acc"] = float(np.mean(pred == y_test))
        result[f"tflite_{label}_agreement"] = float(np.mean(pred == keras_pred))
    n = min(len(x_test), 300)
    result["per_layer_reference"] = per_layer_table(
        qmodel, _run_tflite(flatbuffer, x_test[:n], True), x_test[:n])
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    suffix = "" if args.container == "fine" else f"_{args.container}"
    write_results(f"lsq_w4a4_tflite_{args.dataset}{suffix}", result)
    for key, value in result.items():
        if key != "per_layer_reference":
            print(f"{key}: {value}")
    print("| layer | type | bits | max diff (steps) | fraction off |")
    print("|---|---|---|---|---|")
    for row in result["per_layer_reference"]:
        print(f"| {row['layer']} | {row['type']} | {row['bits']} | {row['max_diff_steps']} | "
              f"{100 * row['fraction_off']:.3f} % |")
    return result


if __name__ == "__main__":
    main()
