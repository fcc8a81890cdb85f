"""Augmentations of training crops. Each draws all its randomness from the
``numpy.random.Generator`` it is given, so a trainer that saves the generator's state resumes
with exactly the same crops."""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np

from ..model.settings import AUGMENTATION_FLIP_AXES


def random_rot_flip(image: np.ndarray, label: Optional[np.ndarray],
                    rng: np.random.Generator) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """The official LA augmentation: rot90 by k in 0..3 in the (i, j) plane, then a flip of axis 0 or 1.

    The same transform is applied to ``image`` and ``label`` (which may be None). As in the
    official code the flip always happens, so the result is always one of the 4 reflections of
    the (i, j) plane (rot90(k) + flip(0) equals rot90(k + 2) + flip(1)), never a pure rotation.
    """
    k = int(rng.integers(0, 4))
    axis = int(rng.choice(AUGMENTATION_FLIP_AXES))
    image = np.ascontiguousarray(np.flip(np.rot90(image, k, axes=(0, 1)), axis=axis))
    if label is not None:
        label = np.ascontiguousarray(np.flip(np.rot90(label, k, axes=(0, 1)), axis=axis))
    return image, label


def _pad_short_axes(image: np.ndarray, label: Optional[np.ndarray], patch: Sequence[int],
                    ) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """The official code's padding before a crop: once any axis is no longer than ``patch``, every
    axis gets ``max((patch - size) // 2 + 3, 0)`` zeros on each side - so an axis 1-4 voxels
    longer than the patch is padded too (by 2, 2, 1, 1; floor division of a negative number)."""
    if all(s > p for s, p in zip(image.shape, patch)):
        return image, label
    pad = [(max((p - s) // 2 + 3, 0),) * 2 for s, p in zip(image.shape, patch)]
    if not any(before for before, _ in pad):
        return image, label
    image = np.pad(image, pad, mode="constant", constant_values=0)
    if label is not None:
        label = np.pad(label, pad, mode="constant", constant_values=0)
    return image, label


def random_crop(image: np.ndarray, label: Optional[np.ndarray], patch_size: Sequence[int],
                rng: np.random.Generator, margin: Sequence[int] = (0, 0, 0),
                ) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """A uniformly random ``patch_size`` crop of ``image`` and ``label`` (which may be None).

    When an axis is no longer than the patch, the image is first padded with zeros as the
    official code pads it (``_pad_short_axes``; zero is the mean of a z-scored image).
    Unlike the official code, the crop may also start at the last possible offset.

    ``margin`` (voxels per axis, default none) lets the crop reach that far past the
    image's border, the outside being 0 (the body's darkest intensities after
    ``normalize_intensity``) and background. On the LA crops a 64-voxel patch
    nearly spans some axes, so without a margin the atrium sits at almost the
    same place in every patch and the model learns that place; users' ROI crops
    and whole-chest scans put it elsewhere. The number of random draws does not
    depend on the margin.
    """
    patch = tuple(int(p) for p in patch_size)
    if len(patch) != image.ndim or min(patch) < 1:
        raise ValueError(f"patch size {patch_size!r} does not fit a {image.ndim}D image")
    if label is not None and label.shape != image.shape:
        raise ValueError(f"label shape {label.shape} differs from image shape {image.shape}")
    if any(margin):
        outside = [(int(m), int(m)) for m in margin]
        image = np.pad(image, outside, mode="constant", constant_values=0)
        if label is not None:
            label = np.pad(label, outside, mode="constant", constant_values=0)
    image, label = _pad_short_axes(image, label, patch)
    start = [int(rng.integers(0, s - p + 1)) for s, p in zip(image.shape, patch)]
    window = tuple(slice(b, b + p) for b, p in zip(start, patch))
    image = np.ascontiguousarray(image[window])
    if label is not None:
        label = np.ascontiguousarray(label[window])
    return image, label


def random_roi(image: np.ndarray, label: Optional[np.ndarray], rng: np.random.Generator,
               probability: float, min_fraction: float,
               ) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """With ``probability``, crop ``image`` and ``label`` to a random box, as a user's ROI would.

    Each axis keeps a length drawn uniformly between ``min_fraction`` of its size and all
    of it, at a uniform offset. The LA crops are tight around the atrium, so without this
    the atrium never touches an image border in training and the model learns that
    "near the border" means background; a user's ROI, or a crop by 80 % of each axis,
    then cuts the atrium. Measured, it did not make ROI crops agree better (README,
    "Resampling and augmentation"): the crop problem came from sliding-window placement and is
    solved by the default inference protocol; off in the shipped presets. The crop is a
    real crop (not masking), so ``random_crop`` then pads it exactly as inference pads
    a small image. Seven values are drawn from ``rng`` whether or not the crop happens,
    so later draws do not depend on the probability.
    """
    if label is not None and label.shape != image.shape:
        raise ValueError(f"label shape {label.shape} differs from image shape {image.shape}")
    apply = rng.random() < probability
    lengths = [int(round(rng.uniform(min_fraction, 1.0) * s)) for s in image.shape]
    offsets = [rng.random() for _ in image.shape]
    if not apply:
        return image, label
    lengths = [min(max(n, 1), s) for n, s in zip(lengths, image.shape)]
    box = tuple(slice(int(o * (s - n + 1)), int(o * (s - n + 1)) + n)
                for o, n, s in zip(offsets, lengths, image.shape))
    image = np.ascontiguousarray(image[box])
    if label is not None:
        label = np.ascontiguousarray(label[box])
    return image, label


def random_shifted_pair(image: np.ndarray, patch_size: Sequence[int], rng: np.random.Generator,
                        max_shift: Sequence[int]) -> Tuple[np.ndarray, np.ndarray, Tuple[int, int, int]]:
    """Two ``patch_size`` crops of ``image`` offset by a random shift ``d`` (the second starts ``d`` later).

    Each axis's shift is uniform in ``[-m, m]``, ``m`` being ``max_shift`` or the room the
    image leaves around the patch if smaller; the crops overlap on ``patch - |d|`` voxels,
    where a model should predict the same whatever else its window holds
    (``losses.shift_consistency_loss``). Keeping both crops inside the image matters:
    crops reaching into padding that ``random_crop`` would not add shift BatchNorm's
    running statistics, and a model trained so (shifts of a quarter patch on the LA
    crops, padded) predicted empty masks at inference after 350 iterations.
    An axis no longer than the patch is padded as ``random_crop`` pads it (shift 0).
    """
    patch = tuple(int(p) for p in patch_size)
    room = [max(0, s - p) for s, p in zip(image.shape, patch)]
    shift = tuple(int(rng.integers(-m, m + 1)) for m in (min(int(x), r) for x, r in zip(max_shift, room)))
    span = [p + abs(d) for p, d in zip(patch, shift)]
    image, _ = _pad_short_axes(image, None, patch)
    start = [int(rng.integers(0, s - n + 1)) for s, n in zip(image.shape, span)]
    first = tuple(slice(b + max(0, -d), b + max(0, -d) + p) for b, d, p in zip(start, shift, patch))
    second = tuple(slice(b + max(0, d), b + max(0, d) + p) for b, d, p in zip(start, shift, patch))
    return np.ascontiguousarray(image[first]), np.ascontiguousarray(image[second]), shift  # type: ignore[return-value]


def random_intensity(image: np.ndarray, rng: np.random.Generator, probability: float,
                     scale: Tuple[float, float], shift: float, gamma: Tuple[float, float],
                     noise: float) -> np.ndarray:
    """Intensity augmentation of a normalised crop (the preset's ``intensity_*`` fields).

    With ``probability``: a contrast curve ``x**gamma`` on the positive part
    (gamma log-uniform in ``gamma``), a factor log-uniform in ``scale``, an
    offset uniform in ``[-shift, shift]`` and Gaussian noise with a standard
    deviation uniform in ``[0, noise]``. Normalisation maps every image's body
    to about [0, 1], but what lands where still varies between scanners and
    with the field of view (the blood pool's mean from 0.5 to 0.85 on the LA
    cases; a crop moves the scale by a few percent): the model must not hinge
    on one exact scale. Every draw comes from ``rng`` (resumable), even when
    the augmentation is skipped, so crops do not depend on the probability.
    """
    apply = rng.random() < probability
    g = float(np.exp(rng.uniform(np.log(gamma[0]), np.log(gamma[1]))))
    s = float(np.exp(rng.uniform(np.log(scale[0]), np.log(scale[1]))))
    b = float(rng.uniform(-shift, shift)) if shift > 0 else 0.0
    sd = float(rng.uniform(0.0, noise)) if noise > 0 else 0.0
    seed = int(rng.integers(0, 2**31 - 1))
    if not apply:
        return image
    out = image.astype(np.float32, copy=True)
    if g != 1.0:
        positive = out > 0
        out[positive] = out[positive] ** g
    out = out * s + b
    if sd > 0:
        out += np.random.default_rng(seed).normal(0.0, sd, out.shape).astype(np.float32)
    return out.astype(np.float32, copy=False)
