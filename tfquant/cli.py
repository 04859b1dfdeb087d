"""The ``tfquant`` command line."""

from __future__ import annotations

import argparse
import sys


def _demo(args: argparse.Namespace) -> int:
    from tfquant import demo

    demo.run(output_dir=args.output_dir, float_epochs=args.float_epochs,
             qat_epochs=args.qat_epochs, seed=args.seed)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``tfquant`` command."""
    parser = argparse.ArgumentParser(prog="tfquant", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train, QAT fine-tune, export and verify a CNN on the "
                                       "bundled digits data")
    demo.add_argument("--output-dir", default="out", help="where files are written")
    demo.add_argument("--float-epochs", type=int, default=25)
    demo.add_argument("--qat-epochs", type=int, default=4)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: parses ``argv`` and runs the sub-command; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, TypeError) as err:
        print(f"tfquant {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
