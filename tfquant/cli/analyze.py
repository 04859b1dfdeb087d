"""``tfquant analyze``: per-layer sensitivity and a self-contained HTML report.

Example:
    $ tfquant analyze model.keras --data val.npy --labels val_y.npy -o report.html --csv s.csv
"""

from __future__ import annotations

import argparse
import os
from typing import Callable

import numpy as np

from tfquant.cli.common import (EXIT_OK, RAW, CLIError, add_common, add_data_options,
                                check_output, muted, say, verbosity)
from tfquant.cli.loading import load_config, load_data, load_model

METRICS = ("auto", "accuracy", "mse", "agreement", "sqnr")


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Adds the ``analyze`` verb to ``sub``."""
    from tfquant.observers import OBSERVERS

    a = sub.add_parser(
        "analyze", help="per-layer sensitivity and an HTML report",
        formatter_class=RAW,
        description="Quantizes a copy of MODEL with --config (calibrated on --calibration,\n"
                    "default DATA; or analyses --qmodel), measures each layer's sensitivity on\n"
                    "DATA and writes a self-contained HTML report: annotation, ranges,\n"
                    "sensitivity, SQNR, histograms, and the verification of --tflite.\n\n"
                    "--metric auto: accuracy with integer or one-hot labels, MSE with other\n"
                    "labels; without labels, top-1 agreement with the float model\n"
                    "(classifiers) or the output SQNR in dB.",
        epilog="example:\n  tfquant analyze model.keras --data val.npy --labels val_y.npy "
               "-o report.html")
    a.add_argument("model", metavar="MODEL", help="float model (.keras or .h5)")
    a.add_argument("--data", required=True, metavar="DATA",
                   help=".npy, .npz or a folder of images")
    a.add_argument("--labels", metavar="LABELS", help="labels of DATA (.npy, .npz, .txt/.csv)")
    a.add_argument("-o", "--output", required=True, metavar="REPORT.html",
                   help="the HTML report to write")
    a.add_argument("--metric", default="auto", choices=METRICS,
                   help="sensitivity metric (default auto)")
    a.add_argument("--qmodel", metavar="QMODEL",
                   help="analyse this quantized model instead of a fresh calibrated copy")
    a.add_argument("--tflite", metavar="TFLITE", help="include the verification of this file")
    a.add_argument("--config", metavar="PRESET|JSON", help="quantization config of the copy")
    a.add_argument("--calibration", metavar="DATA", help="calibration data (default: DATA)")
    a.add_argument("--observer", default="minmax", choices=sorted(OBSERVERS),
                   help="activation range observer (default: minmax)")
    a.add_argument("--csv", metavar="PATH", help="also write the sensitivity table as CSV")
    a.add_argument("--no-histograms", action="store_true",
                   help="leave the histogram section out of the report")
    add_data_options(a)
    add_common(a)
    a.set_defaults(func=run)
    return a


def _top1(a) -> np.ndarray:
    a = np.asarray(a)
    return a.argmax(-1) if a.ndim >= 2 and a.shape[-1] > 1 else a.reshape(len(a), -1)[:, 0]


def _metric_functions() -> dict[str, Callable]:
    from tfquant.analysis.sqnr import sqnr

    def accuracy(y_true, y_pred):
        y_true = np.asarray(y_true)
        truth = y_true.argmax(-1) if y_true.ndim == 2 and y_true.shape[-1] > 1 else \
            y_true.reshape(-1)
        return float(np.mean(_top1(y_pred) == truth))

    def agreement(y_true, y_pred):
        return float(np.mean(_top1(y_pred) == _top1(y_true)))

    def mse(y_true, y_pred):
        return float(np.mean((np.asarray(y_pred, np.float64)
                              - np.asarray(y_true, np.float64).reshape(np.shape(y_pred))) ** 2))

    def output_sqnr(y_true, y_pred):
        return float(min(sqnr(y_true, y_pred), 200.0))

    agreement.__name__, output_sqnr.__name__ = "top-1 agreement with float", "output SQNR dB"
    return {"accuracy": accuracy, "agreement": agreement, "mse": mse, "sqnr": output_sqnr}


def choose_metric(args: argparse.Namespace, x, y, qmodel):
    """``(metric_fn(y_true, y_pred), higher_is_better, data)`` for the sensitivity analysis.

    With labels: accuracy (integer or one-hot labels) or MSE. Without labels the float
    model's own outputs are the reference: top-1 agreement for classifiers, else the output
    SQNR in dB.
    """
    from tfquant.analysis.sqnr import enabled_only

    out_shape = qmodel.outputs[0].shape
    classifier = len(out_shape) >= 2 and (out_shape[-1] or 0) > 1
    kind = args.metric
    if kind == "auto":
        if y is not None:
            kind = "accuracy" if np.asarray(y).dtype.kind in "iub" or (
                classifier and np.asarray(y).ndim == 2) else "mse"
        else:
            kind = "agreement" if classifier else "sqnr"
    if kind in ("accuracy", "mse") and y is None:
        raise CLIError(f"--metric {kind} needs labels: pass --labels LABELS")
    if kind == "accuracy" and not classifier:
        raise CLIError(f"--metric accuracy needs a classifier output, the model gives "
                       f"{tuple(out_shape)}")
    if kind in ("agreement", "sqnr"):
        with enabled_only(qmodel, []):  # every quantizer off: the float model's outputs
            y = np.asarray(qmodel.predict(x, batch_size=args.batch_size, verbose=0))
    return _metric_functions()[kind], kind != "mse", (x, y)


def _with_progress(args: argparse.Namespace, metric_fn: Callable, qmodel) -> Callable:
    """``metric_fn`` advancing a progress bar over the sensitivity's model evaluations."""
    import keras

    from tfquant.analysis.sqnr import layer_groups

    calls = 2 + sum(bool(g.weight_quantizers) + bool(g.activation_quantizers) + 1
                    for g in layer_groups(qmodel))
    bar = keras.utils.Progbar(calls, verbose=verbosity(args), unit_name="config")
    counter = {"n": 0}

    def counted(y_true, y_pred):
        value = metric_fn(y_true, y_pred)
        counter["n"] += 1
        bar.update(min(counter["n"], calls))
        return value
    counted.__name__ = metric_fn.__name__
    return counted


