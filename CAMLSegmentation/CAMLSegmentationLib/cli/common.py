"""What several ``caml`` sub-commands share: model, inference and progress arguments, and the
model, options and progress callback they stand for (``segment``, ``evaluate``, ``train``, ``al``)."""

from __future__ import annotations

import argparse
import contextlib
import sys
from typing import TYPE_CHECKING, Any, Dict, Iterator, Tuple, Union

from ..devices import DEVICE_CHOICES
from ..errors import UserError
from ..inference.backends import FLOAT32
from ..model.settings import DEFAULT_OVERLAP, FAST_OVERLAP, PROTOCOLS

if TYPE_CHECKING:  # the CLI imports torch only once a command runs, so `caml --help` stays fast
    from ..inference.predictor import InferenceModel, InferenceOptions
    from ..progress import ProgressCallback

#: ``--progress``: a text bar on stderr for people, JSON lines on stdout for programs, or nothing.
PROGRESS_MODES = ("bar", "json", "none")
#: Beyond this, windows overlap so much that time grows with no measurable gain.
MAX_OVERLAP = 0.95


def add_progress_argument(parser: argparse.ArgumentParser,
                          help: str = "bar: for people (stderr); json: JSON lines on stdout for programs; "
                                      "none: nothing") -> None:
    parser.add_argument("--progress", choices=PROGRESS_MODES, default="bar", help=help)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--model / --weights / --device, shared with ``caml evaluate``."""
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--model", metavar="ID", help="a model id from the catalog (see `caml models`); "
                                                     "default: the catalog's default model")
    which.add_argument("--weights", metavar="FILE", help="a checkpoint file instead of a catalog model "
                                                         "(this project's or an official CAML iter_*.pth)")
    parser.add_argument("--device", default="auto",
                        help=f"where the network runs: {', '.join(DEVICE_CHOICES)} or cuda:N (default auto)")


def add_inference_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--protocol", choices=PROTOCOLS, default="default",
                        help="default: dense windows, plainly averaged, with test-time flips (the model card's "
                             "setting; the mask barely changes when the image is cropped); fast: a preview "
                             "6 (LA crop) to 20 (whole chest) times quicker "
                             f"({FAST_OVERLAP * 100:.0f}%% overlap, Gaussian-blended windows, no flips); "
                             "official: the CAML paper's evaluation (strides 18/18/4, averaged softmax, argmax, "
                             "no post-processing)")
    parser.add_argument("--overlap", type=parse_overlap, default=None, metavar="F[,F,F]",
                        help="fraction shared by neighbouring windows, 0 to 0.95: one value for every axis or "
                             "one per image axis (default: the protocol's; default protocol "
                             f"{','.join(f'{v:g}' for v in DEFAULT_OVERLAP)}, fast {FAST_OVERLAP:g})")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="windows per forward pass (default 2 on CPU, 4 on CUDA)")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                        help="test-time augmentation: average over the flips the model's training used "
                             "(for this project's models the 4 in-plane flips; never the slice axis); "
                             "default: on, off with --protocol fast or official")
    parser.add_argument("--ensemble", action="store_true", help="average models V and A instead of V alone")
    parser.add_argument("--lcc", action=argparse.BooleanOptionalAction, default=None,
                        help="keep only the largest connected component (--no-lcc: keep every component); "
                             "default: what the model's validation chose, stored with its weights")
    add_progress_argument(parser)


def parse_overlap(text: str) -> Union[float, Tuple[float, ...]]:
    """``--overlap``: one fraction or three comma-separated ones, each in [0, 0.95]."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number or three comma-separated numbers: {text!r}") from None
    if len(values) not in (1, 3) or not all(0.0 <= v <= MAX_OVERLAP for v in values):
        raise argparse.ArgumentTypeError(f"one or three fractions between 0 and {MAX_OVERLAP}, not {text!r}")
    return values[0] if len(values) == 1 else values


def options_from_args(args: argparse.Namespace, uncertainty: bool = False) -> InferenceOptions:
    from ..inference.predictor import InferenceOptions

    if args.batch_size is not None and args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    base = InferenceOptions.for_protocol(args.protocol)
    if args.protocol == "official":
        if args.tta or args.lcc or args.ensemble or args.overlap is not None:
            raise UserError("--protocol official is model V at the paper's strides without post-processing: "
                            "it cannot be combined with --tta, --lcc, --ensemble or --overlap")
    elif args.overlap is not None:
        base = base.with_changes(overlap=args.overlap)
    # --precision float32 (caml segment, evaluate): full precision on CUDA too, no float16 autocast.
    full_precision = getattr(args, "precision", "auto") == FLOAT32
    return base.with_changes(batch_size=args.batch_size, tta=base.tta if args.tta is None else args.tta,
                             lcc=base.lcc if args.lcc is None else args.lcc,
                             ensemble=args.ensemble, uncertainty=uncertainty, amp=base.amp and not full_precision)


def load_model_from_args(args: argparse.Namespace, with_a: bool = False) -> InferenceModel:
    """The model ``--weights`` or ``--model`` names, else the catalog default; UserError when there is none."""
    from ..inference.predictor import load_inference_model
    from ..model.catalog import default_model, find_model, verify

    if args.weights:
        return load_inference_model(args.weights, args.device, with_a=with_a)
    entry = find_model(args.model) if args.model else default_model()
    if entry is None:
        from ..model.catalog import bundled_catalog_path, user_catalog_path

        raise UserError(f"no trained model in the catalog ({bundled_catalog_path()} and {user_catalog_path()} "
                        f"list none): pass --weights FILE, or register one with `caml models register`")
    return load_inference_model(verify(entry), args.device, with_a=with_a,
                                name=f"{entry.id} (version {entry.version})")


def progress_callback(mode: str) -> ProgressCallback:
    """Progress as ``--progress`` asks; each event is also a unit boundary where a cancel signal takes effect."""
    from ..progress import check_cancel, json_lines, no_progress, text_bar

    emit = {"json": json_lines(sys.stdout), "bar": text_bar(sys.stderr)}.get(mode, no_progress)

    def report(event: Any) -> None:
        emit(event)
        check_cancel()

    return report


@contextlib.contextmanager
def json_outcome(enabled: bool) -> Iterator[Dict[str, Any]]:
    """In JSON mode, end stdout with a ``done`` line holding the fields the caller set.

    Errors and cancels are told by ``cli.main`` (one ``error`` or ``cancelled``
    line), so every command ends with exactly one final event.
    """
    from ..progress import check_cancel, emit_final

    final: Dict[str, Any] = {}
    yield final
    check_cancel()  # a signal no unit boundary saw cancels a job whose outputs are not committed
    if enabled:
        emit_final(dict({"event": "done"}, **final))


