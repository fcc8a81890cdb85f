"""ONNX Runtime backend: exports of V and A, parity with torch, `caml segment --backend`, and no torch at all.

Tolerance stated and checked here: foreground probabilities within 1e-4 of
torch's (measured: 3e-8 for V and 2e-6 for A of the bundled model on random
windows; see the report in the commit), masks identical on generated data and
on LA cases except voxels whose torch probability lies within 1e-4 of the
threshold.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import pytest
import torch
from CAMLSegmentationLib import cli
from CAMLSegmentationLib.inference.onnx_runtime import (
    OnnxModel,
    OnnxModelError,
    choose_backend,
    flip_averaged,
    load_onnx_model,
    read_export_metadata,
)
from CAMLSegmentationLib.inference.predictor import (
    InferenceOptions,
    flip_combinations,
    load_inference_model,
    make_predictor,
    segment_volume,
)
from CAMLSegmentationLib.io.volume import read_image, read_volume, write_image
from CAMLSegmentationLib.model.catalog import (
    CatalogError,
    bundled_catalog_path,
    default_model,
    read_catalog,
    register_model,
    sha256_file,
    verify_onnx,
)
from CAMLSegmentationLib.model.onnx_export import export_release
from inference_helpers import blob_volume, one_thread, tiny_checkpoint

pytest.importorskip("onnxruntime", reason="the ONNX backend needs onnxruntime (pip install onnxruntime)")
pytest.importorskip("onnx", reason="exporting needs the onnx package")

_threads = pytest.fixture(autouse=True)(one_thread)

PACKAGE_PARENT = Path(__file__).resolve().parents[2] / "CAMLSegmentation"
#: Largest difference allowed between ONNX Runtime's and torch's foreground probability.
PROBABILITY_TOLERANCE = 1e-4
WINDOW = (16, 16, 16)


@pytest.fixture(autouse=True)
def own_caml_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CAML_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture(scope="module")
def tiny_exports(tmp_path_factory: pytest.TempPathFactory) -> Tuple[Path, Dict[str, Path]]:
    """A small checkpoint with non-trivial BatchNorm statistics and its exports of V and A."""
    folder = tmp_path_factory.mktemp("tiny-onnx")
    weights = tiny_checkpoint(folder / "tiny.pt", window=WINDOW, spacing=(1.0, 1.0, 1.5))
    return weights, export_release(weights)


def _agree(torch_result, onnx_result) -> None:
    """Probabilities within the tolerance; masks equal except where torch sits on the threshold."""
    diff = np.abs(torch_result.probability - onnx_result.probability)
    assert float(diff.max()) <= PROBABILITY_TOLERANCE, float(diff.max())
    threshold = torch_result.info["threshold"]
    undecided = np.abs(torch_result.probability - threshold) <= PROBABILITY_TOLERANCE
    assert np.array_equal(torch_result.mask[~undecided], onnx_result.mask[~undecided])


def test_export_carries_the_settings_and_the_weights_checksum(tiny_exports) -> None:
    weights, exports = tiny_exports
    assert sorted(exports) == ["a", "v"]
    assert exports["v"].name == "tiny.v.onnx" and exports["a"].name == "tiny.a.onnx"
    meta = read_export_metadata(exports["a"])
    assert meta["caml.sub_model"] == "a" and meta["caml.weights_sha256"] == sha256_file(weights)
    torch_model = load_inference_model(weights, "cpu")
    onnx_model = load_onnx_model(exports, with_a=True)
    assert isinstance(onnx_model, OnnxModel) and onnx_model.settings == torch_model.settings
    with pytest.raises(OnnxModelError, match="not this project's export of sub-model V"):
        load_onnx_model({"v": exports["a"]})


@pytest.mark.parametrize("flips", [((),), ((), (0,), (1,), (0, 1))])
def test_windows_through_onnx_runtime_match_torch(tiny_exports, flips) -> None:
    weights, exports = tiny_exports
    torch_model = load_inference_model(weights, "cpu", with_a=True)
    onnx_model = load_onnx_model(exports, with_a=True)
    batch = np.random.default_rng(1).normal(size=(3, 1) + WINDOW).astype(np.float32)
    with torch.inference_mode():
        expected = make_predictor([torch_model.networks["v"], torch_model.networks["a"]],
                                  list(flips))(torch.from_numpy(batch)).numpy()
    got = flip_averaged([onnx_model.networks["v"], onnx_model.networks["a"]], list(flips))(batch)
    assert got.shape == expected.shape == (3, 2) + WINDOW
    assert float(np.abs(got - expected).max()) <= PROBABILITY_TOLERANCE


@pytest.mark.parametrize("protocol", ["default", "fast", "official"])
def test_segment_volume_is_the_same_with_either_backend(tiny_exports, protocol: str) -> None:
    weights, exports = tiny_exports
    options = InferenceOptions.for_protocol(protocol)
    if protocol != "official":
        options = options.with_changes(uncertainty=True)
    volume = blob_volume((40, 30, 22))
    by_torch = segment_volume(volume, load_inference_model(weights, "cpu", with_a=True), options)
    by_onnx = segment_volume(volume, load_onnx_model(exports, with_a=True), options)
    _agree(by_torch, by_onnx)
    if protocol != "official":
        assert float(np.abs(by_torch.uncertainty - by_onnx.uncertainty).max()) <= 2 * PROBABILITY_TOLERANCE
    assert by_onnx.info["windows"] == by_torch.info["windows"] and by_onnx.info["flips"] == by_torch.info["flips"]
    assert by_onnx.info["device"] == "cpu (onnxruntime)"


def _one_pass_per_flip(net, flips):
    """The predictor before flips were batched: one forward pass per mirror image."""

    def predict(x):
        probs = None
        for axes in flips:
            xin = x.flip([a + 2 for a in axes]) if axes else x
            p = torch.softmax(net(xin).float(), dim=1)[:, 1]
            p = p.flip([a + 1 for a in axes]) if axes else p
            probs = p if probs is None else probs + p
        return (probs / len(flips))[:, None]

    return predict


def test_flips_in_one_batch_give_what_one_pass_per_flip_gave(tiny_exports) -> None:
    """Item 4 of #26: batching the test-time flips changes nothing but rounding, nor the mask."""
    weights, _ = tiny_exports
    model = load_inference_model(weights, "cpu")
    flips = flip_combinations(model.settings.flip_axes)
    assert len(flips) == 4
    batch = torch.from_numpy(np.random.default_rng(2).normal(size=(2, 1) + WINDOW).astype(np.float32))
    with torch.inference_mode():
        batched = make_predictor([model.networks["v"]], flips)(batch)
        separate = _one_pass_per_flip(model.networks["v"], flips)(batch)
    assert float((batched - separate).abs().max()) <= 1e-5
    volume = blob_volume((40, 30, 22), seed=3)
    result = segment_volume(volume, model)
    original = model.run_windows

    def unbatched(image, order, flips, **options):
        from CAMLSegmentationLib.inference.predictor import sliding_window

        with torch.inference_mode():
            return sliding_window(torch.from_numpy(image), model.window,
                                  _one_pass_per_flip(model.networks["v"], flips), **options).numpy()

    model.run_windows = unbatched  # the same job with the former predictor
    try:
        before = segment_volume(volume, model)
    finally:
        model.run_windows = original
    assert float(np.abs(result.probability - before.probability).max()) <= 1e-5
    undecided = np.abs(before.probability - 0.5) <= 1e-5
    assert np.array_equal(result.mask[~undecided], before.mask[~undecided])


