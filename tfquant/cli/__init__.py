"""The ``tfquant`` command line: ``demo | quantize | export | verify | analyze``.

One module per verb (:mod:`~tfquant.cli.demo`, :mod:`~tfquant.cli.quantize`,
:mod:`~tfquant.cli.export`, :mod:`~tfquant.cli.verify`, :mod:`~tfquant.cli.analyze`), each with
``add_parser(subparsers)`` and ``run(args) -> int``; shared helpers in
:mod:`~tfquant.cli.common` and :mod:`~tfquant.cli.loading`; data files in
:mod:`~tfquant.cli.data`; the parser and :func:`main` in :mod:`~tfquant.cli.app`.

Run ``tfquant --help`` / ``tfquant <verb> --help`` (or ``python -m tfquant.cli ...``).

Example:
    >>> from tfquant.cli import main
    >>> main(["quantize", "model.keras", "--calibration", "calib.npy", "-o", "q.keras"])
    ... # doctest: +SKIP
    0
"""

from tfquant.cli.app import build_parser, main
from tfquant.cli.common import CLIError, one_line

__all__ = ["main", "build_parser", "CLIError", "one_line"]
