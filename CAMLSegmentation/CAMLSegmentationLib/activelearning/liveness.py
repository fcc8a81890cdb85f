"""Whether a cohort's retrain job still runs, in a way that cannot lie.

A pid alone lies twice: after a crash or a reboot the number is reused by an
unrelated process (a cancel would kill it), and a job recorded by another
machine on a shared drive cannot be checked at all (it would block the cohort
for good). So a job holds ``caml-al/job.lock`` for its whole lifetime: the
operating system releases the lock when the process ends, however it ends
(kill -9, power cut), and the lock is seen from every machine that mounts the
folder. The lock says *whether* the job runs; the pid, the host and the
process's start time recorded with the job say *which* process it is, so a
cancel signals only that process, and only on its own machine.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Optional

LOCK_NAME = "job.lock"


def this_host() -> str:
    return socket.gethostname()


def process_identity(pid: int) -> Optional[str]:
    """What tells this process from a later one with the same pid: boot id and start time.

    Linux: ``/proc/<pid>/stat`` field 22 (start time in clock ticks since boot) with the
    boot id, so a reboot changes it too; other Unix systems: ``ps -o lstart``. None when
    the process does not exist or cannot be identified (then it is never signalled).
    """
    try:
        stat = Path(f"/proc/{int(pid)}/stat").read_text()
        start = stat.rsplit(")", 1)[1].split()[19]
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot}:{start}"
    except (OSError, IndexError, ValueError):
        pass
    if sys.platform.startswith("linux") or os.name != "posix":
        return None
    try:
        out = subprocess.run(["ps", "-o", "lstart=", "-p", str(int(pid))], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


class JobLock:
    """The lock a retrain job holds for its lifetime (``filelock``: flock on Unix, LockFileEx on Windows)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / LOCK_NAME
        self._lock = None

    def acquire(self, timeout: float = 10.0) -> bool:
        """Take the lock for this process; False when another process holds it.

        The timeout rides over another command's momentary :meth:`held` probe.
        """
        import filelock

        lock = filelock.FileLock(str(self.path), is_singleton=False)
        try:
            lock.acquire(timeout=timeout)
        except filelock.Timeout:
            return False
        self._lock = lock
        return True

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    @property
    def owned(self) -> bool:
        return self._lock is not None

    def held(self) -> Optional[bool]:
        """Whether a process (this one included) holds the lock; None when that cannot be told
        (a read-only folder, where no job can write anyway)."""
        import filelock

        if not self.path.exists():
            return False
        probe = filelock.FileLock(str(self.path), is_singleton=False)
        try:
            probe.acquire(timeout=0)
        except filelock.Timeout:
            return True
        except OSError:
            return None
        probe.release()
        return False
