"""One intensity path for every input: normalisation, anti-aliased resampling, settings with the weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from CAMLSegmentationLib.inference.predictor import (
    InferenceOptions,
    flip_combinations,
    load_inference_model,
    segment_volume,
)
from CAMLSegmentationLib.inference.preprocess import axis_starts, body_percentiles, model_grid, normalize_intensity
from CAMLSegmentationLib.io.volume import Volume, read_volume, write_image
from CAMLSegmentationLib.model.checkpoint import release_checkpoint, save_checkpoint
from CAMLSegmentationLib.model.network import NetworkConfig
from CAMLSegmentationLib.model.settings import AUGMENTATION_FLIP_AXES, InferenceSettings
from CAMLSegmentationLib.training.presets import load_preset
from inference_helpers import one_thread, tiny_network

_threads = pytest.fixture(autouse=True)(one_thread)


def mri_like(shape=(96, 80, 48), seed: int = 0, scale: float = 1.0, offset: float = 0.0) -> np.ndarray:
    """A body (textured ellipsoid) with a bright blob in air at the image's minimum, like an MRI crop."""
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in shape], indexing="ij")
    body = (grid[0] / 0.9) ** 2 + (grid[1] / 0.85) ** 2 + (grid[2] / 1.2) ** 2 <= 1.0
    blob = (grid[0] / 0.3) ** 2 + (grid[1] / 0.25) ** 2 + (grid[2] / 0.4) ** 2 <= 1.0
    image = np.where(body, 300 + 80 * np.sin(7 * grid[0]) * np.cos(5 * grid[1]) + rng.normal(0, 30, shape), 0.0)
    image = np.where(blob, 900 + rng.normal(0, 40, shape), image)
    return (np.clip(image, 0, None) * scale + offset).astype(np.float32)


def test_normalisation_ignores_padding_and_barely_moves_with_a_crop() -> None:
    a = mri_like()
    ref = normalize_intensity(a)
    padded = normalize_intensity(np.pad(a, 24, constant_values=a.min()))
    # Padding with background (the image's minimum) does not change the statistics at all.
    np.testing.assert_allclose(padded[24:-24, 24:-24, 24:-24], ref, atol=1e-6)
    lo, hi = (int(0.1 * n) for n in a.shape), (int(0.1 * n) + int(0.8 * n) for n in a.shape)
    box = tuple(slice(s, e) for s, e in zip(lo, hi))
    cropped = normalize_intensity(a[box])
    # A central box of 80 % of each axis (half the voxels gone) moves the mapping by under 3 %
    # of the body's range: well inside the training's intensity augmentation (scale 0.7-1.4).
    assert np.abs(cropped - ref[box]).max() < 0.03 * (ref.max() - ref.min())


def test_normalisation_removes_the_scanner_scale() -> None:
    a = mri_like()
    b = mri_like(scale=7.5, offset=-40.0)
    np.testing.assert_allclose(normalize_intensity(a), normalize_intensity(b), atol=1e-5)
    lo, hi = body_percentiles(a)
    n = normalize_intensity(a)
    body = a > a.min()
    assert np.percentile(n[body], 0.5) == pytest.approx(0.0, abs=1e-5)
    assert np.percentile(n[body], 99.5) == pytest.approx(1.0, abs=1e-5)
    assert n[~body].max() < 0  # air sits below the body's low percentile


def test_normalisation_refuses_what_it_cannot_normalise() -> None:
    with pytest.raises(ValueError, match="constant"):
        normalize_intensity(np.full((4, 4, 4), 3.0, np.float32))
    bad = mri_like((8, 8, 8))
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        normalize_intensity(bad)
    with pytest.raises(ValueError, match="unknown intensity normalisation"):
        normalize_intensity(mri_like((8, 8, 8)), "minmax")


