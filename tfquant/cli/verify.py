"""``tfquant verify``: compare a quantized Keras model with its TFLite export.

Runs :func:`tfquant.verify` (the Keras fake-quant model, the integer simulator and the TFLite
interpreter's reference kernels on the same data, layer by layer) and prints its table, the
bit-exact fraction, the largest output difference in LSB and the first layer that disagrees.
Exit code 0 within tolerance, 1 outside it (2 on bad input).

Example:
    $ tfquant verify q.keras q.tflite --data calib.npy --json verify.json
"""

from __future__ import annotations

import argparse
import json
import os

from tfquant.cli.common import (EXIT_MISMATCH, EXIT_OK, RAW, CLIError, add_common,
                                add_data_options, check_output, muted, one_line,
                                non_negative_float, say)
from tfquant.cli.loading import load_data, load_model


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Adds the ``verify`` verb to ``sub``."""
    v = sub.add_parser(
        "verify", help="compare a quantized model with its TFLite export",
        formatter_class=RAW,
        description="Runs tfquant.verify: the Keras fake-quant model, the integer simulator\n"
                    "and the TFLite interpreter (reference kernels) on DATA, layer by layer.\n"
                    "Prints the bit-exact fraction (simulator vs TFLite), the largest output\n"
                    "difference in LSB (Keras vs TFLite) and the first layer that disagrees.\n"
                    "Exit code 0 when within tolerance, 1 otherwise (2 on bad input).\n\n"
                    "Tolerance (default): the simulator bit-exact and every Keras layer, fed\n"
                    "TFLite's values of its inputs, exact on >= 99 % of its outputs (what is\n"
                    "left is TFLite's integer rounding); --tolerance-lsb L: the simulator\n"
                    "bit-exact and every Keras output within L LSB.",
        epilog="example:\n  tfquant verify q.keras q.tflite --data calib.npy --json v.json")
    v.add_argument("qmodel", metavar="QMODEL", help="quantized model (.keras or .h5)")
    v.add_argument("tflite", metavar="TFLITE", help="its TFLite export")
    v.add_argument("--data", required=True, metavar="DATA",
                   help=".npy, .npz or a folder of images")
    v.add_argument("--tolerance-lsb", type=non_negative_float, metavar="LSB",
                   help="largest accepted Keras-vs-TFLite output difference in LSB (0: "
                        "identical)")
    v.add_argument("--json", metavar="PATH",
                   help="also write the whole report (every figure, the per-layer table) as "
                        "JSON")
    add_data_options(v)
    add_common(v)
    v.set_defaults(func=run)
    return v


def read_tflite(path: str) -> bytes:
    """The bytes of a ``.tflite`` file that the TFLite interpreter can parse."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"TFLite file {path!r} does not exist")
    if not path.lower().endswith(".tflite"):
        raise CLIError(f"{path!r} is not a .tflite file")
    with open(path, "rb") as f:
        flatbuffer = f.read()
    try:
        from ai_edge_litert.interpreter import Interpreter

        Interpreter(model_content=flatbuffer)
    except Exception as err:  # noqa: BLE001 - any failure to parse means a bad file
        raise CLIError(f"cannot read TFLite file {path!r} (corrupt?): {one_line(err)}") from None
    return flatbuffer


def within(report, tolerance_lsb: float | None) -> bool:
    """The report's own verdict, or: simulator bit-exact (when it ran) and every Keras output
    within ``tolerance_lsb`` LSB."""
    if tolerance_lsb is None:
        return bool(report.within_tolerance)
    exact = report.bit_exact_fraction is None or report.bit_exact_fraction == 1.0
    return bool(exact and report.max_abs_diff_lsb <= tolerance_lsb)


def run(args: argparse.Namespace) -> int:
    """Verifies ``args.tflite`` against ``args.qmodel`` on ``args.data``."""
    import tfquant
    from tfquant.export.paths import write_atomic

    if args.json:
        check_output(args.json, (".json",), "--json output")
    flatbuffer = read_tflite(args.tflite)
    qmodel = load_model(args.qmodel, "quantized model", quantized=True)
    x, _ = load_data(args, args.data, qmodel, "data")
    say(args, f"verifying {args.tflite} against {args.qmodel} ...")
    with muted(args):
        report = tfquant.verify(qmodel, flatbuffer, x, batch_size=args.batch_size)
    say(args, report)
    exact = report.bit_exact_fraction
    print("bit-exact fraction: " + (f"{exact:.6f}" if exact is not None else
                                    f"n/a (simulator: {report.simulator_error})"))
    print(f"max |diff|: {report.max_abs_diff_lsb:g} LSB")
    print(f"first disagreeing layer: {report.first_disagreeing_layer or 'none'}")
    ok = within(report, args.tolerance_lsb)
    if args.json:
        write_atomic(args.json, json.dumps(report.to_dict(), indent=1, default=float))
        print(f"wrote {args.json}")
    print("result: " + ("PASS (within tolerance)" if ok else "FAIL (outside tolerance)"))
    return EXIT_OK if ok else EXIT_MISMATCH
