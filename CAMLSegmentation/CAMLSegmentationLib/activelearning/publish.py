"""A cohort's current version in the user model catalog, so Segment and ``caml segment --model`` use it.

After a retrain promotes a version, and after ``caml al use``, the current version is listed in
the user catalog (``model.catalog.user_catalog_path()``; ``$CAML_HOME``) under one id per cohort:

- the id is the cohort folder's name made a plain catalog name (``catalog_id_for``): characters a
  model id cannot hold become '-', leading '.', '_' and '-' are dropped, at most 56 characters
  (so a ``-N`` suffix still fits), ``cohort`` when nothing is left;
- an id is the cohort's once published from it (the entry's ``origin["cohort"]`` is the folder's
  absolute path): a second cohort with the same folder name, a bundled model's id or a model
  registered by hand under that name make it take the next free ``<name>-2``, ``<name>-3``, ...;
  a cohort moved to another folder is published under a new id (its old entry stays until
  removed from the catalog by hand);
- the entry's version is the cohort's version number, its ``metrics`` the version's validation
  Dice (per case, in %, on the accepted validation labels), its ``origin`` the cohort folder,
  version, parent and job.

The entry points at a copy in the catalog's folder, not at the cohort's version file: catalog
files lie in the catalog's folder (``read_catalog`` refuses others), a copy survives the cohort
being moved or deleted, and it is stored as ``caml models register`` stores models (the compact
fp32 release, with ONNX exports when the ``onnx`` package is there, so the panel runs it without
PyTorch like the bundled models). Only the current version's files are kept per cohort.

Called after the cohort's own commit: a catalog that cannot be written (locked, read-only, a full
disk, a damaged file) is reported in the result and by ``catalog_state``, never undoes the
promotion; ``caml al use N`` with the current version publishes it again.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..progress import ProgressCallback, ProgressEvent, no_progress
from . import storage

#: Longest id derived from a folder name: ``model.catalog.NAME_PATTERN`` allows 64, and a ``-N`` suffix must fit.
MAX_DERIVED_ID = 56
#: How many ids ``<name>``, ``<name>-2``, ... are tried before giving up.
MAX_SUFFIX = 100


def cohort_key(root: Path) -> str:
    """What ``origin["cohort"]`` records: the cohort folder's absolute path."""
    return str(Path(root).resolve())


def derived_id(folder_name: str) -> str:
    """A plain catalog id (``catalog.check_name``) made from a folder name."""
    text = re.sub(r"[^A-Za-z0-9._-]+", "-", folder_name)
    text = re.sub(r"\.{2,}", ".", text).lstrip("._-")[:MAX_DERIVED_ID].rstrip("-")
    return text or "cohort"


def _user_entries() -> List[Any]:
    from ..model.catalog import read_catalog, user_catalog_path

    return read_catalog(user_catalog_path(), "user")


def catalog_id_for(root: Path) -> str:
    """The id of this cohort's entry: the one it was published under, else the first free derived one."""
    from ..model.catalog import CatalogError, bundled_catalog_path, read_catalog

    key = cohort_key(root)
    users = _user_entries()
    for entry in users:
        if entry.origin.get("cohort") == key:
            return entry.id
    taken = {e.id.lower() for e in users + read_catalog(bundled_catalog_path(), "bundled")}
    base = derived_id(Path(key).name)
    for n in range(1, MAX_SUFFIX + 1):
        candidate = base if n == 1 else f"{base}-{n}"
        if candidate.lower() not in taken:
            return candidate
    raise CatalogError(f"model ids {base} to {base}-{MAX_SUFFIX} are all taken in the catalog")


def _metrics(cohort: Any, version: Dict[str, Any]) -> Dict[str, Any]:
    """The version's validation Dice, in % as the catalog keeps it, on the cohort's validation labels."""
    val = cohort.validation_ids()
    per_case = cohort.cached_val_scores(version["id"], val) if val else {}
    if per_case and len(per_case) == len(val):
        mean = sum(per_case.values()) / len(per_case)
        return {"dice": round(mean * 100.0, 2), "per_case_dice": {c: round(d * 100.0, 2) for c, d in per_case.items()},
                "on": f"{len(per_case)} validation cases of the cohort (accepted labels)"}
    if version.get("val_dice") is not None:
        return {"dice": round(float(version["val_dice"]) * 100.0, 2),
                "on": f"{version['val_cases']} validation cases of the cohort when version {version['id']} was made"}
    return {}


