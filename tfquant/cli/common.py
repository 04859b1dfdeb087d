"""Shared pieces of the ``tfquant`` verbs: errors, messages, option types, outputs, progress.

Every verb module (:mod:`tfquant.cli.quantize` ...) defines ``add_parser(subparsers)`` and
``run(args) -> int``; what they have in common lives here.

Example:
    >>> one_line("cannot export:\\n  - conv1: asymmetric\\n  - fc: per-channel")
    'cannot export: conv1: asymmetric; fc: per-channel'
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import warnings
from typing import Any, Callable, Iterator

EXIT_OK, EXIT_MISMATCH, EXIT_ERROR, EXIT_INTERNAL = 0, 1, 2, 3
RAW = argparse.RawDescriptionHelpFormatter


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


def one_line(message: Any) -> str:
    """``message`` on one line: a multi-line list (``"...:\\n  - a\\n  - b"``) becomes
    ``"...: a; b"``."""
    parts = [p.strip() for p in str(message).splitlines()]
    parts = [p[2:] if p.startswith("- ") else p for p in parts]
    out = ""
    for p in (p for p in parts if p):
        out += p if not out else (" " if out.endswith(":") else "; ") + p
    return " ".join(out.split())


class Parser(argparse.ArgumentParser):
    """Usage errors as one line (``tfquant quantize: error: ...``), exit code 2."""

    def error(self, message: str):  # noqa: D102 - argparse API
        self.exit(EXIT_ERROR, f"{self.prog}: error: {one_line(message)} "
                              f"(see '{self.prog} --help')\n")


# --------------------------------------------------------------------- messages
def say(args: argparse.Namespace, *parts: Any) -> None:
    """Prints ``parts`` unless ``--quiet``."""
    if not getattr(args, "quiet", False):
        print(*parts, flush=True)


def verbosity(args: argparse.Namespace) -> int:
    """The Keras ``verbose`` value: 0 with ``--quiet``, else 1 (progress bars)."""
    return 0 if getattr(args, "quiet", False) else 1


@contextlib.contextmanager
def muted(args: argparse.Namespace) -> Iterator[None]:
    """Silences Python-level prints of libraries (the converter's 'Saved artifact' dump) and
    the converter's warning about input statistics (unless ``--debug``)."""
    if getattr(args, "debug", False):
        yield
        return
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)  # "saving as HDF5 is legacy", "assets written to" ...
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            # The converter warns about this for every QAT/PTQ model (the ranges come from
            # the FakeQuant ops, as intended).
            warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
            yield
    finally:
        absl.setLevel(level)


def progress(args: argparse.Namespace, label: str, unit: str = "file"
             ) -> Callable[[int, int], None] | None:
    """A ``progress(done, count)`` callback drawing a Keras progress bar (None when quiet)."""
    if getattr(args, "quiet", False):
        return None
    import keras

    state: dict[str, Any] = {}

    def update(done: int, count: int) -> None:
        if "bar" not in state:
            print(label, flush=True)
            state["bar"] = keras.utils.Progbar(count, unit_name=unit)
        state["bar"].update(done)
    return update


# ----------------------------------------------------------------- option types
def _number(text: str, cast: Callable[[str], Any], ok: Callable[[Any], bool],
            expected: str) -> Any:
    """``cast(text)`` if it parses and ``ok`` accepts it, else an argparse error."""
    try:
        value = cast(text)
    except ValueError:
        value = None
    if value is None or not ok(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def positive(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _number(text, int, lambda v: v >= 1, "a positive integer")


def non_negative(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _number(text, int, lambda v: v >= 0, "an integer >= 0")


def positive_float(text: str) -> float:
    """argparse type: a finite float > 0."""
    return _number(text, float, lambda v: 0 < v < float("inf"), "a positive number")


def non_negative_float(text: str) -> float:
    """argparse type: a finite float >= 0."""
    return _number(text, float, lambda v: 0 <= v < float("inf"), "a number >= 0")


def add_data_options(p: argparse.ArgumentParser) -> None:
    """``--max-samples``, ``--image-range``, ``--batch-size``."""
    from tfquant.cli.data import IMAGE_RANGES

    p.add_argument("--max-samples", type=positive, metavar="N",
                   help="use at most the first N samples of the data")
    p.add_argument("--image-range", default="unit", choices=list(IMAGE_RANGES),
                   help="values of images read from a folder: unit = [0, 1] (pixel/255, the "
                        "default), symmetric = [-1, 1], raw = [0, 255]")
    p.add_argument("--batch-size", type=positive, default=32, metavar="N",
                   help="batch size (default: 32)")


def add_common(p: argparse.ArgumentParser) -> None:
    """``--quiet`` and ``--debug``."""
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bars or reports, only results and errors")
    p.add_argument("--debug", action="store_true",
                   help="show tracebacks and library output")


# ---------------------------------------------------------------------- outputs
def check_output(path: str, suffixes: tuple[str, ...] | None, what: str) -> str:
    """Checks an output path before anything is computed: suffix, not a directory (for
    files), an existing writable parent directory."""
    from tfquant.export.paths import check_output_path

    if suffixes and not path.lower().endswith(suffixes):
        raise CLIError(f"{what} {path!r} must end in {' or '.join(suffixes)}")
    if os.path.isdir(path) and (suffixes is not None):
        raise CLIError(f"{what} {path!r} is a directory")
    return check_output_path(path)


def check_tflite_types(mode: str, input_type: str) -> None:
    """Checks ``--input-type`` against the TFLite ``mode`` before anything is computed
    (:func:`tfquant.export.tflite.check_io_types`)."""
    from tfquant.export.tflite import check_io_types

    try:
        check_io_types(mode, input_type)
    except ValueError as err:
        raise CLIError(f"--input-type {input_type} cannot be used with mode {mode}: "
                       f"{err}") from None


def export_tflite(args: argparse.Namespace, qmodel, path: str | None, input_type: str,
                  mode: str, strict: bool = True) -> bytes:
    """``tfquant.export.tflite`` with the CLI's messages; prints ``wrote PATH (N bytes)``
    (``path`` None: converts only, writes nothing)."""
    import tfquant

    say(args, f"converting to TFLite ({mode}, {input_type} input) ...")
    with muted(args):
        data = tfquant.export.tflite(qmodel, path, input_type=input_type, mode=mode,
                                     strict=strict)
    if path is not None:
        print(f"wrote {path} ({len(data)} bytes)")
    return data
