"""The left-atrium model shipped in Resources/Models: intact, usable offline, and as good as its card says."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from CAMLSegmentationLib import cli
from CAMLSegmentationLib.cli.demo import synthetic_image
from CAMLSegmentationLib.io.volume import read_image
from CAMLSegmentationLib.model.catalog import bundled_catalog_path, default_model, read_catalog, sha256_file
from CAMLSegmentationLib.model.checkpoint import read_checkpoint
from inference_helpers import one_thread

_threads = pytest.fixture(autouse=True)(one_thread)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def own_caml_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No user catalog: what a fresh installation sees."""
    monkeypatch.setenv("CAML_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


BUNDLED_IDS = [e.id for e in read_catalog(bundled_catalog_path(), "bundled")]


@pytest.fixture(scope="module")
def shipped():
    """The bundled default: what `caml segment`, the panel and `make demo` use when no model is named."""
    entries = read_catalog(bundled_catalog_path(), "bundled")
    defaults = [e for e in entries if e.default]
    assert len(defaults) == 1, f"{bundled_catalog_path()} must mark exactly one bundled model as default"
    return defaults[0]


@pytest.fixture(params=BUNDLED_IDS)
def bundled(request):
    """Each bundled model in turn: every one must hold to its own card, default or not."""
    return next(e for e in read_catalog(bundled_catalog_path(), "bundled") if e.id == request.param)


def test_bundled_models_together_keep_the_repository_lean() -> None:
    """The weights files together well under 30 MB (issue #24), with their ONNX exports under 50 MB."""
    entries = read_catalog(bundled_catalog_path(), "bundled")
    weights = [e.path for e in entries]
    exports = [Path(e.catalog).parent / x["file"] for e in entries for x in e.onnx.values()]
    assert sum(f.stat().st_size for f in weights) < 25 * 2**20, [f.name for f in weights]
    assert sum(f.stat().st_size for f in weights + exports) < 50 * 2**20


def test_shipped_file_matches_its_catalog_entry(bundled) -> None:
    shipped = bundled
    assert shipped.path.is_file(), shipped.path
    assert sha256_file(shipped.path) == shipped.sha256
    assert shipped.path.stat().st_size < 30 * 2**20  # the repository stays lean
    ckpt = read_checkpoint(shipped.path)
    assert ckpt["sub_models"] == ["v", "a"]  # V for the mask, A as well for the uncertainty map
    # How to run it travels with the weights: the training's window, voxel size, the one
    # normalisation every input gets, and only the flips the augmentation used.
    settings = ckpt["inference"]
    assert settings["window"] == list(ckpt["preset"]["patch_size"])
    assert settings["spacing"] == list(ckpt["preset"]["spacing"])
    assert settings["normalization"] == "percentile" and settings["flip_axes"] == [0, 1]
    assert ckpt["trained"]["supervised_only"] is False
    # The card's validation cases never entered training as labeled data.
    assert not set(shipped.metrics["per_case_dice"]) & set(ckpt["trained"]["split"]["labeled"])
    for key in ("dice", "jaccard", "hd95_voxels", "asd_voxels", "on", "seconds_per_case"):
        assert key in shipped.metrics, key
    assert shipped.training and shipped.training_data
    card = (REPO / "Resources" / "Models" / "README.md").read_text()
    assert shipped.id in card and f"{shipped.metrics['dice']:.2f}" in card


def test_caml_segment_without_a_model_uses_the_shipped_one(tmp_path: Path, shipped,
                                                           capsys: pytest.CaptureFixture) -> None:
    assert default_model() == shipped
    image = synthetic_image(tmp_path / "mri.nrrd", shape=(96, 80, 56))
    mask, uncertainty = tmp_path / "mask.seg.nrrd", tmp_path / "u.nrrd"
    assert cli.main(["segment", str(image), str(mask), "--uncertainty", str(uncertainty),
                     "--progress", "json"]) == 0
    done = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert done["event"] == "done" and done["info"]["model"].startswith(shipped.id)
    source = read_image(image)
    for path in (mask, uncertainty):
        assert source.same_geometry(read_image(path)), path
    labels = read_image(mask).array
    assert set(np.unique(labels)) <= {0, 1}
    u = read_image(uncertainty).array
    assert np.isfinite(u).all() and u.min() >= 0.0 and u.max() <= 1.0


def test_shipped_model_reproduces_its_card_on_two_validation_cases(la_root: Path, tmp_path: Path,
                                                                    bundled) -> None:
    card = bundled.metrics["per_case_dice"]
    cases = sorted(card)[:2]
    case_list = tmp_path / "two.list"
    case_list.write_text("\n".join(cases) + "\n")
    out = tmp_path / "eval"
    assert cli.main(["evaluate", "--data", str(la_root), "--list", str(case_list), "--out", str(out),
                     "--model", bundled.id, "--progress", "none"]) == 0
    report = json.loads((out / "metrics.json").read_text())
    for row in report["cases"]:
        assert abs(100.0 * row["dice"] - card[row["case"]]) <= 0.5, (row["case"], row["dice"], card[row["case"]])
