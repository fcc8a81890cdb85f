"""Where CAML is unsure: the connected regions of its V/A disagreement map, largest first.

``caml segment --uncertainty`` and ``caml al next --uncertainty`` write the map
``|p_V - p_A|`` (the two sub-models' foreground probabilities). A user reviewing a
mask corrects first where the two disagree over the largest volume; this module
finds those places. numpy and scipy only (no torch): it runs inside Slicer's own
process, on the map the panel loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import numpy as np
from scipy import ndimage

#: ``|p_V - p_A|`` above which a voxel counts as disputed. At 0.5 one sub-model is
#: at least as sure of the atrium as the other is of the background (0.75 vs 0.25)
#: or more; lower thresholds make the regions swallow the thin rim where both only
#: hesitate near their boundary.
DISAGREEMENT_THRESHOLD = 0.5
#: Regions smaller than this many voxels are specks (one or two voxels of noise on a
#: boundary), not places worth a visit.
MIN_REGION_VOXELS = 8


@dataclass(frozen=True)
class UncertainRegion:
    """One connected region of disputed voxels, in the map's (i, j, k) voxel indices."""

    #: A voxel of the region (the one nearest its centre of mass): where the slice views go.
    #: A curved region's centre of mass may lie outside it; this voxel never does.
    center: Tuple[int, int, int]
    voxels: int
    #: The largest and the mean disagreement inside the region.
    peak: float
    mean: float
    #: Bounding box: first index and one past the last, per axis.
    start: Tuple[int, int, int]
    stop: Tuple[int, int, int]


def uncertain_regions(disagreement: np.ndarray, threshold: float = DISAGREEMENT_THRESHOLD,
                      min_voxels: int = MIN_REGION_VOXELS) -> List[UncertainRegion]:
    """The regions where ``disagreement > threshold``, largest first.

    ``disagreement``: a 3-D array (any float or integer type; the |p_V - p_A| map, 0..1).
    Voxels touching by a face, an edge or a corner belong to one region (26-connectivity).
    Regions under ``min_voxels`` voxels are left out. Order: more voxels first, then the
    higher peak, then the lower center index, so the order never depends on labelling.
    """
    values = np.asarray(disagreement)
    if values.ndim != 3:
        raise ValueError(f"the disagreement map must be 3-D, not {values.ndim}-D (shape {values.shape})")
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"the threshold must be from 0 to below 1, not {threshold}")
    values = np.nan_to_num(values.astype(np.float32, copy=False), nan=0.0)
    labels, count = ndimage.label(values > threshold, structure=np.ones((3, 3, 3), dtype=bool))
    if count == 0:
        return []
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    regions = []
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None or sizes[index] < min_voxels:
            continue
        inside = labels[box] == index
        local = np.argwhere(inside)
        offsets = np.array([s.start for s in box])
        centre_of_mass = local.mean(axis=0)
        nearest = local[np.argmin(((local - centre_of_mass) ** 2).sum(axis=1))] + offsets
        region_values = values[box][inside]
        regions.append(UncertainRegion(
            center=tuple(int(v) for v in nearest), voxels=int(sizes[index]),
            peak=float(region_values.max()), mean=float(region_values.mean()),
            start=tuple(int(s.start) for s in box), stop=tuple(int(s.stop) for s in box)))
    regions.sort(key=lambda r: (-r.voxels, -r.peak, r.center))
    return regions
