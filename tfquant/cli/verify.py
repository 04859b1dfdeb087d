"""``tfquant verify``: compare a quantized Keras model with its TFLite export.

Prints the bit-exact fraction, the largest output difference in LSB and the first layer
that disagrees; exit code 0 within tolerance, 1 outside it (2 on bad input).

Example:
    $ tfquant verify q.keras q.tflite --data calib.npy
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import numpy as np

from tfquant.cli.common import (EXIT_MISMATCH, EXIT_OK, RAW, CLIError, add_common,
                                add_data_options, muted, one_line, positive_float, say)
from tfquant.cli.loading import load_data, load_model


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Adds the ``verify`` verb to ``sub``."""
    v = sub.add_parser(
        "verify", help="compare a quantized model with its TFLite export",
        formatter_class=RAW,
        description="Runs tfquant.verify: the Keras fake-quant model, the integer simulator\n"
                    "and the TFLite interpreter on DATA. Prints the bit-exact fraction, the\n"
                    "largest difference in output LSBs and the first layer that disagrees.\n"
                    "Exit code 0 when within tolerance, 1 otherwise (2 on bad input).",
        epilog="example:\n  tfquant verify q.keras q.tflite --data calib.npy")
    v.add_argument("qmodel", metavar="QMODEL", help="quantized model (.keras or .h5)")
    v.add_argument("tflite", metavar="TFLITE", help="its TFLite export")
    v.add_argument("--data", required=True, metavar="DATA",
                   help=".npy, .npz or a folder of images")
    v.add_argument("--tolerance-lsb", type=positive_float, metavar="LSB",
                   help="largest accepted output difference in LSB (default: the report's own "
                        "verdict, else 1)")
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


def field(report: Any, *names: str, default: Any = None) -> Any:
    """The first of ``names`` that ``report`` has (attribute or key; methods are called)."""
    for name in names:
        value = report.get(name) if isinstance(report, dict) else getattr(report, name, None)
        if value is not None:
            return value() if callable(value) and not isinstance(value, type) else value
    return default


def first_disagreeing(report: Any) -> str | None:
    """The first layer whose outputs differ: the report's own field, else the first of its
    per-layer records (in their order) that is not bit-exact."""
    found = field(report, "first_disagreeing_layer", "first_mismatch", "first_bad_layer",
                  "first_divergence")
    if found is not None:
        return str(found if isinstance(found, str) else field(found, "layer", "name",
                                                              default=found))
    from tfquant.analysis.html_report import _records

    for row in _records(field(report, "per_layer")) or []:
        exact = row.get("bit_exact_fraction", row.get("bit_exact"))
        diff = row.get("max_abs_diff_lsb", row.get("max_diff_lsb"))
        if (exact is not None and float(exact) < 1.0) or (diff is not None and float(diff) > 0):
            return str(row.get("layer", row.get("name", row.get("tensor", "?"))))
    return None


def _run_verify(args: argparse.Namespace, qmodel, flatbuffer: bytes, x) -> Any:
    from tfquant.analysis.html_report import find_verify

    verify = find_verify()
    if verify is not None:
        with muted(args):
            return verify(qmodel, args.tflite, x)
    from tfquant.cli.output_check import compare_outputs

    return compare_outputs(qmodel, flatbuffer, x, args.batch_size)


def run(args: argparse.Namespace) -> int:
    """Verifies ``args.tflite`` against ``args.qmodel`` on ``args.data``."""
    flatbuffer = read_tflite(args.tflite)
    qmodel = load_model(args.qmodel, "quantized model", quantized=True)
    x, _ = load_data(args, args.data, qmodel, "data")
    say(args, f"verifying {args.tflite} against {args.qmodel} ...")
    report = _run_verify(args, qmodel, flatbuffer, x)
    text = str(report)
    if text and not text.startswith("<"):
        say(args, text)
    exact = field(report, "bit_exact_fraction")
    lsb = field(report, "max_abs_diff_lsb")
    first = first_disagreeing(report)
    if first is None and field(report, "per_layer") is None:
        first = "n/a (outputs only)"
    print(f"bit-exact fraction: {'n/a' if exact is None else f'{float(exact):.6f}'}")
    print(f"max |diff|: {'n/a' if lsb is None else f'{float(lsb):g}'} LSB")
    print(f"first disagreeing layer: {first or 'none'}")
    verdict = field(report, "within_tolerance", "ok", "passed")
    if isinstance(verdict, (bool, np.bool_)) and args.tolerance_lsb is None:
        ok = bool(verdict)
    else:
        tolerance = 1.0 if args.tolerance_lsb is None else args.tolerance_lsb
        ok = lsb is not None and float(lsb) <= tolerance
    print("result: " + ("PASS (within tolerance)" if ok else "FAIL (outside tolerance)"))
    return EXIT_OK if ok else EXIT_MISMATCH
