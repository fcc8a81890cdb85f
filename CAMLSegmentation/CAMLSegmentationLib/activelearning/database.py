"""A cohort's state database: where it lives, its schema and upgrades, connecting to it and checking it.

Also what every row written through it shares: ``CohortError`` (the one-line error of every
cohort module), ``now()`` (the stamp the rows carry), the checksums and file signatures rows
record, and ``fault_point`` (where the crash-safety tests kill a process between a file and
the row that records it). The rest of the cohort (``cohort``, ``versions``, ``jobs``) builds on
these; nothing here knows cases, versions or jobs beyond their tables.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import os
import signal
import sqlite3
from pathlib import Path
from typing import Union

from ..errors import CAMLError
from . import storage

PathLike = Union[str, Path]

STATE_DIR = "caml-al"
DB_NAME = "state.sqlite"
#: 2: versions.sha256, jobs.process_start, image_problems; 3: cases.served_at, corrections.
#: An earlier cohort is upgraded when opened, in one transaction.
SCHEMA_VERSION = 3

#: Each accepted case's correction effort (schema version 3).
_CORRECTIONS = """
CREATE TABLE corrections (
    case_id TEXT PRIMARY KEY REFERENCES cases(id),
    proposal_version INTEGER,
    dice REAL,
    voxels_changed INTEGER,
    seconds REAL,
    recorded_at TEXT NOT NULL
);
"""

SCHEMA = """
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
    prediction_file TEXT,
    served_at TEXT
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
    note TEXT NOT NULL DEFAULT '',
    sha256 TEXT
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
    message TEXT NOT NULL DEFAULT '',
    process_start TEXT
);
CREATE TABLE image_problems (
    case_id TEXT PRIMARY KEY REFERENCES cases(id),
    signature TEXT NOT NULL,
    reason TEXT NOT NULL,
    noted_at TEXT NOT NULL
);
""" + _CORRECTIONS

#: From schema version 1 to 2, in one transaction (the version files are hashed as they are then).
_UPGRADE_1_2 = """
ALTER TABLE versions ADD COLUMN sha256 TEXT;
ALTER TABLE jobs ADD COLUMN process_start TEXT;
CREATE TABLE image_problems (
    case_id TEXT PRIMARY KEY REFERENCES cases(id),
    signature TEXT NOT NULL,
    reason TEXT NOT NULL,
    noted_at TEXT NOT NULL
);
"""

#: From schema version 2 to 3: when ``next`` served each case, and the correction effort of accepts.
_UPGRADE_2_3 = """
ALTER TABLE cases ADD COLUMN served_at TEXT;
""" + _CORRECTIONS


class CohortError(CAMLError, ValueError):
    """A problem with a cohort or a request on it; the message is one line and names what is wrong."""


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def fault_point(name: str) -> None:
    """Die here, as a crash would, when ``CAML_AL_KILL_AT`` names this point (crash-safety tests).

    The process sends itself SIGKILL: no handler, no cleanup, no flush, exactly
    what a power cut or the OOM killer does to the process at that line.
    ``CAML_AL_KILL_SIGNAL=SIGTERM`` sends a cancel instead (a user's Cancel landing there).
    """
    if os.environ.get("CAML_AL_KILL_AT") == name:
        os.kill(os.getpid(), getattr(signal, os.environ.get("CAML_AL_KILL_SIGNAL", "SIGKILL")))


def sha256_file(path: PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_signature(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def state_dir(root: PathLike) -> Path:
    return Path(root) / STATE_DIR


def db_path(root: PathLike) -> Path:
    return state_dir(root) / DB_NAME


def remove_stale_init_files(folder: Path) -> None:
    """What a killed ``init`` left: its temporary database (its pid is gone)."""
    if not folder.is_dir():
        return
    for path in folder.glob(f".{DB_NAME}.init-*"):
        pid = path.name.rsplit("-", 1)[-1].split(".")[0]
        if pid.isdigit() and not storage.pid_running(int(pid)):
            with contextlib.suppress(OSError):
                path.unlink()


def connect(path: Path, read_only: bool = False) -> sqlite3.Connection:
    """A connection that never creates the file, waits for locks and leaves transactions to us.

    ``read_only``: for a folder nobody can write (``immutable``: SQLite then needs neither
    the write-ahead log's index nor a lock file beside the database).
    """
    query = "mode=ro&immutable=1" if read_only else "mode=rw"
    con = sqlite3.connect(f"{path.resolve().as_uri()}?{query}", uri=True, timeout=60.0, isolation_level=None)
    con.row_factory = sqlite3.Row
    con.execute("PRAGMA busy_timeout = 60000")
    con.execute("PRAGMA foreign_keys = ON")
    con.execute("PRAGMA synchronous = FULL")
    return con


def damaged(db: Path, why: str) -> CohortError:
    return CohortError(f"{db}: damaged state database ({why}); it was left as it is: restore it from a backup "
                       "of the cohort, or move caml-al/ aside and run caml al init again")


def check_database(con: sqlite3.Connection) -> int:
    """SQLite's own check, the tables, the schema version; raises sqlite3.DatabaseError when damaged."""
    check = con.execute("PRAGMA quick_check").fetchone()[0]
    if check != "ok":
        raise sqlite3.DatabaseError(check)
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    needed = {"meta", "cases", "versions", "scores", "val_scores", "jobs"}
    if not needed <= tables:
        raise sqlite3.DatabaseError(f"tables missing: {', '.join(sorted(needed - tables))}")
    row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    try:
        version = int(row[0]) if row is not None else -1
    except ValueError:
        version = -1
    if not 1 <= version <= SCHEMA_VERSION:
        raise sqlite3.DatabaseError(f"schema version {row[0] if row else 'missing'}, expected {SCHEMA_VERSION}")
    # The tables each schema version added (an earlier version's are added by the upgrade).
    added = {"image_problems": 2, "corrections": 3}
    missing = sorted(t for t, since in added.items() if version >= since and t not in tables)
    if missing:
        raise sqlite3.DatabaseError(f"tables missing: {', '.join(missing)}")
    return version


def upgrade(root: Path, con: sqlite3.Connection, version: int) -> None:
    """From schema ``version`` to ``SCHEMA_VERSION`` in one transaction: a crash leaves the
    cohort as it was. From 1, the version files get the checksum they have now; from 2, the
    cases accepted before have no correction record (their effort shows as unknown)."""
    con.execute("BEGIN IMMEDIATE")
    try:
        steps = [script for since, script in ((1, _UPGRADE_1_2), (2, _UPGRADE_2_3)) if version <= since]
        for statement in ";".join(steps).split(";"):
            if statement.strip():
                con.execute(statement)
        if version < 2:
            for row in con.execute("SELECT id, weights FROM versions").fetchall():
                path = root / row[1]
                if path.is_file():
                    con.execute("UPDATE versions SET sha256 = ? WHERE id = ?", (sha256_file(path), row[0]))
        fault_point("upgrade-before-commit")
        con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))
        con.execute("COMMIT")
    except BaseException:
        if con.in_transaction:
            con.execute("ROLLBACK")
        raise
