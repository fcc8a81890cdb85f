"""Segmentation metrics with medpy's definitions: Dice, Jaccard, 95% Hausdorff and average surface distance.

Definitions (``medpy.metric.binary``, which the CAML paper and its peers use):

* surface of a mask: its voxels with at least one 6-neighbour outside the mask
  (voxels on the array border count as surface);
* ``d(A -> B)``: for every surface voxel of A, the Euclidean distance to the
  nearest surface voxel of B, in voxels or, with ``spacing``, in mm;
* 95% Hausdorff distance: the 95th percentile of ``d(pred -> truth)`` and
  ``d(truth -> pred)`` pooled together;
* average surface distance (ASD): the mean of ``d(pred -> truth)`` only
  (medpy's ``asd`` is one-directional; its symmetric variant is ``assd``).

Empty masks, where medpy returns Dice 0 or raises:

* prediction and ground truth both empty: Dice 1, Jaccard 1, HD95 0, ASD 0
  (they agree perfectly);
* exactly one empty: Dice 0, Jaccard 0, HD95 and ASD NaN (no surface to
  measure a distance to). Means over cases skip NaN and say how many.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """2|P and T| / (|P| + |T|); 1.0 when both are empty."""
    p, t = np.asarray(pred, bool), np.asarray(truth, bool)
    total = int(p.sum()) + int(t.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(p, t).sum()) / total


def jaccard(pred: np.ndarray, truth: np.ndarray) -> float:
    """|P and T| / |P or T|; 1.0 when both are empty."""
    p, t = np.asarray(pred, bool), np.asarray(truth, bool)
    union = int(np.logical_or(p, t).sum())
    return 1.0 if union == 0 else int(np.logical_and(p, t).sum()) / union


def surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of the mask with a 6-neighbour outside it (or outside the array)."""
    m = np.asarray(mask, bool)
    structure = ndimage.generate_binary_structure(m.ndim, 1)
    return m & ~ndimage.binary_erosion(m, structure=structure, iterations=1)


def surface_distances(a: np.ndarray, b: np.ndarray, spacing: Optional[Sequence[float]] = None) -> np.ndarray:
    """Distance from each surface voxel of ``a`` to the nearest surface voxel of ``b`` (both non-empty)."""
    a, b = _crop_to_union(np.asarray(a, bool), np.asarray(b, bool))
    to_b = ndimage.distance_transform_edt(~surface(b), sampling=spacing)
    return to_b[surface(a)]


def _crop_to_union(a: np.ndarray, b: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    # Distances between surfaces do not change if the array is cut to the masks' bounding
    # box plus one voxel (clipped at the array edge, so border voxels stay surface): this
    # makes the distance transforms cost the size of the atrium, not of the image.
    idx = np.nonzero(a | b)
    box = tuple(slice(max(0, int(ax.min()) - 1), int(ax.max()) + 2) for ax in idx)
    return a[box], b[box]


def hd95(pred: np.ndarray, truth: np.ndarray, spacing: Optional[Sequence[float]] = None) -> float:
    """95th percentile of the pooled symmetric surface distances (medpy ``hd95``); see module doc for empties."""
    p, t = np.asarray(pred, bool), np.asarray(truth, bool)
    empty = _empty_case(p, t)
    if empty is not None:
        return empty
    both = np.hstack([surface_distances(p, t, spacing), surface_distances(t, p, spacing)])
    return float(np.percentile(both, 95))


def asd(pred: np.ndarray, truth: np.ndarray, spacing: Optional[Sequence[float]] = None) -> float:
    """Mean distance from the prediction's surface to the truth's (medpy ``asd``); see module doc for empties."""
    p, t = np.asarray(pred, bool), np.asarray(truth, bool)
    empty = _empty_case(p, t)
    if empty is not None:
        return empty
    return float(surface_distances(p, t, spacing).mean())


def _empty_case(p: np.ndarray, t: np.ndarray) -> Optional[float]:
    has_p, has_t = bool(p.any()), bool(t.any())
    if has_p and has_t:
        return None
    return 0.0 if not has_p and not has_t else float("nan")


@dataclass
class CaseMetrics:
    """The paper's four numbers for one case, distances in voxels and in mm."""

    dice: float
    jaccard: float
    hd95_voxels: float
    asd_voxels: float
    hd95_mm: float
    asd_mm: float

    def to_dict(self) -> Dict[str, float]:
        return asdict(self)


METRIC_NAMES = ("dice", "jaccard", "hd95_voxels", "asd_voxels", "hd95_mm", "asd_mm")


def evaluate_case(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> CaseMetrics:
    """Dice and Jaccard (fractions, not percent) and both distances in voxels (paper) and in mm."""
    p, t = np.asarray(pred, bool), np.asarray(truth, bool)
    if p.shape != t.shape:
        raise ValueError(f"prediction shape {p.shape} differs from ground truth shape {t.shape}")
    return CaseMetrics(dice=dice(p, t), jaccard=jaccard(p, t),
                       hd95_voxels=hd95(p, t), asd_voxels=asd(p, t),
                       hd95_mm=hd95(p, t, spacing), asd_mm=asd(p, t, spacing))


def summarize(cases: Sequence[CaseMetrics]) -> Dict[str, Dict[str, float]]:
    """Mean, standard deviation (population, as numpy) and count of defined values per metric."""
    out: Dict[str, Dict[str, float]] = {}
    for name in METRIC_NAMES:
        values = np.array([getattr(c, name) for c in cases], dtype=float)
        defined = values[np.isfinite(values)]
        out[name] = {"mean": float(defined.mean()) if defined.size else float("nan"),
                     "std": float(defined.std()) if defined.size else float("nan"),
                     "n": int(defined.size)}
    return out
