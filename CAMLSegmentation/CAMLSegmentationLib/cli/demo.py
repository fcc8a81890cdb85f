"""``python -m CAMLSegmentationLib.cli.demo [IMAGE]`` (what ``make demo`` runs): segment one MRI end to end.

What it segments, first match wins:

1. IMAGE, when given;
2. a real LA MRI, when the LA data sit beside the repository
   (``../shared/data/LA``, or ``--la-root`` / ``$CAML_LA_ROOT``): the last
   case of ``train.list``, a validation case whose label never entered
   training of the bundled model. It is converted to NRRD *in the output
   folder* (the data are never copied into the repository), segmented
   through the normal ``caml segment`` path, and scored against its
   reference label with the same metric code ``caml evaluate`` uses;
3. otherwise a synthetic MRI-like chest phantom (``phantom.py``), said so
   plainly, scored against the phantom's own atrium.

The catalog's default model is used; while the catalog is empty a randomly
initialised network stands in, clearly labelled, so every step still runs.
Outputs go to ``./demo-output/``: the ``.seg.nrrd``, the uncertainty map and
a PNG picture of the result.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from .. import MODULE_DIR
from ..io.phantom import PHANTOM_SEED

OUT_DIR = Path("demo-output")
#: Where ``make demo`` looks for the LA data: beside the repository, as DESIGN.md lays it out.
DEFAULT_LA_ROOT = MODULE_DIR.parent.parent / "shared" / "data" / "LA"


def synthetic_image(path: Path, shape: Sequence[int] = (144, 128, 80), seed: int = PHANTOM_SEED,
                    label_path: Optional[Path] = None) -> Path:
    """Write the MRI-like phantom (0.625 mm voxels) to ``path``; its atrium mask to ``label_path`` if given."""
    from ..io.phantom import mri_phantom
    from ..io.volume import write_image, write_mask

    volume, label = mri_phantom(shape=shape, seed=seed)
    write_image(volume.array, volume, path)
    if label_path is not None:
        write_mask(label, volume, label_path)
    return Path(path)


def la_root(explicit: Optional[str] = None) -> Optional[Path]:
    """The LA data folder to use, or None when there is none."""
    for candidate in (explicit, os.environ.get("CAML_LA_ROOT"), DEFAULT_LA_ROOT):
        if candidate and (Path(candidate) / "train.list").is_file():
            return Path(candidate)
    return None


def la_demo_case(root: Path) -> str:
    """The last case of ``train.list``: a validation case (its label only ever chose checkpoints)."""
    from ..training.sources import ORDER_FILE, read_id_list

    return read_id_list(root / ORDER_FILE)[-1]


def convert_la_case(root: Path, case_id: str, out: Path) -> Tuple[Path, Path]:
    """The case's image and label as NRRD files in ``out`` (0.625 mm voxels): (image, label)."""
    from ..io.volume import write_image, write_mask
    from ..training.sources import open_source

    volume, label = open_source(root).read(case_id, with_label=True)
    assert label is not None  # read(with_label=True) raises for an unlabeled case
    image = write_image(volume.array, volume, out / f"{case_id}.nrrd")
    reference = write_mask(label, volume, out / f"{case_id}_reference.nrrd")
    return image, reference


def score(mask_path: Path, reference_path: Path) -> float:
    """Dice in % of a mask file against a reference file, with ``caml evaluate``'s metric code."""
    from ..inference.metrics import evaluate_case
    from ..io.volume import read_image

    mask, reference = read_image(mask_path), read_image(reference_path)
    return 100.0 * evaluate_case(mask.array > 0.5, reference.array > 0.5, reference.spacing).dice


