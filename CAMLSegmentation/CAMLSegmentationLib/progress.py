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


class Cancelled(Exception):
    """Raised inside engine loops when their CancelToken is set."""


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


@contextlib.contextmanager
def terminate_as_cancel() -> Iterator[None]:
    """Turn SIGTERM (what a parent sends to stop the job) into ``Cancelled`` so temporary files are removed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Cancelled("terminated by a signal")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
