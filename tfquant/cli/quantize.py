"""``tfquant quantize``: post-training quantize (or QAT fine-tune) a float Keras model.

Example:
    $ tfquant quantize model.keras --calibration calib.npy -o q.keras --tflite q.tflite
    $ tfquant quantize model.keras --calibration train.npz --qat-epochs 2 -o qat.keras
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from tfquant.cli.common import (EXIT_OK, RAW, CLIError, add_common, add_data_options,
                                check_output, check_tflite_types, export_tflite,
                                non_negative, positive, positive_float, say, verbosity)
from tfquant.cli.loading import load_config, load_data, load_model

DEFAULT_METHODS = "cle,bias_correction"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Adds the ``quantize`` verb to ``sub``."""
    from tfquant.export.tflite import IO_TYPES, MODES
    from tfquant.observers import OBSERVERS
    from tfquant.ptq.pipeline import METHODS
    from tfquant.specs import PRESETS

    q = sub.add_parser(
        "quantize", help="post-training quantize (or QAT fine-tune) a float Keras model",
        formatter_class=RAW,
        description="Quantizes a float .keras/.h5 model (Functional or Sequential) and saves the\n"
                    "quantized model as .keras (loadable with keras.saving.load_model).\n\n"
                    "PTQ (default): fold BatchNorm, run --methods, calibrate with --observer.\n"
                    "QAT (--qat-epochs N, labels from --labels or the 'y' of an .npz DATA):\n"
                    "quantize, calibrate, then train N epochs on DATA.",
        epilog="examples:\n  tfquant quantize model.keras --calibration calib.npy -o q.keras\n"
               "  tfquant quantize model.h5 --calibration images/ -o q.keras "
               "--methods cle,bias_correction,adaround --tflite q.tflite\n"
               "  tfquant quantize model.keras --calibration train.npz --qat-epochs 2 "
               "-o qat.keras")
    q.add_argument("model", metavar="MODEL", help="float model (.keras or .h5)")
    q.add_argument("--calibration", required=True, metavar="DATA",
                   help=".npy, .npz or a folder of PNG/JPEG images")
    q.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="the quantized model (.keras)")
    q.add_argument("--config", metavar="PRESET|JSON",
                   help=f"preset ({', '.join(sorted(PRESETS))}, dynamic_range) or a JSON file "
                        "(a QuantConfig dict or an NNI-style config list); default tflite_int8")
    q.add_argument("--methods", metavar="LIST",
                   help=f"PTQ algorithms, comma-separated, from {','.join(METHODS)}, or 'none' "
                        f"(default: {DEFAULT_METHODS}; adaround is slower)")
    q.add_argument("--observer", default="minmax", choices=sorted(OBSERVERS),
                   help="activation range observer (default: minmax)")
    q.add_argument("--adaround-iterations", type=positive, metavar="N",
                   help="AdaRound steps per layer (default: the library's 10000)")
    q.add_argument("--qat-epochs", type=non_negative, default=0, metavar="N",
                   help="quantization-aware training epochs on DATA (needs labels)")
    q.add_argument("--labels", metavar="LABELS",
                   help="labels for QAT (.npy, .npz, .txt/.csv; default: 'y' of an .npz DATA)")
    q.add_argument("--loss", help="Keras loss name for QAT (default: from the labels: sparse/"
                                  "categorical cross-entropy, else mse)")
    q.add_argument("--learning-rate", type=positive_float, default=1e-4, metavar="LR",
                   help="QAT learning rate (Adam, default 1e-4)")
    q.add_argument("--tflite", metavar="PATH", help="also export TFLite to PATH")
    q.add_argument("--input-type", default="float32", choices=sorted(IO_TYPES),
                   help="TFLite input/output type for --tflite (default float32)")
    q.add_argument("--mode", default="int8", choices=MODES,
                   help="TFLite mode for --tflite (default int8)")
    add_data_options(q)
    add_common(q)
    q.set_defaults(func=run)
    return q


def _is_probability_output(model, x) -> bool:
    """True when the model's outputs on a few samples look like softmax probabilities."""
    from tfquant.cli import data

    out = model(data.take(x, 16), training=False)
    out = np.asarray(out[0] if isinstance(out, (list, tuple)) else out)
    return bool(out.ndim >= 2 and out.shape[-1] > 1 and out.min() >= 0 and
                np.allclose(out.sum(-1), 1.0, atol=1e-3))