def _stand_in_model(out: Path) -> Path:
    import torch

    from ..model.checkpoint import save_checkpoint
    from ..model.network import CAMLNet, NetworkConfig

    torch.manual_seed(0)
    weights = out / "untrained_random_weights.pt"
    net = CAMLNet(NetworkConfig())
    save_checkpoint(weights, {"network": net.config.to_dict(), "model": net.state_dict(),
                              "note": "randomly initialised, untrained: for the demo only"})
    return weights


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m CAMLSegmentationLib.cli.demo", description=__doc__.split("\n")[0])
    parser.add_argument("image", nargs="?", help="an MRI to segment (default: an LA case if the data are "
                                                 "beside the repository, else a generated phantom)")
    parser.add_argument("--out", default=str(OUT_DIR), help="output folder (default ./demo-output)")
    parser.add_argument("--la-root", help=f"LA data folder (default $CAML_LA_ROOT or {DEFAULT_LA_ROOT})")
    parser.add_argument("--synthetic", action="store_true", help="use the phantom even when LA data are there")
    args = parser.parse_args(argv)

    from .. import cli
    from ..model.catalog import bundled_catalog_path, default_model

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    steps = []
    reference: Optional[Path] = None
    evaluate_hint = ""
    root = None if (args.image or args.synthetic) else la_root(args.la_root)
    if args.image:
        image = Path(args.image)
        steps.append(f"input: {image}")
    elif root is not None:
        case_id = la_demo_case(root)
        image, reference = convert_la_case(root, case_id, out)
        case_list = out / "demo_case.list"
        case_list.write_text(case_id + "\n")
        steps.append(f"input: LA case {case_id} (the last of {root / 'train.list'}, a validation case never "
                     f"used as labeled data), converted to NRRD in the output folder -> {image}")
        evaluate_hint = f"caml evaluate --data {root} --list {case_list} --out {out / 'evaluation'}"
    else:
        image = out / "synthetic_mri.nrrd"
        reference = out / "synthetic_mri_reference.nrrd"
        synthetic_image(image, label_path=reference)
        why = "--synthetic given" if args.synthetic else f"no LA data at {args.la_root or DEFAULT_LA_ROOT}"
        steps.append(f"{why}: generated a SYNTHETIC MRI-like chest phantom (not a patient scan; 144x128x80 "
                     f"voxels of 0.625 mm, a bright atrium-like blob with four veins) -> {image}")

    entry = default_model()
    if entry is not None:
        model_args = ["--model", entry.id]
        steps.append(f"model: {entry.id} version {entry.version} from the catalog")
    else:
        weights = _stand_in_model(out)
        # Its mask means nothing, so the quick preview protocol shows the pipeline in a few seconds.
        model_args = ["--weights", str(weights), "--protocol", "fast"]
        steps.append(f"model: the catalog ({bundled_catalog_path()}) has no trained model yet, so a "
                     f"RANDOMLY INITIALISED, UNTRAINED full-size network stands in ({weights}); the pipeline "
                     f"runs end to end (with --protocol fast) but the mask means nothing")

    stem = image.name.split(".")[0]
    mask = out / f"{stem}_left_atrium.seg.nrrd"
    uncertainty = out / f"{stem}_uncertainty.nrrd"
    picture = out / f"{stem}_snapshot.png"
    print("CAML demo\n  " + "\n  ".join(steps), flush=True)
    # A trained model runs with the default protocol: the one its card and `caml evaluate` use.
    code = cli.main(["segment", str(image), str(mask), *model_args, "--uncertainty", str(uncertainty),
                     "--snapshot", str(picture)])
    if code != 0:
        return code
    lines = [f"  {mask}: Slicer segmentation (segment 'Left atrium') on the input's grid; open it in 3D Slicer",
             f"  {uncertainty}: per-voxel disagreement |p_V - p_A| of CAML's two sub-models (0 = agree)",
             f"  {picture}: axial, coronal and sagittal slices through the mask (outline; uncertainty in yellow)"]
    print("\nDone. Outputs:\n" + "\n".join(lines))
    if reference is not None:
        dice = score(mask, reference)
        if evaluate_hint:
            print(f"\nDice against the case's reference label: {dice:.2f} % (metric code of `caml evaluate`)\n"
                  f"  score the stored case the benchmark way: {evaluate_hint}")
        else:
            print(f"\nDice against the phantom's own atrium: {dice:.2f} % (a synthetic sanity check, "
                  f"not a clinical score; the model card has the scores on real MRI)")
    print("\nSegment your own image: caml segment IMAGE [OUT.seg.nrrd] --snapshot OUT.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
