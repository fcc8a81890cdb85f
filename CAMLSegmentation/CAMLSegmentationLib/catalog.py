"""The model catalog: which trained models exist, where their weights are, and how to check them.

Two catalogs are merged:

* the bundled one, ``Resources/Models/models.json``, shipped with the
  extension (models released by the project);
* the user's one, ``$CAML_HOME/models/models.json`` (``~/.caml`` when
  ``CAML_HOME`` is unset), where ``caml models register`` puts models trained
  on this machine.

Each entry names its weights ``file`` relative to its catalog and records the
file's SHA-256, which is checked before the weights are used: a truncated
download or a file replaced by hand gives a clear error instead of a quietly
wrong segmentation. See ``_schema`` in the bundled JSON for every field.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from .files import atomic_output

PathLike = Union[str, Path]
SCHEMA_VERSION = 1


class CatalogError(ValueError):
    """A catalog file, entry or weights file that cannot be used."""


@dataclass
class ModelEntry:
    """One catalog entry; ``path`` is the weights file resolved against the catalog's folder."""

    id: str
    version: str
    file: str
    sha256: str
    preset: str = ""
    training_data: str = ""
    training: str = ""  # how, how long and on what machine
    metrics: Dict[str, Any] = field(default_factory=dict)
    description: str = ""
    default: bool = False
    catalog: str = ""  # the models.json this entry came from
    source: str = "bundled"  # "bundled" or "user"

    @property
    def path(self) -> Path:
        return Path(self.catalog).parent / self.file

    def to_json(self) -> Dict[str, Any]:
        d = asdict(self)
        for key in ("catalog", "source"):
            d.pop(key)
        return d


def bundled_catalog_path() -> Path:
    """``Resources/Models/models.json``: next to the module in an installed Slicer extension,
    at the repository root in a source checkout."""
    here = Path(__file__).resolve().parent
    for base in (here.parent, here.parent.parent):
        candidate = base / "Resources" / "Models" / "models.json"
        if candidate.is_file():
            return candidate
    return here.parent.parent / "Resources" / "Models" / "models.json"


def caml_home() -> Path:
    """Per-user folder for registered models: ``$CAML_HOME`` or ``~/.caml``."""
    return Path(os.environ.get("CAML_HOME") or Path.home() / ".caml")


def user_catalog_path() -> Path:
    return caml_home() / "models" / "models.json"


