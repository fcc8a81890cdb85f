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

import numpy as np
from la_bench import la_case_path, setup


def main() -> None:
    args, model, options, ids = setup(__doc__, lambda p: p.add_argument(
        "--shift", type=float, default=0.5, help="origin shift in model voxels along each axis (default 0.5)"))
    from CAMLSegmentationLib.inference.metrics import dice
    from CAMLSegmentationLib.inference.predictor import segment_volume
    from CAMLSegmentationLib.io.volume import Volume, read_la_h5, read_volume

    step = np.asarray(model.settings.spacing, dtype=float) * args.shift  # mm, along each image axis
    print(f"{model.name}: origin moved by {args.shift} model voxels ({', '.join(f'{s:.3f}' for s in step)} mm), "
          f"protocol {options.protocol}, tta={options.tta}")
    rows = []
    for case in ids:
        path = la_case_path(case)
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
