"""Inference speed and memory on LA cases: protocols, backends, and the official CAML protocol.

    python benchmarks/bench_inference.py [--data ../shared/data/LA] [--cases N] [--threads 2]

First (#26 item 5), one table from whole ``caml segment`` processes on NRRD
copies of the first ``--cases`` cases of train.list, with the catalog's
default model (``--model``): for each protocol (``official``, ``default``,
``fast``) and backend (``torch``, ``onnx`` = ONNX Runtime), the whole-process
seconds (start to exit, imports included), the network seconds (the
backend's windows: forward passes, flips and stitching, as ``caml segment``
reports them), peak memory (the process's max RSS) and Dice against the
label, then each protocol's speed-up over ``official`` per backend, and
ONNX Runtime against torch. ``--ort-options`` adds a measurement of ONNX
Runtime's graph optimisation levels and thread counts against torch on one
batch of windows (``--protocols ''`` skips the table).

Then, with ``--modes`` (in-process runs, none by default), for one case,
seconds per case, windows per second and peak memory for

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


def whole_process(image: Path, label, protocol: str, backend: str, model: str, threads: int, work: Path) -> dict:
    """One ``caml segment`` child process: wall seconds, network seconds, peak RSS and Dice."""
    import numpy as np
    from CAMLSegmentationLib.inference.metrics import dice
    from CAMLSegmentationLib.io.volume import read_image

    out = work / f"{image.stem}-{protocol}-{backend}.seg.nrrd"
    cmd = [sys.executable, "-m", "CAMLSegmentationLib.cli", "segment", str(image), str(out), "--protocol", protocol,
           "--backend", backend, "--device", "cpu", "--progress", "json"] + (["--model", model] if model else [])
    env = dict(os.environ, PYTHONPATH=str(REPO / "CAMLSegmentation"), OMP_NUM_THREADS=str(threads))
    with open(work / "stderr.txt", "w+") as stderr:
        start = time.perf_counter()
        child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
        stdout = child.stdout.read()  # type: ignore[union-attr]
        # Reaped here rather than by Popen, for this child's own peak memory (RUSAGE_CHILDREN is the
        # largest of all children so far).
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - start
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode != 0:
            stderr.seek(0)
            raise RuntimeError(f"caml segment --protocol {protocol} --backend {backend} failed:\n"
                               f"{stderr.read()[-2000:]}")
    info = json.loads(stdout.strip().splitlines()[-1])["info"]
    row = {"seconds": seconds, "network_seconds": info["network_seconds"], "device": info["device"],
           "windows": info["windows"], "peak_rss_gb": usage.ru_maxrss / 1024 ** 2}
    if label is not None:
        row["dice"] = dice(read_image(out).array.astype(np.uint8), label) * 100
    out.unlink()
    return row


def backend_table(args: argparse.Namespace, case_ids: list) -> None:
    """Protocols x backends over whole ``caml segment`` processes, per case and on average."""
    import tempfile

    from CAMLSegmentationLib.io.volume import read_la_h5, write_image

    protocols = [p for p in args.protocols.split(",") if p]
    backends = [b for b in args.backends.split(",") if b]
    rows = {}
    with tempfile.TemporaryDirectory(prefix="bench-inference-") as tmp:
        work = Path(tmp)
        for case_id in case_ids:
            volume, label = read_la_h5(args.data / "2018LA_Seg_Training Set" / case_id / "mri_norm2.h5")
            image = write_image(volume.array, volume, work / f"{case_id}.nrrd")
            for protocol in protocols:
                for backend in backends:
                    r = rows[(case_id, protocol, backend)] = whole_process(
                        image, label, protocol, backend, args.model, args.threads, work)
                    print(f"{case_id:<22} {protocol:<9} {backend:<6} whole {r['seconds']:7.2f} s  network "
                          f"{r['network_seconds']:7.2f} s  {r['windows']:4d} windows  peak {r['peak_rss_gb']:.2f} GB"
                          f"  Dice {r.get('dice', float('nan')):.2f}  ({r['device']})", flush=True)
    print(f"\nmean over {len(case_ids)} case(s):")
    mean = {}
    for protocol in protocols:
        for backend in backends:
            picked = [rows[(c, protocol, backend)] for c in case_ids]
            mean[(protocol, backend)] = m = {k: sum(r[k] for r in picked) / len(picked)
                                             for k in ("seconds", "network_seconds", "peak_rss_gb", "dice")
                                             if all(k in r for r in picked)}
            print(f"  {protocol:<9} {backend:<6} whole {m['seconds']:7.2f} s  network {m['network_seconds']:7.2f} s  "
                  f"peak {m['peak_rss_gb']:.2f} GB  Dice {m.get('dice', float('nan')):.2f}")
    for backend in backends:
        if ("official", backend) not in mean:
            continue
        ref = mean[("official", backend)]
        for protocol in protocols:
            if protocol != "official":
                m = mean[(protocol, backend)]
                print(f"  {backend}: {protocol} is {ref['seconds'] / m['seconds']:.1f}x faster than official "
                      f"(whole process), network {ref['network_seconds'] / m['network_seconds']:.1f}x")
    if {"torch", "onnx"} <= set(backends):
        for protocol in protocols:
            t, o = mean[(protocol, "torch")], mean[(protocol, "onnx")]
            line = (f"  {protocol}: onnx/torch whole {o['seconds'] / t['seconds']:.2f}, "
                    f"network {o['network_seconds'] / t['network_seconds']:.2f}")
            if "dice" in t and "dice" in o:
                line += f", Dice difference {o['dice'] - t['dice']:+.3f} points"
            print(line)


def ort_options(args: argparse.Namespace) -> None:
    """ONNX Runtime graph levels and thread counts against torch, one batch of windows of the catalog model."""
    import numpy as np
    import onnxruntime as ort
    import torch
    from CAMLSegmentationLib.inference.onnx_runtime import session_options
    from CAMLSegmentationLib.inference.predictor import load_inference_model
    from CAMLSegmentationLib.model.catalog import default_model, find_model, verify, verify_onnx

    entry = find_model(args.model) if args.model else default_model()
    onnx_path = verify_onnx(entry)["v"]
    x = np.random.default_rng(0).normal(size=(8, 1) + tuple(load_inference_model(verify(entry), "cpu").window))
    x = x.astype(np.float32)
    runs = {}
    for threads in sorted({1, args.threads}):
        torch.set_num_threads(threads)
        net = load_inference_model(verify(entry), "cpu").networks["v"]
        xt = torch.from_numpy(x).contiguous(memory_format=torch.channels_last_3d)

        def run_torch(net=net, xt=xt) -> None:
            with torch.inference_mode():
                net(xt)

        runs[f"torch, {threads} thread(s)"] = (threads, run_torch)
        for level in ("ORT_ENABLE_BASIC", "ORT_ENABLE_EXTENDED", "ORT_ENABLE_ALL"):
            options = session_options(threads)
            options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
            session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
            runs[f"onnxruntime {level}, {threads} thread(s)"] = (threads, lambda s=session: s.run(None, {"image": x}))
    best = {name: float("inf") for name in runs}
    for threads, run in runs.values():
        torch.set_num_threads(threads)
        run()  # warm-up
    for _ in range(args.repeats):
        for name, (threads, run) in runs.items():  # interleaved, so load changes hit every candidate alike
            torch.set_num_threads(threads)
            start = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - start)
    print(f"\none batch of 8 windows {tuple(x.shape[2:])}, model {entry.id}, best of {args.repeats}:")
    for name, seconds in sorted(best.items(), key=lambda kv: kv[1]):
        print(f"  {name:<44} {seconds:.3f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=la_root())
    parser.add_argument("--case", help="case id (default: the first of train.list)")
    parser.add_argument("--weights", default="", help="a trained checkpoint (enables the Dice comparison)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--cases", type=int, default=1, help="LA cases for the protocol x backend table "
                                                              "(the first N of train.list, or --case)")
    parser.add_argument("--protocols", default="official,default,fast",
                        help="protocols of the table ('' skips it)")
    parser.add_argument("--backends", default="torch,onnx", help="backends of the table")
    parser.add_argument("--model", default="", help="catalog model id for the table (default: the catalog's default)")
    parser.add_argument("--ort-options", action="store_true",
                        help="also time ONNX Runtime's graph optimisation levels and threads against torch")
    parser.add_argument("--repeats", type=int, default=5, help="repeats for --ort-options (best is kept)")
    parser.add_argument("--modes", default="", help=f"in-process measurements, comma-separated subset of "
                                                    f"{','.join(MODES)} (default: none)")
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

    import onnxruntime
    import torch

    print(f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, {args.threads} CPU threads, "
          f"{os.cpu_count()} cores, load average before start {os.getloadavg()[0]:.2f}")
    if args.protocols:
        listed = (args.data / "train.list").read_text().split()
        backend_table(args, [args.case] if args.case else listed[:args.cases])
    if args.ort_options:
        ort_options(args)
    if not args.modes:
        print(f"load average after: {os.getloadavg()[0]:.2f} (other jobs on these cores inflate the timings)")
        return 0
    print(f"\ncase {case_id}; in-process runs")
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
