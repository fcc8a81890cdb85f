"""``caml segment``: segment the left atrium in one image file or DICOM folder.

Stdout protocol with ``--progress json`` (what the Slicer module reads): one
JSON object per line, progress events from ``progress.json_lines``, then
exactly one final line, ``{"event": "done", "outputs": {...}, "info": {...}}``
or ``{"event": "error", "message": "..."}``. Nothing is written on failure.
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

from ..errors import UserError

# The shared CLI pieces, importable from here as before (`caml al` and the tests use them so).
from .common import (  # noqa: F401
    MAX_OVERLAP,
    add_inference_arguments,
    add_model_arguments,
    json_outcome,
    load_model_from_args,
    options_from_args,
    parse_overlap,
    progress_callback,
)

OUTPUT_SUFFIX = "_left_atrium.seg.nrrd"


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


def segment_files(args: argparse.Namespace, progress: Any, load_model: Any = None,
                  cancel: Any = None, commit: bool = True) -> Tuple[Dict[str, str], Dict[str, Any]]:
    """What ``caml segment`` does between its arguments and its final event: read IN, segment it,
    write every output (all or none); returns ``(written outputs, info)``.

    ``load_model(args, with_a)`` gives the model (default: ``backend.load_segment_model``, loading
    it afresh); the warm worker (``cli/worker.py``) passes its cache, so both run this one path.
    ``cancel``: a ``CancelToken`` checked per batch of windows and before the outputs are written.
    ``commit``: the outputs are this process's final ones (``progress.commit_job``); the worker,
    which serves many requests, passes False.
    """
    from ..io.files import check_utf8_name
    from ..io.volume import check_output_paths, read_volume, write_outputs
    from ..progress import check_cancel

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

    if load_model is None:
        from .backend import load_segment_model as load_model
    model = load_model(args, with_a=options.ensemble or options.uncertainty)
    check_cancel(cancel)

    result = segment_volume(volume, model, options, progress=progress, cancel=cancel)
    arrays = {"mask": result.mask, "uncertainty": result.uncertainty, "probability": result.probability}
    check_cancel(cancel)  # the last point where a request's cancel applies: then the outputs appear
    try:
        with _snapshot_beside(snapshot, volume, result.mask, result.uncertainty) as picture:
            written = write_outputs([(name, kind, arrays[name], path) for name, kind, path in outputs],
                                    volume, commit=commit)
            written.update(picture)
    except OSError as exc:
        raise UserError(str(exc)) from exc
    voxels = int(result.mask.sum())
    millilitres = voxels * float(volume.spacing[0] * volume.spacing[1] * volume.spacing[2]) / 1000.0
    return written, dict(result.info, voxels=voxels, volume_ml=round(millilitres, 3))


def run(args: argparse.Namespace) -> int:
    json_mode = args.progress == "json"
    with json_outcome(json_mode) as final:
        written, info = segment_files(args, progress_callback(args.progress))
        final.update(outputs=written, info=info)
        if not json_mode:
            print(f"{Path(args.input)}: left atrium {info['voxels']} voxels ({info['volume_ml']:.1f} ml), model "
                  f"{info['model']}, {info['windows']} windows on {info['device']} in {info['seconds']:.1f} s"
                  f"{', test-time flips' if info['tta'] else ''}"
                  f"{', largest component kept' if info['lcc'] else ''}")
            for name, path in written.items():
                print(f"  {name}: {path}")
    return 0
