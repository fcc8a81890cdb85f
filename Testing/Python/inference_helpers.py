"""Shared pieces for the inference tests: geometries and tiny checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from CAMLSegmentationLib.io.volume import Volume
from CAMLSegmentationLib.model.checkpoint import save_checkpoint
from CAMLSegmentationLib.model.network import CAMLNet, NetworkConfig


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    """A rotation matrix from three angles in degrees."""
    x, y, z = np.deg2rad([ax, ay, az])
    rx = np.array([[1, 0, 0], [0, np.cos(x), -np.sin(x)], [0, np.sin(x), np.cos(x)]])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rz = np.array([[np.cos(z), -np.sin(z), 0], [np.sin(z), np.cos(z), 0], [0, 0, 1]])
    return rz @ ry @ rx


#: Axis-aligned, flipped (two axes reversed, and one reversed: a left-handed frame) and oblique.
GEOMETRIES = {
    "axis_aligned": np.eye(3),
    "flipped": np.diag([-1.0, 1.0, -1.0]),
    "flipped_left_handed": np.diag([1.0, -1.0, 1.0]),
    "oblique": rotation(17.0, -23.0, 41.0),
}


def make_volume(direction: np.ndarray, shape: Sequence[int] = (20, 17, 11), seed: int = 0) -> Volume:
    rng = np.random.default_rng(seed)
    return Volume(array=rng.normal(50.0, 10.0, size=tuple(shape)).astype(np.float32),
                  spacing=(0.7, 0.9, 2.5), origin=(-12.5, 33.25, 7.0), direction=np.asarray(direction, float))


def blob_volume(shape: Sequence[int] = (40, 36, 24), direction: Optional[np.ndarray] = None,
                seed: int = 0) -> Volume:
    """A bright ellipsoid in noise (an 'atrium'), for end-to-end runs."""
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    inside = sum(((g - 0.5 * n) / (0.25 * n)) ** 2 for g, n in zip(grid, shape)) <= 1.0
    image = 100 + 60 * inside + rng.normal(0, 10, size=tuple(shape))
    return Volume(array=image.astype(np.float32), spacing=(0.8, 0.8, 1.5), origin=(5.0, -7.0, 3.0),
                  direction=np.eye(3) if direction is None else direction)


def tiny_network(base_filters: int = 4, seed: int = 0) -> CAMLNet:
    torch.manual_seed(seed)
    net = CAMLNet(NetworkConfig(base_filters=base_filters))
    # Non-trivial BatchNorm statistics, so folding BN into the convolutions is really exercised.
    gen = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.uniform_(-0.3, 0.3, generator=gen)
            m.running_var.uniform_(0.5, 2.0, generator=gen)
            m.weight.data.uniform_(0.5, 1.5, generator=gen)
            m.bias.data.uniform_(-0.2, 0.2, generator=gen)
    return net.eval()


def tiny_checkpoint(path: Path, window: Sequence[int] = (16, 16, 16), spacing: Optional[Sequence[float]] = None,
                    base_filters: int = 4, official: bool = False, seed: int = 0) -> Path:
    """A small dual-model checkpoint: the project's format with a preset, or a plain state_dict."""
    net = tiny_network(base_filters, seed)
    if official:
        torch.save(net.state_dict(), path)  # what the official code writes (iter_15000.pth)
    else:
        save_checkpoint(path, {"network": net.config.to_dict(), "model": net.state_dict(),
                               "preset": {"name": "tiny", "patch_size": list(window),
                                          "spacing": list(spacing) if spacing else None}})
    return path


def one_thread():
    """Generator for an autouse fixture: tiny networks run fastest on one thread.

    With two threads, OpenMP barriers make each small op wait for a busy
    second core (other jobs on a 2-core machine): 100x slower, not faster.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
