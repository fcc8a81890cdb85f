"""Intensity normalisation and resampling: one pipeline for training, validation and inference.

Every image the engine is given - an LA ``.h5`` crop, a NRRD written from
Slicer, a whole-chest NIfTI, an ROI crop of it - goes through the same
:func:`normalize_intensity` before the network sees it, and the model's
weights record which normalisation they were trained with, so the file
container never decides the intensity path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np

from ..io.volume import Volume, check_intensities
from ..model.settings import NONE, NORMALIZATIONS, PERCENTILE, ZSCORE

#: Percentiles of the body's intensities mapped to 0 and 1.
BODY_PERCENTILES = (0.5, 99.5)
#: Above this many body voxels the percentiles come from a regular subsample (same result to
#: well under 1 %, a fraction of the time on a 576x576x88 scan).
_MAX_SAMPLES = 2_000_000

#: Downsampling by more than this factor smooths first (anti-aliasing) ...
ANTIALIAS_FACTOR = 1.5
#: ... with a Gaussian of this many model voxels (sigma = ANTIALIAS_SIGMA * factor source voxels).
ANTIALIAS_SIGMA = 0.35


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
    zero mean and unit variance, for this project's v1 models. ``none``: the
    intensities as stored, for the official CAML weights (trained and evaluated
    on the LA ``.h5`` crops as they are).
    An image that cannot be normalised raises ``ImageError`` naming ``source``.

    Always the whole image: training (``data.CaseSource.load``) and inference
    (:func:`normalized_content`) call this on the same array, so a model sees in
    ``caml segment`` the intensities it was trained on.
    """
    a = check_intensities(array, source)
    if method == NONE:
        return a.copy() if a is array else a
    if method == PERCENTILE:
        lo, hi = _body_percentiles(a)
        return ((a - lo) * (1.0 / (hi - lo))).astype(np.float32)
    if method == ZSCORE:
        mean = float(a.mean(dtype=np.float64))
        std = float(a.std(dtype=np.float64))
        return ((a - mean) / std).astype(np.float32)
    raise ValueError(f"unknown intensity normalisation {method!r}; known: {', '.join(NORMALIZATIONS)}")


def content_box(array: np.ndarray) -> Tuple[slice, slice, slice]:
    """The smallest box holding every voxel brighter than the image's minimum (the whole grid if none)."""
    body = array > array.min()
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(body.any(axis=other))
        box.append(slice(int(hits[0]), int(hits[-1]) + 1) if hits.size else slice(0, array.shape[axis]))
    return tuple(box)  # type: ignore[return-value]


def normalized_content(array: np.ndarray, method: str, crop: bool = True,
                       source: str = "image") -> Tuple[Tuple[slice, slice, slice], np.ndarray]:
    """(box, normalised image inside it): what the predictor feeds the network.

    The whole image is normalised (the definition training uses), then cut to
    its :func:`content_box` when ``crop``: constant background at the image's
    minimum (padding a resampler or a crop tool added, zero-filled air) holds
    nothing to segment, and leaving it out means padding cannot move the windows.
    """
    image = normalize_intensity(array, method, source)
    box = content_box(array) if crop else tuple(slice(0, n) for n in array.shape)
    return box, image[box]  # type: ignore[return-value]


@dataclass(frozen=True)
class ModelGrid:
    """Where a model's voxel grid lies in an image's grid, axis by axis.

    Model voxel ``m`` of axis ``a`` sits at the image's fractional voxel index
    ``first[a] + m * step[a]``. Built by :func:`model_grid`; :meth:`sample` takes an
    image onto the model's grid and :meth:`back` brings predictions back.
    """

    source_shape: Tuple[int, int, int]
    first: Tuple[float, float, float]
    step: Tuple[float, float, float]
    shape: Tuple[int, int, int]

    def positions(self, axis: int) -> np.ndarray:
        return self.first[axis] + self.step[axis] * np.arange(self.shape[axis], dtype=np.float64)

    @property
    def is_identity(self) -> bool:
        return self.shape == self.source_shape and all(f == 0 for f in self.first) and all(
            s == 1 for s in self.step)

    def sample(self, array: np.ndarray, mode: str = "linear") -> np.ndarray:
        """``array`` (3D or ``[C, i, j, k]`` on the source grid) on the model's grid.

        ``linear`` smooths first along axes shrunk by more than ``ANTIALIAS_FACTOR``;
        ``nearest`` (labels) takes the closest voxel.
        """
        if mode not in ("nearest", "linear"):
            raise ValueError(f"unknown resampling mode {mode!r}")
        if self.is_identity:
            return array
        lead = array.ndim - 3
        out = _antialias(array, self.step) if mode == "linear" else array
        for axis in range(3):
            out = _interpolate_axis(out, self.positions(axis), lead + axis, mode)
        return out

    def back(self, array: np.ndarray) -> np.ndarray:
        """Linear interpolation of ``array`` (on the model's grid) at every source voxel; beyond the
        outermost model voxels the nearest one's value."""
        if self.is_identity:
            return array
        lead = array.ndim - 3
        out = array
        for axis in range(3):
            where = (np.arange(self.source_shape[axis], dtype=np.float64) - self.first[axis]) / self.step[axis]
            out = _interpolate_axis(out, where, lead + axis, "linear")
        return out


def axis_starts(volume: Volume, start_index: Sequence[int] = (0, 0, 0)) -> Tuple[float, float, float]:
    """Where voxel ``start_index`` lies along each of the image's own axes (mm): the position
    projected on the axis's direction. Crops of one image agree on it up to whole voxels."""
    direction = np.asarray(volume.direction, dtype=np.float64).reshape(3, 3)
    origin = np.asarray(volume.origin, dtype=np.float64)
    return tuple(float(origin @ direction[:, a] + start_index[a] * volume.spacing[a])  # type: ignore[return-value]
                 for a in range(3))


