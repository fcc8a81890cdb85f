"""The demo (`make demo`): runs end to end on a fresh machine and says what it did."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from CAMLSegmentationLib.cli import demo
from CAMLSegmentationLib.io.snapshot import decode_png, snapshot_shape
from CAMLSegmentationLib.io.volume import read_image
from CAMLSegmentationLib.model.catalog import register_model
from inference_helpers import one_thread, tiny_checkpoint

_threads = pytest.fixture(autouse=True)(one_thread)


@pytest.fixture(autouse=True)
def own_caml_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CAML_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def fresh_clone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No LA data beside the repository, as on a fresh clone."""
    monkeypatch.delenv("CAML_LA_ROOT", raising=False)
    monkeypatch.setattr(demo, "DEFAULT_LA_ROOT", tmp_path / "no-LA-here")


@pytest.mark.slow
def test_demo_without_data_or_model_still_runs(tmp_path: Path, capsys: pytest.CaptureFixture,
                                               no_bundled_models: Path, fresh_clone: None) -> None:
    out = tmp_path / "demo-output"
    assert demo.main(["--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "SYNTHETIC" in text and "no LA data at" in text and "RANDOMLY INITIALISED" in text
    assert "Dice against the phantom's own atrium" in text
    image = read_image(out / "synthetic_mri.nrrd")
    for name in ("synthetic_mri_left_atrium.seg.nrrd", "synthetic_mri_uncertainty.nrrd",
                 "synthetic_mri_reference.nrrd"):
        assert image.same_geometry(read_image(out / name)), name
    for name in ("synthetic_mri_left_atrium.seg.nrrd", "synthetic_mri_uncertainty.nrrd",
                 "synthetic_mri_snapshot.png"):
        assert str(out / name) in text
    assert decode_png((out / "synthetic_mri_snapshot.png").read_bytes()).shape == snapshot_shape()


def test_demo_uses_the_catalog_default_model(tmp_path: Path, own_caml_home: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    register_model(tiny_checkpoint(tmp_path / "w.pt", window=(32, 32, 32)), "tiny-demo", default=True)
    image = demo.synthetic_image(tmp_path / "mine.nii.gz", shape=(40, 36, 30))
    out = tmp_path / "o"
    assert demo.main([str(image), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "model: tiny-demo" in text and "RANDOMLY" not in text and "Dice" not in text
    assert read_image(image).same_geometry(read_image(out / "mine_left_atrium.seg.nrrd"))
    assert (out / "mine_snapshot.png").is_file()


def test_phantom_is_deterministic_and_mri_like() -> None:
    from CAMLSegmentationLib.io.phantom import mri_phantom

    volume, label = mri_phantom(shape=(72, 64, 40), seed=1)
    again, _ = mri_phantom(shape=(72, 64, 40), seed=1)
    np.testing.assert_array_equal(volume.array, again.array)
    assert volume.shape == label.shape == (72, 64, 40)
    assert 0.02 < label.mean() < 0.3  # an atrium-sized structure
    inside, outside = volume.array[label > 0], volume.array[label == 0]
    assert inside.mean() > outside.mean() + outside.std()  # a bright blood pool
    assert (volume.array > 0).all()  # a magnitude image
    assert outside.std() > 0.2 * outside.mean()  # textured, not flat


@pytest.mark.slow
@pytest.mark.la_data
def test_demo_on_an_la_case_scores_like_caml_evaluate(la_root: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    """The demo's Dice (its NRRD copy through `caml segment`) against `caml evaluate` on the stored case."""
    import json

    from CAMLSegmentationLib import cli

    out = tmp_path / "demo"
    assert demo.main(["--out", str(out), "--la-root", str(la_root)]) == 0
    text = capsys.readouterr().out
    case_id = demo.la_demo_case(la_root)
    assert f"LA case {case_id}" in text and "SYNTHETIC" not in text
    shown = float(re.search(r"Dice against the case's reference label: ([0-9.]+) %", text).group(1))
    # Nothing of the data lands outside the output folder.
    assert {p.name for p in out.iterdir()} >= {f"{case_id}.nrrd", f"{case_id}_reference.nrrd",
                                               f"{case_id}_snapshot.png"}
    assert cli.main(["evaluate", "--data", str(la_root), "--list", str(out / "demo_case.list"),
                     "--out", str(tmp_path / "ev"), "--progress", "none"]) == 0
    evaluated = json.loads((tmp_path / "ev" / "metrics.json").read_text())["cases"][0]["dice"] * 100
    # The NRRD copy and the stored .h5 go through one normalisation: the same voxels, the same Dice.
    assert abs(shown - evaluated) <= 0.5, (shown, evaluated)