def test_choose_backend() -> None:
    assert choose_backend("torch", True, "cpu") == "torch"
    assert choose_backend("auto", True, "cpu") == "onnx"
    assert choose_backend("auto", False, "cpu") == "torch"
    assert choose_backend("auto", True, "cpu", with_a_export=False) == "torch"
    assert choose_backend("auto", True, "cuda") == "torch"
    assert choose_backend("onnx", True, "auto") == "onnx"
    with pytest.raises(OnnxModelError, match="no ONNX export"):
        choose_backend("onnx", False, "cpu")
    with pytest.raises(OnnxModelError, match="CPU only"):
        choose_backend("onnx", True, "cuda")


def _register_tiny(tmp_path: Path) -> str:
    weights = tiny_checkpoint(tmp_path / "best.pt", window=WINDOW, spacing=(1.0, 1.0, 1.5))
    entry = register_model(weights, "tiny-onnx", version="1", onnx=True)
    assert sorted(entry.onnx) == ["a", "v"]
    for which, path in entry.onnx_paths().items():
        assert path.name == f"tiny-onnx@1.{which}.onnx" and sha256_file(path) == entry.onnx[which]["sha256"]
    (listed,) = read_catalog(entry.catalog, "user")
    assert listed.onnx == entry.onnx
    return entry.id


def test_caml_segment_backend_onnx_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model_id = _register_tiny(tmp_path)
    volume = blob_volume((40, 30, 22))
    src = write_image(volume.array, volume, tmp_path / "mri.nrrd")
    masks = {}
    for backend in ("onnx", "torch", "auto"):
        out, u = tmp_path / f"{backend}.seg.nrrd", tmp_path / f"{backend}-u.nrrd"
        assert cli.main(["segment", str(src), str(out), "--model", model_id, "--backend", backend,
                         "--device", "cpu", "--uncertainty", str(u), "--progress", "json"]) == 0
        done = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert done["event"] == "done"
        assert ("onnxruntime" in done["info"]["device"]) == (backend != "torch"), done["info"]["device"]
        masks[backend] = read_image(out).array
        assert read_image(u).same_geometry(read_volume(src))
    assert masks["onnx"].any() or masks["torch"].any()
    assert np.array_equal(masks["onnx"], masks["torch"]) and np.array_equal(masks["auto"], masks["onnx"])


