"""Progress and cancellation protocol shared by training, inference and the CLI.

Long-running engine functions take ``progress`` (a callable receiving a
``ProgressEvent``) and ``cancel`` (a ``CancelToken``), and call
``check_cancel(cancel)`` between units of work, which also honours a cancel
signal (SIGTERM, Ctrl-C) that reached the process. The CLI turns events
into a progress bar for people or into JSON lines (``--progress json``) that
the Slicer panel reads from the subprocess's stdout.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, Iterator, Optional, TextIO


class Cancelled(BaseException):
    """Raised when the job is cancelled: a CancelToken was set, or the process got SIGTERM or SIGINT.

    A ``BaseException``, like ``KeyboardInterrupt``: library code that catches
    ``Exception`` (to turn a foreign file into a friendly error, say) cannot
    swallow a cancel and carry on writing outputs.
    """


class CancelToken:
    """Thread-safe flag checked by engine loops between units of work."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled("cancelled by the user")


@dataclass
class ProgressEvent:
    """One step of a long job: ``done`` of ``total`` units of ``stage``; extra numbers in ``values``."""

    stage: str
    done: int
    total: int
    message: str = ""
    values: Dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        d = asdict(self)
        d["event"] = "progress"
        d["time"] = round(time.time(), 3)
        return json.dumps(d, default=float)


ProgressCallback = Callable[[ProgressEvent], None]


def json_lines(stream: Optional[TextIO] = None) -> ProgressCallback:
    """A callback that writes each event as one JSON line and flushes (for a parent process)."""
    out = stream if stream is not None else sys.stdout

    def emit(event: ProgressEvent) -> None:
        out.write(event.to_json() + "\n")
        out.flush()

    return emit


def text_bar(stream: Optional[TextIO] = None, width: int = 30) -> ProgressCallback:
    """A callback drawing a one-line progress bar per stage (for people at a terminal)."""
    out = stream if stream is not None else sys.stderr
    interactive = hasattr(out, "isatty") and out.isatty()
    last: Dict[str, float] = {}

    def emit(event: ProgressEvent) -> None:
        frac = event.done / event.total if event.total else 1.0
        now = time.time()
        finished = event.done >= event.total
        # Rewrite in place on a terminal; elsewhere (logs) print at most every 10 s.
        if not interactive and not finished and now - last.get(event.stage, 0.0) < 10.0:
            return
        last[event.stage] = now
        filled = int(round(width * frac))
        extra = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                         for k, v in event.values.items())
        line = (f"{event.stage:<10} [{'#' * filled}{'.' * (width - filled)}] "
                f"{event.done}/{event.total} {event.message} {extra}").rstrip()
        if interactive:
            out.write("\r" + line + ("\n" if finished else ""))
        else:
            out.write(line + "\n")
        out.flush()

    return emit


def no_progress(event: ProgressEvent) -> None:
    """The default callback: ignore events."""


# --------------------------------------------------------------------------- cancel signals
#
# A cancel signal (SIGTERM from a parent, Ctrl-C) only sets a flag; the engine looks at it at the
# boundaries of its units of work (a training iteration, a batch of windows, a case, before the
# renames that publish a file) and raises ``Cancelled`` there, in ordinary code. Raising from the
# handler itself would land in whatever statement runs next - a library's transaction, a
# finaliser where Python drops the exception - so the handler raises only while the job has not
# started any work yet (``caml`` parsing its arguments), where there is nothing to cut.
#
# The job's signal state is one value:
#
#   STARTING --begin_work()--> WORKING --signal--> SIGNALLED --check_cancel()--> CANCELLING
#       \--signal (raises at once)-----------------^
#   any state --commit_job() / emit_final()--> SETTLED (the outcome is decided; signals change nothing)

_STARTING, _WORKING, _SIGNALLED, _CANCELLING, _SETTLED = "starting", "working", "signalled", "cancelling", "settled"


class _Job:
    """This process's job, as the cancel protocol sees it (one process has one handler)."""

    def __init__(self, state: str = _WORKING, json_stream: Optional[TextIO] = None) -> None:
        self.state = state
        self.reason = "terminated by a signal"
        self.json_stream = json_stream  # where ``emit_final`` writes the one final event (None: no JSON)
        self.final_written = False
        self.holding = 0  # inside ``deferred_cancel``: checks leave a signal for the end of the block


_JOB = _Job()

#: The signals that cancel a job: a parent's terminate, Ctrl-C, and Ctrl-Break on Windows.
CANCEL_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGBREAK") if hasattr(signal, name))


