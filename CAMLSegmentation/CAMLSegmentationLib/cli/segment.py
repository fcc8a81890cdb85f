"""``caml segment``: segment the left atrium in one image file or DICOM folder.

Stdout protocol with ``--progress json`` (what the Slicer module reads): one
JSON object per line, progress events from ``progress.json_lines``, then
exactly one final line, ``{"event": "done", "outputs": {...}, "info": {...}}``
or ``{"event": "error", "message": "..."}``. Nothing is written on failure.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Tuple, Union

from ..devices import DEVICE_CHOICES
from ..errors import UserError
from ..model.settings import DEFAULT_OVERLAP, FAST_OVERLAP, PROTOCOLS

if TYPE_CHECKING:  # the CLI imports torch only once a command runs, so `caml --help` stays fast
    from ..inference.predictor import InferenceModel, InferenceOptions
    from ..progress import ProgressCallback

OUTPUT_SUFFIX = "_left_atrium.seg.nrrd"
#: Beyond this, windows overlap so much that time grows with no measurable gain.
MAX_OVERLAP = 0.95


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
    parser.add_argument("--progress", choices=("bar", "json", "none"), default="bar",
                        help="bar: for people (stderr); json: JSON lines on stdout for programs")


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "segment", help="segment the left atrium in an MRI",
        description="Segment the left atrium in IN (NRRD, NIfTI, MHA, a DICOM folder or an LA .h5) and "
                    "write the mask to OUT on exactly the input's grid.")
    p.add_argument("input", metavar="IN", help="image file or DICOM folder")
    p.add_argument("output", metavar="OUT", nargs="?",
                   help=f"mask file: .seg.nrrd (Slicer segmentation), .nii.gz or .nrrd "
                        f"(default: IN's name + {OUTPUT_SUFFIX}, beside IN)")
    add_model_arguments(p)
    add_inference_arguments(p)
    from .backend import add_backend_argument

    add_backend_argument(p)
    p.add_argument("--uncertainty", metavar="OUT", help="also write |p_V - p_A| per voxel (.nrrd or .nii.gz); "
                                                        "runs model A as well")
    p.add_argument("--probability", metavar="OUT", help="also write the foreground probability (.nrrd/.nii.gz)")
    p.add_argument("--snapshot", metavar="OUT.png",
                   help="also write a picture: axial, coronal and sagittal slices through the mask with its "
                        "outline (and the uncertainty overlay with --uncertainty)")
    p.set_defaults(func=run)


def default_output(input_path: Path) -> Path:
    name = input_path.name
    for ending in (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".h5", ".hdf5", ".dcm"):
        if name.lower().endswith(ending):
            name = name[: -len(ending)]
            break
    return input_path.parent / (name + OUTPUT_SUFFIX)


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
    return base.with_changes(batch_size=args.batch_size, tta=base.tta if args.tta is None else args.tta,
                             lcc=base.lcc if args.lcc is None else args.lcc,
                             ensemble=args.ensemble, uncertainty=uncertainty)


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
    """Progress as ``--progress`` asks; each event is also a point where a cancel takes effect."""
    from ..progress import json_lines, no_progress, raise_if_signalled, text_bar

    emit = {"json": json_lines(sys.stdout), "bar": text_bar(sys.stderr)}.get(mode, no_progress)

    def report(event: Any) -> None:
        emit(event)
        # A signal whose Cancelled Python dropped (raised inside a finaliser) still stops the job.
        raise_if_signalled()

    return report


@contextlib.contextmanager
def json_outcome(enabled: bool) -> Iterator[Dict[str, Any]]:
    """In JSON mode, end stdout with a ``done`` line holding the fields the caller set.

    Errors and cancels are told by ``cli.main`` (one ``error`` or ``cancelled``
    line), so every command ends with exactly one final event.
    """
    from ..progress import emit_final

    final: Dict[str, Any] = {}
    yield final
    if enabled:
        emit_final(dict({"event": "done"}, **final))


@contextlib.contextmanager
def _snapshot_beside(path: Optional[Path], volume: Any, mask: Any, uncertainty: Any) -> Iterator[Dict[str, str]]:
    """Render the ``--snapshot`` picture first; it lands on ``path`` only if the block (the other outputs)
    succeeds, so all outputs appear together or none does."""
    if path is None:
        yield {}
        return
    from ..io.files import atomic_output
    from ..io.snapshot import encode_png, render_snapshot

    png = encode_png(render_snapshot(volume, mask, uncertainty))
    with atomic_output(path) as tmp:
        tmp.write_bytes(png)
        yield {"snapshot": str(path)}


def run(args: argparse.Namespace) -> int:
    from ..io.files import check_utf8_name
    from ..io.volume import check_output_paths, read_volume, write_outputs

    json_mode = args.progress == "json"
    with json_outcome(json_mode) as final:
        source = Path(args.input)
        check_utf8_name(source, "input")
        output = Path(args.output) if args.output else default_output(source)
        outputs: List[Tuple[str, str, Path]] = [("mask", "mask", output)]
        if args.uncertainty:
            outputs.append(("uncertainty", "image", Path(args.uncertainty)))
        if args.probability:
            outputs.append(("probability", "image", Path(args.probability)))
        # Every output checked before minutes of work; all are written, or none.
        check_output_paths(outputs, inputs=[source] + ([args.weights] if args.weights else []))
        snapshot = Path(args.snapshot) if getattr(args, "snapshot", None) else None
        if snapshot is not None and snapshot.suffix.lower() != ".png":
            raise UserError(f"{snapshot}: --snapshot writes a PNG picture; give a name ending in .png")
        options = options_from_args(args, uncertainty=bool(args.uncertainty))
        volume = read_volume(source)
        from ..inference.predictor import segment_volume
        from .backend import load_segment_model

        model = load_segment_model(args, with_a=options.ensemble or options.uncertainty)

        result = segment_volume(volume, model, options, progress=progress_callback(args.progress))
        arrays = {"mask": result.mask, "uncertainty": result.uncertainty, "probability": result.probability}
        try:
            with _snapshot_beside(snapshot, volume, result.mask, result.uncertainty) as picture:
                written = write_outputs([(name, kind, arrays[name], path) for name, kind, path in outputs],
                                        volume, commit=True)
                written.update(picture)
        except OSError as exc:
            raise UserError(str(exc)) from exc
        voxels = int(result.mask.sum())
        millilitres = voxels * float(volume.spacing[0] * volume.spacing[1] * volume.spacing[2]) / 1000.0
        final.update(outputs=written, info=dict(result.info, voxels=voxels, volume_ml=round(millilitres, 3)))
        if not json_mode:
            info = result.info
            print(f"{source}: left atrium {voxels} voxels ({millilitres:.1f} ml), model {info['model']}, "
                  f"{info['windows']} windows on {info['device']} in {info['seconds']:.1f} s"
                  f"{', test-time flips' if info['tta'] else ''}"
                  f"{', largest component kept' if info['lcc'] else ''}")
            for name, path in written.items():
                print(f"  {name}: {path}")
    return 0