def model_grid(shape: Sequence[int], spacing: Sequence[float], target_spacing: Optional[Sequence[float]],
               start: Sequence[float] = (0.0, 0.0, 0.0)) -> ModelGrid:
    """The model's grid for an image: a voxel at every whole multiple of ``target_spacing`` (mm,
    along the image's own axes, ``start`` being voxel 0's position from :func:`axis_starts`)
    inside the image's extent.

    Anchoring the grid in patient space, not at the image's corner, is what makes an ROI
    crop see exactly the points the whole image saw: a grid stretched to fit each image's
    extent (the usual resize) moves every sample when the extent changes, and the model's
    answer moves with it (model v3, central 80 % crops of the 16 LA validation cases:
    mask Dice against the whole image's 0.9416 stretched, 0.9449 anchored;
    ``benchmarks/bench_roi_crop.py``).
    ``target_spacing`` None: the image's own grid.
    """
    shape = tuple(int(n) for n in shape)
    if target_spacing is None:
        return ModelGrid(shape, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), shape)  # type: ignore[arg-type]
    eps = 1e-6
    axes = []  # (first, step, size) per axis
    for n, sp, ts, u0 in zip(shape, spacing, target_spacing, start):
        sp, ts, u0 = float(sp), float(ts), float(u0)
        if abs(sp - ts) <= eps * ts:
            axes.append((0.0, 1.0, n))
            continue
        lo, hi = u0 - 0.5 * sp, u0 + (n - 0.5) * sp  # the image's extent along the axis
        # Half-open [lo, hi): an extent of whole target voxels holds exactly that many.
        m0, m1 = int(np.ceil(lo / ts - eps)), int(np.ceil(hi / ts - eps)) - 1
        if m1 < m0:  # thinner than one model voxel: one sample in the middle
            axes.append(((n - 1) / 2.0, ts / sp, 1))
        else:
            axes.append(((m0 * ts - u0) / sp, ts / sp, m1 - m0 + 1))
    first, step, size = zip(*axes)
    return ModelGrid(shape, first, step, size)  # type: ignore[arg-type]


def _interpolate_axis(array: np.ndarray, where: np.ndarray, axis: int, mode: str) -> np.ndarray:
    """``array`` read at fractional indices ``where`` along ``axis`` (clamped to the axis)."""
    n = array.shape[axis]
    where = np.clip(where, 0.0, n - 1)
    if mode == "nearest":
        return np.take(array, np.floor(where + 0.5).astype(np.intp), axis=axis)
    below = np.floor(where).astype(np.intp)
    above = np.minimum(below + 1, n - 1)
    shape = [1] * array.ndim
    shape[axis] = len(where)
    w = (where - below).astype(np.float32).reshape(shape)
    lo = np.take(array, below, axis=axis).astype(np.float32, copy=False)
    return lo + (np.take(array, above, axis=axis) - lo) * w


def _antialias(array: np.ndarray, factors: Sequence[float]) -> np.ndarray:
    """Gaussian-smooth ``array`` (3D or ``[C, i, j, k]``) along each axis shrunk by more than ``ANTIALIAS_FACTOR``.

    ``factors``: source voxels per model voxel, per axis. Plain sampling of a
    0.3-0.5 mm clinical scan onto the model's 1.25 mm grid reads one voxel in
    several and aliases noise and thin structures. sigma = 0.35 * factor
    source voxels keeps the same share at the model grid's Nyquist frequency
    for every factor (exp(-2 pi^2 sigma^2 / (4 factor^2)) = 0.55) and takes the
    source grid's finest pattern down to 0.09 per axis at factor 2, whether
    model voxels fall on source voxel centres (the patient-space grid puts
    them there on the LA crops) or between them. scikit-image's
    (factor - 1) / 2 is close above factor 3 but leaves 0.58 at factor 2.
    The kernel reaches ceil(3 sigma) voxels, edges replicated: SciPy's
    ``gaussian_filter1d`` with ``mode="nearest"``, written here in numpy as a
    sum of shifted slices (7 to 11 taps) because importing ``scipy.ndimage``
    costs a ``caml segment`` process about 0.13 s, a sixth of a fast-protocol
    run, for a filter that takes a few milliseconds.
    """
    lead = array.ndim - 3
    out = np.asarray(array, dtype=np.float32)
    for axis, factor in enumerate(factors):
        if factor <= ANTIALIAS_FACTOR:
            continue
        out = gaussian_filter_nearest(out, ANTIALIAS_SIGMA * factor, lead + axis)
    return out


def gaussian_filter_nearest(array: np.ndarray, sigma: float, axis: int) -> np.ndarray:
    """1D Gaussian smoothing of float32 ``array`` along ``axis``, edges replicated, reaching
    ``ceil(3 sigma)`` voxels (normalised weights; SciPy's result to float32 rounding)."""
    radius = max(1, int(np.ceil(3 * sigma)))
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    weights = np.exp(-0.5 * (offsets / sigma) ** 2)
    weights /= weights.sum()
    size = array.shape[axis]
    pad = [(0, 0)] * array.ndim
    pad[axis] = (radius, radius)
    padded = np.pad(array, pad, mode="edge")
    def shifted(tap: int) -> np.ndarray:
        window = [slice(None)] * array.ndim
        window[axis] = slice(tap, tap + size)
        return padded[tuple(window)]

    # The kernel is symmetric: add each pair of mirrored taps before weighting it.
    total = shifted(radius) * np.float32(weights[radius])
    for tap in range(radius):
        pair = shifted(tap) + shifted(2 * radius - tap)
        pair *= np.float32(weights[tap])
        total += pair
    return total