def test_downsampling_by_a_large_factor_smooths_instead_of_aliasing() -> None:
    # A one-voxel checkerboard has no content a 3x coarser grid can hold: sampled plainly it
    # aliases into a pattern of +-1; smoothed first it comes out close to its mean, 0.
    i, j, k = np.indices((60, 60, 30))
    board = np.where((i + j + k) % 2 == 0, 1.0, -1.0).astype(np.float32)
    grid = model_grid(board.shape, (1.0, 1.0, 1.0), (3.0, 3.0, 3.0))
    assert grid.shape == (20, 20, 10)
    assert np.abs(grid.sample(board)).max() < 0.2
    # A factor below 1.5 is not smoothed: a linear ramp is read exactly where the grid lies.
    ramp = np.broadcast_to(np.arange(40, dtype=np.float32)[:, None, None], (40, 8, 8)).copy()
    grid = model_grid(ramp.shape, (1.0, 1.0, 1.0), (1.25, 1.0, 1.0))
    np.testing.assert_allclose(grid.sample(ramp)[:, 0, 0], np.clip(grid.positions(0), 0, 39), atol=1e-5)


def test_the_model_grid_is_anchored_in_patient_space() -> None:
    """An ROI crop (any offset, odd included) sees exactly the model voxels the whole image saw."""
    rng = np.random.default_rng(0)
    image = rng.random((45, 37, 22)).astype(np.float32)
    spacing, target = (0.625, 0.7, 2.5), (1.25, 1.25, 1.25)
    whole_volume = Volume(array=image, spacing=spacing, origin=(10.0, -3.0, 7.5))
    whole = model_grid(image.shape, spacing, target, axis_starts(whole_volume))
    # Grid voxels lie at whole multiples of the target spacing, inside the image's extent.
    for a in range(3):
        mm = axis_starts(whole_volume)[a] + whole.positions(a) * spacing[a]
        np.testing.assert_allclose(mm / target[a], np.round(mm / target[a]), atol=1e-6)
        assert whole.positions(a).min() >= -0.5 and whole.positions(a).max() <= image.shape[a] - 0.5
    on_whole = whole.sample(image, "nearest")
    for lo in ((3, 5, 1), (4, 0, 3), (7, 9, 2)):
        box = tuple(slice(b, n - 2) for b, n in zip(lo, image.shape))
        start = axis_starts(whole_volume, lo)
        crop = model_grid(image[box].shape, spacing, target, start)
        # Every model voxel of the crop is one of the whole image's, read from the same source voxel
        # (but for the outermost ones, whose neighbour may lie outside the crop).
        offset = [int(round((start[a] + crop.first[a] * spacing[a] - axis_starts(whole_volume)[a]
                             - whole.first[a] * spacing[a]) / target[a])) for a in range(3)]
        sub = on_whole[tuple(slice(o, o + n) for o, n in zip(offset, crop.shape))]
        inner = (slice(1, -1),) * 3
        np.testing.assert_array_equal(crop.sample(image[box], "nearest")[inner], sub[inner])


def test_predictions_come_back_to_every_source_voxel() -> None:
    grid = model_grid((30, 20, 9), (0.625, 0.625, 2.5), (1.25, 1.25, 1.25), (0.3, 0.0, 0.0))
    ramp = np.broadcast_to(np.arange(30, dtype=np.float32)[:, None, None], (30, 20, 9)).copy()
    back = grid.back(grid.sample(ramp))
    assert back.shape == ramp.shape
    # Linear in, linear out, away from the ends by the anti-aliasing kernel's reach and a voxel
    # (edges are replicated there, and beyond the outermost model voxels comes the nearest value).
    inside = (np.arange(30) >= grid.first[0] + 4) & (np.arange(30) <= grid.positions(0)[-1] - 4)
    np.testing.assert_allclose(back[inside, 3, 4], ramp[inside, 3, 4], atol=1e-4)
    two = np.stack([np.ones(grid.shape, np.float32), np.zeros(grid.shape, np.float32)])
    np.testing.assert_array_equal(grid.back(two)[0], 1.0)


def test_test_time_flips_never_flip_the_slice_axis() -> None:
    flips = flip_combinations(AUGMENTATION_FLIP_AXES)
    assert flips == [(), (0,), (1,), (0, 1)]
    assert all(2 not in f for f in flips)


def _checkpoint(tmp_path: Path, preset_name: str = "cpu") -> Path:
    preset = load_preset(preset_name).with_overrides(base_filters=4, patch_size=(32, 32, 16),
                                                     spacing=(1.6, 1.6, 1.6))
    net = tiny_network(4)
    path = tmp_path / "train.pt"
    save_checkpoint(path, {"network": NetworkConfig(base_filters=4).to_dict(), "model": net.state_dict(),
                           "preset": preset.to_dict(),
                           "inference": InferenceSettings.from_preset(preset).to_dict()})
    return path


