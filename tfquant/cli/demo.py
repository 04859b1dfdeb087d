"""``tfquant demo``: train, QAT fine-tune, export and verify a CNN on the bundled digits.

Example:
    $ tfquant demo --output-dir out --float-epochs 25 --qat-epochs 4
"""

from __future__ import annotations

import argparse
import os

from tfquant.cli.common import EXIT_OK, CLIError, non_negative, positive

HELP = "train, QAT fine-tune, export and verify a CNN on the bundled digits data"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Adds the ``demo`` verb to ``sub``."""
    p = sub.add_parser("demo", help=HELP, description=HELP[0].upper() + HELP[1:] + ": float "
                       "accuracy, int8 QAT accuracy, TFLite int8 accuracy and size.")
    p.add_argument("--output-dir", default="out",
                   help="where demo.tflite and demo_qat.keras are written (default: out)")
    p.add_argument("--float-epochs", type=positive, default=25, metavar="N",
                   help="float training epochs (default 25)")
    p.add_argument("--qat-epochs", type=non_negative, default=4, metavar="N",
                   help="QAT fine-tuning epochs (default 4)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Runs :func:`tfquant.demo.run` with the options of ``args``."""
    from tfquant import demo

    if os.path.exists(args.output_dir) and not os.path.isdir(args.output_dir):
        raise CLIError(f"--output-dir {args.output_dir!r} exists and is not a directory")
    demo.run(output_dir=args.output_dir, float_epochs=args.float_epochs,
             qat_epochs=args.qat_epochs, seed=args.seed)
    return EXIT_OK
