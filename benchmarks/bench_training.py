"""Seconds per CAML training iteration for each preset on this machine.

Times the whole iteration (forward of both sub-models, losses, memory-bank
update and sampling, OCC, backward, SGD step) on generated batches of the
preset's patch size. Data loading is left out: the trainer keeps every case
in memory.

The memory bank starts full, as it is after the first pass over the labeled
cases of a real run: each of ``--labeled`` cases holds the features of the
voxels of one crop that both models classify correctly (``--correct``, 95 %
of them by default, as for a trained model); a paper-size bank of 8 cases
holds about 7.6 million entries. The memory-bank sampling alone is timed
too, against the full permutation of every stored entry that an earlier
version did (``--sampler permutation`` puts that one back into the
iteration).

    .venv/bin/python benchmarks/bench_training.py                  # every preset, CPU/auto device
    .venv/bin/python benchmarks/bench_training.py --presets cpu --iterations 20
    .venv/bin/python benchmarks/bench_training.py --presets paper --sampling-only
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


def fill_bank(bank, preset, correct: float, rng: np.random.Generator) -> int:
    """Fill every case of ``bank`` as one pass over the labeled cases does; returns the entries stored."""
    voxels = int(np.prod(preset.patch_size))
    g = torch.Generator().manual_seed(int(rng.integers(1 << 31)))
    for case in range(bank.num_cases):
        n = int(voxels * correct)
        labels = (torch.rand(n, generator=g) < 0.06).long()  # the atrium is ~6 % of a crop
        bank.update(case, torch.randn(n, bank.feat_dim, generator=g), labels)
    return sum(bank.count(c) for c in range(bank.num_classes))


def permutation_draw(population: int, count: int, generator=None):
    """The earlier draw of ``MemoryBank.sample``: a permutation of every stored entry, kept for comparison."""
    return torch.randperm(population, generator=generator, device="cpu")[:count]


def sample_by_permutation(bank, per_class: int, generator=None):
    from CAMLSegmentationLib.model.occ import MemoryBank

    # The class's own method: the benchmark may have replaced ``bank.sample`` with this function.
    return MemoryBank.sample(bank, per_class, generator, draw=permutation_draw)


def make_bank(preset, args, device: torch.device):
    from CAMLSegmentationLib.model.occ import MemoryBank

    bank = MemoryBank(args.labeled, 2, preset.feat_dim, device)
    stored = fill_bank(bank, preset, args.correct, np.random.default_rng(1)) if args.correct > 0 else 0
    return bank, stored


def bench_sampling(bank, per_class: int, repeats: int) -> dict:
    """Median milliseconds of one draw of ``per_class`` entries per class, both ways."""
    result = {}
    for name, fn in (("index", lambda g: bank.sample(per_class, g)),
                     ("permutation", lambda g: sample_by_permutation(bank, per_class, g))):
        g = torch.Generator().manual_seed(0)
        times = []
        for _ in range(repeats if name == "index" else max(3, repeats // 10)):
            t = time.perf_counter()
            fn(g)
            times.append(time.perf_counter() - t)
        result[name] = 1000 * float(np.median(times))
    return result


def bench(preset_name: str, iterations: int, warmup: int, device: torch.device, args, sampler: str) -> float:
    from CAMLSegmentationLib.model.network import CAMLNet, NetworkConfig
    from CAMLSegmentationLib.training.objective import CAMLObjective
    from CAMLSegmentationLib.training.presets import load_preset

    preset = load_preset(preset_name)
    torch.manual_seed(0)
    net = CAMLNet(NetworkConfig(base_filters=preset.base_filters, feat_dim=preset.feat_dim)).to(device)
    bank, _ = make_bank(preset, args, device)
    if sampler == "permutation":
        bank.sample = lambda per_class, generator=None: sample_by_permutation(bank, per_class, generator)
    objective = CAMLObjective(net, bank, preset).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=preset.lr, momentum=preset.momentum,
                          weight_decay=preset.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=preset.amp and device.type == "cuda")
    rng = np.random.default_rng(0)
    x, y = make_batch(preset, rng)
    x, y = x.to(device), y.to(device)
    times = []
    for it in range(warmup + iterations):
        case_index = torch.tensor([(2 * it + b) % bank.num_cases for b in range(preset.labeled_batch)],
                                  device=device)
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
    from CAMLSegmentationLib.training.presets import available_presets

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=None, help="default: every bundled preset")
    parser.add_argument("--iterations", type=int, default=None,
                        help="timed iterations (default: 10 for cpu, 2 for paper on CPU, 20 on GPU)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--labeled", type=int, default=8, help="labeled cases in the memory bank (default 8)")
    parser.add_argument("--correct", type=float, default=0.95,
                        help="fraction of each crop's voxels stored per case; 0 starts with an empty bank")
    parser.add_argument("--sampler", nargs="+", choices=("index", "permutation"), default=["index"],
                        help="memory-bank sampling inside the iteration: the current one, and/or the earlier "
                             "full permutation (for before/after figures in one run)")
    parser.add_argument("--sampling-only", action="store_true",
                        help="time the memory-bank sampling alone, not whole iterations")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    print(f"device: {device} ({where}); torch {torch.__version__}")
    from CAMLSegmentationLib.training.presets import load_preset

    for name in args.presets or available_presets():
        preset = load_preset(name)
        bank, stored = make_bank(preset, args, device)
        ms = bench_sampling(bank, preset.memory_per_class, 50)
        print(f"preset {name:<8} memory bank {args.labeled} cases, {stored} entries: sampling "
              f"{preset.memory_per_class}/class {ms['index']:8.2f} ms (full permutation: {ms['permutation']:.2f} ms)")
        del bank
        if args.sampling_only:
            continue
        n = args.iterations or (20 if device.type == "cuda" else (2 if name == "paper" else 10))
        for sampler in args.sampler:
            sec = bench(name, n, args.warmup if name != "paper" or device.type == "cuda" else 1, device, args,
                        sampler)
            print(f"preset {name:<8} {sec:8.3f} s/iteration (median of {n}, {sampler} sampling, "
                  f"{'full' if args.correct > 0 else 'empty'} bank)", flush=True)


if __name__ == "__main__":
    main()
