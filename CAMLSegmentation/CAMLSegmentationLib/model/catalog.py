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
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from .. import MODULE_DIR
from ..errors import CAMLError
from ..io.files import atomic_output

PathLike = Union[str, Path]
SCHEMA_VERSION = 1


class CatalogError(CAMLError, ValueError):
    """A catalog file, entry or weights file that cannot be used."""


#: What a model id or version may be: a plain name (letters, digits, '.', '_', '-'), starting
#: with a letter or digit, at most 64 characters. No '/', '\\' or '..' can reach the file name,
#: and no '@', which separates the two in the stored file's name ``<id>@<version>.pt``, so two
#: entries never share a file.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_name(value: str, what: str) -> str:
    """``value`` if it is a plain name (``NAME_PATTERN``), else ``CatalogError`` saying why."""
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value) or ".." in value:
        raise CatalogError(f"model {what} {value!r} is not allowed: use 1 to 64 letters, digits, '.', '_' "
                           f"or '-', starting with a letter or digit (it becomes part of a file name)")
    return value


def stored_file_name(model_id: str, version: str) -> str:
    """The weights file of a registered model: one name per (id, version), never shared."""
    return f"{check_name(model_id, 'id')}@{check_name(version, 'version')}.pt"


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
    #: A few words people choose the model by (the panel's Model list): what makes it different.
    title: str = ""
    default: bool = False
    catalog: str = ""  # the models.json this entry came from
    source: str = "bundled"  # "bundled" or "user"
    onnx: Dict[str, Dict[str, str]] = field(default_factory=dict)  # "v"/"a" -> {"file", "sha256"}
    #: Where a published model came from (an active-learning cohort: its folder, version, parent, job);
    #: ``publish_model`` replaces an entry only for the same ``origin["cohort"]``.
    origin: Dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return Path(self.catalog).parent / self.file

    def onnx_paths(self) -> Dict[str, Path]:
        """The ONNX exports of sub-models V and A (those listed), resolved like ``path``."""
        return {which: Path(self.catalog).parent / item["file"] for which, item in self.onnx.items()}

    def to_json(self) -> Dict[str, Any]:
        d = asdict(self)
        for key in ("catalog", "source"):
            d.pop(key)
        for optional in ("onnx", "title", "origin"):
            if not d[optional]:
                d.pop(optional)
        return d


def bundled_catalog_path() -> Path:
    """``Resources/Models/models.json``: next to the module in an installed Slicer extension,
    at the repository root in a source checkout."""
    for base in (MODULE_DIR, MODULE_DIR.parent):
        candidate = base / "Resources" / "Models" / "models.json"
        if candidate.is_file():
            return candidate
    return MODULE_DIR.parent / "Resources" / "Models" / "models.json"


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
    file = Path(str(raw["file"]))
    if file.is_absolute() or file.drive or ".." in file.parts:
        raise CatalogError(f"{catalog}: model {raw['id']!r}: weights file {str(file)!r} must lie in the "
                           f"catalog's folder (a relative name without '..')")
    onnx = _onnx_from_json(raw.get("onnx"), catalog, str(raw["id"]))
    origin = raw.get("origin") or {}
    if not isinstance(origin, dict):
        raise CatalogError(f"{catalog}: model {raw['id']!r}: 'origin' must be a JSON object")
    try:
        return ModelEntry(
            id=str(raw["id"]), version=str(raw["version"]), file=str(raw["file"]),
            sha256=str(raw["sha256"]).lower(), preset=str(raw.get("preset", "")),
            training_data=str(raw.get("training_data", "")), training=str(raw.get("training", "")),
            metrics=dict(raw.get("metrics") or {}),
            description=str(raw.get("description", "")), title=str(raw.get("title", "")),
            default=bool(raw.get("default", False)),
            catalog=str(catalog), source=source, onnx=onnx, origin=dict(origin))
    except (TypeError, ValueError) as exc:
        raise CatalogError(f"{catalog}: model {raw['id']!r}: {exc}") from exc


