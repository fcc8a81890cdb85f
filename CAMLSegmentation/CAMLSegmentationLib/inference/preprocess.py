"""Intensity normalisation and resampling: one pipeline for training, validation and inference.

Every image the engine is given - an LA ``.h5`` crop, a NRRD written from
Slicer, a whole-chest NIfTI, an ROI crop of it - goes through the same
:func:`normalize_intensity` before the network sees it, and the model's
weights record which normalisation they were trained with, so the file
container never decides the intensity path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence, Tuple

import numpy as np

from ..io.volume import check_intensities
from ..model.settings import NORMALIZATIONS, PERCENTILE, ZSCORE

#: Percentiles of the body's intensities mapped to 0 and 1.
BODY_PERCENTILES = (0.5, 99.5)
#: Above this many body voxels the percentiles come from a regular subsample (same result to
#: well under 1 %, a fraction of the time on a 576x576x88 scan).
_MAX_SAMPLES = 2_000_000
if TYPE_CHECKING:  # torch is imported where resampling needs it, so `caml --help` stays light
    pass

#: Downsampling by more than this factor smooths first (anti-aliasing).
ANTIALIAS_FACTOR = 1.5


def body_percentiles(array: np.ndarray, percentiles: Sequence[float] = BODY_PERCENTILES) -> Tuple[float, float]:
    """Low and high intensity percentiles over the voxels brighter than the image's minimum.

    MRI air, zero-filled corners and the constant padding a crop tool or a
    resampler adds all sit at the image's minimum; leaving them out makes the
    statistics those of the body, so padding an image does not change them at
    all and cropping it (an ROI around the heart) changes them by a few percent
    (measured on the 16 LA validation cases: at most 6.5 % in scale and 2.7 %
    in offset for a central box of 80 % of each axis), which the training's
    intensity augmentation covers.
    """
    return _body_percentiles(check_intensities(array), percentiles)


def _body_percentiles(a: np.ndarray, percentiles: Sequence[float] = BODY_PERCENTILES) -> Tuple[float, float]:
    """``body_percentiles`` of an array already through ``check_intensities``."""
    body = a[a > a.min()]
    if body.size > _MAX_SAMPLES:
        body = body[:: int(np.ceil(body.size / _MAX_SAMPLES))]
    lo, hi = np.percentile(body, percentiles)
    if not hi > lo:  # a nearly binary image: fall back to its full range
        lo, hi = float(a.min()), float(a.max())
    return float(lo), float(hi)


def normalize_intensity(array: np.ndarray, method: str = PERCENTILE, source: str = "image") -> np.ndarray:
    """Map raw intensities to the scale a model was trained on, from the image alone (float32).

    ``percentile`` (this project's models): the body's 0.5th percentile goes
    to 0 and its 99.5th to 1, linearly, nothing clipped. Why not a z-score:
    the mean and standard deviation of a scan depend on how much air and which
    organs the field of view holds, so the same heart z-scored as a whole
    chest, as an ROI crop and as the LA release's atrium crop (z-scored before
    cropping) gets intensity scales up to ten times apart - the failure of
    this project's v1 model on NRRD input. Percentiles of the body are a
    property of the tissue instead, and air (0 after mapping) is also what
    zero-padding of patches and windows adds. ``zscore``: the whole image to
    zero mean and unit variance, for the official CAML weights and v1 models.
    An image that cannot be normalised raises ``ImageError`` naming ``source``.
    """
    a = check_intensities(array, source)
    if method == PERCENTILE:
        lo, hi = _body_percentiles(a)
        return ((a - lo) * (1.0 / (hi - lo))).astype(np.float32)
    if method == ZSCORE:
        mean = float(a.mean(dtype=np.float64))
        std = float(a.std(dtype=np.float64))
        return ((a - mean) / std).astype(np.float32)
    raise ValueError(f"unknown intensity normalisation {method!r}; known: {', '.join(NORMALIZATIONS)}")


def shape_for_spacing(shape: Sequence[int], spacing: Sequence[float],
                      target_spacing: Optional[Sequence[float]]) -> Tuple[int, int, int]:
    """Grid size that covers the same physical extent at ``target_spacing`` (rounded, at least 1)."""
    if target_spacing is None:
        return tuple(int(s) for s in shape)  # type: ignore[return-value]
    return tuple(max(1, int(round(n * sp / ts)))  # type: ignore[return-value]
                 for n, sp, ts in zip(shape, spacing, target_spacing))


def _antialias(array: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Gaussian-smooth ``array`` (3D or ``[C, i, j, k]``) along each axis shrunk by more than ``ANTIALIAS_FACTOR``.

    Plain trilinear sampling of a 0.3-0.5 mm clinical scan onto the model's
    1.25 mm grid reads one voxel in several and aliases noise and thin
    structures; sigma = (factor - 1) / 2 voxels of the source grid, the usual
    choice (e.g. scikit-image), removes what the coarser grid cannot hold.
    The kernel reaches ceil(3 sigma) voxels, edges replicated. SciPy's
    separable filter does this about 5x faster than a grouped conv3d on a CPU
    (``benchmarks/bench_resampling.py``).
    """
    from scipy import ndimage

    lead = array.ndim - 3
    out = np.asarray(array, dtype=np.float32)
    for axis, (n, m) in enumerate(zip(out.shape[lead:], shape)):
        factor = n / m
        if factor <= ANTIALIAS_FACTOR:
            continue
        sigma = (factor - 1.0) / 2.0
        radius = max(1, int(np.ceil(3 * sigma)))
        out = ndimage.gaussian_filter1d(out, sigma, axis=lead + axis, mode="nearest", truncate=radius / sigma)
    return out


def resample_to_shape(array: np.ndarray, shape: Sequence[int], mode: str = "linear") -> np.ndarray:
    """Resample a 3D array (or [C, i, j, k]) to ``shape``; ``mode`` is ``linear`` or ``nearest``.

    Voxel centres are mapped as for images (``align_corners=False``), so that a
    grid and its resampled copy cover the same physical extent. ``linear``
    smooths first along axes shrunk by more than 1.5x (anti-aliasing).
    """
    import torch
    import torch.nn.functional as F

    shape = tuple(int(s) for s in shape)
    squeeze = array.ndim == 3
    if tuple(array.shape[-3:]) == shape:
        return array
    if mode not in ("nearest", "linear"):
        raise ValueError(f"unknown resampling mode {mode!r}")
    if mode == "linear":
        array = _antialias(array, shape)
    t = torch.from_numpy(np.ascontiguousarray(array))
    t = t[None, None] if squeeze else t[None]
    src_dtype = t.dtype
    if mode == "nearest":
        out = F.interpolate(t.float(), size=shape, mode="nearest-exact")
        out = out.to(src_dtype)
    else:
        out = F.interpolate(t.float(), size=shape, mode="trilinear", align_corners=False)
    out = out[0, 0] if squeeze else out[0]
    return out.numpy()
