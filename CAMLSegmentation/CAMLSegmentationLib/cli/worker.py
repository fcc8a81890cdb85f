"""``caml worker``: a warm engine for the Slicer panel, one process that keeps the model loaded.

Each ``caml segment`` pays the imports (numpy, SimpleITK, OpenVINO, ONNX Runtime or
torch) and the model load again; the panel's second click should cost the
network and the file I/O only. So the panel starts one ``caml worker`` per
session, on the first Segment, and sends it requests over the JSON-lines
protocol the jobs already speak. Every request runs ``caml segment``'s own
path (``segment.segment_files``: same arguments, same predictor, same
outputs written all or none), with the model taken from a one-entry cache.

Protocol (UTF-8, one JSON object per line)
-------------------------------------------
stdin, the requests, served one at a time in the order they come::

    {"command": "segment", "request": ID, "args": [IN, OUT, "--model", "ID", ...]}
        ``args``: the arguments of ``caml segment`` (see ``caml segment --help``);
        its ``--progress`` is ignored (the worker always answers in JSON).
    {"command": "cancel", "request": ID}
        stop that request at its next unit boundary (a batch of windows, or
        just before its outputs are written); the model stays loaded. A
        request still queued never starts. Unknown or finished ids: ignored.
    {"command": "shutdown"}, or the end of stdin (the panel's process ended)
        cancel what runs, then exit with status 0.

stdout, the events::

    {"event": "ready", "pid": N, "version": "..."}        once, before the first request is read
    {"event": "progress", "request": ID, "stage": ..., "done": ..., "total": ...}   as caml segment's
    {"event": "progress", "request": ID, "stage": "loading_model", "done": 0, "total": 0, "message": MODEL}
                                                          before a model is loaded (not when it is cached)
    {"event": "log", "request": ID, "message": "..."}     e.g. which model was loaded, and how long it took
    then exactly one final event per request, as ``caml segment --progress json`` ends:
    {"event": "done", "request": ID, "outputs": {...}, "info": {..., "warm": true, "request_seconds": s}}
    {"event": "error", "request": ID, "message": "one line"}
    {"event": "cancelled", "request": ID, "message": "..."}

``info["warm"]`` says the model came from the cache. A malformed request line,
or a segment request whose id is missing or in use, is answered with an
``error`` event without ``request`` (``"request": null``), so that it cannot be
taken for the end of another request; a segment request whose arguments
are wrong ends with its own ``error`` event.
Anything else the process prints (a library's warning, the traceback of an
internal error) goes to stderr: stdout carries the protocol only.

The cache holds one model, keyed by what decides it: the catalog entry
(catalog file, id, version, checksums) or the ``--weights`` file, each file's
size and modification time, the backend and precision asked for, the export
runtimes installed (what ``auto`` picks from), the device, and whether
sub-model A is needed. A request that differs in any of them loads its model
afresh (checked against its checksums, as ``caml segment`` does) and replaces
the cached one; so a retrained version registered under the same id is picked
up on the next click.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import queue
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, Optional, TextIO, Tuple

from ..errors import CAMLError, UserError

#: The request commands the worker understands.
COMMANDS = ("segment", "cancel", "shutdown")


def add_parser(subparsers: Any) -> None:
    # No ``help=``: the sub-command is left out of ``caml --help`` (it is for the panel, not for people),
    # while ``caml worker --help`` prints this description.
    p = subparsers.add_parser(
        "worker", description="A warm engine for the Slicer panel: reads segment requests as JSON lines on "
                              "stdin, keeps the model loaded between them, answers with the progress protocol "
                              "on stdout. The protocol is documented in CAMLSegmentationLib/cli/worker.py and "
                              "the README.")
    p.set_defaults(func=run)


class _RequestParser(argparse.ArgumentParser):
    """``caml segment``'s parser, raising a one-line UserError instead of exiting the worker."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"caml segment: {message}")

    def exit(self, status: int = 0, message: Optional[str] = None) -> None:  # type: ignore[override]
        raise UserError(f"caml segment: {(message or 'help is not a request').strip()}")