def run(args: argparse.Namespace) -> int:
    """Sensitivity of ``args.model`` on ``args.data``; writes the report (and the CSV)."""
    import tfquant
    from tfquant.analysis.sensitivity import is_quantized, prepare
    from tfquant.analysis.sqnr import layer_groups

    out = check_output(args.output, (".html", ".htm"), "report")
    if args.csv:
        check_output(args.csv, (".csv",), "--csv output")
    if args.tflite and not os.path.isfile(args.tflite):
        raise FileNotFoundError(f"TFLite file {args.tflite!r} does not exist")
    config = load_config(args.config)
    model = load_model(args.model, "model", quantized=None)
    qmodel = None
    if args.qmodel:
        qmodel = load_model(args.qmodel, "quantized model", quantized=True)
    x, y = load_data(args, args.data, model, "data", args.labels)
    if args.metric in ("accuracy", "mse") and y is None:
        raise CLIError(f"--metric {args.metric} needs labels: pass --labels LABELS")
    calibration = None
    if args.calibration:
        calibration, _ = load_data(args, args.calibration, model, "calibration data")
    say(args, "quantizing and calibrating ..." if qmodel is None and not is_quantized(model)
        else "using the quantized model as given")
    qmodel = prepare(model, config, calibration, qmodel, x, args.observer, args.batch_size)
    metric_fn, higher, data = choose_metric(args, x, y, qmodel)

    say(args, f"sensitivity of {len(layer_groups(qmodel))} layers ({metric_fn.__name__}) ...")
    table = tfquant.analysis.sensitivity(model, data, _with_progress(args, metric_fn, qmodel),
                                         qmodel=qmodel, higher_is_better=higher,
                                         batch_size=args.batch_size)
    say(args, table)
    say(args, "writing the HTML report ...")
    with muted(args):
        tfquant.analysis.report(model, data, out, qmodel=qmodel, tflite=args.tflite,
                                table=table, batch_size=args.batch_size,
                                histograms=not args.no_histograms)
    print(f"wrote {out}")
    if args.csv:
        table.to_csv(args.csv)
        print(f"wrote {args.csv}")
    return EXIT_OK
