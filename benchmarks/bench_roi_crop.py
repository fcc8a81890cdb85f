"""Does an ROI crop change the mask? The check of issue #10, on every validation case.

    python benchmarks/bench_roi_crop.py [--weights FILE | --model ID] [--cases N] [--fraction 0.8]
                                        [caml segment's inference options: --protocol, --overlap, --tta, ...]

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


def main() -> None:
    from CAMLSegmentationLib.cli.segment import (
        add_inference_arguments,
        add_model_arguments,
        load_model_from_args,
        options_from_args,
    )

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_arguments(parser)
    parser.add_argument("--cases", type=int, default=16, help="the last N cases of train.list (default 16)")
    parser.add_argument("--fraction", type=float, default=0.8, help="the box's share of each axis (default 0.8)")
    add_inference_arguments(parser)
    args = parser.parse_args()
    if not (LA_ROOT / "train.list").is_file():
        raise SystemExit(f"needs the LA data in {LA_ROOT}")

    import torch
    from CAMLSegmentationLib.inference.metrics import dice
    from CAMLSegmentationLib.inference.predictor import segment_volume
    from CAMLSegmentationLib.io.volume import Volume, read_la_h5, read_volume

    torch.set_num_threads(1)
    model = load_model_from_args(args, with_a=args.ensemble)
    options = options_from_args(args)
    ids = (LA_ROOT / "train.list").read_text().split()[-args.cases:]
    print(f"{model.name} on {model.device}: central {args.fraction:.0%} box, protocol {options.protocol}, "
          f"overlap {options.overlap}, blend {options.blend}, tta={options.tta} ensemble={options.ensemble} "
          f"lcc={'model' if options.lcc is None else options.lcc}")
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
