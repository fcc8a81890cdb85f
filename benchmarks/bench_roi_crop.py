"""Does an ROI crop change the mask? The check of issue #10, on every validation case.

    python benchmarks/bench_roi_crop.py [--weights FILE | --model ID] [--cases N] [--fraction 0.8]
                                        [--protocol default|fast] [--overlap F[,F,F]] [--tta | --no-tta]
                                        [--ensemble] [--lcc | --no-lcc]

For each of the last N cases of the LA ``train.list`` (default 16, the model
card's validation cases) it segments the whole image and a central box of
``--fraction`` of each axis (the crop keeps its place in patient space, as a
Slicer ROI crop does), then prints three Dice values: the crop's mask against
the whole image's on the voxels the box keeps (``crop~full``; the project asks
for at least 0.97), and each mask against the label (``full~label``,
``crop~label``, on the same voxels), and the seconds per whole image. Needs
``../shared/data/LA``. One torch thread; the options are ``caml segment``'s
and mean the same (default: its defaults).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "CAMLSegmentation"))
LA_ROOT = REPO.parent / "shared" / "data" / "LA"


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = np.count_nonzero(a) + np.count_nonzero(b)
    return 1.0 if total == 0 else 2.0 * np.count_nonzero(a & b) / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--weights", help="a checkpoint file (default: the catalog's default model)")
    which.add_argument("--model", help="a catalog model id")
    parser.add_argument("--cases", type=int, default=16, help="the last N cases of train.list (default 16)")
    parser.add_argument("--fraction", type=float, default=0.8, help="the box's share of each axis (default 0.8)")
    parser.add_argument("--protocol", choices=("default", "fast"), default="default")
    parser.add_argument("--overlap", default=None, help="one fraction or three (default: the protocol's)")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--ensemble", action="store_true")
    parser.add_argument("--lcc", action=argparse.BooleanOptionalAction, default=None)
    args = parser.parse_args()
    if not (LA_ROOT / "train.list").is_file():
        raise SystemExit(f"needs the LA data in {LA_ROOT}")

    import torch
    from CAMLSegmentationLib.cli.segment import parse_overlap
    from CAMLSegmentationLib.inference.predictor import InferenceOptions, load_inference_model, segment_volume
    from CAMLSegmentationLib.io.volume import Volume, read_la_h5, read_volume
    from CAMLSegmentationLib.model.catalog import default_model, find_model, verify

    torch.set_num_threads(1)
    if args.weights:
        weights = args.weights
    else:
        entry = find_model(args.model) if args.model else default_model()
        weights = verify(entry)
    model = load_inference_model(weights, "cpu", with_a=args.ensemble)
    options = InferenceOptions.for_protocol(args.protocol).with_changes(ensemble=args.ensemble, lcc=args.lcc)
    if args.overlap is not None:
        options = options.with_changes(overlap=parse_overlap(args.overlap))
    if args.tta is not None:
        options = options.with_changes(tta=args.tta)
    ids = (LA_ROOT / "train.list").read_text().split()[-args.cases:]
    print(f"{weights}: central {args.fraction:.0%} box, protocol {options.protocol}, overlap {options.overlap}, "
          f"blend {options.blend}, tta={options.tta} ensemble={options.ensemble} "
          f"lcc={'model' if args.lcc is None else args.lcc}")
    rows, seconds = [], []
    for case in ids:
        path = LA_ROOT / "2018LA_Seg_Training Set" / case / "mri_norm2.h5"
        whole = read_volume(path)
        _, label = read_la_h5(path)
        shape = np.array(whole.shape)
        lo = (round((1.0 - args.fraction) / 2, 6) * shape).astype(int)
        box = tuple(slice(a, a + int(args.fraction * n)) for a, n in zip(lo, shape))
        crop = Volume(array=np.ascontiguousarray(whole.array[box]), spacing=whole.spacing,
                      origin=tuple(np.asarray(whole.origin) + lo * np.asarray(whole.spacing)),
                      direction=whole.direction)
        full = segment_volume(whole, model, options)
        seconds.append(full.info["seconds"])
        full_mask = full.mask[box] > 0
        crop_mask = segment_volume(crop, model, options).mask > 0
        truth = label[box] > 0
        row = (dice(full_mask, crop_mask), dice(full_mask, truth), dice(crop_mask, truth))
        rows.append(row)
        print(f"{case[:6]}  crop~full {row[0]:.4f}  full~label {row[1]:.4f}  crop~label {row[2]:.4f}", flush=True)
    table = np.array(rows)
    print(f"mean    crop~full {table[:, 0].mean():.4f}  full~label {table[:, 1].mean():.4f}  "
          f"crop~label {table[:, 2].mean():.4f}")
    print(f"lowest  crop~full {table[:, 0].min():.4f}  full~label {table[:, 1].min():.4f}  "
          f"crop~label {table[:, 2].min():.4f}")
    print(f"seconds per whole image: {np.mean(seconds):.2f}")


if __name__ == "__main__":
    main()