def _on_signal(signum: int, frame: Any) -> None:
    job = _JOB
    if job.state not in (_STARTING, _WORKING):
        return  # already signalled, cancelling, or settled: a second signal changes nothing
    starting = job.state == _STARTING
    job.state = _SIGNALLED
    job.reason = "interrupted" if signum == getattr(signal, "SIGINT", None) else "terminated by a signal"
    if starting:
        # Nothing has started that a cut could damage. Should Python drop this exception (it can
        # land in a finaliser), the state stays SIGNALLED and the next check raises it again.
        raise Cancelled(job.reason)


def install_cancel_handler(json_stream: Optional[TextIO] = None,
                           starting: bool = False) -> Optional[Dict[int, Any]]:
    """Make SIGTERM / SIGINT cancel this process's job; return the previous handlers (None off the main thread).

    Call it before any work, so that a cancel at any moment is a clean cancel.
    ``json_stream`` is where ``emit_final`` writes the one final event.
    ``starting``: the work has not begun; until :func:`begin_work` a signal
    raises ``Cancelled`` at once. Otherwise a signal is a request that the
    next :func:`check_cancel` honours.
    """
    global _JOB
    _JOB = _Job(_STARTING if starting else _WORKING, json_stream)
    if threading.current_thread() is not threading.main_thread():
        return None
    return {sig: signal.signal(sig, _on_signal) for sig in CANCEL_SIGNALS}


def restore_handlers(previous: Optional[Dict[int, Any]]) -> None:
    for sig, handler in (previous or {}).items():
        signal.signal(sig, handler)


def begin_work() -> None:
    """From now on a signal waits for the next unit boundary; raise ``Cancelled`` if one already came."""
    if _JOB.state == _STARTING:
        _JOB.state = _WORKING
    check_cancel()


def check_cancel(token: Optional[CancelToken] = None) -> None:
    """A unit boundary: raise ``Cancelled`` if ``token`` is set or a cancel signal arrived.

    A signal's ``Cancelled`` is raised once; the clean-up that follows (a
    resumable checkpoint, say) passes later checks. Nothing is raised once the
    outcome is settled (:func:`commit_job`, :func:`emit_final`).
    """
    if token is not None:
        token.raise_if_cancelled()
    job = _JOB
    if job.state == _SIGNALLED and not job.holding:
        job.state = _CANCELLING
        raise Cancelled(job.reason)


def cancel_requested() -> bool:
    """True when a cancel signal arrived that no check has raised yet (the trainer shares it across ranks)."""
    return _JOB.state == _SIGNALLED


def commit_job() -> None:
    """The job's outputs are all in place: from now on a cancel signal changes nothing.

    Without this a signal arriving between the last rename and the final
    event would report "cancelled" for a job whose outputs exist.
    """
    _JOB.state = _SETTLED


def emit_final(event: Dict[str, Any]) -> bool:
    """Write the job's final JSON event (``done``, ``error`` or ``cancelled``), at most once per job.

    The outcome is settled first, so no signal can cut the line or contradict
    it. Returns False when a final event was already written.
    """
    job = _JOB
    if job.final_written:
        return False
    job.state, job.final_written = _SETTLED, True
    if job.json_stream is not None:
        job.json_stream.write(json.dumps(event, default=str) + "\n")
        job.json_stream.flush()
    return True


@contextlib.contextmanager
def deferred_cancel(raise_at_end: bool = True) -> Iterator[None]:
    """One unit of work made of smaller ones: the checks inside leave a signal for the block's end.

    The trainer runs each iteration (step, validation, checkpoint) in one, so
    a cancel stops between iterations and the resumable checkpoint is exact;
    several ranks then decide together. ``raise_at_end=False``: the caller
    checks later (or commits, and the signal changes nothing). A
    ``CancelToken`` passed to a check inside is still honoured at once.
    """
    job = _JOB
    if job.state == _STARTING:
        job.state = _WORKING  # a block that must not be cut is work
    job.holding += 1
    try:
        yield
    finally:
        job.holding -= 1
    if raise_at_end:
        check_cancel()


#: Earlier names of :func:`check_cancel` (callers on other branches use them).
raise_if_signalled = raise_pending_cancel = check_cancel


@contextlib.contextmanager
def terminate_as_cancel() -> Iterator[None]:
    """SIGTERM / SIGINT cancel the block (for callers other than ``caml``'s main, which installs the handler).

    Inside the block a signal is honoured at the next unit boundary, or at
    the block's end if none came; inside ``caml`` this is a no-op.
    """
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is _on_signal:
        yield
        return
    previous = install_cancel_handler(None)
    try:
        yield
        check_cancel()
    finally:
        restore_handlers(previous)