def segment_arguments(args: Any) -> argparse.Namespace:
    """A request's ``args`` parsed exactly as ``caml segment`` parses its command line."""
    from . import segment

    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise UserError("a segment request's \"args\" must be a list of strings (caml segment's arguments)")
    parser = _RequestParser(prog="caml")
    segment.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["segment", *args])


def _stamp(path: Path) -> Optional[Tuple[int, int]]:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def model_key(args: argparse.Namespace, with_a: bool) -> Tuple[Any, ...]:
    """What decides the model a request runs with (see the module docstring): equal keys, same model."""
    from ..inference.backends import installed_runtimes
    from ..model.catalog import default_model, find_model

    # The export runtimes installed decide which one `auto` runs, so they are part of the key.
    common = (getattr(args, "backend", "auto"), installed_runtimes(), getattr(args, "precision", "auto"),
              getattr(args, "device", "auto"), bool(with_a))
    if args.weights:
        from ..inference.onnx_runtime import sibling_exports

        files = [Path(args.weights)] + sorted(sibling_exports(args.weights).values())
        return ("weights",) + tuple((str(f.resolve()), _stamp(f)) for f in files) + common
    entry = find_model(args.model) if args.model else default_model()
    if entry is None:
        return ("none",) + common  # the loader then raises caml segment's own error
    files = [entry.path] + [entry.onnx_paths()[w] for w in sorted(entry.onnx)]
    return (("catalog", entry.catalog, entry.id, entry.version, entry.sha256,
             json.dumps(entry.onnx, sort_keys=True)) + tuple((str(f), _stamp(f)) for f in files) + common)


class ModelCache:
    """One loaded model, reused while ``model_key`` stays the same; ``loader`` loads it (default:
    ``backend.load_segment_model``, what ``caml segment`` uses)."""

    def __init__(self, loader: Optional[Callable[..., Any]] = None) -> None:
        if loader is None:
            from .backend import load_segment_model as loader
        self.loader = loader
        self.key: Optional[Tuple[Any, ...]] = None
        self.model: Any = None
        #: Whether the last ``load`` came from the cache, and how long the last real load took.
        self.warm = False
        self.load_seconds = 0.0

    def load(self, args: argparse.Namespace, with_a: bool = False,
             before_loading: Optional[Callable[[], None]] = None) -> Any:
        """The model ``args`` name, from the cache when its key is the cached one; ``before_loading`` is
        called first when it is not (the panel then says it is loading the model)."""
        key = model_key(args, with_a)
        if self.model is not None and key == self.key:
            self.warm = True
            return self.model
        self.warm = False
        if before_loading is not None:
            before_loading()
        self.key, self.model = None, None  # the old model's memory goes before the new one comes
        gc.collect()
        start = time.perf_counter()
        model = self.loader(args, with_a=with_a)
        self.load_seconds = time.perf_counter() - start
        self.key, self.model = key, model
        return model


