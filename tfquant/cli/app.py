"""The ``tfquant`` command: the parser of every verb, and :func:`main`.

Example:
    >>> main(["export", "q.keras", "-o", "q.tflite", "--input-type", "int8"])  # doctest: +SKIP
    0
"""

from __future__ import annotations

import argparse
import os
import sys

from tfquant.cli import analyze, demo, export, quantize, verify
from tfquant.cli.common import (EXIT_ERROR, EXIT_INTERNAL, RAW, CLIError, Parser,
                                one_line)

VERBS = (demo, quantize, export, verify, analyze)
DESCRIPTION = """\
Quantization for Keras 3 models: PTQ / QAT, TFLite export, verification, analysis.

data files (DATA, LABELS): .npy; .npz (the array 'x', else the first; 'y' = labels); or a
folder of PNG/JPEG images, converted to the model's channels, resized to its input size and
scaled to [0, 1] float32 (see --image-range). Arrays are used as they are (no scaling).

exit codes: 0 success; 1 verification outside tolerance; 2 bad input, with one line on
stderr: 'tfquant <verb>: error: <reason>'; 3 internal error (--debug or TFQUANT_DEBUG=1
show the traceback).
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``tfquant`` command."""
    parser = Parser(prog="tfquant", description=DESCRIPTION, formatter_class=RAW)
    sub = parser.add_subparsers(dest="command", required=True, metavar="VERB",
                                title="verbs (tfquant VERB --help for each)")
    for verb in VERBS:
        verb.add_parser(sub)
    return parser


def _end_line() -> None:
    """Ends a progress bar left open on a terminal, so the error starts its own line."""
    try:
        if sys.stdout.isatty():
            print(flush=True)
        sys.stdout.flush()
    except (OSError, ValueError):
        pass


def main(argv: list[str] | None = None) -> int:
    """Entry point: parses ``argv`` and runs the verb; returns the exit code.

    Bad input (:class:`~tfquant.cli.common.CLIError`, ``ValueError``, ``FileNotFoundError``,
    ``TypeError``, ``OSError``) gives one line ``tfquant <verb>: error: <reason>`` on stderr
    and exit code 2; any other exception one line and exit code 3 (``--debug`` or
    ``TFQUANT_DEBUG=1``: the traceback instead).
    """
    args = build_parser().parse_args(argv)
    debug = args.debug or os.environ.get("TFQUANT_DEBUG", "") not in ("", "0")
    prefix = f"tfquant {args.command}: error:"
    try:
        return args.func(args)
    except KeyboardInterrupt:
        _end_line()
        print(f"{prefix} interrupted", file=sys.stderr)
        return 130
    except (CLIError, ValueError, FileNotFoundError, TypeError, OSError) as err:
        if debug:
            raise
        _end_line()
        print(f"{prefix} {one_line(err) or type(err).__name__}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as err:  # noqa: BLE001 - one line, not a traceback
        if debug:
            raise
        _end_line()
        print(f"{prefix} internal error: {type(err).__name__}: {one_line(err)} "
              "(run with --debug for the traceback)", file=sys.stderr)
        return EXIT_INTERNAL