def test_settings_travel_with_the_weights_into_the_release(tmp_path: Path) -> None:
    release = tmp_path / "release.pt"
    release_checkpoint(_checkpoint(tmp_path), release, half=True)
    model = load_inference_model(release, "cpu")
    assert model.settings == InferenceSettings(window=(32, 32, 16), spacing=(1.6, 1.6, 1.6),
                                               normalization="percentile", flip_axes=(0, 1), threshold=0.5)
    # A release may set the post-processing an older checkpoint did not record.
    chosen = tmp_path / "chosen.pt"
    release_checkpoint(_checkpoint(tmp_path), chosen, largest_component=True)
    assert load_inference_model(chosen, "cpu").settings.largest_component is True
    assert model.settings.largest_component is False


def test_legacy_checkpoints_keep_the_normalisation_they_were_trained_with() -> None:
    # v1 checkpoints: a preset without a normalisation field was trained on z-scored images.
    legacy = InferenceSettings.from_checkpoint({"preset": {"patch_size": [64, 64, 32], "spacing": [1.25] * 3}})
    assert legacy.normalization == "zscore" and legacy.window == (64, 64, 32) and legacy.spacing == (1.25,) * 3
    # The official iter_15000.pth (a plain state_dict): the paper's window at the image's own voxel
    # size, on the intensities as stored (what the official code trained and evaluated on).
    official = InferenceSettings.from_checkpoint({"model": {}})
    assert official == InferenceSettings(window=(112, 112, 80), spacing=None, normalization="none")


@pytest.mark.parametrize("method", ["zscore", "percentile", "none"])
def test_training_and_inference_feed_the_network_the_same_intensities(tmp_path: Path, method: str) -> None:
    """A case as the trainer loads it (normalised with the preset's method) is what the predictor
    makes of the stored image: segmenting the trainer's array with a model that takes it as is
    gives the same probabilities as segmenting the stored image with the same weights and method.
    The image has a zero-filled border (the predictor's content box leaves it out)."""
    from CAMLSegmentationLib.inference.predictor import random_model
    from CAMLSegmentationLib.training.sources import open_source

    image = np.pad(mri_like((40, 36, 24), scale=0.01, offset=-1.2), ((6, 2), (0, 5), (3, 0)),
                   constant_values=-1.2)
    volume = Volume(array=image, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=np.eye(3))
    (tmp_path / "images").mkdir()
    write_image(image, volume, tmp_path / "images" / "case1.nrrd")
    case = open_source(tmp_path).load("case1", None, with_label=False, normalization=method)
    as_trained = Volume(array=case.image, spacing=volume.spacing, origin=volume.origin, direction=volume.direction)
    stored = segment_volume(volume, random_model(4, (16, 16, 16), normalization=method, seed=2),
                            InferenceOptions.fast()).probability
    trained = segment_volume(as_trained, random_model(4, (16, 16, 16), normalization="none", seed=2),
                             InferenceOptions.fast()).probability
    np.testing.assert_allclose(stored, trained, atol=1e-5)


def test_h5_and_nrrd_of_the_same_voxels_give_the_same_mask(tmp_path: Path) -> None:
    h5py = pytest.importorskip("h5py")
    release = tmp_path / "release.pt"
    release_checkpoint(_checkpoint(tmp_path), release)
    model = load_inference_model(release, "cpu")
    image = mri_like((40, 36, 24)) * 0.01 - 1.2  # an arbitrary scale, as the LA release stores
    with h5py.File(tmp_path / "case.h5", "w") as f:
        f.create_dataset("image", data=image)
    as_h5 = read_volume(tmp_path / "case.h5")
    write_image(as_h5.array, as_h5, tmp_path / "case.nrrd")
    as_nrrd = read_volume(tmp_path / "case.nrrd")
    assert isinstance(as_nrrd, Volume)
    r1 = segment_volume(as_h5, model, InferenceOptions())
    r2 = segment_volume(as_nrrd, model, InferenceOptions())
    np.testing.assert_allclose(r1.probability, r2.probability, atol=1e-5)
    assert r1.info["normalization"] == "percentile"
