"""Inference speed and memory on one LA case: this project's protocols vs the official CAML one.

    python benchmarks/bench_inference.py [--data ../shared/data/LA] [--case ID] [--weights FILE]

Prints, for one case, seconds per case, windows per second and peak memory for

* ``default``: ``caml segment``'s default (model V, overlap 0.75/0.75/0.875,
  plain averaging, test-time flips);
* ``fast``: ``--protocol fast`` (model V, 25 % overlap, Gaussian blending, no flips);
* ``official``: the paper's protocol as implemented here (model V, strides 18/18/4);
* ``official-dual``: the protocol as the official code runs it, the whole dual
  model (V and A) per window, keeping V's output (the DESIGN's 155 s reference);
* ``large`` / ``large-fast``: the default and the fast protocol on a synthetic
  576x576x88 MRI (peak memory target <= 3 GB);

and the speed-up of each of this project's protocols over each official variant.
``windows`` counts window positions; with the flips each runs 4 forward passes. Without
``--weights`` the networks are randomly initialised full-size CAML models
(16 filters): timings do not depend on the weights, masks and Dice do, so
Dice is reported only with ``--weights``. Each measurement runs in its own
process so peak memory (max RSS) is that run's alone.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "CAMLSegmentation"))

MODES = ("default", "fast", "official", "official-dual", "large", "large-fast")


def la_root() -> Path:
    return Path(os.environ.get("CAML_LA_ROOT", REPO.parent / "shared" / "data" / "LA"))


def measure(mode: str, case: Path, weights: str, threads: int) -> dict:
    """One run in this process; returns timings, peak RSS and (with weights) Dice."""
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    from CAMLSegmentationLib.inference.metrics import dice
    from CAMLSegmentationLib.inference.predictor import (
        OFFICIAL_STRIDES,
        InferenceOptions,
        count_windows,
        load_inference_model,
        random_model,
        segment_volume,
        sliding_window,
    )
    from CAMLSegmentationLib.inference.preprocess import normalize_intensity
    from CAMLSegmentationLib.io.volume import Volume, read_la_h5
    from CAMLSegmentationLib.model.network import CAMLNet, NetworkConfig
    from CAMLSegmentationLib.model.settings import ZSCORE

    if mode.startswith("large"):
        rng = np.random.default_rng(0)
        volume, label = Volume(rng.normal(size=(576, 576, 88)).astype(np.float32), spacing=(0.625,) * 3), None
    else:
        volume, label = read_la_h5(case)
    if mode == "official-dual":
        # The official test loop: dual model forward per window, softmax of V averaged, argmax.
        net = CAMLNet(NetworkConfig())
        if weights:
            from CAMLSegmentationLib.model.checkpoint import load_caml_network

            net, _ = load_caml_network(weights)
        net.eval()
        window = (112, 112, 80)
        start = time.perf_counter()
        with torch.inference_mode():
            probs = sliding_window(torch.from_numpy(normalize_intensity(volume.array, ZSCORE))[None], window,
                                   lambda x: torch.softmax(net(x)[0], 1)[:, 1:], strides=OFFICIAL_STRIDES,
                                   layout="flush", blend="constant", batch_size=1)
        seconds = time.perf_counter() - start
        mask = (probs[0].numpy() > 0.5).astype(np.uint8)
        windows = count_windows(volume.shape, window, OFFICIAL_STRIDES)
    else:
        model = load_inference_model(weights, "cpu") if weights else random_model(16, device="cpu")
        options = InferenceOptions.for_protocol({"large": "default", "large-fast": "fast"}.get(mode, mode))
        start = time.perf_counter()
        result = segment_volume(volume, model, options)
        seconds = time.perf_counter() - start
        mask, windows = result.mask, result.info["windows"]
    out = {"mode": mode, "shape": list(volume.shape), "seconds": seconds, "windows": windows,
           "windows_per_s": windows / seconds,
           "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2}
    if weights and label is not None:
        out["dice"] = dice(mask, label) * 100
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=la_root())
    parser.add_argument("--case", help="case id (default: the first of train.list)")
    parser.add_argument("--weights", default="", help="a trained checkpoint (enables the Dice comparison)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {','.join(MODES)}")
    parser.add_argument("--run", help=argparse.SUPPRESS)  # internal: one measurement in a child process
    args = parser.parse_args()

    if not (args.data / "train.list").is_file():
        print(f"LA data not found at {args.data} (set CAML_LA_ROOT or --data)", file=sys.stderr)
        return 2
    case_id = args.case or (args.data / "train.list").read_text().split()[0]
    case = args.data / "2018LA_Seg_Training Set" / case_id / "mri_norm2.h5"
    if args.run:
        print(json.dumps(measure(args.run, case, args.weights, args.threads)))
        return 0

    import torch

    print(f"case {case_id}; torch {torch.__version__}, {args.threads} CPU threads, {os.cpu_count()} cores, "
          f"load average before start {os.getloadavg()[0]:.2f}")
    print("weights: " + (args.weights or "randomly initialised full-size CAML networks (16 filters); "
                                         "timings do not depend on the weights"))
    results = {}
    for mode in args.modes.split(","):
        cmd = [sys.executable, __file__, "--run", mode, "--data", str(args.data), "--case", case_id,
               "--threads", str(args.threads)] + (["--weights", args.weights] if args.weights else [])
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{mode}: failed\n{done.stderr}", file=sys.stderr)
            return 1
        results[mode] = r = json.loads(done.stdout.strip().splitlines()[-1])
        extra = f"  Dice {r['dice']:.2f}" if "dice" in r else ""
        print(f"{mode:<14} {'x'.join(map(str, r['shape'])):<12} {r['seconds']:8.1f} s  {r['windows']:4d} windows  "
              f"{r['windows_per_s']:6.2f} windows/s  peak {r['peak_rss_gb']:.2f} GB{extra}", flush=True)
    for ours in ("default", "fast"):
        for ref in ("official", "official-dual"):
            if ours in results and ref in results:
                ratio = results[ref]["seconds"] / results[ours]["seconds"]
                line = f"{ours} is {ratio:.1f}x faster than {ref}"
                if "dice" in results[ours] and "dice" in results[ref]:
                    line += f"; Dice difference {results[ours]['dice'] - results[ref]['dice']:+.2f} points"
                print(line)
    print(f"load average after: {os.getloadavg()[0]:.2f} (other jobs on these cores inflate the timings)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
