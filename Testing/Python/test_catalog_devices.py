"""Model catalog (bundled schema, user registration, checksums) and device choice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from CAMLSegmentationLib.devices import DeviceError, resolve_device
from CAMLSegmentationLib.model.catalog import (
    CatalogError,
    ModelEntry,
    bundled_catalog_path,
    default_model,
    find_model,
    load_catalog,
    metrics_from_evaluation,
    read_catalog,
    register_model,
    sha256_file,
    verify,
)
from CAMLSegmentationLib.model.checkpoint import read_checkpoint
from inference_helpers import tiny_checkpoint


def test_bundled_catalog_is_valid_and_documents_its_schema() -> None:
    path = bundled_catalog_path()
    assert path.is_file(), path
    data = json.loads(path.read_text())
    for key in ("id", "version", "file", "sha256", "preset", "training_data", "metrics"):
        assert key in data["_schema"]
    for entry in read_catalog(path):  # every bundled model must be usable
        assert verify(entry) == entry.path


def test_register_into_the_bundled_catalog_by_a_relative_path(tmp_path: Path, monkeypatch) -> None:
    """How a release is added to Resources/Models: the bundled catalog named relative to the working
    folder is still the bundled catalog, not a second one that 'defines' its ids again."""
    from CAMLSegmentationLib.model import catalog as catalog_mod

    bundled = tmp_path / "Resources" / "Models" / "models.json"
    first = register_model(tiny_checkpoint(tmp_path / "a.pt", window=(32, 32, 16)), "first", catalog_path=bundled,
                           onnx=False)
    monkeypatch.setattr(catalog_mod, "bundled_catalog_path", lambda: bundled)
    monkeypatch.chdir(tmp_path)
    second = register_model(tiny_checkpoint(tmp_path / "b.pt", window=(32, 32, 16)), "second",
                            catalog_path=Path("Resources/Models/models.json"), onnx=False, title="the second")
    assert [e.id for e in read_catalog(bundled)] == [first.id, second.id]
    assert read_catalog(bundled)[1].title == "the second"
    with pytest.raises(CatalogError, match="already in the catalog"):
        register_model(tmp_path / "b.pt", "first", catalog_path=Path("Resources/Models/models.json"), onnx=False)


def test_register_reads_preset_and_verifies_checksum(tmp_path: Path) -> None:
    weights = tiny_checkpoint(tmp_path / "best.pt", window=(32, 32, 16), spacing=(1.25, 1.25, 1.25))
    catalog = tmp_path / "home" / "models" / "models.json"
    entry = register_model(weights, "la-tiny", version="3", catalog_path=catalog, metrics={"dice": 0.5},
                           training="60 iterations on a test machine", half=True)
    assert entry.path == catalog.parent / "la-tiny@3.pt" and entry.path.is_file()
    assert entry.sha256 == sha256_file(entry.path)
    stored = read_checkpoint(entry.path)  # the compact release form, not a copy of the training file
    assert stored["dtype"] == "float16" and stored["sub_models"] == ["v", "a"]
    loaded = read_catalog(catalog, "user")
    assert len(loaded) == 1
    e = loaded[0]
    assert (e.id, e.version, e.preset) == ("la-tiny", "3", "tiny")
    # Window and voxel size travel inside the stored weights; the entry has no copy to drift.
    assert not hasattr(e, "window") and not hasattr(e, "spacing")
    assert stored["inference"]["window"] == [32, 32, 16] and stored["inference"]["spacing"] == [1.25] * 3
    assert e.metrics == {"dice": 0.5} and e.training == "60 iterations on a test machine"
    assert verify(e) == e.path
    assert find_model("la-tiny", loaded) is e and default_model(loaded) is e
    e.path.write_bytes(b"replaced")
    with pytest.raises(CatalogError, match="checksum mismatch"):
        verify(e)
    e.path.unlink()
    with pytest.raises(CatalogError, match="not found"):
        verify(e)


def test_a_user_default_wins_over_the_bundled_default() -> None:
    def entry(model_id: str, source: str, default: bool = False) -> ModelEntry:
        return ModelEntry(model_id, "1", f"{model_id}.pt", "0" * 64, default=default, source=source)

    bundled, bundled_default = entry("b1", "bundled"), entry("b2", "bundled", True)
    user, user_default = entry("u1", "user"), entry("u2", "user", True)
    assert default_model([bundled, bundled_default, user, user_default]) is user_default
    assert default_model([bundled, bundled_default, user]) is bundled_default
    assert default_model([bundled, user]) is bundled
    assert default_model([user]) is user and default_model([]) is None


def test_metrics_come_from_an_evaluation_report(tmp_path: Path) -> None:
    report = {"list": "/data/val8.list", "protocol": "default", "device": "cpu",
              "cases": [{"case": "A", "dice": 0.9, "seconds": 2.0}, {"case": "B", "dice": 0.8, "seconds": 4.0}],
              "summary": {"dice": {"mean": 0.85, "std": 0.05, "n": 2}, "hd95_voxels": {"mean": 7.25, "std": 1.0,
                                                                                      "n": 2},
                          "asd_mm": {"mean": None, "std": None, "n": 0}}}
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(report))
    m = metrics_from_evaluation(path)
    assert (m["dice"], m["dice_std"], m["hd95_voxels"], m["hd95_voxels_std"]) == (85.0, 5.0, 7.25, 1.0)
    assert m["per_case_dice"] == {"A": 90.0, "B": 80.0} and m["seconds_per_case"] == 3.0
    assert "asd_mm" not in m and m["on"] == "2 cases of val8.list, protocol default, device cpu"
    path.write_text("[]")
    with pytest.raises(CatalogError, match="not a `caml evaluate` metrics.json"):
        metrics_from_evaluation(path)


def test_bad_catalogs_are_named(tmp_path: Path) -> None:
    broken = tmp_path / "models.json"
    broken.write_text("{not json")
    with pytest.raises(CatalogError, match=str(broken)):
        read_catalog(broken)
    broken.write_text(json.dumps({"models": [{"id": "x", "version": "1", "file": "x.pt"}]}))
    with pytest.raises(CatalogError, match="lacks sha256"):
        read_catalog(broken)
    one = {"id": "x", "version": "1", "file": "x.pt", "sha256": "0" * 64}
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"models": [one]}))
    broken.write_text(json.dumps({"models": [one]}))
    with pytest.raises(CatalogError, match="defined in both"):
        load_catalog([(broken, "bundled"), (other, "user")])


def test_device_resolution() -> None:
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(DeviceError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="CUDA is not available"):
            resolve_device("cuda")
    else:
        with pytest.raises(DeviceError, match="numbered from 0"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")
