"""A cohort's job rows: one retrain at a time, who runs it, and jobs whose process is gone.

``JobRows`` is a part of ``Cohort`` (``class Cohort(VersionStore, JobRows)``): it uses the
cohort's ``root``, ``job_lock`` and ``transaction()``, and keeps its methods callable on the
cohort (``cohort.start_job(...)``, ``cohort.jobs()``). A job holds the cohort's job lock
(``liveness.JobLock``) for its process's lifetime; a row left 'running' by a process that is
gone reads as interrupted, and is recorded so by the next job (``caml al retrain --resume``).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any, Dict, List, Optional

from . import storage
from .database import STATE_DIR, CohortError, now, remove_stale_init_files
from .liveness import JobLock, process_identity, this_host

#: A job row marked dead (its process ended without saying how) keeps state 'failed' with this message start.
INTERRUPTED = "interrupted"


class JobRows:
    """The job rows of a ``Cohort`` (see the module docstring)."""

    root: Path
    con: sqlite3.Connection
    job_lock: JobLock

    def _job_alive(self, row: Dict[str, Any], newest_running: Optional[int]) -> bool:
        """Whether a 'running' row's process still runs: the job lock is held, and this row is the
        one that took it (the newest running row); where the lock cannot be probed (a read-only
        folder), the recorded process is checked on this host."""
        held = self.job_lock.owned or self.job_lock.held()
        if held is None:
            if row["host"] != this_host():
                return True
            identity = process_identity(int(row["pid"] or 0)) if row["pid"] else None
            return identity is not None and identity == row.get("process_start")
        return bool(held) and row["id"] == newest_running

    def jobs(self) -> List[Dict[str, Any]]:
        rows = [dict(r) for r in self.con.execute("SELECT * FROM jobs ORDER BY id")]
        running = [r["id"] for r in rows if r["state"] == "running"]
        newest = max(running) if running else None
        for d in rows:
            if d["state"] == "running" and not self._job_alive(d, newest):
                d["state"] = INTERRUPTED  # its process is gone: killed or crashed (the row is not rewritten)
            elif d["state"] == "failed" and d["message"].startswith(INTERRUPTED):
                d["state"] = INTERRUPTED
        return rows

    def running_job(self) -> Optional[Dict[str, Any]]:
        return next((j for j in self.jobs() if j["state"] == "running"), None)

    def start_job(self, kind: str, base_version: Optional[int], resume_job: Optional[int] = None) -> Dict[str, Any]:
        """Claim the cohort for a job (one at a time): take the job lock for this process's lifetime,
        then a new row, or the resumed one taken over. Rows left 'running' by dead processes are
        marked interrupted."""
        self.state_dir.mkdir(exist_ok=True)
        if not self.job_lock.acquire():
            job = self.running_job() or {}
            raise CohortError(f"{self.root}: retrain job {job.get('id', '?')} is running (pid {job.get('pid', '?')} "
                              f"on {job.get('host', '?')}); wait for it or cancel it with caml al retrain --cancel")
        try:
            with self.transaction() as con:
                self._mark_interrupted(con, "a later job found its process gone")
                identity = (os.getpid(), this_host(), process_identity(os.getpid()))
                if resume_job is not None:
                    con.execute("UPDATE jobs SET state = 'running', pid = ?, host = ?, process_start = ?, "
                                "finished_at = NULL, message = '' WHERE id = ?", (*identity, resume_job))
                    job_id = resume_job
                else:
                    cur = con.execute("INSERT INTO jobs (kind, state, started_at, pid, host, process_start, "
                                      "base_version, folder) VALUES (?, 'running', ?, ?, ?, ?, ?, '')",
                                      (kind, now(), *identity, base_version))
                    job_id = int(cur.lastrowid)
                    folder = f"{STATE_DIR}/jobs/job-{job_id:04d}"
                    con.execute("UPDATE jobs SET folder = ? WHERE id = ?", (folder, job_id))
                row = con.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        except BaseException:
            self.job_lock.release()
            raise
        # Nothing else writes in the cohort's own folders while the lock is held.
        folders = [self.state_dir / "versions", self.state_dir / "predictions"]
        folders += [p / "train" for p in (self.state_dir / "jobs").glob("job-*")]
        storage.remove_stale_temporaries(folders)
        remove_stale_init_files(self.state_dir)
        return dict(row)

    @staticmethod
    def _mark_interrupted(con: sqlite3.Connection, why: str) -> List[int]:
        rows = con.execute("SELECT id, pid, host FROM jobs WHERE state = 'running'").fetchall()
        for r in rows:
            con.execute("UPDATE jobs SET state = 'failed', finished_at = ?, message = ? WHERE id = ?",
                        (now(), f"{INTERRUPTED}: its process (pid {r['pid']} on {r['host']}) ended without "
                                f"finishing ({why}); caml al retrain --resume continues it", r["id"]))
        return [int(r["id"]) for r in rows]

    def mark_dead_jobs_interrupted(self, why: str) -> List[int]:
        """Record running jobs whose process is gone as interrupted (only when no job holds the lock)."""
        if not self.job_lock.acquire(timeout=1.0):
            return []
        try:
            with self.transaction() as con:
                return self._mark_interrupted(con, why)
        finally:
            self.job_lock.release()

    def end_job(self, job_id: int, state: str, message: str = "") -> None:
        with self.transaction() as con:
            con.execute("UPDATE jobs SET state = ?, finished_at = ?, message = ? WHERE id = ?",
                        (state, now(), message[:500], job_id))
