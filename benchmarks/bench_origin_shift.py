"""Does moving the whole image in patient space change the mask? Issue #25's risk 5, on validation cases.

    python benchmarks/bench_origin_shift.py [--weights FILE | --model ID] [--cases N] [--shift 0.5]
                                            [caml segment's inference options: --protocol, --tta, ...]

For each of the last N cases of the LA ``train.list`` (default 16, the model
card's validation cases) it segments the image as stored and the same voxels
with the origin moved by ``--shift`` model voxels along every axis (default
0.5: the largest misalignment between the image and the model's grid, which
``preprocess.model_grid`` anchors in patient space). Both masks are on the same
voxel grid, so they are compared voxel by voxel (``shifted~stored``), and each
against the label. Needs ``../shared/data/LA``; one torch thread; the options
are ``caml segment``'s (default: its defaults).
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
    from CAMLSegmentationLib.cli.common import (
        add_inference_arguments,
        add_model_arguments,
        load_model_from_args,
        options_from_args,
    )

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_arguments(parser)
    parser.add_argument("--cases", type=int, default=16, help="the last N cases of train.list (default 16)")
    parser.add_argument("--shift", type=float, default=0.5,
                        help="origin shift in model voxels along each axis (default 0.5)")
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
    step = np.asarray(model.settings.spacing, dtype=float) * args.shift  # mm, along each image axis
    ids = (LA_ROOT / "train.list").read_text().split()[-args.cases:]
    print(f"{model.name}: origin moved by {args.shift} model voxels ({', '.join(f'{s:.3f}' for s in step)} mm), "
          f"protocol {options.protocol}, tta={options.tta}")
    rows = []
    for case in ids:
        path = LA_ROOT / "2018LA_Seg_Training Set" / case / "mri_norm2.h5"
        stored = read_volume(path)
        _, label = read_la_h5(path)
        direction = np.asarray(stored.direction, dtype=float).reshape(3, 3)
        moved = Volume(array=stored.array, spacing=stored.spacing,
                       origin=tuple(np.asarray(stored.origin, dtype=float) + direction @ step),
                       direction=stored.direction)
        a = segment_volume(stored, model, options).mask > 0
        b = segment_volume(moved, model, options).mask > 0
        truth = label > 0
        row = (dice(a, b), dice(a, truth), dice(b, truth))
        rows.append(row)
        print(f"{case[:6]}  shifted~stored {row[0]:.4f}  stored~label {row[1]:.4f}  shifted~label {row[2]:.4f}",
              flush=True)
    table = np.array(rows)
    for name, pick in (("mean  ", table.mean(axis=0)), ("lowest", table.min(axis=0))):
        print(f"{name}  shifted~stored {pick[0]:.4f}  stored~label {pick[1]:.4f}  shifted~label {pick[2]:.4f}")


if __name__ == "__main__":
    main()
