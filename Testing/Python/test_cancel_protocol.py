"""The cancel protocol (#25 risk 6): a signal sets a flag, the work checks it at unit boundaries.

The handler raises ``Cancelled`` at once only while the job has not started
its work; afterwards a signal never lands in the middle of a statement (a
library's transaction, a finaliser) but at the next ``check_cancel``. The
end-to-end cases (SIGTERM at any moment, exact resume) are in test_hostile.py.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
from pathlib import Path

import pytest
from CAMLSegmentationLib import progress
from CAMLSegmentationLib.io.files import atomic_output
from CAMLSegmentationLib.progress import Cancelled, CancelToken

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGTERM") or os.name == "nt",
                                reason="sends itself SIGTERM (POSIX)")


@pytest.fixture
def handler():
    """Install the handler for work that has begun; restore pytest's afterwards."""
    assert threading.current_thread() is threading.main_thread()
    previous = progress.install_cancel_handler(None)
    yield
    progress.restore_handlers(previous)
    progress.install_cancel_handler(None)  # a fresh job state for the tests that follow...
    progress.restore_handlers(previous)  # ...with pytest's handlers


def _signal_self() -> None:
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(1000):  # bytecode for a handler to run in
        pass


def test_a_signal_during_work_waits_for_the_next_boundary(handler, tmp_path: Path) -> None:
    con = sqlite3.connect(str(tmp_path / "db.sqlite"))
    con.execute("CREATE TABLE t (x INTEGER)")
    with con:  # a library's transaction: the signal must not cut it
        con.execute("INSERT INTO t VALUES (1)")
        _signal_self()
        con.execute("INSERT INTO t VALUES (2)")
    assert [r[0] for r in con.execute("SELECT x FROM t")] == [1, 2]
    con.close()
    assert progress.cancel_requested()
    with pytest.raises(Cancelled, match="terminated by a signal"):
        progress.check_cancel()
    # Raised once: the clean-up that follows (a resumable checkpoint) passes the later checks.
    progress.check_cancel()
    with atomic_output(tmp_path / "last.pt") as tmp:
        tmp.write_text("kept")
    assert (tmp_path / "last.pt").read_text() == "kept"


def test_a_second_signal_changes_nothing(handler) -> None:
    _signal_self()
    _signal_self()
    with pytest.raises(Cancelled):
        progress.check_cancel()
    _signal_self()
    progress.check_cancel()


def test_before_the_work_starts_a_signal_raises_at_once() -> None:
    previous = progress.install_cancel_handler(None, starting=True)
    try:
        with pytest.raises(Cancelled):
            _signal_self()
        # Dropped (as in a finaliser) or not, the work never starts.
        with pytest.raises(Cancelled):
            progress.begin_work()
    finally:
        progress.restore_handlers(previous)
    previous = progress.install_cancel_handler(None, starting=True)
    try:
        progress.begin_work()
        _signal_self()  # work has begun: no raise here
        with pytest.raises(Cancelled):
            progress.check_cancel()
    finally:
        progress.restore_handlers(previous)


def test_checks_inside_a_held_unit_leave_the_signal_for_its_end(handler) -> None:
    with pytest.raises(Cancelled):
        with progress.deferred_cancel():
            _signal_self()
            progress.check_cancel()  # e.g. a window batch of the trainer's validation
            reached_the_end = True
    assert reached_the_end
    # A token (not a signal) is still honoured inside.
    token = CancelToken()
    token.cancel()
    with progress.deferred_cancel(raise_at_end=False):
        with pytest.raises(Cancelled, match="by the user"):
            progress.check_cancel(token)


def test_a_signal_before_the_outputs_appear_leaves_none(handler, tmp_path: Path) -> None:
    with pytest.raises(Cancelled):
        with atomic_output(tmp_path / "mask.nii.gz") as tmp:
            tmp.write_text("half")
            _signal_self()
    assert list(tmp_path.iterdir()) == []


def test_once_committed_or_told_a_signal_changes_nothing(handler, tmp_path: Path) -> None:
    progress.commit_job()
    _signal_self()
    assert not progress.cancel_requested()
    progress.check_cancel()
    assert progress.emit_final({"event": "done"})
    assert not progress.emit_final({"event": "cancelled"})  # one final event per job


def test_terminate_as_cancel_honours_a_signal_no_boundary_saw() -> None:
    with pytest.raises(Cancelled):
        with progress.terminate_as_cancel():
            _signal_self()
    assert signal.getsignal(signal.SIGTERM) is not progress._on_signal  # restored


def test_earlier_names_still_work() -> None:
    """Callers on other branches use these names (the cohort's transaction, caml al)."""
    for name in ("raise_if_signalled", "raise_pending_cancel", "deferred_cancel", "commit_job", "emit_final",
                 "terminate_as_cancel", "install_cancel_handler", "restore_handlers", "cancel_requested"):
        assert callable(getattr(progress, name)), name


def test_the_slicer_job_finds_the_temporaries_atomic_output_makes(tmp_path: Path) -> None:
    """One naming of temporaries (#25 item 9): a job killed mid-write has its leftovers found by the
    Slicer-side clean-up, which imports the definition without importing torch."""
    import subprocess
    import sys

    from CAMLSegmentationLib.io.files import leftover_temporaries

    for name in ("mask.seg.nrrd", "u.nii.gz", "last.pt", "noext"):
        with atomic_output(tmp_path / name) as tmp:
            assert list(leftover_temporaries(tmp_path / name)) == [tmp]
    assert list(leftover_temporaries(tmp_path / "mask.seg.nrrd")) == []
    probe = ("import sys; import CAMLSegmentationLib.slicer.jobs as j; "
             "assert j.leftover_temporaries; print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)), timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr
