"""Shared test set-up: one torch thread, and the LA data location.

The networks in the tests are tiny: on two cores, two threads spend more time
synchronising than computing (a training iteration of the test preset takes
about three times longer than on one thread), and a second thread competes
with anything else the machine runs. Processes the tests start (the ``caml``
CLI, DDP ranks) inherit one OpenMP thread through the environment.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ["OMP_NUM_THREADS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[2]
LA_ROOT = Path(os.environ.get("CAML_LA_ROOT", REPO.parent / "shared" / "data" / "LA"))


@pytest.fixture(autouse=True)
def own_caml_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own ``$CAML_HOME`` (the user model catalog), inherited by the processes it
    starts: a retrain that promotes a version lists it in the user catalog, and no test may touch the
    machine's ``~/.caml``. Tests that need a particular home set ``CAML_HOME`` themselves."""
    home = tmp_path_factory.mktemp("caml-home")
    monkeypatch.setenv("CAML_HOME", str(home))
    return home


@pytest.fixture
def la_root() -> Path:
    """The LA data folder; tests using it skip (with the reason) when it is absent."""
    if not (LA_ROOT / "train.list").is_file():
        pytest.skip(f"LA data not found at {LA_ROOT} (set CAML_LA_ROOT to run this test)")
    return LA_ROOT


@pytest.fixture
def no_bundled_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the engine at an empty bundled catalog: what a checkout without released models sees."""
    from CAMLSegmentationLib.model import catalog

    empty = tmp_path / "bundled-empty" / "models.json"
    monkeypatch.setattr(catalog, "bundled_catalog_path", lambda: empty)
    return empty
