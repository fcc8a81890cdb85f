"""Small generated datasets for tests: bright ellipsoids (the 'atrium') in noisy volumes."""

from __future__ import annotations

from pathlib import Path
from typing import List, Sequence

import numpy as np


def blob_case(shape: Sequence[int], rng: np.random.Generator):
    """An image with one bright ellipsoid in noise, and its binary label."""
    grid = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    centre = [rng.uniform(0.35 * n, 0.65 * n) for n in shape]
    radii = [rng.uniform(0.18 * n, 0.28 * n) for n in shape]
    inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0
    image = rng.normal(0.0, 0.6, size=tuple(shape)).astype(np.float32) + 2.0 * inside
    image = (image - image.mean()) / image.std()
    return image.astype(np.float32), inside.astype(np.uint8)


def write_la_layout(root: Path, n_cases: int, shape: Sequence[int] = (32, 32, 32), seed: int = 0) -> List[str]:
    """Write ``n_cases`` generated cases in the LA layout (train.list + h5 files) under ``root``."""
    import h5py

    rng = np.random.default_rng(seed)
    ids = [f"case{i:03d}" for i in range(n_cases)]
    for cid in ids:
        image, label = blob_case(shape, rng)
        folder = root / "2018LA_Seg_Training Set" / cid
        folder.mkdir(parents=True)
        with h5py.File(folder / "mri_norm2.h5", "w") as f:
            f.create_dataset("image", data=image)
            f.create_dataset("label", data=label)
    (root / "train.list").write_text("\n".join(ids) + "\n")
    return ids
