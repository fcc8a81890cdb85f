"""A cohort: a folder of images in the generic layout, its labels, and its state in SQLite.

Layout (the one ``caml train --data`` reads, so the trainer uses the cohort as it is)::

    <cohort>/images/<id>.<ext>        the user's images (any format the engine reads)
    <cohort>/labels/<id>.nrrd         accepted labels, written atomically on the image's grid
    <cohort>/caml-al/state.sqlite     the state database (SQLite, WAL)
    <cohort>/caml-al/versions/        one weights file per model version
    <cohort>/caml-al/predictions/     predicted masks (and uncertainty maps) per case and version
    <cohort>/caml-al/jobs/job-NNNN/   one folder per retrain job (case lists, training run)

Every change is one SQLite transaction (``BEGIN IMMEDIATE``, so two processes
serialise instead of failing, with a busy timeout). Files are written before
the transaction that records them commits, by an atomic rename, so a process
killed at any moment leaves the database as it was before the change or as
it is after it, never in between; at worst a file nobody refers to.

A damaged database, or one naming files that are gone, is reported and never
rewritten: ``open`` refuses a database that fails SQLite's own check, and
``problems()`` lists missing files for ``caml al status``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import signal
import socket
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

import numpy as np

from ..errors import CAMLError
from ..io.volume import Volume, read_image, write_mask
from ..training.data import FolderSource, _natural_key, open_source

PathLike = Union[str, Path]

STATE_DIR = "caml-al"
DB_NAME = "state.sqlite"
SCHEMA_VERSION = 1

UNLABELED, PREDICTED, ACCEPTED_TRAIN, ACCEPTED_VAL = "unlabeled", "predicted", "accepted-train", "accepted-val"
STATUSES = (UNLABELED, PREDICTED, ACCEPTED_TRAIN, ACCEPTED_VAL)
ACCEPTED = (ACCEPTED_TRAIN, ACCEPTED_VAL)
#: Validation needs this many cases before a candidate is compared with the current version.
MIN_VALIDATION = 2
DEFAULT_VAL_EVERY = 4
DEFAULT_PRESET = "al-finetune"
#: How an accepted case gets its role: every ``val_every``-th to validation (auto), or as asked.
ROLES = ("auto", "train", "val")

# Geometry agreement between a label and its image (as data.py checks it when training).

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE cases (
    id TEXT PRIMARY KEY,
    position INTEGER NOT NULL,
    image TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('unlabeled', 'predicted', 'accepted-train', 'accepted-val')),
    label_file TEXT,
    accepted_at TEXT,
    accept_order INTEGER UNIQUE,
    predicted_version INTEGER REFERENCES versions(id),
    prediction_file TEXT
);
CREATE TABLE versions (
    id INTEGER PRIMARY KEY,
    weights TEXT NOT NULL,
    created_at TEXT NOT NULL,
    parent INTEGER REFERENCES versions(id),
    job INTEGER REFERENCES jobs(id),
    val_dice REAL,
    val_cases INTEGER NOT NULL DEFAULT 0,
    train_cases TEXT NOT NULL DEFAULT '[]',
    promoted INTEGER NOT NULL DEFAULT 0,
    note TEXT NOT NULL DEFAULT ''
);
CREATE TABLE scores (
    case_id TEXT NOT NULL REFERENCES cases(id),
    strategy TEXT NOT NULL,
    version INTEGER NOT NULL,
    score REAL NOT NULL,
    computed_at TEXT NOT NULL,
    PRIMARY KEY (case_id, strategy, version)
);
CREATE TABLE val_scores (
    version INTEGER NOT NULL REFERENCES versions(id),
    case_id TEXT NOT NULL REFERENCES cases(id),
    label_sha256 TEXT NOT NULL,
    dice REAL NOT NULL,
    PRIMARY KEY (version, case_id, label_sha256)
);
CREATE TABLE jobs (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('running', 'done', 'failed', 'cancelled')),
    started_at TEXT NOT NULL,
    finished_at TEXT,
    pid INTEGER,
    host TEXT,
    base_version INTEGER,
    version INTEGER,
    folder TEXT NOT NULL,
    message TEXT NOT NULL DEFAULT ''
);
"""


