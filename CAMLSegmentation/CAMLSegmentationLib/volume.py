"""The canonical image container of the engine and the readers that fill it.

A ``Volume`` holds a float32 array indexed ``[i, j, k]`` (fastest-varying file
axis first, the ITK/VTK index order) plus its physical geometry. SimpleITK and
Slicer hand out arrays indexed ``[k, j, i]``; the one transpose happens here,
at the boundary, and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np

#: Voxel size of the preprocessed LA h5 files (not stored in them).
LA_SPACING = (0.625, 0.625, 0.625)


@dataclass
class Volume:
    """A 3D image: ``array[i, j, k]`` plus spacing (mm), origin (mm) and a 3x3 direction matrix.

    ``direction`` columns are the physical directions of the i, j, k axes (ITK convention).
    """

    array: np.ndarray
    spacing: Tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: Tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))

    @property
    def shape(self) -> Tuple[int, int, int]:
        return tuple(self.array.shape)  # type: ignore[return-value]

    def same_geometry(self, other: Volume, tol: float = 1e-4) -> bool:
        return (self.shape == other.shape
                and np.allclose(self.spacing, other.spacing, atol=tol)
                and np.allclose(self.origin, other.origin, atol=tol)
                and np.allclose(self.direction, other.direction, atol=tol))


PathLike = Union[str, Path]


def read_image(path: PathLike, pixel_type: Optional[int] = None) -> Volume:
    """Read any 3D scalar image SimpleITK can read into a ``Volume`` (float32 array)."""
    import SimpleITK as sitk

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise ValueError(f"{path}: unreadable image ({str(exc).strip().splitlines()[-1]})") from exc
    if img.GetDimension() != 3:
        raise ValueError(f"{path}: expected a 3D image, found {img.GetDimension()}D")
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"{path}: expected one component per voxel, "
                         f"found {img.GetNumberOfComponentsPerPixel()}")
    arr = sitk.GetArrayFromImage(img).transpose(2, 1, 0)
    return Volume(array=np.ascontiguousarray(arr),
                  spacing=tuple(float(s) for s in img.GetSpacing()),
                  origin=tuple(float(o) for o in img.GetOrigin()),
                  direction=np.array(img.GetDirection(), dtype=float).reshape(3, 3))


def read_la_h5(path: PathLike) -> Tuple[Volume, Optional[np.ndarray]]:
    """Read a preprocessed LA ``mri_norm2.h5``: (image Volume, label array or None)."""
    import h5py

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    with h5py.File(path, "r") as f:
        image = np.asarray(f["image"][()], dtype=np.float32)
        label = np.asarray(f["label"][()], dtype=np.uint8) if "label" in f else None
    return Volume(array=image, spacing=LA_SPACING), label