def _onnx_from_json(raw: Any, catalog: Path, model_id: str) -> Dict[str, Dict[str, str]]:
    """An entry's optional ``onnx``: ``{"v": {"file": ..., "sha256": ...}, "a": {...}}``, files beside the catalog."""
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not set(raw) <= {"v", "a"} or (raw and "v" not in raw):
        raise CatalogError(f"{catalog}: model {model_id!r}: 'onnx' must map 'v' (and optionally 'a') "
                           f"to {{\"file\": ..., \"sha256\": ...}}")
    exports = {}
    for which, item in raw.items():
        if not isinstance(item, dict) or not item.get("file") or not item.get("sha256"):
            raise CatalogError(f"{catalog}: model {model_id!r}: ONNX export {which!r} lacks file or sha256")
        file = Path(str(item["file"]))
        if file.is_absolute() or file.drive or ".." in file.parts:
            raise CatalogError(f"{catalog}: model {model_id!r}: ONNX file {str(file)!r} must lie in the "
                               f"catalog's folder (a relative name without '..')")
        exports[which] = {"file": str(item["file"]), "sha256": str(item["sha256"]).lower()}
    return exports


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
    """The entry named ``model_id``.

    Without ``entries``, each catalog is read on its own: a damaged catalog
    (unreadable, or listing an id twice) is an error only when it could hold
    the model asked for, so a broken user catalog never stops a bundled
    model named explicitly.
    """
    problems: List[str] = []
    if entries is None:
        entries = []
        for path, source in [(bundled_catalog_path(), "bundled"), (user_catalog_path(), "user")]:
            try:
                entries.extend(read_catalog(path, source))
            except CatalogError as exc:
                problems.append(str(exc))
    matches = [e for e in entries if e.id == model_id]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise CatalogError(f"model id {model_id!r} is listed {len(matches)} times "
                           f"({', '.join(sorted(set(e.catalog for e in matches)))}): remove all but one")
    known = ", ".join(e.id for e in entries) or "none: the catalog is empty"
    damaged = f"; damaged catalog: {'; '.join(problems)}" if problems else ""
    raise CatalogError(f"no model {model_id!r} in the catalog (known: {known}){damaged}")


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


def verify_onnx(entry: ModelEntry, sub_models: Sequence[str] = ("v",)) -> Dict[str, Path]:
    """The ONNX exports of ``sub_models`` after checking each exists and matches the catalog's SHA-256."""
    paths = entry.onnx_paths()
    missing = [w for w in sub_models if w not in paths]
    if missing:
        raise CatalogError(f"model {entry.id!r} has no ONNX export of sub-model "
                           f"{', '.join(m.upper() for m in missing)} (listed in {entry.catalog})")
    checked = {}
    for which in sub_models:
        path = paths[which]
        if not path.is_file():
            raise CatalogError(f"{path}: ONNX export of model {entry.id!r} not found (listed in {entry.catalog})")
        actual = sha256_file(path)
        if actual != entry.onnx[which]["sha256"]:
            raise CatalogError(f"{path}: checksum mismatch for the ONNX export of model {entry.id!r}: catalog "
                               f"says sha256 {entry.onnx[which]['sha256'][:12]}..., the file has "
                               f"{actual[:12]}... (corrupt or replaced file)")
        checked[which] = path
    return checked


def catalog_lock(catalog_path: PathLike, timeout: float = 120.0) -> Any:
    """A lock file beside a catalog, held while it is read, changed and rewritten.

    Two ``caml models register`` at once would otherwise both read the old
    list and the second rewrite would drop the first's entry (or both would
    add the same id). ``filelock`` ships with PyTorch, so it is always there.
    """
    from filelock import FileLock

    path = Path(catalog_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path.parent / f".{path.name}.lock"), timeout=timeout)


