"""What went wrong with the disk, told apart: a read-only folder, a full disk, a failing disk.

SQLite, the operating system and torch's writer each say it their own way
(``attempt to write a readonly database``, ``OSError(ENOSPC)``, ``PytorchStreamWriter
failed writing file``); none of them means the database is damaged, and none
should be reported as if it were. Also here: the temporary files a killed
process leaves behind, removed by the next command that owns their folder.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import time
from pathlib import Path
from typing import Iterable, Optional

READ_ONLY, FULL, IO = "read-only", "full", "io"

_ERRNO_KIND = {errno.EROFS: READ_ONLY, errno.EACCES: READ_ONLY, errno.EPERM: READ_ONLY,
               errno.ENOSPC: FULL, errno.EDQUOT: FULL, errno.EFBIG: FULL, errno.EIO: IO}


#: How torch's checkpoint writer (PytorchStreamWriter, C++) reports a write the disk refused.
_TORCH_WRITE_FAILURES = ("file write failed", "no space left", "iostream error", "inline_container.cc",
                         "pytorchstreamwriter failed")


def _chain(exc: BaseException) -> Iterable[BaseException]:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]


def storage_kind(exc: BaseException) -> Optional[str]:
    """READ_ONLY, FULL or IO when ``exc`` (or what caused it) is the disk's refusal; else None."""
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in _ERRNO_KIND:
            return _ERRNO_KIND[e.errno]
        text = str(e).lower()
        if isinstance(e, sqlite3.OperationalError):
            if "readonly" in text or "read-only" in text:
                return READ_ONLY
            if "disk is full" in text:
                return FULL
            if "disk i/o error" in text:
                return IO
        if isinstance(e, RuntimeError) and any(m in text for m in _TORCH_WRITE_FAILURES):
            return FULL  # torch's zip writer hides the errno: a write it could not finish
    return None


def describe(exc: BaseException, where: Path) -> Optional[str]:
    """One line saying what the disk refused, or None when ``exc`` is not a storage problem."""
    kind = storage_kind(exc)
    if kind is None:
        return None
    detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if kind == READ_ONLY:
        return (f"{where}: the cohort folder is read-only ({detail}); caml al status and caml al versions work "
                "on it, this command needs write access")
    if kind == FULL:
        return f"{where}: no space left on the disk ({detail}); free some space and run the command again"
    return f"{where}: the disk failed to read or write ({detail}); check the disk, then run the command again"


def pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def remove_stale_temporaries(folders: Iterable[Path], older_than_s: float = 0.0) -> list:
    """Delete the hidden temporary files (``.name-XXXX.ext``) that an atomic write of a killed
    process left in ``folders``; call it only while no other process may be writing there."""
    removed = []
    now = time.time()
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if not (path.name.startswith(".") and "-" in path.name and path.is_file()):
                continue
            try:
                if now - path.stat().st_mtime >= older_than_s:
                    path.unlink()
                    removed.append(path)
            except OSError:
                pass
    return removed