class CohortError(CAMLError, ValueError):
    """A problem with a cohort or a request on it; the message is one line and names what is wrong."""


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def fault_point(name: str) -> None:
    """Die here, as a crash would, when ``CAML_AL_KILL_AT`` names this point (crash-safety tests).

    The process sends itself SIGKILL: no handler, no cleanup, no flush, exactly
    what a power cut or the OOM killer does to the process at that line.
    """
    if os.environ.get("CAML_AL_KILL_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


def state_dir(root: PathLike) -> Path:
    return Path(root) / STATE_DIR


def db_path(root: PathLike) -> Path:
    return state_dir(root) / DB_NAME


def _connect(path: Path) -> sqlite3.Connection:
    """A connection that never creates the file, waits for locks and leaves transactions to us."""
    con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True, timeout=60.0, isolation_level=None)
    con.row_factory = sqlite3.Row
    con.execute("PRAGMA busy_timeout = 60000")
    con.execute("PRAGMA foreign_keys = ON")
    con.execute("PRAGMA synchronous = FULL")
    return con


def _pid_alive(pid: Optional[int], host: Optional[str]) -> bool:
    """Whether a job's process still runs (a job started on another machine is assumed to)."""
    if not pid:
        return False
    if host != socket.gethostname():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class CaseRow:
    id: str
    position: int
    image: str
    status: str
    label_file: Optional[str]
    accepted_at: Optional[str]
    accept_order: Optional[int]
    predicted_version: Optional[int]
    prediction_file: Optional[str]

    @property
    def accepted(self) -> bool:
        return self.status in ACCEPTED


