"""A cohort: a folder of images in the generic layout, its labels, and its state in SQLite.

Layout (the one ``caml train --data`` reads, so the trainer uses the cohort as it is)::

    <cohort>/images/<id>.<ext>        the user's images (any format the engine reads)
    <cohort>/labels/<id>.nrrd         accepted labels, written atomically on the image's grid
    <cohort>/caml-al/state.sqlite     the state database (SQLite, WAL)
    <cohort>/caml-al/versions/        one weights file per model version
    <cohort>/caml-al/predictions/     predicted masks (and uncertainty maps) per case and version
    <cohort>/caml-al/jobs/job-NNNN/   one folder per retrain job (case lists, training run)

Each accepted case keeps its correction effort (table ``corrections``, MONAI Label's
"dice(final, original)"): the Dice between the proposal ``next`` served (the prediction file
of that case) and the accepted label, the voxels that differ, and the seconds from the last
time ``next`` served the case to the accept. A falling effort is how a user sees the loop pay.

Every change is one SQLite transaction (``BEGIN IMMEDIATE``, so two processes
serialise instead of failing, with a busy timeout). Files are written before
the transaction that records them commits, by an atomic rename, so a process
killed at any moment leaves the database as it was before the change or as
it is after it, never in between; at worst a file nobody refers to.

A damaged database, or one naming files that are gone, is reported and never
rewritten: ``open`` refuses a database that fails SQLite's own check, and
``problems()`` lists missing files for ``caml al status``. A read-only folder
or a full disk is told as such (``storage``), never as a damaged database;
``open(..., read_only=True)`` reads a cohort that cannot be written.

Version files carry the SHA-256 recorded when they were committed and are
checked before use; a case id is text a list file and a shell carry (UTF-8,
no control characters); an image that cannot be read or segmented is noted
and skipped, never allowed to block the cohort.

The cohort is split by idea; this module is the entry point and re-exports the names that moved:

- ``database``: where the state lives, the schema and its upgrades, connecting and checking,
  the damaged-database message, ``CohortError``, ``now``, ``fault_point``, ``sha256_file``;
- ``case_ids``: which names can be case ids, how a file name is shown, the seed range;
- ``versions``: ``VersionStore``, the model versions, their weights and checksums, and the
  validation-score and selection-score caches per version;
- ``jobs``: ``JobRows``, the retrain job rows (one at a time, interrupted jobs);
- here: ``Cohort`` itself (opening, settings, cases, accepts and their correction effort, status),
  made of ``VersionStore`` and ``JobRows``, so ``cohort.add_version(...)`` and
  ``cohort.start_job(...)`` are called on the cohort as before.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import CAMLError, MissingFileError, SizeLimitError
from ..io.volume import ImageError, Volume, read_image, validate_volume, write_mask
from ..training.data import FolderSource, _natural_key, open_source
from . import storage
from .case_ids import SEED_RANGE, case_id_problem, check_seed, shown_name
from .database import (
    DB_NAME,
    SCHEMA,
    SCHEMA_VERSION,
    STATE_DIR,
    CohortError,
    PathLike,
    check_database,
    connect,
    damaged,
    db_path,
    fault_point,
    file_signature,
    now,
    remove_stale_init_files,
    sha256_file,
    state_dir,
    upgrade,
)
from .jobs import INTERRUPTED, JobRows
from .liveness import JobLock
from .versions import MAX_VERSION, NEW_VERSION, ScoredCase, VersionStore

#: What moved to the modules above stays importable from here (callers import ``activelearning.cohort``).
__all__ = [
    "ACCEPTED", "ACCEPTED_TRAIN", "ACCEPTED_VAL", "CORRECTION_KEYS", "DB_NAME", "DEFAULT_PRESET",
    "DEFAULT_VAL_EVERY", "IMAGE_ERRORS", "INTERRUPTED", "MAX_VERSION", "MIN_VALIDATION", "NEW_VERSION",
    "PREDICTED", "PROMOTION_MARGIN", "ROLES", "SCHEMA_VERSION", "SEED_RANGE", "STATE_DIR", "STATUSES",
    "UNLABELED", "CaseRow", "Cohort", "CohortError", "PathLike", "ScoredCase", "case_id_problem",
    "check_seed", "db_path", "fault_point", "now", "sha256_file", "shown_name", "state_dir",
]

#: What an image that cannot be read or segmented raises (noted, then skipped by next and retrain).
IMAGE_ERRORS = (ImageError, SizeLimitError, MissingFileError)

UNLABELED, PREDICTED, ACCEPTED_TRAIN, ACCEPTED_VAL = "unlabeled", "predicted", "accepted-train", "accepted-val"
STATUSES = (UNLABELED, PREDICTED, ACCEPTED_TRAIN, ACCEPTED_VAL)
ACCEPTED = (ACCEPTED_TRAIN, ACCEPTED_VAL)
#: The promotion rule (``retrain.compare_on_validation``): with a current version, a candidate is compared
#: with it only on at least this many validation cases (fewer: it is kept as a version, not promoted), and
#: promoted when it is better on more of them than it is worse and its mean per-case Dice gain is at least
#: ``PROMOTION_MARGIN``. Three cases is the fewest on which "better on more cases than worse" means two
#: against one; half a Dice point is about the case-to-case noise of one retrain on LA, so a tie or a
#: gain within the noise keeps the version the user already has.
MIN_VALIDATION = 3
PROMOTION_MARGIN = 0.005
DEFAULT_VAL_EVERY = 4
DEFAULT_PRESET = "al-finetune"
#: How an accepted case gets its role: every ``val_every``-th to validation (auto), or as asked.
ROLES = ("auto", "train", "val")

# Geometry agreement between a label and its image (as data.py checks it when training).

#: The keys of one accepted case's correction effort (``status()["correction"]``), in this order.
CORRECTION_KEYS = ("case", "accept_order", "proposal_version", "dice", "voxels_changed", "seconds")


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
    served_at: Optional[str] = None

    @property
    def accepted(self) -> bool:
        return self.status in ACCEPTED


class Cohort(VersionStore, JobRows):
    """An open cohort. Use :meth:`init` once, then :meth:`open`; close with :meth:`close` or ``with``."""

    def __init__(self, root: Path, con: sqlite3.Connection, source: FolderSource, read_only: bool = False) -> None:
        self.root = root
        self.con = con
        self.source = source
        self.read_only = read_only
        self.job_lock = JobLock(state_dir(root))
        self._hashes: Dict[Tuple[str, str], str] = {}

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
        ``preset``: a bundled preset's name, or a file (copied into the cohort when it lies outside,
        so moving the cohort or the file never breaks a retrain);
        ``model``: weights to register as version 1 (e.g. a bundled model), copied into the cohort.
        All or nothing: the database appears in place only complete, with its first version committed.
        """
        root = Path(root)
        if not root.is_dir():
            raise CohortError(f"{root}: cohort folder not found")
        db = db_path(root)
        if db.exists():
            raise CohortError(f"{db}: this folder is already a cohort (use caml al status)")
        if val_every < 0 or auto_retrain < 0:
            raise CohortError("--val-every and --auto-retrain must be 0 or more")
        check_seed(seed)
        source = cls._source(root)
        for case_id in source.case_ids():
            problem = case_id_problem(case_id)
            if problem is not None:
                raise CohortError(f"{shown_name(source.image_path(case_id))}: {problem}; a case id must be text a "
                                  "case list and a shell can carry: rename the file")
        if model is not None:
            from ..model.checkpoint import CheckpointError, read_checkpoint

            try:
                read_checkpoint(model)
            except (CheckpointError, FileNotFoundError) as exc:
                raise CohortError(str(exc)) from exc
        folder = state_dir(root)
        folder.mkdir(exist_ok=True)
        remove_stale_init_files(folder)
        # Nothing refers to an initial version's file before the database is in place.
        for orphan in (folder / "versions").glob("initial-*.pt"):
            orphan.unlink()
        stored_preset = cls._stored_preset(root, preset)
        tmp = db.with_name(f".{DB_NAME}.init-{os.getpid()}")
        tmp.unlink(missing_ok=True)
        weights_file = None
        done = False
        try:
            if model is not None:
                weights_file = cls._copy_version_file(root, Path(model), f"initial-{now().replace(':', '')}.pt")
            con = sqlite3.connect(str(tmp), isolation_level=None)
            try:
                con.execute("PRAGMA journal_mode = WAL")
                con.execute("PRAGMA foreign_keys = ON")
                con.executescript("BEGIN;" + SCHEMA + "COMMIT;")
                con.execute("BEGIN")
                meta = {"schema_version": SCHEMA_VERSION, "created_at": now(), "val_every": val_every,
                        "auto_retrain": auto_retrain, "preset": stored_preset, "seed": seed, "current_version": ""}
                con.executemany("INSERT INTO meta VALUES (?, ?)", [(k, str(v)) for k, v in meta.items()])
                for n, case_id in enumerate(source.case_ids()):
                    image = source.image_path(case_id).relative_to(root).as_posix()
                    con.execute("INSERT INTO cases (id, position, image, status) VALUES (?, ?, ?, ?)",
                                (case_id, n, image, UNLABELED))
                if weights_file is not None:
                    con.execute("INSERT INTO versions (id, weights, created_at, promoted, note, sha256) "
                                "VALUES (1, ?, ?, 1, ?, ?)",
                                (weights_file.relative_to(root).as_posix(), now(),
                                 f"initial model {Path(model).name}", sha256_file(weights_file)))  # type: ignore
                    con.execute("UPDATE meta SET value = '1' WHERE key = 'current_version'")
                con.execute("COMMIT")
            finally:
                con.close()
            # The database appears complete or not at all (a WAL checkpoint ran at close).
            for extra in ("-wal", "-shm"):
                Path(str(tmp) + extra).unlink(missing_ok=True)
            fault_point("version-before-commit")
            os.replace(tmp, db)
            done = True
        finally:
            if not done:
                for path in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm"), weights_file):
                    if path is not None:
                        with contextlib.suppress(OSError):
                            path.unlink()
        return cls.open(root)

    @staticmethod
    def _stored_preset(root: Path, preset: str) -> str:
        """A bundled preset's name as it is; a file as a path relative to the cohort (copied in if outside)."""
        path = Path(preset)
        if path.suffix != ".json":
            return preset
        resolved = path.resolve()
        try:
            return resolved.relative_to(root.resolve()).as_posix()
        except ValueError:
            pass
        target = state_dir(root) / "presets" / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(resolved, target)
        return target.relative_to(root).as_posix()

    @classmethod
    def open(cls, root: PathLike, read_only: bool = False) -> Cohort:
        """Open an existing cohort; a damaged or foreign database raises CohortError and is left untouched.

        ``read_only``: for commands that only read (status, versions): a cohort whose folder
        cannot be written is then opened as it is (new images are not registered).
        """
        root = Path(root)
        db = db_path(root)
        if not root.is_dir():
            raise CohortError(f"{root}: cohort folder not found")
        if not db.is_file():
            raise CohortError(f"{root}: not an active-learning cohort (no {STATE_DIR}/{DB_NAME}; "
                              "run caml al init first)")
        con = None
        readable_only = False
        try:
            try:
                con = connect(db)
                version = check_database(con)
            except sqlite3.Error as exc:
                if con is not None:
                    con.close()
                    con = None
                if not (read_only and storage.storage_kind(exc) == storage.READ_ONLY):
                    raise
                con = connect(db, read_only=True)
                version = check_database(con)
                readable_only = True
            if version != SCHEMA_VERSION:
                if readable_only:
                    raise CohortError(f"{db}: made by an earlier caml (schema version {version}); open it once "
                                      "with write access to upgrade it")
                upgrade(root, con, version)
        except sqlite3.Error as exc:
            if con is not None:
                con.close()
            message = storage.describe(exc, db)
            if message is not None:
                raise CohortError(message) from None
            raise damaged(db, str(exc).splitlines()[0]) from exc
        except BaseException:
            if con is not None:
                con.close()
            raise
        cohort = cls(root, con, cls._source(root), read_only=readable_only)
        if not readable_only:
            try:
                cohort._register_new_images()
            except CohortError as exc:
                if not (read_only and "read-only" in str(exc)):
                    cohort.close()
                    raise
                cohort.read_only = True
        return cohort

    def close(self) -> None:
        self.job_lock.release()
        self.con.close()

    def __enter__(self) -> Cohort:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def storage_error(self, exc: BaseException) -> Optional[CohortError]:
        """A one-line CohortError for a read-only folder, a full or failing disk; None for anything else."""
        message = storage.describe(exc, self.root)
        return None if message is None else CohortError(message)

    @contextlib.contextmanager
    def transaction(self, final: bool = False) -> Iterator[sqlite3.Connection]:
        """One change: ``BEGIN IMMEDIATE`` (waits for other writers), commit, or roll back on any error.

        The COMMIT's own failure (a full disk, a deferred constraint) rolls back too. A cancel
        signal during the COMMIT is held back; with ``final`` the commit is the command's outcome
        (``progress.commit_job``): once it is in, a late cancel no longer reports "cancelled".
        """
        from ..progress import commit_job, deferred_cancel

        try:
            self.con.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise (self.storage_error(exc) or exc) from None
        try:
            yield self.con
            with deferred_cancel(raise_at_end=not final):
                self.con.execute("COMMIT")
                if final:
                    commit_job()
        except BaseException as exc:
            if self.con.in_transaction:
                self.con.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                error = self.storage_error(exc)
                if error is not None:
                    raise error from None
            raise

    def _register_new_images(self) -> None:
        """Images added to images/ since the last time become unlabeled cases (nothing is ever removed).

        An image whose name cannot be a case id is left out (``status`` names it)."""
        known = {r[0] for r in self.con.execute("SELECT id FROM cases")}
        new = [c for c in self.source.case_ids() if c not in known and case_id_problem(c) is None]
        if not new:
            return
        with self.transaction() as con:
            known = {r[0] for r in con.execute("SELECT id FROM cases")}
            start = con.execute("SELECT COALESCE(MAX(position), -1) + 1 FROM cases").fetchone()[0]
            for n, case_id in enumerate(c for c in new if c not in known):
                image = self.source.image_path(case_id).relative_to(self.root).as_posix()
                con.execute("INSERT INTO cases (id, position, image, status) VALUES (?, ?, ?, ?)",
                            (case_id, start + n, image, UNLABELED))

    def unusable_names(self) -> List[str]:
        """Images in images/ whose names cannot be case ids, with why (they are not cases)."""
        return [f"{shown_name(self.source.image_path(c).relative_to(self.root))}: {problem}; rename the file"
                for c in self.source.case_ids() for problem in [case_id_problem(c)] if problem is not None]

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
    def preset_source(self) -> str:
        """What ``load_preset`` takes: the stored name, or the stored cohort-relative path made absolute."""
        preset = self.preset
        return str(self.root / preset) if Path(preset).suffix == ".json" and not Path(preset).is_absolute() \
            else preset

    @property
    def seed(self) -> int:
        return int(self.meta("seed") or 0)

    def set_settings(self, **values: Any) -> None:
        allowed = {"val_every", "auto_retrain", "preset"}
        unknown = set(values) - allowed
        if unknown:
            raise CohortError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        if "preset" in values:
            values["preset"] = self._stored_preset(self.root, str(values["preset"]))
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
        """The case's image, checked as the predictor checks it (ImageError naming the file)."""
        path = self.image_path(case_id)
        if not path.is_file():
            raise CohortError(f"{path}: image of case {case_id!r} is gone")
        volume = read_image(path)
        validate_volume(volume, path)
        return volume

    # ------------------------------------------------------------------ images that cannot be used
    def note_image_problem(self, case_id: str, reason: str) -> None:
        """Remember that the case's image (as it is now) cannot be read or segmented; it is skipped
        by ``next`` and ``retrain`` until the file changes."""
        path = self.image_path(case_id)
        signature = file_signature(path) if path.is_file() else "gone"
        with self.transaction() as con:
            con.execute("INSERT OR REPLACE INTO image_problems VALUES (?, ?, ?, ?)",
                        (case_id, signature, reason.splitlines()[0][:500], now()))

    def image_problems(self) -> Dict[str, str]:
        """``{case id: why}`` for images noted as unusable that have not changed since."""
        out = {}
        for r in self.con.execute("SELECT case_id, signature, reason FROM image_problems"):
            path = self.image_path(r[0])
            current = file_signature(path) if path.is_file() else "gone"
            if current == r[1]:
                out[r[0]] = r[2]
        return out

    def training_ids(self) -> List[str]:
        return [c.id for c in self.cases([ACCEPTED_TRAIN])]

    def validation_ids(self) -> List[str]:
        return [c.id for c in self.cases([ACCEPTED_VAL])]

    def candidate_ids(self) -> List[str]:
        """Cases a strategy may pick: not accepted yet, with their image present and not noted as unusable."""
        bad = self.image_problems()
        return [c.id for c in self.cases([UNLABELED, PREDICTED]) if (self.root / c.image).is_file() and c.id not in bad]

    def _label_target(self, case_id: str) -> Path:
        existing = self.source.label_path(case_id) if case_id in self.source.case_ids() else None
        if existing is not None:
            return existing  # keep the user's format: two label files for one case would stop training
        return self.source.labels_dir / f"{case_id}.nrrd"

    def accept(self, case_id: str, label: Volume, role: str = "auto", force: bool = False,
               final: bool = False) -> Dict[str, Any]:
        """Store ``label`` (a binary mask on the case image's grid) as the case's label and accept it.

        ``role``: ``auto`` (every ``val_every``-th accepted case goes to validation), ``train`` or
        ``val``. A case accepted before keeps its role for good (a training case never becomes a
        validation case); accepting it again replaces its label. The label file is renamed into
        place inside the transaction that records it. An empty or all-foreground label is
        refused (it would be trained on as it is) unless ``force``. ``final``: the commit is
        the command's outcome (a late cancel no longer undoes it).
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
        foreground = int(np.count_nonzero(np.asarray(label.array)))
        if not force and foreground in (0, np.asarray(label.array).size):
            what = "empty (no left-atrium voxel)" if foreground == 0 else "all foreground (every voxel is atrium)"
            raise CohortError(f"label of case {case_id!r} is {what}: it would be trained on as it is; "
                              "check the file, or pass --force to accept it anyway")
        target = self._label_target(case_id)
        label_array = (np.asarray(label.array) > 0).astype(np.uint8)
        proposal_version, effort = self._correction_effort(row, label_array)
        with self.transaction(final=final) as con:
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
            accepted_at = now()
            seconds = _seconds_between(row.served_at, accepted_at)
            con.execute("UPDATE cases SET status = ?, label_file = ?, accepted_at = ?, accept_order = ? "
                        "WHERE id = ?", (status, target.relative_to(self.root).as_posix(), accepted_at, order,
                                         case_id))
            con.execute("INSERT OR REPLACE INTO corrections VALUES (?, ?, ?, ?, ?, ?)",
                        (case_id, proposal_version, effort[0], effort[1], seconds, accepted_at))
        fault_point("accept-after-commit")
        correction = dict(zip(CORRECTION_KEYS, (case_id, order, proposal_version, *effort, seconds)))
        return {"case": case_id, "status": status, "label": str(target), "accept_order": order,
                "retrain_due": self.retrain_due(), "correction": correction}

    def _correction_effort(self, row: CaseRow, label: np.ndarray
                           ) -> Tuple[Optional[int], Tuple[Optional[float], Optional[int]]]:
        """(proposal version, (Dice between the served proposal and ``label``, voxels that differ)).

        ``(None, (None, None))`` when no proposal was served for the case, and the version with
        ``(None, None)`` when its file is gone, unreadable or on another grid (nothing to compare).
        """
        from ..inference.metrics import dice

        path = self.path(row.prediction_file)
        if row.predicted_version is None or path is None:
            return None, (None, None)
        try:
            proposal = read_image(path).array > 0.5
        except (OSError, CAMLError, RuntimeError):
            return row.predicted_version, (None, None)
        if proposal.shape != label.shape:
            return row.predicted_version, (None, None)
        truth = label > 0
        return row.predicted_version, (dice(proposal, truth), int(np.count_nonzero(proposal != truth)))

    def corrections(self) -> List[Dict[str, Any]]:
        """The correction effort of every accepted case, in accept order: one dict with exactly
        ``CORRECTION_KEYS`` each, ``None`` where it is unknown (no proposal served, or accepted
        before the cohort recorded efforts)."""
        rows = self.con.execute(
            "SELECT c.id, c.accept_order, r.proposal_version, r.dice, r.voxels_changed, r.seconds FROM cases c "
            "LEFT JOIN corrections r ON r.case_id = c.id WHERE c.status IN (?, ?) ORDER BY c.accept_order",
            ACCEPTED).fetchall()
        return [dict(zip(CORRECTION_KEYS, tuple(r))) for r in rows]

    def serve(self, case_id: str, version: Optional[int] = None, prediction_file: Optional[Path] = None) -> None:
        """Record that ``next`` served the case now, with the proposal ``version`` predicted (its
        mask in ``prediction_file``) when there is a model; the accept measures its effort from here."""
        with self.transaction() as con:
            con.execute("UPDATE cases SET served_at = ? WHERE id = ?", (now(), case_id))
            if prediction_file is not None:
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
            if label is not None and case_id not in accepted and case_id_problem(case_id) is None:
                out.append(f"case {case_id}: label file {label.relative_to(self.root).as_posix()} is not "
                           "recorded as accepted (an interrupted accept, or added by hand): accept it or remove it")
        jobs = self.jobs()
        if jobs and jobs[-1]["state"] == INTERRUPTED:
            j = jobs[-1]
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
        if n_val < MIN_VALIDATION and current is not None:
            notes.append(f"only {n_val} validation case(s): until there are {MIN_VALIDATION} (accept "
                         f"{MIN_VALIDATION - n_val} more as validation), a retrain keeps its new version without "
                         "promoting it")
        latest = self.versions()[-1] if self.versions() else None
        if latest is not None and latest["id"] != current and latest["job"] is not None and not latest["promoted"]:
            notes.append(f"latest retrain: version {latest['id']} {latest['note']}")
        if current is None:
            notes.append("no model version yet")
        if self.retrain_due():
            notes.append(f"retrain due: {self.auto_retrain} or more cases accepted since the current version")
        for case_id, why in sorted(self.image_problems().items()):
            notes.append(f"case {case_id} is skipped by next and retrain: {why}")
        notes += [f"not a case: {n}" for n in self.unusable_names()]
        if self.read_only:
            notes.append("read-only: the cohort folder cannot be written (status and versions work)")
        return {"cohort": str(self.root), "cases": len(self.cases()), "counts": counts,
                "current_version": current, "versions": len(self.versions()), "val_every": self.val_every,
                "auto_retrain": self.auto_retrain, "preset": self.preset, "retrain_due": self.retrain_due(),
                "running_job": (self.running_job() or {}).get("id"), "notes": notes, "problems": self.problems(),
                "correction": self.corrections()}


def _seconds_between(start: Optional[str], end: str) -> Optional[float]:
    """Seconds from one ``now()`` stamp to another; None without a start."""
    if not start:
        return None
    delta = _dt.datetime.fromisoformat(end) - _dt.datetime.fromisoformat(start)
    return round(delta.total_seconds(), 3)


def _check_label_geometry(label: Volume, image: Volume, case_id: str) -> None:
    problems = image.grid_differences(label)
    if problems:
        raise CohortError(f"label of case {case_id!r} is not on its image's grid: " + "; ".join(problems)
                          + " (label, image)")