def test_a_damaged_export_or_a_checkpoint_with_backend_onnx_is_a_one_line_error(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model_id = _register_tiny(tmp_path)
    volume = blob_volume((24, 20, 16))
    src = write_image(volume.array, volume, tmp_path / "mri.nrrd")
    from CAMLSegmentationLib.model.catalog import find_model

    entry = find_model(model_id)
    with entry.onnx_paths()["v"].open("ab") as f:
        f.write(b"x")
    with pytest.raises(CatalogError, match="checksum mismatch for the ONNX export"):
        verify_onnx(entry)
    assert cli.main(["segment", str(src), str(tmp_path / "a.seg.nrrd"), "--model", model_id,
                     "--backend", "onnx", "--progress", "none"]) != 0
    assert "checksum mismatch" in capsys.readouterr().err
    weights = tiny_checkpoint(tmp_path / "plain.pt", window=WINDOW)
    assert cli.main(["segment", str(src), str(tmp_path / "b.seg.nrrd"), "--weights", str(weights),
                     "--backend", "onnx", "--progress", "none"]) != 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "no ONNX export" in err[0]
    assert not (tmp_path / "a.seg.nrrd").exists() and not (tmp_path / "b.seg.nrrd").exists()


#: Runs `caml ARGS` in a Python where `import torch` fails, as in a Slicer without the PyTorch extension.
WITHOUT_TORCH = """
import json, sys
sys.modules["torch"] = None  # any `import torch` now raises ImportError
from CAMLSegmentationLib import cli
code = cli.main(sys.argv[1:])
print(json.dumps({"code": code, "torch_loaded": any(m == "torch" or m.startswith("torch.")
                                                    for m, v in sys.modules.items() if v is not None)}))
"""


def _caml_without_torch(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(PACKAGE_PARENT), OMP_NUM_THREADS="1", CAML_HOME=str(home))
    return subprocess.run([sys.executable, "-c", WITHOUT_TORCH, *args], capture_output=True, text=True,
                          env=env, timeout=600)


def test_caml_segment_runs_without_torch(tmp_path: Path, tiny_exports) -> None:
    """The bundled model (auto picks its export) and an export named with --weights, torch unimportable."""
    _, exports = tiny_exports
    volume = blob_volume((40, 30, 22))
    src = write_image(volume.array, volume, tmp_path / "mri.nrrd")
    home = tmp_path / "home"
    done = _caml_without_torch(home, "segment", str(src), str(tmp_path / "bundled.seg.nrrd"),
                               "--uncertainty", str(tmp_path / "u.nrrd"), "--progress", "none",
                               "--protocol", "fast")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"code": 0, "torch_loaded": False}
    assert "onnxruntime" in done.stdout
    assert (tmp_path / "bundled.seg.nrrd").is_file() and (tmp_path / "u.nrrd").is_file()
    done = _caml_without_torch(home, "segment", str(src), str(tmp_path / "tiny.seg.nrrd"),
                               "--weights", str(exports["v"]), "--backend", "onnx", "--progress", "none")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"code": 0, "torch_loaded": False}
    with_torch = segment_volume(volume, load_inference_model(tiny_exports[0], "cpu"))
    assert np.array_equal(read_image(tmp_path / "tiny.seg.nrrd").array, with_torch.mask)
    # A model without an export cannot run there: one line naming what is missing.
    done = _caml_without_torch(home, "segment", str(src), "--weights", str(tiny_exports[0]),
                               "--progress", "none")
    assert json.loads(done.stdout.strip().splitlines()[-1])["code"] != 0
    assert len([line for line in done.stderr.splitlines() if line.strip()]) == 1, done.stderr


def test_the_bundled_model_ships_checked_exports() -> None:
    (shipped,) = [e for e in read_catalog(bundled_catalog_path(), "bundled") if e.default]
    assert shipped == default_model()
    paths = verify_onnx(shipped, ("v", "a"))
    for which, path in paths.items():
        meta = read_export_metadata(path)
        assert meta["caml.sub_model"] == which and meta["caml.weights_sha256"] == shipped.sha256
        assert path.stat().st_size < 8 * 2**20  # float16 weights: the repository stays lean


def test_bundled_model_parity_on_la_cases(la_root: Path) -> None:
    """The shipped model through torch and ONNX Runtime on two validation cases, the default protocol."""
    shipped = default_model()
    torch_model = load_inference_model(shipped.path, "cpu", with_a=False)
    onnx_model = load_onnx_model(verify_onnx(shipped))
    for case in sorted(shipped.metrics["per_case_dice"])[:2]:
        volume = read_volume(la_root / "2018LA_Seg_Training Set" / case / "mri_norm2.h5")
        by_torch = segment_volume(volume, torch_model)
        by_onnx = segment_volume(volume, onnx_model)
        _agree(by_torch, by_onnx)
        assert by_torch.mask.sum() > 1000, case
