"""The ``caml`` command: one sub-command per engine capability.

Each sub-command lives in the module that implements it and contributes an
``add_parser(subparsers)`` function that registers its arguments and sets
``func``; this file only assembles them.
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from .. import __version__
from ..errors import CAMLError, UserError  # UserError: importable from here, as before

# Modules that provide sub-commands, imported lazily so ``caml --help`` stays fast.
_COMMAND_MODULES = [".train", ".segment", ".evaluate", ".models", ".al", ".worker"]


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(
        prog="caml",
        description="CAML (Correlation-Aware Mutual Learning) left-atrium segmentation: "
                    "train, segment, evaluate, active learning.")
    parser.add_argument("--version", action="version", version=f"caml {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        importlib.import_module(name, __package__).add_parser(sub)
    return parser


def _wants_json(argv: List[str]) -> bool:
    """``--progress json`` among the arguments (known before argparse runs, so even a cancel
    during start-up ends with its JSON event)."""
    for n, arg in enumerate(argv):
        if arg == "--progress=json" or (arg == "--progress" and argv[n + 1:n + 2] == ["json"]):
            return True
    return False


def _non_utf8_argument(argv: List[str]) -> Optional[str]:
    """The first argument that is not valid UTF-8 (a file name with a foreign byte), else None.

    Python hands such bytes over as lone surrogates; SimpleITK's C++ aborts the
    whole process on them, after the work is done when it is the output name.
    """
    for arg in argv:
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            return arg.encode("utf-8", "backslashreplace").decode("ascii", "replace")
    return None


def main(argv: Optional[List[str]] = None, restore_signals: bool = True) -> int:
    """Run one ``caml`` command; the exit status is 0 (done), 2 (user error) or 130 (cancelled).

    The cancel handler (SIGTERM, SIGINT) is installed before anything else,
    so a cancel at any moment ends the same way: exit status 130 and, with
    ``--progress json``, one final ``{"event": "cancelled"}`` line. Errors the
    user can fix (``CAMLError``) are one line on stderr (and one ``error``
    event); any other exception is a bug and keeps its traceback.
    """
    from ..progress import Cancelled, begin_work, commit_job, emit_final, install_cancel_handler, restore_handlers

    argv = list(sys.argv[1:] if argv is None else argv)
    json_mode = _wants_json(argv)
    previous = install_cancel_handler(sys.stdout if json_mode else None, starting=True)
    command = "caml"
    try:
        try:
            bad = _non_utf8_argument(argv)
            if bad is not None:
                raise UserError(f"argument {bad!r} is not valid UTF-8: rename the file (file names must be "
                                f"UTF-8 text)")
            parser = build_parser()
            args = parser.parse_args(argv)
            if not getattr(args, "func", None):
                parser.print_help()
                return 2
            command = f"caml {args.command}"
            begin_work()  # from here a signal stops the job at its next unit boundary
            return int(args.func(args) or 0)
        except CAMLError as exc:
            emit_final({"event": "error", "message": str(exc)})
            print(f"{command}: error: {exc}", file=sys.stderr)
            return 2
        except Exception as exc:
            emit_final({"event": "error", "message": f"internal error ({type(exc).__name__}: {exc}); "
                                                     f"please report it with the traceback"})
            raise
    except (Cancelled, KeyboardInterrupt) as exc:
        emit_final({"event": "cancelled", "message": str(exc) or "interrupted"})
        print(f"{command}: cancelled", file=sys.stderr)
        return 130
    finally:
        commit_job()  # the outcome is decided: a late signal must not change it
        if restore_signals:
            restore_handlers(previous)


def entry_point() -> None:
    """``caml`` as a program: exit with ``main``'s status whatever signal comes after the outcome.

    Python restores the default handlers while it shuts down, so a SIGTERM
    then would kill the process (status 143) after it told its outcome; the
    cancel signals are ignored from the moment ``main`` returns.
    """
    import signal

    from ..progress import CANCEL_SIGNALS

    code = main(restore_signals=False)
    for sig in CANCEL_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    sys.exit(code)


if __name__ == "__main__":
    entry_point()