class Cohort:
    """An open cohort. Use :meth:`init` once, then :meth:`open`; close with :meth:`close` or ``with``."""

    def __init__(self, root: Path, con: sqlite3.Connection, source: FolderSource) -> None:
        self.root = root
        self.con = con
        self.source = source

    # ------------------------------------------------------------------ opening
    @staticmethod
    def _source(root: Path) -> FolderSource:
        from ..training.data import DataError

        try:
            source = open_source(root)
        except DataError as exc:
            raise CohortError(str(exc)) from exc
        if not isinstance(source, FolderSource):
            raise CohortError(f"{root}: an active-learning cohort is a folder of images/ (and labels/) files, "
                              f"not the {source.layout} layout")
        return source

    @classmethod
    def init(cls, root: PathLike, val_every: int = DEFAULT_VAL_EVERY, auto_retrain: int = 0,
             preset: str = DEFAULT_PRESET, seed: int = 0, model: Optional[PathLike] = None) -> Cohort:
        """Create the state database of a cohort folder (which must hold images already).

        ``val_every``: every N-th accepted case goes to validation (0: never, unless asked);
        ``auto_retrain``: retrain after every N accepted cases (0: only when asked);
        ``model``: weights to register as version 1 (e.g. a bundled model), copied into the cohort.
        Nothing is created when a check fails.
        """
        root = Path(root)
        if not root.is_dir():
            raise CohortError(f"{root}: cohort folder not found")
        db = db_path(root)
        if db.exists():
            raise CohortError(f"{db}: this folder is already a cohort (use caml al status)")
        if val_every < 0 or auto_retrain < 0:
            raise CohortError("--val-every and --auto-retrain must be 0 or more")
        source = cls._source(root)
        if model is not None:
            from ..model.checkpoint import CheckpointError, read_checkpoint

            try:
                read_checkpoint(model)
            except (CheckpointError, FileNotFoundError) as exc:
                raise CohortError(str(exc)) from exc
        state_dir(root).mkdir(exist_ok=True)
        tmp = db.with_name(f".{DB_NAME}.init-{os.getpid()}")
        tmp.unlink(missing_ok=True)
        con = sqlite3.connect(str(tmp), isolation_level=None)
        try:
            con.execute("PRAGMA journal_mode = WAL")
            con.executescript("BEGIN;" + _SCHEMA + "COMMIT;")
            con.execute("BEGIN")
            meta = {"schema_version": SCHEMA_VERSION, "created_at": now(), "val_every": val_every,
                    "auto_retrain": auto_retrain, "preset": preset, "seed": seed, "current_version": ""}
            con.executemany("INSERT INTO meta VALUES (?, ?)", [(k, str(v)) for k, v in meta.items()])
            for n, case_id in enumerate(source.case_ids()):
                image = source.image_path(case_id).relative_to(root).as_posix()
                con.execute("INSERT INTO cases (id, position, image, status) VALUES (?, ?, ?, ?)",
                            (case_id, n, image, UNLABELED))
            con.execute("COMMIT")
        finally:
            con.close()
        # The database appears complete or not at all (a WAL checkpoint ran at close).
        for extra in ("-wal", "-shm"):
            Path(str(tmp) + extra).unlink(missing_ok=True)
        os.replace(tmp, db)
        cohort = cls.open(root)
        if model is not None:
            cohort.add_version(Path(model), parent=None, job=None, val_dice=None, val_cases=0,
                               train_cases=[], promote=True, note=f"initial model {Path(model).name}")
        return cohort

    @classmethod
    def open(cls, root: PathLike) -> Cohort:
        """Open an existing cohort; a damaged or foreign database raises CohortError and is left untouched."""
        root = Path(root)
        db = db_path(root)
        if not root.is_dir():
            raise CohortError(f"{root}: cohort folder not found")
        if not db.is_file():
            raise CohortError(f"{root}: not an active-learning cohort (no {STATE_DIR}/{DB_NAME}; "
                              "run caml al init first)")
        con = None
        try:
            con = _connect(db)
            check = con.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(check)
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            needed = {"meta", "cases", "versions", "scores", "val_scores", "jobs"}
            if not needed <= tables:
                raise sqlite3.DatabaseError(f"tables missing: {', '.join(sorted(needed - tables))}")
            row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None or int(row[0]) != SCHEMA_VERSION:
                raise sqlite3.DatabaseError(f"schema version {row[0] if row else 'missing'}, "
                                            f"expected {SCHEMA_VERSION}")
        except (sqlite3.DatabaseError, ValueError) as exc:
            if con is not None:
                con.close()
            raise CohortError(f"{db}: damaged state database ({str(exc).splitlines()[0]}); it was left as it "
                              "is: restore it from a backup") from exc
        cohort = cls(root, con, cls._source(root))
        cohort._register_new_images()
        return cohort

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> Cohort:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One change: ``BEGIN IMMEDIATE`` (waits for other writers), commit, or roll back on any error."""
        self.con.execute("BEGIN IMMEDIATE")
        try:
            yield self.con
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        self.con.execute("COMMIT")

    def _register_new_images(self) -> None:
        """Images added to images/ since the last time become unlabeled cases (nothing is ever removed)."""
        known = {r[0] for r in self.con.execute("SELECT id FROM cases")}
        new = [c for c in self.source.case_ids() if c not in known]
        if not new:
            return
        with self.transaction() as con:
            known = {r[0] for r in con.execute("SELECT id FROM cases")}
            start = con.execute("SELECT COALESCE(MAX(position), -1) + 1 FROM cases").fetchone()[0]
            for n, case_id in enumerate(c for c in new if c not in known):
                image = self.source.image_path(case_id).relative_to(self.root).as_posix()
                con.execute("INSERT INTO cases (id, position, image, status) VALUES (?, ?, ?, ?)",
                            (case_id, start + n, image, UNLABELED))

    # ------------------------------------------------------------------ settings
    def meta(self, key: str) -> str:
        row = self.con.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return "" if row is None else str(row[0])

    @property
    def val_every(self) -> int:
        return int(self.meta("val_every") or 0)

    @property
    def auto_retrain(self) -> int:
        return int(self.meta("auto_retrain") or 0)

    @property
    def preset(self) -> str:
        return self.meta("preset") or DEFAULT_PRESET

    @property
    def seed(self) -> int:
        return int(self.meta("seed") or 0)

    def set_settings(self, **values: Any) -> None:
        allowed = {"val_every", "auto_retrain", "preset"}
        unknown = set(values) - allowed
        if unknown:
            raise CohortError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        with self.transaction() as con:
            for key, value in values.items():
                con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, str(value)))

    # ------------------------------------------------------------------ cases
    @property
    def state_dir(self) -> Path:
        return state_dir(self.root)

    def path(self, relative: Optional[str]) -> Optional[Path]:
        return None if not relative else self.root / relative

    def cases(self, statuses: Optional[Sequence[str]] = None) -> List[CaseRow]:
        rows = self.con.execute("SELECT * FROM cases ORDER BY position").fetchall()
        cases = [CaseRow(**dict(r)) for r in rows]
        return [c for c in cases if statuses is None or c.status in statuses]

    def case(self, case_id: str) -> CaseRow:
        row = self.con.execute("SELECT * FROM cases WHERE id = ?", (case_id,)).fetchone()
        if row is None:
            known = [c.id for c in self.cases()]
            shown = ", ".join(sorted(known, key=_natural_key)[:5]) + (" ..." if len(known) > 5 else "")
            raise CohortError(f"{self.root}: no case {case_id!r} in the cohort (cases: {shown})")
        return CaseRow(**dict(row))

    def image_path(self, case_id: str) -> Path:
        return self.root / self.case(case_id).image

    def read_image(self, case_id: str) -> Volume:
        path = self.image_path(case_id)
        if not path.is_file():
            raise CohortError(f"{path}: image of case {case_id!r} is gone")
        return read_image(path)

    def training_ids(self) -> List[str]:
        return [c.id for c in self.cases([ACCEPTED_TRAIN])]

    def validation_ids(self) -> List[str]:
        return [c.id for c in self.cases([ACCEPTED_VAL])]

    def candidate_ids(self) -> List[str]:
        """Cases a strategy may pick: not accepted yet, with their image present."""
        return [c.id for c in self.cases([UNLABELED, PREDICTED]) if (self.root / c.image).is_file()]

    def _label_target(self, case_id: str) -> Path:
        existing = self.source.label_path(case_id) if case_id in self.source.case_ids() else None
        if existing is not None:
            return existing  # keep the user's format: two label files for one case would stop training
        return self.source.labels_dir / f"{case_id}.nrrd"

    def accept(self, case_id: str, label: Volume, role: str = "auto") -> Dict[str, Any]:
        """Store ``label`` (a binary mask on the case image's grid) as the case's label and accept it.

        ``role``: ``auto`` (every ``val_every``-th accepted case goes to validation), ``train`` or
        ``val``. A case accepted before keeps its role for good (a training case never becomes a
        validation case); accepting it again replaces its label. The label file is renamed into
        place inside the transaction that records it.
        """
        if role not in ROLES:
            raise CohortError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
        row = self.case(case_id)
        image = self.read_image(case_id)
        _check_label_geometry(label, image, case_id)
        values = np.unique(np.asarray(label.array))
        if not set(values.tolist()) <= {0, 1}:
            shown = ", ".join(f"{v:g}" for v in values[:6].astype(float))
            raise CohortError(f"label of case {case_id!r} must be binary (0 = background, 1 = left atrium); "
                              f"found values {shown}")
        target = self._label_target(case_id)
        with self.transaction() as con:
            row = CaseRow(**dict(con.execute("SELECT * FROM cases WHERE id = ?", (case_id,)).fetchone()))
            if row.accepted:
                status = row.status
                wanted = {"train": ACCEPTED_TRAIN, "val": ACCEPTED_VAL}.get(role, status)
                if wanted != status:
                    raise CohortError(f"case {case_id!r} is {status}: a case's role never changes once accepted "
                                      "(accept it again without --role to replace its label)")
                order = row.accept_order
            else:
                order = con.execute("SELECT COALESCE(MAX(accept_order), 0) + 1 FROM cases").fetchone()[0]
                if role == "auto":
                    every = self.val_every
                    status = ACCEPTED_VAL if every and order % every == 0 else ACCEPTED_TRAIN
                else:
                    status = ACCEPTED_VAL if role == "val" else ACCEPTED_TRAIN
            fault_point("accept-before-write")
            write_mask(np.asarray(label.array), image, target)
            fault_point("accept-after-write")
            con.execute("UPDATE cases SET status = ?, label_file = ?, accepted_at = ?, accept_order = ? "
                        "WHERE id = ?", (status, target.relative_to(self.root).as_posix(), now(), order, case_id))
        fault_point("accept-after-commit")
        return {"case": case_id, "status": status, "label": str(target), "accept_order": order,
                "retrain_due": self.retrain_due()}

    def set_prediction(self, case_id: str, version: int, prediction_file: Path) -> None:
        """Record that ``version`` predicted the case (its mask is in ``prediction_file``)."""
        with self.transaction() as con:
            row = con.execute("SELECT status FROM cases WHERE id = ?", (case_id,)).fetchone()
            status = row[0] if row[0] in ACCEPTED else PREDICTED
            con.execute("UPDATE cases SET status = ?, predicted_version = ?, prediction_file = ? WHERE id = ?",
                        (status, version, prediction_file.relative_to(self.root).as_posix(), case_id))

    def label(self, case_id: str) -> np.ndarray:
        row = self.case(case_id)
        path = self.path(row.label_file)
        if not row.accepted or path is None:
            raise CohortError(f"case {case_id!r} has no accepted label")
        if not path.is_file():
            raise CohortError(f"{path}: label file of accepted case {case_id!r} is gone")
        return (read_image(path).array > 0.5).astype(np.uint8)

    # ------------------------------------------------------------------ versions
    def current_version(self) -> Optional[int]:
        value = self.meta("current_version")
        return int(value) if value else None

    def version(self, version: int) -> Dict[str, Any]:
        row = self.con.execute("SELECT * FROM versions WHERE id = ?", (int(version),)).fetchone()
        if row is None:
            known = ", ".join(str(v["id"]) for v in self.versions()) or "none yet"
            raise CohortError(f"no model version {version} in this cohort (versions: {known})")
        return self._version_dict(row)

    def _version_dict(self, row: sqlite3.Row) -> Dict[str, Any]:
        d = dict(row)
        d["train_cases"] = json.loads(d["train_cases"])
        d["promoted"] = bool(d["promoted"])
        d["current"] = d["id"] == self.current_version()
        d["weights_path"] = str(self.root / d["weights"])
        return d

    def versions(self) -> List[Dict[str, Any]]:
        return [self._version_dict(r) for r in self.con.execute("SELECT * FROM versions ORDER BY id")]

    def weights(self, version: Optional[int] = None) -> Path:
        """The weights file of ``version`` (default: the current one); CohortError if none or gone."""
        if version is None:
            version = self.current_version()
            if version is None:
                raise CohortError(f"{self.root}: no model version yet: init with --model, or accept cases and "
                                  "run caml al retrain")
        path = self.root / self.version(version)["weights"]
        if not path.is_file():
            raise CohortError(f"{path}: weights of version {version} are gone")
        return path

    def add_version(self, weights: Path, parent: Optional[int], job: Optional[int], val_dice: Optional[float],
                    val_cases: int, train_cases: Sequence[str], promote: bool, note: str = "",
                    val_scores: Optional[Dict[int, Dict[str, float]]] = None,
                    job_message: str = "") -> int:
        """Copy ``weights`` into versions/ and record the version (and its job's end) in one transaction."""
        import shutil

        from ..io.files import atomic_output

        versions_dir = self.state_dir / "versions"
        name = f"job-{job:04d}.pt" if job is not None else f"initial-{now().replace(':', '')}.pt"
        target = versions_dir / name
        with atomic_output(target) as tmp:
            shutil.copyfile(weights, tmp)
        fault_point("version-before-commit")
        with self.transaction() as con:
            cur = con.execute(
                "INSERT INTO versions (weights, created_at, parent, job, val_dice, val_cases, train_cases, promoted, "
                "note) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (target.relative_to(self.root).as_posix(), now(), parent, job, val_dice, val_cases,
                 json.dumps(list(train_cases)), int(promote), note))
            version = int(cur.lastrowid)
            for v, per_case in (val_scores or {}).items():
                self._store_val_scores(con, version if v == -1 else v, per_case)
            if promote:
                con.execute("INSERT OR REPLACE INTO meta VALUES ('current_version', ?)", (str(version),))
            if job is not None:
                con.execute("UPDATE jobs SET state = 'done', finished_at = ?, version = ?, message = ? WHERE id = ?",
                            (now(), version, job_message, job))
        return version

    def use(self, version: int) -> Dict[str, Any]:
        """Make ``version`` current (a rollback or a manual promotion)."""
        self.weights(int(version))  # exists, and its file is there
        with self.transaction() as con:
            con.execute("INSERT OR REPLACE INTO meta VALUES ('current_version', ?)", (str(int(version)),))
        return self.version(int(version))

    # ------------------------------------------------------------------ validation scores
    def _label_key(self, case_id: str) -> str:
        """SHA-256 of the case's label file: a cached score is for these exact label voxels."""
        import hashlib

        path = self.path(self.case(case_id).label_file)
        if path is None or not path.is_file():
            return ""
        return hashlib.sha256(path.read_bytes()).hexdigest()

    def cached_val_scores(self, version: int, case_ids: Sequence[str]) -> Dict[str, float]:
        """Dice of ``version`` on validation cases, for their labels as they are now (a changed label is rescored)."""
        out = {}
        for case_id in case_ids:
            row = self.con.execute("SELECT dice FROM val_scores WHERE version = ? AND case_id = ? AND label_sha256 = ?",
                                   (version, case_id, self._label_key(case_id))).fetchone()
            if row is not None:
                out[case_id] = float(row[0])
        return out

    def _store_val_scores(self, con: sqlite3.Connection, version: int, per_case: Dict[str, float]) -> None:
        for case_id, value in per_case.items():
            con.execute("INSERT OR REPLACE INTO val_scores VALUES (?, ?, ?, ?)",
                        (version, case_id, self._label_key(case_id), float(value)))

    def store_val_scores(self, version: int, per_case: Dict[str, float]) -> None:
        with self.transaction() as con:
            self._store_val_scores(con, version, per_case)

    # ------------------------------------------------------------------ selection scores
    def cached_scores(self, strategy: str, version: int) -> Dict[str, float]:
        rows = self.con.execute("SELECT case_id, score FROM scores WHERE strategy = ? AND version = ?",
                                (strategy, version))
        return {r[0]: float(r[1]) for r in rows}

    def score_times(self, strategy: str, version: int) -> Dict[str, str]:
        rows = self.con.execute("SELECT case_id, computed_at FROM scores WHERE strategy = ? AND version = ?",
                                (strategy, version))
        return {r[0]: r[1] for r in rows}

    def store_scores(self, version: int, scores: Dict[str, Dict[str, float]]) -> None:
        """``scores``: ``{case_id: {strategy: score}}``, stored in one transaction."""
        stamp = now()
        with self.transaction() as con:
            for case_id, by_strategy in scores.items():
                for strategy, value in by_strategy.items():
                    con.execute("INSERT OR REPLACE INTO scores VALUES (?, ?, ?, ?, ?)",
                                (case_id, strategy, version, float(value), stamp))

    # ------------------------------------------------------------------ jobs
    def jobs(self) -> List[Dict[str, Any]]:
        out = []
        for r in self.con.execute("SELECT * FROM jobs ORDER BY id"):
            d = dict(r)
            if d["state"] == "running" and not _pid_alive(d["pid"], d["host"]):
                d["state"] = "interrupted"  # its process is gone: killed or crashed (the row is not rewritten)
            out.append(d)
        return out

    def running_job(self) -> Optional[Dict[str, Any]]:
        return next((j for j in self.jobs() if j["state"] == "running"), None)

    def start_job(self, kind: str, base_version: Optional[int], resume_job: Optional[int] = None) -> Dict[str, Any]:
        """Claim the cohort for a job (one at a time); a new row, or the resumed one taken over."""
        with self.transaction() as con:
            for r in con.execute("SELECT * FROM jobs WHERE state = 'running'").fetchall():
                if _pid_alive(r["pid"], r["host"]) and r["pid"] != os.getpid():
                    raise CohortError(f"{self.root}: retrain job {r['id']} is running (pid {r['pid']}); wait for it "
                                      "or cancel it with caml al retrain --cancel")
            if resume_job is not None:
                con.execute("UPDATE jobs SET state = 'running', pid = ?, host = ?, finished_at = NULL, message = '' "
                            "WHERE id = ?", (os.getpid(), socket.gethostname(), resume_job))
                job_id = resume_job
            else:
                cur = con.execute("INSERT INTO jobs (kind, state, started_at, pid, host, base_version, folder) "
                                  "VALUES (?, 'running', ?, ?, ?, ?, '')",
                                  (kind, now(), os.getpid(), socket.gethostname(), base_version))
                job_id = int(cur.lastrowid)
                folder = f"{STATE_DIR}/jobs/job-{job_id:04d}"
                con.execute("UPDATE jobs SET folder = ? WHERE id = ?", (folder, job_id))
            row = con.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return dict(row)

    def end_job(self, job_id: int, state: str, message: str = "") -> None:
        with self.transaction() as con:
            con.execute("UPDATE jobs SET state = ?, finished_at = ?, message = ? WHERE id = ?",
                        (state, now(), message[:500], job_id))

    # ------------------------------------------------------------------ status
    def retrain_due(self) -> bool:
        """True when auto-retrain is on and N cases were accepted for training since the current version."""
        every = self.auto_retrain
        if not every:
            return False
        current = self.current_version()
        trained = set(self.version(current)["train_cases"]) if current is not None else set()
        return len([c for c in self.training_ids() if c not in trained]) >= every

    def problems(self) -> List[str]:
        """Files the database names that are gone, labels it does not know, interrupted jobs."""
        out = []
        for c in self.cases():
            if not (self.root / c.image).is_file():
                out.append(f"case {c.id}: image {c.image} is gone")
            if c.accepted and not (c.label_file and (self.root / c.label_file).is_file()):
                out.append(f"case {c.id}: accepted label {c.label_file} is gone")
        for v in self.versions():
            if not (self.root / v["weights"]).is_file():
                out.append(f"version {v['id']}: weights {v['weights']} are gone")
        accepted = {c.id for c in self.cases(ACCEPTED)}
        for case_id in self.source.case_ids():
            label = self.source.label_path(case_id)
            if label is not None and case_id not in accepted:
                out.append(f"case {case_id}: label file {label.relative_to(self.root).as_posix()} is not "
                           "recorded as accepted (an interrupted accept, or added by hand): accept it or remove it")
        for j in self.jobs():
            if j["state"] == "interrupted":
                out.append(f"retrain job {j['id']} was interrupted (its process is gone); "
                           "caml al retrain --resume continues it")
        return out

    def status(self) -> Dict[str, Any]:
        counts = {s: 0 for s in STATUSES}
        for c in self.cases():
            counts[c.status] += 1
        n_val = counts[ACCEPTED_VAL]
        current = self.current_version()
        notes = []
        if n_val < MIN_VALIDATION:
            notes.append(f"only {n_val} validation case(s): until there are {MIN_VALIDATION}, a retrain promotes "
                         "its new version without comparing it with the current one")
        if current is None:
            notes.append("no model version yet")
        if self.retrain_due():
            notes.append(f"retrain due: {self.auto_retrain} or more cases accepted since the current version")
        return {"cohort": str(self.root), "cases": len(self.cases()), "counts": counts,
                "current_version": current, "versions": len(self.versions()), "val_every": self.val_every,
                "auto_retrain": self.auto_retrain, "preset": self.preset, "retrain_due": self.retrain_due(),
                "running_job": (self.running_job() or {}).get("id"), "notes": notes, "problems": self.problems()}


def _check_label_geometry(label: Volume, image: Volume, case_id: str) -> None:
    problems = image.grid_differences(label)
    if problems:
        raise CohortError(f"label of case {case_id!r} is not on its image's grid: " + "; ".join(problems)
                          + " (label, image)")
