"""The ``caml`` command: one sub-command per engine capability.

Each sub-command lives in the module that implements it and contributes an
``add_parser(subparsers)`` function that registers its arguments and sets
``func``; this file only assembles them.
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from . import __version__

# Modules that provide sub-commands, imported lazily so ``caml --help`` stays fast.
_COMMAND_MODULES = ["train_cli", "segment_cli", "evaluate_cli", "models_cli", "activelearning.al_cli"]


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(
        prog="caml",
        description="CAML (Correlation-Aware Mutual Learning) left-atrium segmentation: "
                    "train, segment, evaluate, active learning.")
    parser.add_argument("--version", action="version", version=f"caml {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        importlib.import_module(f"{__package__}.{name}").add_parser(sub)
    return parser


class UserError(Exception):
    """An error caused by the user's input: printed as one line, exit status 2, no traceback."""


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from .progress import Cancelled

    try:
        return int(args.func(args) or 0)
    except (UserError, FileNotFoundError, ValueError) as exc:
        print(f"caml {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Cancelled:
        print(f"caml {args.command}: cancelled", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"caml {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