def register_model(weights: PathLike, model_id: str, version: str = "1", description: str = "",
                   training_data: str = "", metrics: Optional[Dict[str, Any]] = None,
                   catalog_path: Optional[PathLike] = None, default: bool = False,
                   training: str = "", half: bool = False,
                   largest_component: Optional[bool] = None, onnx: Optional[bool] = None,
                   title: str = "") -> ModelEntry:
    """Store a trained checkpoint's release form beside a catalog and list it there.

    The catalog is the user's (``$CAML_HOME/models/models.json``) unless
    ``catalog_path`` names another, e.g. the bundled one when preparing a
    release. What is stored is ``release_checkpoint``'s compact file (models
    V and A, fp16 when ``half``), not the training checkpoint. How to run
    the model (window, voxel size, normalisation, flips, threshold, post-processing)
    travels inside that file; the entry only points at it and records its
    scores. ``largest_component`` sets the post-processing (None: the checkpoint's own).
    ``onnx``: also store ONNX exports of V and A beside it (``<id>@<version>.v.onnx``,
    ``.a.onnx``, SHA-256 in the entry) so ONNX Runtime can run it without torch; None:
    when the ``onnx`` package is installed.

    Refused: an id or version that is not a plain name (``check_name``), an
    id already listed (compared without case, as some file systems do), and
    a weights file that would replace another. The catalog is changed under
    a lock (``catalog_lock``), so concurrent registrations all land. With
    ``default`` the new model replaces the catalog's previous default.
    """
    from .checkpoint import read_checkpoint

    check_name(model_id, "id")
    check_name(str(version), "version")
    weights = Path(weights)
    ckpt = read_checkpoint(weights)  # before the lock: a refused file changes nothing
    preset = ckpt.get("preset") or {}
    catalog_path = Path(catalog_path).absolute() if catalog_path else user_catalog_path()
    # The bundled catalog named by another path (relative, through a link) is still the bundled one.
    is_bundled = catalog_path.exists() and bundled_catalog_path().exists() and catalog_path.samefile(
        bundled_catalog_path())
    others = [] if is_bundled else [(bundled_catalog_path(), "bundled")]
    file_name = stored_file_name(model_id, str(version))
    target = catalog_path.parent / file_name
    with catalog_lock(catalog_path):
        existing = load_catalog(others + [(catalog_path, "user")])
        same = [e for e in existing if e.id.lower() == model_id.lower()]
        if same:
            raise CatalogError(f"model id {model_id!r} is already in the catalog ({same[0].id!r} in "
                               f"{same[0].catalog}); choose another id")
        if _stored_files_exist(target):
            raise CatalogError(f"{target}: a file of that name is already in the catalog's folder; "
                               f"choose another id or version")
        exports = _store_release(weights, target, half, largest_component, onnx)
        entry = ModelEntry(id=model_id, version=str(version), file=file_name, sha256=sha256_file(target),
                           preset=str(preset.get("name", "")),
                           training_data=training_data, training=training,
                           metrics=dict(metrics or ckpt.get("metrics") or {}),
                           description=description or f"registered from {weights}", title=title,
                           default=default,
                           catalog=str(catalog_path), source="user",
                           onnx={w: {"file": p.name, "sha256": sha256_file(p)} for w, p in exports.items()})
        data = _catalog_data(catalog_path)
        if default:  # one default per catalog: the new one replaces the old
            for raw in data["models"]:
                raw["default"] = False
        data["models"].append(entry.to_json())
        _write_catalog(catalog_path, data, [target, *exports.values()])
    return entry


def _stored_files_exist(target: Path) -> bool:
    """Whether the weights file ``target`` or one of its ONNX exports is already there."""
    return target.exists() or any(target.with_name(f"{target.stem}.{w}.onnx").exists() for w in ("v", "a"))


def _store_release(weights: Path, target: Path, half: bool, largest_component: Optional[bool],
                   onnx: Optional[bool]) -> Dict[str, Path]:
    """Write ``weights``' release form at ``target`` (atomically) and, when ``onnx`` (None: when the
    package is installed), its ONNX exports beside it; returns the exports. Nothing is left on failure."""
    from .checkpoint import release_checkpoint

    with atomic_output(target) as tmp:
        release_checkpoint(weights, tmp, half=half, largest_component=largest_component)
    if onnx or (onnx is None and _onnx_installed()):
        from .onnx_export import export_release

        try:
            return export_release(target)
        except BaseException:
            target.unlink()
            raise
    return {}


def _catalog_data(catalog_path: Path) -> Dict[str, Any]:
    if catalog_path.is_file():
        return json.loads(catalog_path.read_text(encoding="utf-8"))
    return {"schema_version": SCHEMA_VERSION, "models": []}


