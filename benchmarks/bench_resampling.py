"""Downsampling onto the model's grid: plain trilinear (before #9 item 9) against anti-aliased (now).

    python benchmarks/bench_resampling.py [--threads 1] [--repeats 3]

Both variants run in this one process on the same arrays, so their ratio is
what to compare (the machines are shared and noisy). For each case it prints
the seconds per resampling and the aliasing left on a one-voxel checkerboard
of the same size (its largest absolute value after resampling: the pattern
cannot be held by the coarser grid, so the right answer is 0; plain sampling
turns it into a spurious pattern of about the input's amplitude).

Cases: an LA crop (0.625 mm, 288x288x88, factor 2 to the cpu model's 1.25 mm)
and a clinical whole-chest scan (0.35 mm in-plane, 576x576x88 with 1.25 mm
slices, factor 3.6 in-plane).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable, Dict

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "CAMLSegmentation"))

CASES = {
    "LA crop 0.625 mm -> 1.25 mm": ((288, 288, 88), (0.625, 0.625, 0.625)),
    "chest 0.35 mm -> 1.25 mm": ((576, 576, 88), (0.35, 0.35, 1.25)),
}
TARGET_SPACING = (1.25, 1.25, 1.25)


def checkerboard(shape) -> np.ndarray:
    i, j, k = np.indices(shape, sparse=True)
    return (((i + j + k) % 2) * 2.0 - 1.0).astype(np.float32)


def timed(fn: Callable[[], np.ndarray], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="best of N timings (default 3)")
    args = parser.parse_args()

    import torch
    from CAMLSegmentationLib.inference import preprocess

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    print(f"torch {torch.__version__}, {args.threads} thread(s), best of {args.repeats}")
    print(f"{'case':32s} {'variant':14s} {'seconds':>8s} {'aliasing':>9s}")
    for name, (shape, spacing) in CASES.items():
        grid = preprocess.model_grid(shape, spacing, TARGET_SPACING)
        image = rng.normal(size=shape).astype(np.float32)
        board = checkerboard(shape)
        results: Dict[str, float] = {}
        for variant, factor in (("plain", float("inf")), ("anti-aliased", preprocess.ANTIALIAS_FACTOR)):
            saved = preprocess.ANTIALIAS_FACTOR
            preprocess.ANTIALIAS_FACTOR = factor
            try:
                seconds = timed(lambda a=image, g=grid: g.sample(a), args.repeats)
                aliasing = float(np.abs(grid.sample(board)).max())
            finally:
                preprocess.ANTIALIAS_FACTOR = saved
            results[variant] = seconds
            print(f"{name:32s} {variant:14s} {seconds:8.3f} {aliasing:9.3f}")
        print(f"{'':32s} {'cost':14s} {results['anti-aliased'] / results['plain']:7.2f}x")


if __name__ == "__main__":
    main()
