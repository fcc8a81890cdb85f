"""Shared test set-up: small thread count (2-core CI machines) and the LA data location."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

REPO = Path(__file__).resolve().parents[2]
LA_ROOT = Path(os.environ.get("CAML_LA_ROOT", REPO.parent / "shared" / "data" / "LA"))


@pytest.fixture
def la_root() -> Path:
    """The LA data folder; tests using it skip (with the reason) when it is absent."""
    if not (LA_ROOT / "train.list").is_file():
        pytest.skip(f"LA data not found at {LA_ROOT} (set CAML_LA_ROOT to run this test)")
    return LA_ROOT


@pytest.fixture
def no_bundled_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the engine at an empty bundled catalog: what a checkout without released models sees."""
    from CAMLSegmentationLib import catalog

    empty = tmp_path / "bundled-empty" / "models.json"
    monkeypatch.setattr(catalog, "bundled_catalog_path", lambda: empty)
    return empty