class _Protocol:
    """The worker's stdout: one JSON event per line, written whole (two threads write)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._lock = threading.Lock()

    def send(self, event: Dict[str, Any]) -> None:
        line = json.dumps(event, default=str)
        with self._lock:
            self.stream.write(line + "\n")
            self.stream.flush()


class Worker:
    """The request loop: a thread reads stdin (so a cancel reaches a running request), the calling
    thread serves the requests one at a time."""

    def __init__(self, requests: TextIO, events: TextIO, cache: Optional[ModelCache] = None) -> None:
        from ..progress import CancelToken

        self._token_type = CancelToken
        self.requests = requests
        self.out = _Protocol(events)
        self.cache = cache or ModelCache()
        self._queue: queue.Queue[Optional[Tuple[str, Any]]] = queue.Queue()
        self._tokens: Dict[str, Any] = {}
        self._lock = threading.Lock()

    # -- the reader thread ---------------------------------------------------------------------
    def _read_requests(self) -> None:
        try:
            for line in self.requests:
                if not line.strip():
                    continue
                if self._take(line) == "shutdown":
                    break
        finally:
            with self._lock:  # the panel is gone or asked to stop: nothing still running is wanted
                for token in self._tokens.values():
                    token.cancel()
            self._queue.put(None)

    def _take(self, line: str) -> str:
        try:
            request = json.loads(line)
        except ValueError:
            request = None
        if not isinstance(request, dict) or request.get("command") not in COMMANDS:
            self.out.send({"event": "error", "request": None,
                           "message": f"not a worker request (one JSON object with \"command\" one of "
                                      f"{', '.join(COMMANDS)}): {line.strip()[:200]}"})
            return "error"
        command, ident = request["command"], str(request.get("request", ""))
        if command == "segment":
            with self._lock:
                if not ident or ident in self._tokens:  # answered without an id: that id's request goes on
                    self.out.send({"event": "error", "request": None,
                                   "message": f"a segment request needs a \"request\" id not in use, got {ident!r}"})
                    return "error"
                self._tokens[ident] = self._token_type()
            self._queue.put((ident, request.get("args")))
        elif command == "cancel":
            with self._lock:
                token = self._tokens.get(ident)
            if token is not None:
                token.cancel()
        return command

    # -- serving -------------------------------------------------------------------------------
    def serve(self) -> int:
        """Announce readiness, then serve requests until shutdown or the end of stdin; returns 0."""
        from .. import __version__

        threading.Thread(target=self._read_requests, name="caml-worker-requests", daemon=True).start()
        self.out.send({"event": "ready", "pid": os.getpid(), "version": __version__})
        while True:
            item = self._queue.get()
            if item is None:
                return 0
            ident, args = item
            with self._lock:
                token = self._tokens[ident]
            try:
                self.segment(ident, args, token)
            finally:
                with self._lock:
                    del self._tokens[ident]

    def segment(self, ident: str, args: Any, token: Any) -> None:
        """One request, ending with exactly one final event."""
        from ..progress import Cancelled, ProgressEvent
        from .segment import segment_files

        start = time.perf_counter()

        def progress(event: Any) -> None:
            self.out.send(dict(json.loads(event.to_json()), request=ident))

        try:
            token.raise_if_cancelled()  # cancelled while queued: never starts
            parsed = segment_arguments(args)
            loads = self.cache.load

            def announce() -> None:  # a progress event without a total: a status line, no fraction
                which = parsed.model or parsed.weights or "the catalog's default"
                progress(ProgressEvent("loading_model", 0, 0, str(which)))

            def load_model(parsed_args: argparse.Namespace, with_a: bool = False) -> Any:
                model = loads(parsed_args, with_a=with_a, before_loading=announce)
                if not self.cache.warm:
                    self.out.send({"event": "log", "request": ident,
                                   "message": f"loaded model {getattr(model, 'name', '')} in "
                                              f"{self.cache.load_seconds:.1f} s (kept for the next requests)"})
                return model

            written, info = segment_files(parsed, progress, load_model=load_model, cancel=token, commit=False)
        except Cancelled as exc:
            self.out.send({"event": "cancelled", "request": ident, "message": str(exc) or "cancelled"})
        except CAMLError as exc:
            self.out.send({"event": "error", "request": ident, "message": str(exc)})
        except Exception as exc:  # a bug: its traceback for the log, one line for the panel; the worker lives on
            traceback.print_exc(file=sys.stderr)
            self.out.send({"event": "error", "request": ident,
                           "message": f"internal error ({type(exc).__name__}: {exc}); please report it with the "
                                      f"traceback"})
        else:
            info = dict(info, warm=self.cache.warm, request_seconds=round(time.perf_counter() - start, 3))
            self.out.send({"event": "done", "request": ident, "outputs": written, "info": info})


def run(args: argparse.Namespace) -> int:
    """``caml worker``: stdout becomes the protocol's alone, everything else printed goes to stderr."""
    import signal

    from ..progress import CANCEL_SIGNALS

    # A request is cancelled by a cancel request, not a signal: caml's main installed its handler for
    # one job, which would only raise a flag here. A signal ends the worker, as for any process.
    for sig in CANCEL_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8", buffering=1)
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # C libraries' prints too
    sys.stdout = sys.stderr
    requests = open(sys.stdin.fileno(), encoding="utf-8", errors="replace", closefd=False)
    return Worker(requests, protocol).serve()
