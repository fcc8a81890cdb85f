"""One training batch: augmented random crops of the drawn labeled and unlabeled cases."""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from .augment import random_crop, random_intensity, random_roi, random_rot_flip, random_shifted_pair
from .presets import TrainingPreset
from .sources import Case


def make_batch(labeled: Sequence[Case], unlabeled: Sequence[Case],
               li: Sequence[int], ui: Sequence[int], preset: TrainingPreset,
               rng: np.random.Generator) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """Augment and crop: returns images ``[nl+nu, 1, *patch]``, labels ``[nl, *patch]`` and shifts.

    With the preset's ``shift_consistency`` each unlabeled index gives two crops offset
    by a random shift (``data.random_shifted_pair``), the shifts being ``[len(ui), 3]``;
    otherwise one crop each and no shifts.

    Geometric augmentation (rot90/flip in the (i, j) plane, random crop) as the
    official code, the crop reaching past the image by the preset's
    ``crop_margin``, then the preset's intensity augmentation on each crop.
    With ``roi_probability`` set, a case is first cut to a random ROI box; no
    draw is spent on it otherwise, so presets without it keep their exact stream.
    """
    patch = preset.patch_size
    margin = tuple(int(round(preset.crop_margin * p)) for p in patch)

    def intensity(img: np.ndarray) -> np.ndarray:
        return random_intensity(img, rng, preset.intensity_probability, preset.intensity_scale,
                                         preset.intensity_shift, preset.intensity_gamma, preset.intensity_noise)

    def roi(img: np.ndarray, lab: Optional[np.ndarray]) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        if preset.roi_probability <= 0:
            return img, lab
        return random_roi(img, lab, rng, preset.roi_probability, preset.roi_min_fraction)

    images, labels = [], []
    for i in li:
        img, lab = roi(labeled[i].image, labeled[i].label)
        img, lab = random_rot_flip(img, lab, rng)
        img, lab = random_crop(img, lab, patch, rng, margin)
        images.append(intensity(img))
        labels.append(lab)
    shifts = []
    for i in ui:
        img, _ = roi(unlabeled[i].image, None)
        img, _ = random_rot_flip(img, None, rng)
        if preset.shift_consistency > 0:
            first, second, shift = random_shifted_pair(
                img, patch, rng, [int(round(preset.shift_max * p)) for p in patch])
            images += [intensity(first), intensity(second)]
            shifts.append(shift)
            continue
        img, _ = random_crop(img, None, patch, rng, margin)
        images.append(intensity(img))
    x = torch.from_numpy(np.stack(images)[:, None].astype(np.float32))
    y = torch.from_numpy(np.stack(labels).astype(np.int64))
    return x, y, (torch.tensor(shifts, dtype=torch.int64) if shifts else None)