def publish_current(cohort: Any, progress: ProgressCallback = no_progress) -> Dict[str, Any]:
    """List the cohort's current version in the user catalog (module docstring).

    Returns ``{"id", "version", "catalog", "weights"}``, or ``{"error": one line}`` when the catalog
    could not be changed (the cohort is left as it is either way)."""
    from ..model.catalog import CatalogError, publish_model

    current = cohort.current_version()
    if current is None:
        return {"error": "no current version to publish"}
    try:
        version = cohort.version(current)
        weights = cohort.weights(current)
        origin = {"cohort": cohort_key(cohort.root), "version": current, "parent": version["parent"],
                  "job": version["job"]}
        name = Path(origin["cohort"]).name
        parent = f"from version {version['parent']}" if version["parent"] is not None else "its first version"
        entry = None
        for _ in range(3):  # another cohort of the same name may take the id between choosing and publishing
            model_id = catalog_id_for(cohort.root)
            progress(ProgressEvent("catalog", 0, 1, f"listing version {current} as model {model_id}"))
            try:
                entry = publish_model(
                    weights, model_id, str(current), origin,
                    description=f"active learning on cohort {origin['cohort']}: version {current} ({parent}, "
                                f"{len(version['train_cases'])} accepted training cases); {version['note']}",
                    title=f"{name}, active-learning version {current}",
                    training_data=f"{len(version['train_cases'])} accepted training cases of cohort "
                                  f"{origin['cohort']}, the other images unlabeled",
                    metrics=_metrics(cohort, version))
                break
            except CatalogError as exc:
                if "already in" not in str(exc):
                    raise
        if entry is None:
            raise CatalogError("another cohort keeps taking this cohort's model id; try caml al use again")
        progress(ProgressEvent("catalog", 1, 1, f"version {current} is model {entry.id} in {entry.catalog}"))
        return {"id": entry.id, "version": entry.version, "catalog": entry.catalog, "weights": str(entry.path)}
    except Exception as exc:  # noqa: BLE001 - reported: the cohort's commit stands whatever the catalog does
        message = storage.describe(exc, Path(cohort.root)) if isinstance(exc, OSError) else None
        text = message or f"{type(exc).__name__}: {exc}"
        return {"error": f"version {current} is current in the cohort but not in the model catalog: "
                         f"{text.splitlines()[0] if text else type(exc).__name__}; caml al use {current} "
                         "lists it again"}


def catalog_state(cohort: Any) -> Optional[Dict[str, Any]]:
    """The user catalog's entry from this cohort (``{"id", "version", "note"}``, ``note`` set when it
    does not show the current version); None when nothing was published from it."""
    from ..model.catalog import CatalogError

    key = cohort_key(cohort.root)
    current = cohort.current_version()
    try:
        mine = [e for e in _user_entries() if e.origin.get("cohort") == key]
    except CatalogError as exc:
        return {"id": None, "version": None, "note": f"the user model catalog cannot be read: {exc}"}
    if not mine:
        if current is not None and cohort.version(current)["job"] is not None:
            return {"id": None, "version": None,
                    "note": f"version {current} is not in the model catalog: caml al use {current} lists it"}
        return None
    entry = mine[0]
    note = None
    if current is not None and entry.version != str(current):
        note = (f"the model catalog lists version {entry.version} as {entry.id}, not the current version {current}: "
                f"caml al use {current} lists it")
    return {"id": entry.id, "version": entry.version, "note": note}


def use_version(root: Path, version: int, progress: ProgressCallback = no_progress) -> Dict[str, Any]:
    """Make ``version`` the cohort's current one (committed as the command's outcome), then list it in the
    user catalog: the version's record with ``catalog`` (``publish_current``'s result) added."""
    from .cohort import Cohort

    with Cohort.open(root) as cohort:
        record = cohort.use(version, final=True)
        record["catalog"] = publish_current(cohort, progress)
    return record
