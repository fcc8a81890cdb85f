"""Validation during training: Dice of sub-model V through the predictor ``caml segment`` runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Sequence

import numpy as np
import torch

from ..inference.metrics import dice
from ..inference.predictor import InferenceOptions, largest_component, model_from_network, segment_volume
from ..io.volume import Volume
from ..model.network import CAMLNet
from ..model.settings import InferenceSettings


@dataclass
class ValidationCase:
    """A validation case as stored (its own grid and intensities) with its reference label."""

    case_id: str
    volume: Volume
    label: np.ndarray


def validate(net: CAMLNet, cases: Sequence[ValidationCase], settings: InferenceSettings,
             device: torch.device) -> Dict[str, Any]:
    """Mean and per-case Dice of sub-model V through the predictor ``caml segment`` runs.

    Each case is segmented from its stored voxels with the default
    ``InferenceOptions`` (normalisation, resampling, sliding window and
    threshold included) and scored on its own grid, so the number that
    selects a checkpoint is the number ``caml evaluate`` reports for it.
    Each mask is scored as predicted and with only its largest connected
    component; the post-processing with the higher mean Dice is the
    checkpoint's (``largest_component``, stored in best.pt's settings), as
    nnU-Net chooses its post-processing on validation.
    """
    model = model_from_network(net, settings, device)
    plain, kept = {}, {}
    for case in cases:
        mask = segment_volume(case.volume, model, InferenceOptions(lcc=False)).mask
        plain[case.case_id] = dice(mask > 0, case.label > 0)
        kept[case.case_id] = dice(largest_component(mask) > 0, case.label > 0)
    plain_mean, kept_mean = float(np.mean(list(plain.values()))), float(np.mean(list(kept.values())))
    use_lcc = kept_mean > plain_mean
    return {"dice": kept_mean if use_lcc else plain_mean, "per_case": kept if use_lcc else plain,
            "largest_component": use_lcc, "dice_as_predicted": plain_mean, "dice_largest_component": kept_mean}