def qat_loss(args: argparse.Namespace, model, x, y) -> tuple[Any, list[str]]:
    """``(loss, metrics)`` for QAT: ``--loss``, else from the labels and the model's output
    (sparse / categorical cross-entropy on logits or probabilities, else MSE)."""
    import keras

    if args.loss:
        return args.loss, []
    out_shape = model.outputs[0].shape
    classes = out_shape[-1] if len(out_shape) >= 2 else None
    y = np.asarray(y)
    if classes and classes > 1 and y.dtype.kind in "iub" and (
            y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1)):
        logits = not _is_probability_output(model, x)
        return (keras.losses.SparseCategoricalCrossentropy(from_logits=logits),
                ["accuracy"])
    if classes and classes > 1 and y.ndim == 2 and y.shape[1] == classes:
        logits = not _is_probability_output(model, x)
        return keras.losses.CategoricalCrossentropy(from_logits=logits), ["accuracy"]
    return "mse", []


def parse_methods(text: str) -> tuple[str, ...]:
    """``"cle,adaround"`` -> ``("cle", "adaround")``; ``"none"`` -> ``()``."""
    from tfquant.ptq.pipeline import METHODS

    if text.strip().lower() in ("", "none"):
        return ()
    methods = tuple(m.strip() for m in text.split(",") if m.strip())
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise CLIError(f"unknown PTQ method(s) {', '.join(unknown)}: choose from "
                       f"{','.join(METHODS)} (or 'none')")
    return methods


def _qat(args: argparse.Namespace, model, config, x, y):
    import keras

    import tfquant

    qmodel = tfquant.quantize_model(model, config)
    say(args, qmodel.quantization_report)
    say(args, "calibrating the initial ranges ...")
    tfquant.calibrate(qmodel, x, observer=args.observer, batch_size=args.batch_size,
                      verbose=verbosity(args))
    loss, metrics = qat_loss(args, model, x, y)
    qmodel.compile(keras.optimizers.Adam(args.learning_rate), loss, metrics=metrics)
    say(args, f"QAT: {args.qat_epochs} epoch(s), batch size {args.batch_size}, "
              f"learning rate {args.learning_rate}")
    qmodel.fit(x, y, batch_size=args.batch_size, epochs=args.qat_epochs,
               verbose=verbosity(args), shuffle=True)
    return qmodel


def _ptq(args: argparse.Namespace, model, config, methods, x):
    import tfquant

    options: dict[str, Any] = {"batch_size": args.batch_size, "verbose": verbosity(args)}
    if args.adaround_iterations is not None:
        options["iterations"] = args.adaround_iterations
    say(args, f"PTQ ({config if isinstance(config, str) else 'config file'}): "
              f"methods {', '.join(methods) or 'none'}, observer {args.observer}")
    qmodel = tfquant.ptq(model, x, config=config, methods=methods, observer=args.observer,
                         **options)
    say(args, qmodel.quantization_report)
    say(args, qmodel.ptq_report)
    return qmodel


def run(args: argparse.Namespace) -> int:
    """Quantizes ``args.model``; writes ``args.output`` (and ``args.tflite``)."""
    from tfquant.export.paths import staged_outputs

    out = check_output(args.output, (".keras",), "output")
    if args.tflite:
        check_output(args.tflite, (".tflite",), "--tflite output")
    qat = args.qat_epochs > 0
    if qat and args.methods is not None:
        raise CLIError("--methods selects PTQ algorithms; with --qat-epochs the model is "
                       "calibrated and then trained (drop --methods)")
    if args.labels and not qat:
        raise CLIError("--labels is used for QAT only: add --qat-epochs N")
    methods = parse_methods(DEFAULT_METHODS if args.methods is None else args.methods)
    if args.adaround_iterations is not None and "adaround" not in methods:
        raise CLIError("--adaround-iterations needs adaround in --methods")
    config = load_config(args.config)
    if qat and config == "dynamic_range":
        raise CLIError("--config dynamic_range is weight-only PTQ; it cannot be trained with QAT")
    mode = "dynamic_range" if config == "dynamic_range" else args.mode
    if args.tflite:
        check_tflite_types(mode, args.input_type)
    model = load_model(args.model, "model", quantized=False)
    x, y = load_data(args, args.calibration, model, "calibration data", args.labels,
                     need_labels=qat)
    qmodel = _qat(args, model, config, x, y) if qat else _ptq(args, model, config, methods, x)
    flatbuffer = None
    if args.tflite:  # converted before anything is written: a failure leaves no file
        flatbuffer = export_tflite(args, qmodel, None, args.input_type, mode)
    with staged_outputs() as stage:  # both files move into place only once both are written
        qmodel.save(stage.path(out))
        if flatbuffer is not None:
            stage.write(args.tflite, flatbuffer)
    print(f"wrote {out}")
    if flatbuffer is not None:
        print(f"wrote {args.tflite} ({len(flatbuffer)} bytes)")
    return EXIT_OK
