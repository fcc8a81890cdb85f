"""Inference on a real LA case (skipped, saying why, when ../shared/data/LA is absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from CAMLSegmentationLib.inference import InferenceOptions, random_model, segment_volume
from CAMLSegmentationLib.volume import LA_SPACING, read_la_h5, read_volume
from inference_helpers import one_thread

_threads = pytest.fixture(autouse=True)(one_thread)


def test_la_case_reads_and_segments_on_its_grid(la_root: Path) -> None:
    case = (la_root / "train.list").read_text().split()[0]
    path = la_root / "2018LA_Seg_Training Set" / case / "mri_norm2.h5"
    volume = read_volume(path)
    _, label = read_la_h5(path)
    assert volume.spacing == LA_SPACING and volume.shape[2] == 88 and label.shape == volume.shape
    # The h5 image was z-scored before it was cropped: the crop's own mean is not 0, so
    # re-normalising it would shift it away from what training saw; it is marked as normalised.
    assert volume.normalized
    model = random_model(base_filters=2, window=(112, 112, 80))
    torch.manual_seed(0)
    for options in (InferenceOptions(), InferenceOptions.official().with_changes(strides=(56, 56, 40))):
        result = segment_volume(volume, model, options)
        assert result.mask.shape == volume.shape
        assert np.isfinite(result.probability).all()
