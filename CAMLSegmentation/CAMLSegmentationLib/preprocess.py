"""Intensity normalisation and resampling, identical for training and inference.

Training and inference call the same functions so a model sees at inference
exactly the intensity scale and voxel size it was trained on.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F


def zscore(array: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance over the whole volume, as float32.

    The LA h5 files were normalised this way over the whole scan *before* being
    cropped around the atrium, so whole scans are normalised here and LA crops
    are used as stored (``Volume.normalized``).
    """
    a = np.asarray(array, dtype=np.float32)
    if not np.isfinite(a).all():
        raise ValueError("image has NaN or Inf voxels")
    mean = float(a.mean(dtype=np.float64))
    std = float(a.std(dtype=np.float64))
    if std < 1e-8:
        raise ValueError("image is constant (zero intensity variance): nothing to segment")
    return ((a - mean) / std).astype(np.float32)


def shape_for_spacing(shape: Sequence[int], spacing: Sequence[float],
                      target_spacing: Optional[Sequence[float]]) -> Tuple[int, int, int]:
    """Grid size that covers the same physical extent at ``target_spacing`` (rounded, at least 1)."""
    if target_spacing is None:
        return tuple(int(s) for s in shape)  # type: ignore[return-value]
    return tuple(max(1, int(round(n * sp / ts)))  # type: ignore[return-value]
                 for n, sp, ts in zip(shape, spacing, target_spacing))


def resample_to_shape(array: np.ndarray, shape: Sequence[int], mode: str = "linear") -> np.ndarray:
    """Resample a 3D array (or [C, i, j, k]) to ``shape``; ``mode`` is ``linear`` or ``nearest``.

    Voxel centres are mapped as for images (``align_corners=False``), so that a
    grid and its resampled copy cover the same physical extent.
    """
    shape = tuple(int(s) for s in shape)
    squeeze = array.ndim == 3
    if tuple(array.shape[-3:]) == shape:
        return array
    t = torch.from_numpy(np.ascontiguousarray(array))
    t = t[None, None] if squeeze else t[None]
    src_dtype = t.dtype
    if mode == "nearest":
        out = F.interpolate(t.float(), size=shape, mode="nearest-exact")
        out = out.to(src_dtype)
    elif mode == "linear":
        out = F.interpolate(t.float(), size=shape, mode="trilinear", align_corners=False)
    else:
        raise ValueError(f"unknown resampling mode {mode!r}")
    out = out[0, 0] if squeeze else out[0]
    return out.numpy()