def sha256_file(path: PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def read_catalog(path: PathLike, source: str = "bundled") -> List[ModelEntry]:
    """Entries of one ``models.json``; a missing file is an empty catalog."""
    path = Path(path)
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CatalogError(f"{path}: unreadable model catalog ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("models"), list):
        raise CatalogError(f"{path}: a model catalog must be a JSON object with a 'models' list")
    entries = []
    for n, raw in enumerate(data["models"]):
        entries.append(_entry_from_json(raw, path, source, n))
    return entries


def _entry_from_json(raw: Any, catalog: Path, source: str, n: int) -> ModelEntry:
    if not isinstance(raw, dict):
        raise CatalogError(f"{catalog}: model #{n} is not a JSON object")
    missing = [k for k in ("id", "version", "file", "sha256") if not raw.get(k)]
    if missing:
        raise CatalogError(f"{catalog}: model #{n} ({raw.get('id', 'no id')}) lacks {', '.join(missing)}")
    try:
        return ModelEntry(
            id=str(raw["id"]), version=str(raw["version"]), file=str(raw["file"]),
            sha256=str(raw["sha256"]).lower(), preset=str(raw.get("preset", "")),
            training_data=str(raw.get("training_data", "")), training=str(raw.get("training", "")),
            metrics=dict(raw.get("metrics") or {}),
            description=str(raw.get("description", "")), default=bool(raw.get("default", False)),
            catalog=str(catalog), source=source)
    except (TypeError, ValueError) as exc:
        raise CatalogError(f"{catalog}: model {raw['id']!r}: {exc}") from exc


def load_catalog(paths: Optional[Sequence[Tuple[PathLike, str]]] = None) -> List[ModelEntry]:
    """Bundled then user entries; an id defined twice is an error (it would be ambiguous)."""
    if paths is None:
        paths = [(bundled_catalog_path(), "bundled"), (user_catalog_path(), "user")]
    entries: List[ModelEntry] = []
    seen: Dict[str, str] = {}
    for path, source in paths:
        for entry in read_catalog(path, source):
            if entry.id in seen:
                raise CatalogError(f"model id {entry.id!r} is defined in both {seen[entry.id]} and {path}")
            seen[entry.id] = str(path)
            entries.append(entry)
    return entries


def find_model(model_id: str, entries: Optional[List[ModelEntry]] = None) -> ModelEntry:
    entries = load_catalog() if entries is None else entries
    for entry in entries:
        if entry.id == model_id:
            return entry
    known = ", ".join(e.id for e in entries) or "none: the catalog is empty"
    raise CatalogError(f"no model {model_id!r} in the catalog (known: {known})")


def default_model(entries: Optional[List[ModelEntry]] = None) -> Optional[ModelEntry]:
    """The model used when none is named.

    A user model registered with ``--default`` wins over the bundled default
    (the user chose it on purpose), then the bundled model marked default,
    then the first bundled one, then the first user one.
    """
    entries = load_catalog() if entries is None else entries
    for source in ("user", "bundled"):
        for entry in entries:
            if entry.default and entry.source == source:
                return entry
    return entries[0] if entries else None


def metrics_from_evaluation(report_path: PathLike) -> Dict[str, Any]:
    """The catalog's ``metrics`` from a ``caml evaluate`` ``metrics.json``: means, stds and per-case Dice.

    Dice and Jaccard in percent, distances in voxels and mm, as in the
    evaluation table; ``per_case_dice`` lets a test re-check single cases.
    """
    path = Path(report_path)
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
        summary, cases = report["summary"], report["cases"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CatalogError(f"{path}: not a `caml evaluate` metrics.json ({exc})") from exc
    scale = {"dice": 100.0, "jaccard": 100.0}
    metrics: Dict[str, Any] = {}
    for key, stats in summary.items():
        if stats.get("mean") is not None:
            metrics[key] = round(stats["mean"] * scale.get(key, 1.0), 2)
            metrics[key + "_std"] = round(stats["std"] * scale.get(key, 1.0), 2)
    metrics["per_case_dice"] = {c["case"]: round(c["dice"] * 100.0, 2) for c in cases}
    metrics["seconds_per_case"] = round(sum(c["seconds"] for c in cases) / max(1, len(cases)), 1)
    metrics["on"] = (f"{len(cases)} cases of {Path(str(report.get('list', '?'))).name}, "
                     f"protocol {report.get('protocol', '?')}, device {report.get('device', '?')}")
    return metrics


def verify(entry: ModelEntry) -> Path:
    """The weights path after checking it exists and matches the catalog's SHA-256."""
    path = entry.path
    if not path.is_file():
        raise CatalogError(f"{path}: weights of model {entry.id!r} not found (listed in {entry.catalog})")
    actual = sha256_file(path)
    if actual != entry.sha256:
        raise CatalogError(f"{path}: checksum mismatch for model {entry.id!r}: catalog says "
                           f"sha256 {entry.sha256[:12]}..., the file has {actual[:12]}... "
                           f"(corrupt or replaced file)")
    return path


def register_model(weights: PathLike, model_id: str, version: str = "1", description: str = "",
                   training_data: str = "", metrics: Optional[Dict[str, Any]] = None,
                   catalog_path: Optional[PathLike] = None, default: bool = False,
                   training: str = "", half: bool = False) -> ModelEntry:
    """Store a trained checkpoint's release form beside a catalog and list it there.

    The catalog is the user's (``$CAML_HOME/models/models.json``) unless
    ``catalog_path`` names another, e.g. the bundled one when preparing a
    release. What is stored is ``release_checkpoint``'s compact file (models
    V and A, fp16 when ``half``), not the training checkpoint. How to run
    the model (window, voxel size, normalisation, flips, threshold) travels
    inside that file; the entry only points at it and records its scores.
    """
    from .checkpoint import read_checkpoint, release_checkpoint

    weights = Path(weights)
    catalog_path = Path(catalog_path) if catalog_path else user_catalog_path()
    others = [(bundled_catalog_path(), "bundled")] if catalog_path != bundled_catalog_path() else []
    existing = load_catalog(others + [(catalog_path, "user")])
    if any(e.id == model_id for e in existing):
        raise CatalogError(f"model id {model_id!r} is already in the catalog; choose another id or version")
    ckpt = read_checkpoint(weights)
    preset = ckpt.get("preset") or {}
    file_name = f"{model_id}-{version}.pt"
    target = catalog_path.parent / file_name
    with atomic_output(target) as tmp:
        release_checkpoint(weights, tmp, half=half)
    entry = ModelEntry(id=model_id, version=str(version), file=file_name, sha256=sha256_file(target),
                       preset=str(preset.get("name", "")),
                       training_data=training_data, training=training,
                       metrics=dict(metrics or ckpt.get("metrics") or {}),
                       description=description or f"registered from {weights}", default=default,
                       catalog=str(catalog_path), source="user")
    data: Dict[str, Any] = {"schema_version": SCHEMA_VERSION, "models": []}
    if catalog_path.is_file():
        data = json.loads(catalog_path.read_text(encoding="utf-8"))
    data["models"].append(entry.to_json())
    with atomic_output(catalog_path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return entry
