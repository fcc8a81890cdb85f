"""The demo (`make demo`): runs end to end on a fresh machine and says what it did."""

from __future__ import annotations

from pathlib import Path

import pytest
from CAMLSegmentationLib import demo
from CAMLSegmentationLib.catalog import register_model
from CAMLSegmentationLib.volume import read_image
from inference_helpers import one_thread, tiny_checkpoint

_threads = pytest.fixture(autouse=True)(one_thread)


@pytest.fixture(autouse=True)
def own_caml_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CAML_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_demo_without_image_or_model_still_runs(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                no_bundled_models: Path) -> None:
    out = tmp_path / "demo-output"
    assert demo.main(["--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "generated a synthetic" in text and "RANDOMLY INITIALISED" in text
    image = read_image(out / "synthetic_mri.nrrd")
    for name in ("synthetic_mri_left_atrium.seg.nrrd", "synthetic_mri_uncertainty.nrrd"):
        assert image.same_geometry(read_image(out / name)), name
        assert str(out / name) in text


def test_demo_uses_the_catalog_default_model(tmp_path: Path, own_caml_home: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    register_model(tiny_checkpoint(tmp_path / "w.pt", window=(32, 32, 32)), "tiny-demo", default=True)
    image = demo.synthetic_image(tmp_path / "mine.nii.gz", shape=(40, 36, 30))
    out = tmp_path / "o"
    assert demo.main([str(image), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "model: tiny-demo" in text and "RANDOMLY" not in text
    assert read_image(image).same_geometry(read_image(out / "mine_left_atrium.seg.nrrd"))
