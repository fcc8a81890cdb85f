"""Review where CAML is unsure (mixed into ``CAMLSegmentationLogic``): step the slice views through the
regions of the V/A disagreement map, largest first.

The regions come from ``inference.regions`` (numpy/scipy, run here in Slicer's process on the map
the panel already loaded); the views move with ``mrml_bridge.jump_slices_to``.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from ..inference.regions import DISAGREEMENT_THRESHOLD


class UncertainRegionReviewMixin:
    """"Next uncertain region": each call centres the slice views on the next region, then starts over."""

    #: (map node id, its image data's modification time, threshold), the regions found, the next one to show.
    _reviewState: Optional[Dict[str, Any]] = None

    def nextUncertainRegion(self, uncertaintyNode: Any, threshold: float = DISAGREEMENT_THRESHOLD) -> Dict[str, Any]:
        """Centre the slice views on the next region of ``uncertaintyNode`` (the |p_V - p_A| map).

        Returns ``{"index": n (1-based), "count": N, "region": UncertainRegion, "ras": (r, a, s),
        "millilitres": float, "threshold": float}``; with no region above ``threshold``, ``count`` is 0 and the views
        stay where they are. A changed or another map starts again from its largest region.
        """
        import numpy as np

        from ..inference.regions import uncertain_regions
        from . import mrml_bridge

        if uncertaintyNode is None or uncertaintyNode.GetImageData() is None:
            raise ValueError("There is no disagreement map: segment with the uncertainty overlay first.")
        key = (uncertaintyNode.GetID(), uncertaintyNode.GetImageData().GetMTime(), float(threshold))
        state = self._reviewState
        if state is None or state["key"] != key:
            disagreement = mrml_bridge.volume_from_node(uncertaintyNode).array
            state = {"key": key, "regions": uncertain_regions(disagreement, threshold), "next": 0}
            self._reviewState = state
        regions = state["regions"]
        if not regions:
            return {"index": 0, "count": 0, "region": None, "ras": None, "millilitres": 0.0, "threshold": threshold}
        n = state["next"] % len(regions)
        state["next"] = n + 1
        region = regions[n]
        ras = mrml_bridge.voxel_to_world(uncertaintyNode, region.center)
        mrml_bridge.jump_slices_to(uncertaintyNode.GetScene(), ras)
        voxel_ml = float(np.prod(uncertaintyNode.GetSpacing())) / 1000.0
        return {"index": n + 1, "count": len(regions), "region": region, "ras": ras,
                "millilitres": region.voxels * voxel_ml, "threshold": threshold}
