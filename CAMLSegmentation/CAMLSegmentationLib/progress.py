"""Progress and cancellation protocol shared by training, inference and the CLI.

Long-running engine functions take ``progress`` (a callable receiving a
``ProgressEvent``) and ``cancel`` (a ``CancelToken``). The CLI turns events
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


class _SignalState:
    """What the cancel signal handler of this process does (one process has one handler)."""

    def __init__(self) -> None:
        self.raised = False  # Cancelled was raised once: later signals are ignored
        self.finished = False  # the final event is out: the job is over, signals change nothing
        self.committed = False  # the outputs are in place: the job is done, signals change nothing
        self.deferring = 0  # inside ``deferred_cancel``: remember the signal, raise at the block's end
        self.pending = False
        self.json_stream: Optional[TextIO] = None  # where the final JSON event goes (None: no JSON)


_STATE = _SignalState()

#: The signals that cancel a job: a parent's terminate, Ctrl-C, and Ctrl-Break on Windows.
CANCEL_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGBREAK") if hasattr(signal, name))


def _on_signal(signum: int, frame: Any) -> None:
    state = _STATE
    if state.raised or state.finished or state.committed:
        return
    if state.deferring:
        state.pending = True
        return
    state.raised = True
    raise Cancelled("terminated by a signal" if signum != getattr(signal, "SIGINT", None) else "interrupted")


def install_cancel_handler(json_stream: Optional[TextIO] = None) -> Optional[Dict[int, Any]]:
    """Make SIGTERM / SIGINT raise ``Cancelled`` once; return the previous handlers (None off the main thread).

    Call it before any work, so that a cancel at any moment is a clean
    cancel. ``json_stream`` is where ``emit_final`` writes the one final event.
    """
    global _STATE
    _STATE = _SignalState()
    _STATE.json_stream = json_stream
    if threading.current_thread() is not threading.main_thread():
        return None
    return {sig: signal.signal(sig, _on_signal) for sig in CANCEL_SIGNALS}


def restore_handlers(previous: Optional[Dict[int, Any]]) -> None:
    for sig, handler in (previous or {}).items():
        signal.signal(sig, handler)


def emit_final(event: Dict[str, Any]) -> bool:
    """Write the job's final JSON event (``done``, ``error`` or ``cancelled``), at most once per job.

    After it is out, signals no longer cancel (the outcome is told and must
    stay true). Returns False when a final event was already written.
    """
    state = _STATE
    if state.finished:
        return False
    state.deferring += 1  # no cancel between writing the event and marking it written
    try:
        if state.json_stream is not None:
            state.json_stream.write(json.dumps(event, default=str) + "\n")
            state.json_stream.flush()
        state.finished = True
    finally:
        state.deferring -= 1
    return True


def commit_job() -> None:
    """The job's outputs are all in place: from now on a cancel signal changes nothing.

    Without this a signal arriving between the last rename and the final
    event would report "cancelled" for a job whose outputs exist.
    """
    _STATE.committed = True


def cancel_requested() -> bool:
    """True when a signal arrived inside ``deferred_cancel`` and waits to take effect, or when its
    ``Cancelled`` was raised but dropped (see :func:`raise_if_signalled`) and the work goes on."""
    state = _STATE
    if state.finished or state.committed:
        return False
    return state.pending or (state.raised and not state.deferring)


@contextlib.contextmanager
def deferred_cancel(raise_at_end: bool = True) -> Iterator[None]:
    """Hold a signal's cancel back until the end of the block (a unit of work that must not be cut).

    The trainer runs each iteration in one, so a cancel always stops at an
    iteration boundary and the checkpoint it writes resumes exactly; writing
    several outputs uses one with ``raise_at_end=False``: once every file is
    in place the job is done, and a late signal cannot undo that.
    """
    state = _STATE
    state.deferring += 1
    try:
        yield
    finally:
        state.deferring -= 1
    if raise_at_end and not state.deferring and state.pending and not (state.raised or state.finished
                                                                       or state.committed):
        state.pending = False
        state.raised = True
        raise Cancelled("terminated by a signal")


def raise_if_signalled() -> None:
    """Raise ``Cancelled`` again if a cancel signal already raised it and the work still goes on.

    Python drops an exception raised where it cannot propagate - a ``__del__``, a weakref or
    garbage-collector callback, an import lock's clean-up ("Exception ignored in ...") - so a
    signal landing there would be lost and the job would run to its end. Called between units
    of work, this makes the cancel take effect there instead. Not inside ``deferred_cancel``,
    and not once the outcome is told or the outputs are in place.
    """
    state = _STATE
    if state.raised and not (state.deferring or state.finished or state.committed):
        raise Cancelled("terminated by a signal")


def raise_pending_cancel() -> None:
    """Raise ``Cancelled`` now if a signal was held back by ``deferred_cancel(raise_at_end=False)``."""
    state = _STATE
    if state.pending and not state.deferring and not (state.raised or state.finished or state.committed):
        state.pending = False
        state.raised = True
        raise Cancelled("terminated by a signal")


@contextlib.contextmanager
def terminate_as_cancel() -> Iterator[None]:
    """Turn SIGTERM / SIGINT into ``Cancelled`` within the block (for callers other than ``caml``'s main).

    ``caml`` installs the handler itself before any work (``install_cancel_handler``);
    inside it this is a no-op.
    """
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is _on_signal:
        yield
        return
    previous = install_cancel_handler(None)
    try:
        yield
    finally:
        restore_handlers(previous)
