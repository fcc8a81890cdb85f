"""Inference on a real LA case (skipped, saying why, when ../shared/data/LA is absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from CAMLSegmentationLib.inference.metrics import dice
from CAMLSegmentationLib.inference.predictor import InferenceOptions, random_model, segment_volume
from CAMLSegmentationLib.io.volume import LA_SPACING, read_la_h5, read_volume
from inference_helpers import one_thread

_threads = pytest.fixture(autouse=True)(one_thread)


def test_la_case_reads_and_segments_on_its_grid(la_root: Path) -> None:
    case = (la_root / "train.list").read_text().split()[0]
    path = la_root / "2018LA_Seg_Training Set" / case / "mri_norm2.h5"
    volume = read_volume(path)
    _, label = read_la_h5(path)
    assert volume.spacing == LA_SPACING and volume.shape[2] == 88 and label.shape == volume.shape
    model = random_model(base_filters=2, window=(112, 112, 80))
    torch.manual_seed(0)
    for options in (InferenceOptions(), InferenceOptions.official().with_changes(strides=(56, 56, 40))):
        result = segment_volume(volume, model, options)
        assert result.mask.shape == volume.shape
        assert np.isfinite(result.probability).all()


#: Two of the 16 validation cases (never labeled for training), with the lowest and a middle
#: blood-pool intensity of the set.
CONTAINER_CASES = ("RSZY41MT2FGDKHWWL5L2", "Q7J0WYM695R9MA285ZW0")


def _container_masks(la_root: Path, tmp_path: Path, case: str):
    from CAMLSegmentationLib.inference.predictor import load_inference_model
    from CAMLSegmentationLib.io.volume import Volume, write_image
    from CAMLSegmentationLib.model.catalog import default_model, verify

    entry = default_model()
    if entry is None:
        pytest.skip("no bundled model in this checkout")
    model = load_inference_model(verify(entry), "cpu")
    h5 = la_root / "2018LA_Seg_Training Set" / case / "mri_norm2.h5"
    stored = read_volume(h5)
    shape = np.array(stored.shape)
    lo = (0.1 * shape).astype(int)
    hi = lo + (0.8 * shape).astype(int)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    pad = 24
    spacing = np.array(stored.spacing)
    variants = {"nrrd": (stored.array, np.zeros(3)),
                "cropped": (stored.array[box], lo * spacing),
                # background = the image's darkest value (air), as a resampler or crop tool pads
                "padded": (np.pad(stored.array, pad, constant_values=stored.array.min()), -pad * spacing)}
    masks = {"h5": segment_volume(stored, model).mask.astype(bool)}
    for name, (array, origin) in variants.items():
        ref = Volume(array=np.ascontiguousarray(array), spacing=stored.spacing, origin=tuple(origin))
        write_image(ref.array, ref, tmp_path / f"{name}.nrrd")
        masks[name] = segment_volume(read_volume(tmp_path / f"{name}.nrrd"), model).mask.astype(bool)
    # Every mask on the original grid's voxels it covers: the crop covers only the box.
    full = {"h5": masks["h5"], "nrrd": masks["nrrd"],
            "padded": masks["padded"][pad:-pad, pad:-pad, pad:-pad]}
    return full, masks["cropped"], box


@pytest.mark.parametrize("case", CONTAINER_CASES)
def test_same_voxels_same_mask_whatever_the_container(la_root: Path, tmp_path: Path, case: str) -> None:
    """The bundled model gives the same mask for an LA case as .h5, as NRRD and padded with background."""
    full, _, _ = _container_masks(la_root, tmp_path, case)
    assert full["h5"].any(), f"{case}: empty mask"
    names = list(full)
    for n, a in enumerate(names):
        for b in names[n + 1:]:
            assert dice(full[a], full[b]) >= 0.97, (case, a, b)


@pytest.mark.parametrize("case", CONTAINER_CASES)
def test_an_roi_crop_keeps_the_mask(la_root: Path, tmp_path: Path, case: str) -> None:
    """A central 80 % box of each axis gets the whole image's mask on the voxels it keeps.

    The box cuts into the atrium itself (LA images are tight crops around it); the default
    inference averages every voxel over many window positions and flips, so what the network
    sees beyond a window's edge barely matters (0.944 with the fast preview's sparse windows).
    """
    full, cropped, box = _container_masks(la_root, tmp_path, case)
    assert cropped.any(), f"{case}: empty mask for the crop"
    for name, mask in full.items():  # .h5, NRRD and padded NRRD, each on the voxels the box keeps
        shared = dice(mask[box], cropped)
        assert shared >= 0.97, f"{case}: Dice {shared:.4f} between the cropped and the {name} image's masks"
