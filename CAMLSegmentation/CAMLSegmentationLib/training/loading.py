"""Loading the cases of a split, checked and preprocessed, before training starts."""

from __future__ import annotations

from typing import List, Optional, Sequence

from ..model.settings import PERCENTILE
from ..progress import CancelToken, ProgressCallback, ProgressEvent, check_cancel
from .sources import Case, CaseSource


def load_cases(source: CaseSource, ids: Sequence[str], target_spacing: Optional[Sequence[float]] = None,
               with_label: bool = True, progress: Optional[ProgressCallback] = None,
               cancel: Optional[CancelToken] = None, normalization: str = PERCENTILE) -> List[Case]:
    """Load, check and preprocess the cases ``ids`` of ``source``, in that order.

    Checks (a DataError names the file): 3D single-component image, no NaN/Inf, not constant;
    label of the image's shape and (generic layout) geometry, with values 0 and 1 only.
    Every image is normalised by ``normalize_intensity(image, normalization)``, the layout
    makes no difference. With
    ``target_spacing`` differing from a case's spacing, the image is resampled linearly and the
    label by nearest neighbour to the grid of the same extent at that spacing.
    ``progress`` receives ``ProgressEvent("load", done, total)`` before the first and after each case.
    """
    total = len(ids)
    if progress is not None:
        progress(ProgressEvent("load", 0, total))
    cases = []
    for n, case_id in enumerate(ids, start=1):
        check_cancel(cancel)
        cases.append(source.load(case_id, target_spacing, with_label=with_label, normalization=normalization))
        if progress is not None:
            progress(ProgressEvent("load", n, total, message=case_id))
    return cases
