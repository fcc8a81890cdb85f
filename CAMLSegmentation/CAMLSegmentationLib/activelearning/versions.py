"""A cohort's model versions (weights files with their checksum) and the scores cached per version.

``VersionStore`` is a part of ``Cohort`` (``class Cohort(VersionStore, JobRows)``): it uses the
cohort's ``root``, ``con``, ``transaction()``, ``meta()`` and case reads, and keeps its methods
callable on the cohort as ``cohort.add_version(...)``, ``cohort.weights()`` and so on.

- versions: ``versions``, ``version``, ``current_version``, ``weights`` (checked against the
  SHA-256 recorded at commit), ``add_version`` (file first, then one transaction), ``use``;
- validation scores (``val_scores``): the Dice of a version on a validation case, for the label
  file as it was scored (its SHA-256), so a changed label is scored again;
- selection scores (``scores``): a strategy's score of a case under a version (``strategies``).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .database import CohortError, fault_point, file_signature, now, sha256_file, state_dir

#: Stands for the version ``add_version`` is recording, before SQLite numbers it (a candidate's scores).
NEW_VERSION = -1
#: Version numbers are SQLite integers.
MAX_VERSION = 2 ** 63 - 1
#: A validation score and the SHA-256 of the label file it was computed against.
ScoredCase = Tuple[float, str]


class VersionStore:
    """The versions and score caches of a ``Cohort`` (see the module docstring)."""

    root: Path
    con: sqlite3.Connection
    #: (weights path, file signature) -> SHA-256, so an unchanged file is hashed once per open cohort.
    _hashes: Dict[Tuple[str, str], str]

    @classmethod
    def _copy_version_file(cls, root: Path, weights: Path, name: str) -> Path:
        from ..io.files import atomic_output

        target = state_dir(root) / "versions" / name
        with atomic_output(target) as tmp:
            shutil.copyfile(weights, tmp)
        return target

    # ------------------------------------------------------------------ versions
    def current_version(self) -> Optional[int]:
        value = self.meta("current_version")
        return int(value) if value else None

    def version(self, version: int) -> Dict[str, Any]:
        if not 1 <= int(version) <= MAX_VERSION:
            raise CohortError(f"version {version} is out of range: versions are numbered from 1")
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

    def weights(self, version: Optional[int] = None, verify: bool = True) -> Path:
        """The weights file of ``version`` (default: the current one), checked against the SHA-256
        recorded when it was committed; CohortError if there is none, it is gone, or it changed."""
        if version is None:
            version = self.current_version()
            if version is None:
                raise CohortError(f"{self.root}: no model version yet: init with --model, or accept cases and "
                                  "run caml al retrain")
        record = self.version(version)
        path = self.root / record["weights"]
        if not path.is_file():
            raise CohortError(f"{path}: weights of version {version} are gone")
        if verify and record.get("sha256"):
            key = (str(path), file_signature(path))
            actual = self._hashes.get(key) or sha256_file(path)
            if actual != record["sha256"]:
                raise CohortError(f"{path}: checksum mismatch for version {version}: the cohort recorded sha256 "
                                  f"{record['sha256'][:12]}..., the file has {actual[:12]}... (corrupt or replaced "
                                  "file; caml al use another version, or restore the file)")
            self._hashes[key] = actual
        return path

    def add_version(self, weights: Path, parent: Optional[int], job: Optional[int], val_dice: Optional[float],
                    val_cases: int, train_cases: Sequence[str], promote: bool, note: str = "",
                    val_scores: Optional[Dict[int, Dict[str, ScoredCase]]] = None,
                    job_message: str = "", final: bool = False) -> int:
        """Copy ``weights`` into versions/ and record the version, its checksum (and its job's end)
        in one transaction. ``val_scores``: ``{version: {case: (dice, label sha256)}}``, ``NEW_VERSION`` for this one.
        ``final``: the commit is the command's outcome (a late cancel no longer undoes it)."""
        name = f"job-{job:04d}.pt" if job is not None else f"initial-{now().replace(':', '')}.pt"
        target = self._copy_version_file(self.root, weights, name)
        digest = sha256_file(target)
        fault_point("version-before-commit")
        with self.transaction(final=final) as con:
            cur = con.execute(
                "INSERT INTO versions (weights, created_at, parent, job, val_dice, val_cases, train_cases, promoted, "
                "note, sha256) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (target.relative_to(self.root).as_posix(), now(), parent, job, val_dice, val_cases,
                 json.dumps(list(train_cases)), int(promote), note, digest))
            version = int(cur.lastrowid)
            for v, per_case in (val_scores or {}).items():
                self._store_val_scores(con, version if v == NEW_VERSION else v, per_case)
            if promote:
                con.execute("INSERT OR REPLACE INTO meta VALUES ('current_version', ?)", (str(version),))
            if job is not None:
                con.execute("UPDATE jobs SET state = 'done', finished_at = ?, version = ?, message = ? WHERE id = ?",
                            (now(), version, job_message, job))
        fault_point("version-after-commit")
        return version

    def use(self, version: int, final: bool = False) -> Dict[str, Any]:
        """Make ``version`` current (a rollback or a manual promotion)."""
        self.weights(int(version))  # exists, and its file is the one committed
        with self.transaction(final=final) as con:
            con.execute("INSERT OR REPLACE INTO meta VALUES ('current_version', ?)", (str(int(version)),))
        return self.version(int(version))

    # ------------------------------------------------------------------ validation scores
    def label_sha256(self, case_id: str) -> str:
        """SHA-256 of the case's label file as it is now ("" when it has none)."""
        path = self.path(self.case(case_id).label_file)
        if path is None or not path.is_file():
            return ""
        return sha256_file(path)

    def read_label(self, case_id: str) -> Tuple[np.ndarray, str]:
        """The case's label and the SHA-256 of exactly the file read (an accept may replace it meanwhile:
        the file is hashed before and after reading, and read again until both agree)."""
        for _ in range(10):
            before = self.label_sha256(case_id)
            label = self.label(case_id)
            if self.label_sha256(case_id) == before:
                return label, before
        raise CohortError(f"label of case {case_id!r} keeps changing while it is read; try again")

    def cached_val_scores(self, version: int, case_ids: Sequence[str]) -> Dict[str, float]:
        """Dice of ``version`` on validation cases, for their labels as they are now (a changed label is rescored)."""
        out = {}
        for case_id in case_ids:
            row = self.con.execute("SELECT dice FROM val_scores WHERE version = ? AND case_id = ? AND label_sha256 = ?",
                                   (version, case_id, self.label_sha256(case_id))).fetchone()
            if row is not None:
                out[case_id] = float(row[0])
        return out

    @staticmethod
    def _store_val_scores(con: sqlite3.Connection, version: int, per_case: Dict[str, ScoredCase]) -> None:
        for case_id, (value, label_sha) in per_case.items():
            con.execute("INSERT OR REPLACE INTO val_scores VALUES (?, ?, ?, ?)",
                        (version, case_id, label_sha, float(value)))

    def store_val_scores(self, version: int, per_case: Dict[str, ScoredCase]) -> None:
        """``per_case``: ``{case: (dice, sha256 of the label file that was scored)}``."""
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
