"""Sliding-window inference and the whole segmentation job, with tiny networks."""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from CAMLSegmentationLib.inference.predictor import (
    InferenceModel,
    InferenceOptions,
    choose_stitch_device,
    count_windows,
    flip_combinations,
    gaussian_importance,
    largest_component,
    load_inference_model,
    make_predictor,
    optimize_for_inference,
    segment_volume,
    sliding_window,
    strides_for_overlap,
    window_starts,
)
from CAMLSegmentationLib.io.volume import ImageError, Volume
from CAMLSegmentationLib.model.network import SubModel
from CAMLSegmentationLib.model.settings import AUGMENTATION_FLIP_AXES, InferenceSettings
from CAMLSegmentationLib.progress import Cancelled, CancelToken
from inference_helpers import GEOMETRIES, blob_volume, one_thread, tiny_checkpoint, tiny_network
from scipy import ndimage

_threads = pytest.fixture(autouse=True)(one_thread)


def sub_models(seed: int = 0):
    """V and A of one tiny dual model, as plain (unfused) sub-models."""
    net = tiny_network(seed=seed)
    out = {}
    for which in ("v", "a"):
        sub = SubModel(net.config, which)
        sub.load_state_dict({k: v for k, v in net.state_dict().items() if k in sub.state_dict()})
        out[which] = sub.eval()
    return out


def inference_model(window=(16, 16, 16), spacing=None, seed: int = 0) -> InferenceModel:
    nets = {k: optimize_for_inference(copy.deepcopy(v)) for k, v in sub_models(seed).items()}
    settings = InferenceSettings(window=tuple(window), spacing=None if spacing is None else tuple(spacing),
                                 normalization="percentile")
    return InferenceModel(networks=nets, settings=settings, name="tiny")


def test_window_starts_follow_the_official_formula() -> None:
    # 175 voxels, window 112, stride 18: ceil(63 / 18) + 1 = 5 windows, the last flush with the end.
    assert window_starts(175, 112, 18, "flush") == [0, 18, 36, 54, 63]
    assert window_starts(88, 80, 4, "flush") == [0, 4, 8]
    for layout in ("flush", "even"):
        assert window_starts(112, 112, 18, layout) == [0]
        assert window_starts(50, 112, 18, layout) == [0]  # padded to one window
    # The official protocol on a typical LA case (175 x 132 x 88): 5 x 3 x 3 windows.
    assert count_windows((175, 132, 88), (112, 112, 80), (18, 18, 4)) == 45
    assert count_windows((175, 132, 88), (112, 112, 80), strides_for_overlap((112, 112, 80), 0.25)) == 8


def test_overlap_may_differ_per_axis() -> None:
    assert strides_for_overlap((64, 64, 32), 0.75) == (16, 16, 8)
    assert strides_for_overlap((64, 64, 32), (0.75, 0.75, 0.875)) == (16, 16, 4)
    assert strides_for_overlap((64, 64, 32), 0.999) == (1, 1, 1)  # never a zero step
    for bad in (1.0, -0.1, (0.5, 0.5), (0.5, 0.5, 1.0)):
        with pytest.raises(ValueError, match="overlap"):
            strides_for_overlap((64, 64, 32), bad)


def test_protocol_names_are_checked() -> None:
    assert InferenceOptions.for_protocol("default") == InferenceOptions()
    with pytest.raises(ValueError, match="protocol"):
        InferenceOptions.for_protocol("best")


def test_even_layout_spreads_the_same_number_of_windows_evenly() -> None:
    # nnU-Net's placement: the same count, starts np.linspace(0, size - window, n) rounded.
    assert window_starts(175, 112, 18) == [0, 16, 32, 47, 63]  # the default layout
    assert window_starts(175, 112, 18, "even") == [int(v) for v in np.round(np.linspace(0, 63, 5))]
    assert window_starts(88, 80, 4, "even") == [0, 4, 8]  # already even: unchanged
    for size, window, stride in ((175, 112, 18), (132, 112, 18), (88, 80, 4), (300, 112, 84), (113, 16, 5)):
        even, flush = window_starts(size, window, stride, "even"), window_starts(size, window, stride, "flush")
        assert len(even) == len(flush) and even[0] == 0 and even[-1] == size - window
        gaps = np.diff(even)
        assert gaps.max() <= stride and gaps.max() - gaps.min() <= 1
    # The flush layout's last step can be a single voxel: 113 - 16 = 97 = 19 * 5 + 2.
    assert np.diff(window_starts(113, 16, 5, "flush"))[-1] == 2
    with pytest.raises(ValueError, match="layout"):
        window_starts(175, 112, 18, "centred")


