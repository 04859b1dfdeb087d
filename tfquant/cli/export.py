"""``tfquant export``: write a quantized model as TFLite, .h5, SavedModel and encodings.

Every output path is checked, and the TFLite model and the encodings are computed in memory,
before the first file is written. Every output is then written to a temporary path beside its
destination (:func:`tfquant.export.paths.staged_outputs`) and moved into place only once all
of them have been written: a failure in any of them leaves every destination as it was and no
temporary file behind.

Example:
    $ tfquant export q.keras -o q.tflite --input-type int8 --encodings q.json
"""

from __future__ import annotations

import argparse
import json
import os

from tfquant.cli.common import (EXIT_OK, RAW, CLIError, add_common, check_output,
                                check_tflite_types, export_tflite, muted, say)
from tfquant.cli.loading import load_model


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Adds the ``export`` verb to ``sub``."""
    from tfquant.export.encodings import VERSIONS
    from tfquant.export.tflite import IO_TYPES, MODES

    e = sub.add_parser(
        "export", help="export a quantized .keras model to TFLite and other formats",
        formatter_class=RAW,
        description="Writes a quantized model (from 'tfquant quantize' or QAT) as TFLite, and\n"
                    "optionally as .h5, SavedModel and AIMET-style encodings. Every output is\n"
                    "checked before anything is written. With --mode dynamic_range a float\n"
                    "model is accepted too (its weights are quantized first).",
        epilog="example:\n  tfquant export q.keras -o q.tflite --input-type int8")
    e.add_argument("qmodel", metavar="QMODEL", help="quantized model (.keras or .h5)")
    e.add_argument("-o", "--output", metavar="OUT.tflite", help="TFLite file to write")
    e.add_argument("--input-type", default="float32", choices=sorted(IO_TYPES),
                   help="TFLite input/output type (default float32; int16 in int16x8 mode)")
    e.add_argument("--mode", default="int8", choices=MODES, help="TFLite mode (default int8)")
    e.add_argument("--allow-float-ops", action="store_true",
                   help="warn instead of failing when ops remain float")
    e.add_argument("--encodings", metavar="PATH",
                   help="also write the AIMET-style encodings (.json) of every quantized tensor")
    e.add_argument("--encodings-version", choices=VERSIONS,
                   help="encodings format version (default: the library's, 1.0.0)")
    e.add_argument("--h5", metavar="PATH",
                   help="also write the folded float model as legacy .h5 (the float model "
                        "the encodings describe)")
    e.add_argument("--saved-model", metavar="DIR",
                   help="also write the folded float model as a TF SavedModel directory")
    add_common(e)
    e.set_defaults(func=run)
    return e


def _check_outputs(args: argparse.Namespace) -> None:
    if not any((args.output, args.h5, args.saved_model, args.encodings)):
        raise CLIError("nothing to export: give -o OUT.tflite, --h5, --saved-model or "
                       "--encodings")
    if args.output:
        check_output(args.output, (".tflite",), "output")
        check_tflite_types(args.mode, args.input_type)
    if args.h5:
        check_output(args.h5, (".h5", ".hdf5"), "--h5 output")
    if args.saved_model:
        target = check_output(args.saved_model, None, "--saved-model output")
        if os.path.exists(target) and (not os.path.isdir(target) or (
                os.listdir(target) and not os.path.exists(os.path.join(target,
                                                                       "saved_model.pb")))):
            raise CLIError(f"--saved-model output {target!r} exists and is not an empty "
                           "directory or a SavedModel")
    if args.encodings:
        check_output(args.encodings, (".json",), "--encodings output")


def run(args: argparse.Namespace) -> int:
    """Loads ``args.qmodel`` and writes every requested output."""
    import tfquant
    from tfquant.analysis.sensitivity import is_quantized

    _check_outputs(args)
    dynamic = args.mode == "dynamic_range"
    qmodel = load_model(args.qmodel, "quantized model", quantized=None if dynamic else True)
    if dynamic and not is_quantized(qmodel):
        say(args, "float model: quantizing the weights (dynamic range)")
        qmodel = tfquant.ptq.dynamic_range(qmodel)

    # In memory first: what can fail on the model fails before any file is written.
    flatbuffer = doc = None
    if args.output:
        flatbuffer = export_tflite(args, qmodel, None, args.input_type, args.mode,
                                   strict=not args.allow_float_ops)
    if args.encodings:
        kwargs = {} if args.encodings_version is None else {"version": args.encodings_version}
        doc = tfquant.export.encodings(qmodel, **kwargs)
    for line in _write_outputs(args, qmodel, flatbuffer, doc):
        print(line)
    return EXIT_OK


def _write_outputs(args: argparse.Namespace, qmodel, flatbuffer: bytes | None,
                   doc: dict | None) -> list[str]:
    """Writes every output through temporary paths; moves them into place only when all of
    them are written (a failure leaves every destination as it was).

    Returns:
        The ``wrote PATH`` lines (TFLite, .h5, SavedModel, encodings; those requested).
    """
    import tfquant
    from tfquant.export.paths import staged_outputs

    wrote = []
    with staged_outputs() as stage:
        if flatbuffer is not None:
            stage.write(args.output, flatbuffer)
            wrote.append(f"wrote {args.output} ({len(flatbuffer)} bytes)")
        if args.h5:
            with muted(args):
                tfquant.export.keras_h5(qmodel, stage.path(args.h5))
            wrote.append(f"wrote {args.h5}")
        if args.saved_model:
            with muted(args):
                tfquant.export.saved_model(qmodel, stage.path(args.saved_model, directory=True))
            wrote.append(f"wrote {args.saved_model}")
        if doc is not None:
            stage.write(args.encodings, json.dumps(doc, indent=1))
            wrote.append(f"wrote {args.encodings}")
    return wrote
