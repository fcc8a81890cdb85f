"""Seconds per CAML training iteration for each preset on this machine.

Times the whole iteration (forward of both sub-models, losses, memory-bank
update and sampling, OCC, backward, SGD step) on generated batches of the
preset's patch size, after warm-up iterations that fill the memory bank.
Data loading is left out: the trainer keeps every case in memory.

    .venv/bin/python benchmarks/bench_training.py                  # every preset, CPU/auto device
    .venv/bin/python benchmarks/bench_training.py --presets cpu --iterations 20
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch


def make_batch(preset, rng: np.random.Generator):
    shape = preset.patch_size
    n = preset.labeled_batch + preset.unlabeled_batch
    grid = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    images, labels = [], []
    for _ in range(n):
        c = rng.uniform(-0.3, 0.3, 3)
        inside = sum((g - ci) ** 2 for g, ci in zip(grid, c)) < 0.25
        images.append(rng.normal(0, 0.5, shape) + 2.0 * inside)
        labels.append(inside)
    x = torch.tensor(np.stack(images)[:, None], dtype=torch.float32)
    y = torch.tensor(np.stack(labels[: preset.labeled_batch]), dtype=torch.int64)
    return x, y


def bench(preset_name: str, iterations: int, warmup: int, device: torch.device) -> float:
    from CAMLSegmentationLib.network import CAMLNet, NetworkConfig
    from CAMLSegmentationLib.occ import MemoryBank
    from CAMLSegmentationLib.presets import load_preset
    from CAMLSegmentationLib.trainer import CAMLObjective

    preset = load_preset(preset_name)
    torch.manual_seed(0)
    net = CAMLNet(NetworkConfig(base_filters=preset.base_filters, feat_dim=preset.feat_dim)).to(device)
    bank = MemoryBank(8, 2, preset.feat_dim, device)
    objective = CAMLObjective(net, bank, preset).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=preset.lr, momentum=preset.momentum,
                          weight_decay=preset.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=preset.amp and device.type == "cuda")
    rng = np.random.default_rng(0)
    x, y = make_batch(preset, rng)
    x, y = x.to(device), y.to(device)
    times = []
    for it in range(warmup + iterations):
        case_index = torch.tensor([it % 8, (it + 1) % 8][: preset.labeled_batch], device=device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        loss, _ = objective(x, y, case_index, 1.0, 0.05)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if it >= warmup:
            times.append(time.perf_counter() - t)
    return float(np.median(times))


def main() -> None:
    from CAMLSegmentationLib.presets import available_presets

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=None, help="default: every bundled preset")
    parser.add_argument("--iterations", type=int, default=None,
                        help="timed iterations (default: 10 for cpu, 2 for paper on CPU, 20 on GPU)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    print(f"device: {device} ({where}); torch {torch.__version__}")
    for name in args.presets or available_presets():
        n = args.iterations or (20 if device.type == "cuda" else (2 if name == "paper" else 10))
        sec = bench(name, n, args.warmup if name != "paper" or device.type == "cuda" else 1, device)
        print(f"preset {name:<8} {sec:8.3f} s/iteration (median of {n})")


if __name__ == "__main__":
    main()