@pytest.mark.parametrize("layout", ["even", "flush"])
def test_sliding_window_places_windows_by_layout(layout: str) -> None:
    # Each voxel holds its own coordinates, so a window's first voxel tells where it starts.
    shape, window, strides = (30, 21, 12), (8, 8, 8), (5, 6, 5)
    grid = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    image = torch.from_numpy((grid[0] * 10000 + grid[1] * 100 + grid[2]).astype(np.float32))[None]
    seen = set()

    def predictor(x: torch.Tensor) -> torch.Tensor:
        for v in x[:, 0, 0, 0, 0].tolist():
            seen.add((int(v) // 10000, int(v) // 100 % 100, int(v) % 100))
        return x

    out = sliding_window(image, window, predictor, strides=strides, layout=layout, batch_size=4)
    expected = {(a, b, c) for a in window_starts(30, 8, 5, layout) for b in window_starts(21, 8, 6, layout)
                for c in window_starts(12, 8, 5, layout)}
    assert seen == expected
    assert len(seen) == count_windows(shape, window, strides)
    torch.testing.assert_close(out, image)


def test_official_protocol_keeps_the_flush_layout(monkeypatch) -> None:
    from CAMLSegmentationLib.inference import predictor as inference

    assert InferenceOptions.official().window_layout == "flush"
    assert InferenceOptions().window_layout == "even"
    layouts = []
    real = inference.window_starts

    def recording(size, window, stride, layout="even"):
        layouts.append(layout)
        return real(size, window, stride, layout)

    monkeypatch.setattr(inference, "window_starts", recording)
    model = inference_model(window=(16, 16, 16))
    volume = blob_volume((40, 24, 20))
    for options in (InferenceOptions(strides=(5, 5, 5)),
                    InferenceOptions.official().with_changes(strides=(5, 5, 5))):
        layouts.clear()
        info = segment_volume(volume, model, options).info
        assert info["window_layout"] == options.window_layout
        # (count_windows asks for the default layout; the count is the same in both.)
        assert options.window_layout in layouts and ("flush" in layouts) == (options.protocol == "official")
        assert info["windows"] == 6 * 3 * 2


def test_stitching_goes_to_the_gpu_only_when_it_fits() -> None:
    gpu, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert choose_stitch_device(cpu, 10) == cpu  # never asks CUDA about memory
    assert choose_stitch_device(gpu, 1 << 30, free_bytes=8 << 30) == gpu
    # A 576 x 576 x 88 image: output, weights and the final copy take 0.35 GB.
    assert choose_stitch_device(gpu, 3 * 4 * 576 * 576 * 88, free_bytes=512 << 20) == cpu


def test_gaussian_importance_peaks_in_the_centre() -> None:
    g = gaussian_importance((9, 7, 5))
    assert g.shape == (9, 7, 5)
    assert float(g[4, 3, 2]) == pytest.approx(1.0)
    assert float(g.min()) > 0
    assert torch.allclose(g, g.flip(0)) and torch.allclose(g, g.flip(2))
    assert float(g[0, 3, 2]) < float(g[2, 3, 2]) < float(g[4, 3, 2])


@pytest.mark.parametrize("blend", ["gaussian", "constant"])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.6])
def test_blending_reproduces_a_pointwise_predictor_exactly(blend: str, overlap: float) -> None:
    # A voxel-wise predictor gives the same value in every window, so any correct blending
    # (weights normalised per voxel, every voxel covered) must return it unchanged.
    image = torch.randn(1, 23, 19, 13)
    out = sliding_window(image, (8, 8, 8), lambda x: torch.cat([2 * x, x ** 2], 1),
                         overlap=overlap, blend=blend, batch_size=3)
    assert out.shape == (2, 23, 19, 13)
    torch.testing.assert_close(out[0], 2 * image[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[1], image[0] ** 2, rtol=1e-5, atol=1e-5)


def test_input_smaller_than_the_window_is_padded_and_cropped_back() -> None:
    image = torch.randn(1, 5, 16, 3)
    seen = []

    def predictor(x: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(x.shape))
        return x + 1

    out = sliding_window(image, (8, 8, 8), predictor, overlap=0.5)
    assert seen[0][2:] == (8, 8, 8)
    assert out.shape == image.shape
    torch.testing.assert_close(out, image + 1)


def test_window_covering_the_whole_volume_equals_one_forward_pass() -> None:
    raw = sub_models()["v"]
    fast = optimize_for_inference(copy.deepcopy(raw))
    image = torch.randn(1, 1, 32, 16, 16)
    with torch.inference_mode():
        expected = torch.softmax(raw(image), 1)[:, 1:]
        for blend in ("gaussian", "constant"):
            got = sliding_window(image[0], (32, 16, 16), make_predictor([fast]), blend=blend)
            torch.testing.assert_close(got[None], expected, rtol=1e-4, atol=1e-5)


def test_tta_is_exactly_invariant_to_the_flips_training_used() -> None:
    fast = optimize_for_inference(sub_models()["v"])
    predict = make_predictor([fast], flip_combinations(AUGMENTATION_FLIP_AXES))
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.inference_mode():
        a = predict(x)
        b = predict(x.flip(2, 3)).flip(2, 3)  # image axes i and j: x is [B, C, i, j, k], a is [B, N, i, j, k]
        plain = make_predictor([fast])(x)
        slice_flipped = predict(x.flip(4)).flip(4)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(a, plain, atol=1e-4)  # TTA really changes the prediction
    # The slice axis is not among the flips: a model never saw it mirrored, so TTA does not average it.
    assert not torch.allclose(a, slice_flipped, atol=1e-4)


def _official_test_single_case(net, image: np.ndarray, stride_xy: int, stride_z: int, patch) -> np.ndarray:
    """A port of the official CAML evaluation of one case (``utils/test_patch.py``,
    ``test_single_case_first_output``, as ``test_3d.py`` calls it): the stored image, zero-padded
    symmetrically to the patch where shorter, windows every stride with the last flush with the
    end, softmax summed and divided by the count, cropped back. Returns the averaged softmax."""
    size = image.shape
    pads = [max(0, p - n) for p, n in zip(patch, size)]
    before = [p // 2 for p in pads]
    padded = np.pad(image, [(b, p - b) for b, p in zip(before, pads)], mode="constant", constant_values=0)
    steps = (stride_xy, stride_xy, stride_z)
    counts = [math.ceil((n - p) / s) + 1 for n, p, s in zip(padded.shape, patch, steps)]
    score = np.zeros((2,) + padded.shape, dtype=np.float32)
    hits = np.zeros(padded.shape, dtype=np.float32)
    for x in range(counts[0]):
        xs = min(steps[0] * x, padded.shape[0] - patch[0])
        for y in range(counts[1]):
            ys = min(steps[1] * y, padded.shape[1] - patch[1])
            for z in range(counts[2]):
                zs = min(steps[2] * z, padded.shape[2] - patch[2])
                crop = padded[xs:xs + patch[0], ys:ys + patch[1], zs:zs + patch[2]]
                with torch.no_grad():
                    out = torch.softmax(net(torch.from_numpy(np.ascontiguousarray(crop))[None, None]), dim=1)
                score[:, xs:xs + patch[0], ys:ys + patch[1], zs:zs + patch[2]] += out[0].numpy()
                hits[xs:xs + patch[0], ys:ys + patch[1], zs:zs + patch[2]] += 1
    score /= hits[None]
    return score[:, before[0]:before[0] + size[0], before[1]:before[1] + size[1], before[2]:before[2] + size[2]]


def test_official_protocol_reproduces_the_official_evaluation_on_official_weights(tmp_path) -> None:
    """`--protocol official` on a plain state_dict (what the official code saves) gives the
    foreground probabilities of the official evaluation code on the same weights: the stored
    intensities (no normalisation), whole-image windows at strides 18/18/4, plain averaging."""
    from CAMLSegmentationLib.inference.predictor import load_inference_model

    weights = tiny_checkpoint(tmp_path / "iter_15000.pth", official=True, seed=3)
    raw = SubModel(tiny_network(seed=3).config, "v")
    raw.load_state_dict({k: v for k, v in tiny_network(seed=3).state_dict().items() if k in raw.state_dict()})
    raw.eval()
    # An LA-like crop: z-scored before cropping (so neither zero mean nor unit variance here), one
    # axis shorter than the window, and a slab at the image's minimum the default protocol would cut off.
    blob = blob_volume((121, 113, 78), seed=4)
    stored = (blob.array - 120.0) / 25.0
    stored[:3] = stored.min()
    volume = Volume(array=stored.astype(np.float32), spacing=(0.625,) * 3, origin=(0.0, 0.0, 0.0),
                    direction=np.eye(3))
    model = load_inference_model(weights, "cpu")
    ours = segment_volume(volume, model, InferenceOptions.for_protocol("official"))
    official = _official_test_single_case(raw, volume.array, 18, 4, (112, 112, 80))
    assert ours.info["windows"] == 2 * 2 * 1
    np.testing.assert_allclose(ours.probability, official[1], atol=1e-3)
    sure = np.abs(official[1] - 0.5) > 1e-3
    assert np.array_equal(ours.mask[sure], official.argmax(0)[sure].astype(np.uint8))


@pytest.mark.parametrize("geometry", ["axis_aligned", "oblique"])
def test_segment_volume_returns_a_mask_on_the_input_grid(geometry: str) -> None:
    volume = blob_volume(direction=GEOMETRIES[geometry])
    result = segment_volume(volume, inference_model(), InferenceOptions(overlap=0.5))
    assert result.mask.shape == volume.shape and result.mask.dtype == np.uint8
    assert set(np.unique(result.mask)) <= {0, 1}
    assert result.probability.shape == volume.shape
    assert 0.0 <= result.probability.min() and result.probability.max() <= 1.0
    np.testing.assert_array_equal(result.mask, (result.probability > 0.5).astype(np.uint8))
    assert result.uncertainty is None and result.info["models"] == ["v"]


def test_resampling_to_the_model_spacing_and_back() -> None:
    volume = blob_volume(shape=(40, 36, 24))  # spacing 0.8 x 0.8 x 1.5 mm
    model = inference_model(spacing=(1.6, 1.6, 1.5))
    result = segment_volume(volume, model)
    assert result.info["network_grid"] == [20, 18, 24]
    assert result.mask.shape == volume.shape and result.probability.shape == volume.shape
    plain = segment_volume(volume, model, InferenceOptions(resample=False))
    assert plain.info["network_grid"] == [40, 36, 24]


def test_ensemble_and_uncertainty_come_from_v_and_a() -> None:
    volume = blob_volume()
    model = inference_model()
    v_only = segment_volume(volume, model)
    both = segment_volume(volume, model, InferenceOptions(ensemble=True, uncertainty=True))
    assert both.info["models"] == ["v", "a"]
    # probability = (pV + pA) / 2 and uncertainty = |pV - pA|, so |pV - probability| = uncertainty / 2.
    np.testing.assert_allclose(np.abs(v_only.probability - both.probability), both.uncertainty / 2, atol=1e-5)
    assert both.uncertainty.max() > 0.0


def test_uncertainty_needs_model_a() -> None:
    model = inference_model()
    del model.networks["a"]
    with pytest.raises(ValueError, match="model A"):
        segment_volume(blob_volume(), model, InferenceOptions(uncertainty=True))


def test_largest_component_keeps_the_biggest_blob() -> None:
    mask = np.zeros((20, 20, 20), np.uint8)
    mask[2:5, 2:5, 2:5] = 1  # 27 voxels
    mask[10:16, 10:16, 10:16] = 1  # 216 voxels
    mask[18, 0, 0] = 1
    kept = largest_component(mask)
    assert int(kept.sum()) == 216 and kept[12, 12, 12] == 1 and kept[3, 3, 3] == 0


def test_the_model_decides_the_largest_component_unless_the_user_does() -> None:
    volume = blob_volume()
    model = inference_model()
    probe = segment_volume(volume, model, InferenceOptions(lcc=False))
    # A threshold that leaves the random tiny model's mask in several pieces.
    threshold = float(np.quantile(probe.probability, 0.8))
    pieces = segment_volume(volume, model, InferenceOptions(lcc=False, threshold=threshold)).mask
    assert ndimage.label(pieces)[1] > 1
    assert not model.settings.largest_component  # the default: every component kept
    np.testing.assert_array_equal(segment_volume(volume, model, InferenceOptions(threshold=threshold)).mask, pieces)

    chosen = replace(model, settings=replace(model.settings, largest_component=True))
    by_model = segment_volume(volume, chosen, InferenceOptions(threshold=threshold))
    assert by_model.info["lcc"] is True
    np.testing.assert_array_equal(by_model.mask, largest_component(pieces))
    overridden = segment_volume(volume, chosen, InferenceOptions(threshold=threshold, lcc=False))
    assert overridden.info["lcc"] is False
    np.testing.assert_array_equal(overridden.mask, pieces)
    # The official protocol never post-processes, whatever the model chose.
    assert InferenceOptions.official().lcc is False


def test_settings_round_trip_and_older_files_keep_every_component() -> None:
    settings = InferenceSettings(window=(16, 16, 8), spacing=(1.25, 1.25, 1.25), normalization="percentile",
                                 largest_component=True)
    assert InferenceSettings.from_dict(settings.to_dict()) == settings
    older = {k: v for k, v in settings.to_dict().items() if k != "largest_component"}
    assert InferenceSettings.from_dict(older).largest_component is False


def test_cancel_stops_within_one_batch_of_windows() -> None:
    token = CancelToken()
    calls = []

    def predictor(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        return x

    def progress(event) -> None:
        if event.done >= 1:
            token.cancel()

    with pytest.raises(Cancelled):
        sliding_window(torch.randn(1, 40, 40, 40), (8, 8, 8), predictor, overlap=0.5, batch_size=1,
                       progress=progress, cancel=token)
    assert len(calls) == 1


def test_bad_volumes_are_refused_before_any_work() -> None:
    model = inference_model()
    with pytest.raises(ImageError, match="NaN or Inf"):
        segment_volume(Volume(np.full((8, 8, 8), np.nan, np.float32)), model)
    with pytest.raises(ImageError, match="constant"):
        segment_volume(Volume(np.ones((8, 8, 8), np.float32)), model)


def test_checkpoint_preset_gives_window_and_spacing(tmp_path) -> None:
    path = tiny_checkpoint(tmp_path / "m.pt", window=(32, 16, 16), spacing=(1.0, 1.0, 2.0))
    model = load_inference_model(path, "cpu", with_a=True)
    assert model.window == (32, 16, 16) and model.spacing == (1.0, 1.0, 2.0)
    assert set(model.networks) == {"v", "a"}
    official = load_inference_model(tiny_checkpoint(tmp_path / "iter_15000.pth", official=True), "cpu")
    assert official.window == (112, 112, 80) and official.spacing is None


def test_the_intensity_scale_of_the_file_does_not_change_the_result() -> None:
    """Every volume is normalised from its own voxels: a scanner's (or the LA release's) scale is gone."""
    raw = blob_volume()
    model = inference_model()
    rescaled = Volume(array=(raw.array * 0.013 - 1.7).astype(np.float32), spacing=raw.spacing)
    np.testing.assert_allclose(segment_volume(raw, model).probability,
                               segment_volume(rescaled, model).probability, atol=1e-4)


def test_largest_component_labels_like_scipy() -> None:
    """26-connectivity and raster-order ties, as ``scipy.ndimage.label`` gave before SimpleITK replaced it."""
    def by_scipy(mask: np.ndarray) -> np.ndarray:
        labels, count = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
        if count <= 1:
            return mask
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        return (labels == int(sizes.argmax())).astype(mask.dtype)

    rng = np.random.default_rng(3)
    for n in range(40):
        shape = tuple(int(s) for s in rng.integers(1, 30, 3))
        if n % 4 == 0:  # scattered voxels: many components of one voxel, ties everywhere
            mask = (rng.random(shape) > 0.8).astype(np.uint8)
        else:
            mask = (ndimage.gaussian_filter(rng.normal(size=shape), 1.0) > rng.uniform(0.0, 0.3)).astype(np.uint8)
        np.testing.assert_array_equal(largest_component(mask), by_scipy(mask), err_msg=f"mask {n}, shape {shape}")
    corners = np.zeros((4, 4, 4), np.uint8)
    corners[0, 0, 0] = corners[3, 3, 3] = 1  # a tie: the component met first in raster order stays
    assert np.argwhere(largest_component(corners)).tolist() == [[0, 0, 0]]
    diagonal = np.zeros((3, 3, 3), np.uint8)
    diagonal[0, 0, 0] = diagonal[1, 1, 1] = diagonal[2, 2, 2] = 1  # touching only by corners: one component
    assert int(largest_component(diagonal).sum()) == 3


def test_the_antialias_filter_is_scipys_gaussian() -> None:
    from CAMLSegmentationLib.inference.preprocess import gaussian_filter_nearest

    array = np.random.default_rng(4).normal(size=(2, 23, 17, 11)).astype(np.float32) * 100
    for sigma in (0.4, 0.7, 1.2, 3.0):
        radius = max(1, math.ceil(3 * sigma))
        for axis in (1, 2, 3):
            ours = gaussian_filter_nearest(array, sigma, axis)
            theirs = ndimage.gaussian_filter1d(array, sigma, axis=axis, mode="nearest", truncate=radius / sigma)
            assert ours.dtype == np.float32 and ours.shape == array.shape
            np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4)


def test_caml_segment_does_not_import_scipy(tmp_path) -> None:
    """scipy.ndimage costs a ``caml segment`` process about 0.13 s of imports; the antialiasing filter
    (image finer than the model's voxels) and the largest component run without it."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from CAMLSegmentationLib.io.volume import read_image, write_image

    volume = replace(blob_volume((40, 36, 24)), spacing=(0.5, 0.5, 0.5))  # 2.5x finer than the model
    src = write_image(volume.array, volume, tmp_path / "mri.nrrd")
    weights = tiny_checkpoint(tmp_path / "tiny.pt", window=(16, 16, 16), spacing=(1.25, 1.25, 1.25))
    script = ("import json, sys\nsys.modules['scipy'] = None\nfrom CAMLSegmentationLib import cli\n"
              "code = cli.main(sys.argv[1:])\n"
              "print(json.dumps({'code': code, 'scipy': [m for m, v in sys.modules.items() "
              "if m.startswith('scipy') and v is not None]}))\n")
    package = Path(__file__).resolve().parents[2] / "CAMLSegmentation"
    done = subprocess.run([sys.executable, "-c", script, "segment", str(src), str(tmp_path / "out.nrrd"),
                           "--weights", str(weights), "--lcc", "--backend", "torch", "--progress", "none"],
                          capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONPATH=str(package), OMP_NUM_THREADS="1",
                                   CAML_HOME=str(tmp_path / "home")))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"code": 0, "scipy": []}
    here = segment_volume(volume, load_inference_model(weights, "cpu"), InferenceOptions(lcc=True))
    np.testing.assert_array_equal(read_image(tmp_path / "out.nrrd").array, here.mask)
