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

import numpy as np
from la_bench import la_case_path, setup


def main() -> None:
    args, model, options, ids = setup(__doc__, lambda p: p.add_argument(
        "--fraction", type=float, default=0.8, help="the box's share of each axis (default 0.8)"))
    from CAMLSegmentationLib.inference.metrics import dice
    from CAMLSegmentationLib.inference.predictor import segment_volume
    from CAMLSegmentationLib.io.volume import Volume, read_la_h5, read_volume

    print(f"{model.name} on {model.device}: central {args.fraction:.0%} box, protocol {options.protocol}, "
          f"overlap {options.overlap}, blend {options.blend}, tta={options.tta} ensemble={options.ensemble} "
          f"lcc={'model' if options.lcc is None else options.lcc}")
    rows, seconds = [], []
    for case in ids:
        path = la_case_path(case)
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