def _write_catalog(catalog_path: Path, data: Dict[str, Any], new_files: Sequence[Path]) -> None:
    """Replace the catalog file atomically; when that fails, remove ``new_files`` (nothing lists them)."""
    try:
        with atomic_output(catalog_path) as tmp:
            tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    except BaseException:
        for path in new_files:
            path.unlink(missing_ok=True)
        raise


def publish_model(weights: PathLike, model_id: str, version: str, origin: Dict[str, Any],
                  description: str = "", title: str = "", training_data: str = "", training: str = "",
                  metrics: Optional[Dict[str, Any]] = None, catalog_path: Optional[PathLike] = None,
                  onnx: Optional[bool] = None) -> ModelEntry:
    """List ``weights`` in the user catalog as ``model_id``, replacing the entry published there
    before from the same ``origin["cohort"]`` (an active-learning cohort whose current version
    changed); a new id when there is none.

    Refused (``CatalogError``, nothing changed): an id listed by the bundled catalog, or by a
    user entry from elsewhere (registered by hand, or another cohort's). The weights are stored
    as ``register_model`` stores them (fp32 release, the checkpoint's own inference settings,
    ONNX exports when available). Crash-safe in this order: the new version's files, then the
    catalog (one atomic rewrite under ``catalog_lock``), then the replaced version's files, so
    a crash leaves the old entry or the new one, each with its files; at worst an unlisted file,
    which the next publication of this id replaces. Publishing the version already listed only
    refreshes the entry's text and scores.
    """
    check_name(model_id, "id")
    check_name(str(version), "version")
    if not origin.get("cohort"):
        raise CatalogError("publish_model needs origin['cohort']: the folder the model comes from")
    weights = Path(weights)
    catalog_path = Path(catalog_path).absolute() if catalog_path else user_catalog_path()
    file_name = stored_file_name(model_id, str(version))
    target = catalog_path.parent / file_name
    with catalog_lock(catalog_path):
        for entry in read_catalog(bundled_catalog_path(), "bundled"):
            if entry.id.lower() == model_id.lower():
                raise CatalogError(f"model id {model_id!r} is a bundled model's; choose another id")
        data = _catalog_data(catalog_path)
        users = [(n, _entry_from_json(raw, catalog_path, "user", n)) for n, raw in enumerate(data["models"])]
        same = [(n, e) for n, e in users if e.id.lower() == model_id.lower()]
        if same and same[0][1].origin.get("cohort") != origin["cohort"]:
            whose = same[0][1].origin.get("cohort") or "registered by hand"
            raise CatalogError(f"model id {model_id!r} is already in {catalog_path} ({whose}); choose another id")
        old = same[0][1] if same else None
        new_files: List[Path] = []
        if old is not None and old.version == str(version) and old.path.is_file() \
                and sha256_file(old.path) == old.sha256:
            sha, exported = old.sha256, dict(old.onnx)
        else:
            for stale in [target] + [target.with_name(f"{target.stem}.{w}.onnx") for w in ("v", "a")]:
                stale.unlink(missing_ok=True)  # an unlisted file of this id and version: a crash's leftover
            exports = _store_release(weights, target, False, None, onnx)
            new_files = [target, *exports.values()]
            sha = sha256_file(target)
            exported = {w: {"file": p.name, "sha256": sha256_file(p)} for w, p in exports.items()}
        preset = _preset_name(target)
        entry = ModelEntry(id=model_id, version=str(version), file=file_name, sha256=sha, preset=preset,
                           training_data=training_data, training=training, metrics=dict(metrics or {}),
                           description=description or f"published from {weights}", title=title,
                           catalog=str(catalog_path), source="user", onnx=exported, origin=dict(origin))
        if old is not None:
            data["models"][same[0][0]] = entry.to_json()
        else:
            data["models"].append(entry.to_json())
        _write_catalog(catalog_path, data, new_files)
        if old is not None and old.file != file_name:
            for path in [old.path, *old.onnx_paths().values()]:
                path.unlink(missing_ok=True)  # the replaced version: nothing lists it any more
    return entry


def _preset_name(path: PathLike) -> str:
    """The preset name recorded in a weights file ("" when none)."""
    from .checkpoint import read_checkpoint

    preset = read_checkpoint(path).get("preset") or {}
    return str(preset.get("name", "")) if isinstance(preset, dict) else ""


def _onnx_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnx") is not None
