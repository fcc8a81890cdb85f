"""Writing files so that a failed or cancelled job leaves nothing half-written, and a crash nothing lost."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator, List, Sequence, Tuple, Union

PathLike = Union[str, Path]


def _temporary_name_parts(path: Path) -> Tuple[str, str]:
    """The prefix and suffix of ``path``'s temporaries: hidden, named after it, with its endings
    (``.mask-k3j2.seg.nrrd`` for ``mask.seg.nrrd``), so writers that pick a format from the name work."""
    return f".{path.name.split('.')[0]}-", "".join(path.suffixes) or ".tmp"


def _temporary_beside(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix, suffix = _temporary_name_parts(path)
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
    os.close(fd)
    return Path(tmp)


def leftover_temporaries(path: PathLike) -> Iterator[Path]:
    """Temporaries of ``atomic_output(path)`` that a killed writer left beside ``path``."""
    path = Path(path)
    prefix, suffix = _temporary_name_parts(path)
    if path.parent.is_dir():
        yield from path.parent.glob(f"{prefix}*{suffix}")


def fsync_path(path: PathLike, directory: bool = False) -> None:
    """Flush a file's (or a folder's entries') data to the disk.

    A rename is atomic but, without this, a power cut shortly after it can
    leave the new name pointing at a file whose blocks were never written
    (an empty or truncated checkpoint: hours of training lost). Folders
    cannot be opened for fsync on Windows; there the rename is already
    durable, so nothing is done.
    """
    if directory and os.name == "nt":
        return
    fd = os.open(str(path), os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if directory else os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_outputs(paths: Sequence[PathLike], commit: bool = False) -> Iterator[List[Path]]:
    """Yield temporary paths beside ``paths``; rename them all onto ``paths`` only if the block succeeds.

    The temporary files keep the final suffixes (``.seg.nrrd``, ``.nii.gz``) so
    writers that pick a format from the name still work. Each is fsynced,
    then all are renamed (``os.replace``: atomic on one file system, readers
    see the old file or the new one), then their folders are fsynced. A
    cancel signal is honoured just before the renames (a unit boundary), never
    between them: the outputs are all new or all old.
    ``commit``: these are the job's final outputs; once they are in place a
    cancel no longer applies (``progress.commit_job``).
    """
    from ..progress import check_cancel, commit_job

    targets = [Path(p) for p in paths]
    temps: List[Path] = []
    try:
        for target in targets:
            temps.append(_temporary_beside(target))
        yield temps
        # mkstemp creates the file private (0600); give the result the usual permissions.
        umask = os.umask(0)
        os.umask(umask)
        for tmp in temps:
            os.chmod(tmp, 0o666 & ~umask)
            fsync_path(tmp)
        check_cancel()  # the last boundary before the outputs appear
        for tmp, target in zip(temps, targets):
            os.replace(tmp, target)
        for folder in dict.fromkeys(t.parent for t in targets):
            fsync_path(folder, directory=True)
        if commit:
            commit_job()
    finally:
        for tmp in temps:
            if tmp.exists():
                tmp.unlink()


@contextlib.contextmanager
def atomic_output(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` (durably) only if the block succeeds."""
    with atomic_outputs([path]) as (tmp,):
        yield tmp


def check_utf8_name(path: PathLike, what: str = "file") -> None:
    """Refuse a path that is not valid UTF-8 text (SimpleITK's C++ aborts the process on one)."""
    from ..errors import UserError

    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        shown = str(path).encode("utf-8", "backslashreplace").decode("ascii", "replace")
        raise UserError(f"{shown}: {what} name is not valid UTF-8; rename it") from None
