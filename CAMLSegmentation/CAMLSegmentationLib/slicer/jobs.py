"""Run a ``caml`` command in a child process and follow it without blocking the caller.

Slicer's GUI thread must never wait on inference or training, and a Python
thread cannot be stopped. So long work runs in a separate process that
reports JSON lines on stdout (see ``progress.py``); a ``Job`` reads them on
background threads into a queue that the GUI drains from a timer with
``poll()``. ``cancel()`` first asks the child to stop (SIGTERM to its process
group, Ctrl-Break on Windows: ``caml`` then stops at a clean point, a training
run writing its resumable ``last.pt``) and kills the whole process tree only
if it is still running after a grace period; a job that did not finish cleanly removes
the outputs it was asked to write, including the temporaries of
``files.atomic_output``, so no partial file is ever left behind.

``EngineWorker`` is the warm variant the panel's Segment uses: one ``caml
worker`` child kept for the session, which holds the model between clicks and
takes one request per click (``WorkerRequest``, followed like a ``Job``).
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from .. import MODULE_DIR
from ..io.files import leftover_temporaries  # standard library only: Slicer's process never imports torch

PathLike = Union[str, Path]

RUNNING, DONE, FAILED, CANCELLED = "running", "done", "failed", "cancelled"

#: Seconds a cancelled child gets to stop by itself before it is killed: enough for a
#: training run to finish its iteration and write last.pt.
DEFAULT_GRACE_SECONDS = 30.0

#: The directory holding the ``CAMLSegmentationLib`` package: put on the child's PYTHONPATH.
PACKAGE_PARENT = MODULE_DIR


def python_executable() -> str:
    """The Python interpreter to run the engine with: ``sys.executable``, as Slicer sets it.

    Inside the Slicer application ``sys.executable`` is not the application: at
    start-up Slicer sets it to the ``PythonSlicer`` launcher it finds on ``PATH``
    (``QStandardPaths::findExecutable("PythonSlicer")`` in
    ``qSlicerCoreApplication::handleCommandLineArguments``; its launcher puts
    ``<Slicer home>/bin`` there), which runs ``python-real`` with Slicer's
    environment, so it is used as it is. Under ``PythonSlicer`` itself and
    outside Slicer it is the running interpreter. When it still names the
    application (a Slicer that did not set it), ``PythonSlicer`` is looked up
    on ``PATH``, then beside the executable.

    An empty ``sys.executable`` (Slicer found no ``PythonSlicer`` on ``PATH``, or
    Python could not tell its own path) is refused with a one-line
    ``RuntimeError``: there is nothing to start the engine with.
    """
    if not sys.executable:
        raise RuntimeError("sys.executable is empty (Slicer found no PythonSlicer on PATH): cannot start the "
                           "engine; start Slicer with its own launcher, or set PATH to include <Slicer>/bin")
    exe = Path(sys.executable)
    if "slicer" in exe.name.lower() and "python" not in exe.name.lower():
        found = shutil.which("PythonSlicer")
        if found:
            return found
        suffix = ".exe" if os.name == "nt" else ""
        launcher = f"PythonSlicer{suffix}"
        for candidate in (exe.parent / launcher, exe.parent.parent / "bin" / launcher):
            if candidate.exists():
                return str(candidate)
    return sys.executable


def caml_command(*args: str, python: Optional[str] = None) -> List[str]:
    """argv running ``caml ARGS`` with the given (default: this) Python."""
    return [python or python_executable(), "-m", "CAMLSegmentationLib.cli", *args]


def engine_environment(base: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """Environment for the child: the engine package importable, unbuffered output."""
    env = dict(os.environ if base is None else base)
    paths = [str(PACKAGE_PARENT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env["PYTHONUNBUFFERED"] = "1"
    # The progress protocol is UTF-8 (file names, messages); Windows consoles default to a code page.
    env["PYTHONIOENCODING"] = "utf-8"
    env["PYTHONUTF8"] = "1"
    return env


def _file_state(path: Path) -> Optional[Tuple[int, int]]:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


class _EventFeed:
    """What the panel follows, for a ``Job`` and a ``WorkerRequest`` alike: the events queued by a
    reader thread, and the moment it ended (``_finished``) with its ``state``."""

    _events: queue.Queue[Dict[str, Any]]
    _finished: threading.Event
    state: str

    @property
    def running(self) -> bool:
        return not self._finished.is_set()

    def poll(self) -> List[Dict[str, Any]]:
        """Events received since the last call, oldest first; never blocks."""
        events = []
        while True:
            try:
                events.append(self._events.get_nowait())
            except queue.Empty:
                return events

    def wait(self, timeout: Optional[float] = None) -> str:
        """Block until it has ended (or ``timeout``); return its state."""
        self._finished.wait(timeout)
        return self.state


class Job(_EventFeed):
    """One child process speaking the JSON-lines progress protocol.

    ``outputs`` are the files the command writes; if the job ends any way but
    ``done`` (error, crash, cancel), each one it created or changed is deleted.
    """

    def __init__(self, argv: Sequence[str], outputs: Iterable[PathLike] = (),
                 env: Optional[Mapping[str, str]] = None, cwd: Optional[PathLike] = None,
                 stderr_lines: int = 200, grace_seconds: float = DEFAULT_GRACE_SECONDS) -> None:
        self.argv = [str(a) for a in argv]
        self.outputs = [Path(p) for p in outputs]
        self.env = dict(env) if env is not None else engine_environment()
        self.cwd = str(cwd) if cwd is not None else None
        self.state = RUNNING
        self.returncode: Optional[int] = None
        self.result: Dict[str, Any] = {}
        self.error: str = ""
        self._stderr_lines = stderr_lines
        self.grace_seconds = grace_seconds
        self._stderr: List[str] = []
        self._events: queue.Queue[Dict[str, Any]] = queue.Queue()
        self._cancel_requested = False
        self._finished = threading.Event()
        self._lock = threading.Lock()
        self._process: Optional[subprocess.Popen] = None
        self._before = {p: _file_state(p) for p in self.outputs}

    # -- life cycle -------------------------------------------------------------
    def start(self) -> Job:
        """Launch the child in its own process group and start the reader threads."""
        self._process = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=self.env, cwd=self.cwd, text=True, encoding="utf-8", errors="replace", bufsize=1,
            **own_process_group())
        self._stderr_thread = threading.Thread(target=self._read_stderr, daemon=True)
        self._stderr_thread.start()
        threading.Thread(target=self._read_stdout_and_finish, daemon=True).start()
        return self

    @property
    def pid(self) -> Optional[int]:
        return self._process.pid if self._process else None

    def cancel(self, grace_seconds: Optional[float] = None) -> None:
        """Stop the child: ask first, kill after ``grace_seconds``; the job ends as ``cancelled``.

        Never blocks: the kill, when needed, comes from a background thread.
        ``grace_seconds=0`` kills at once.
        """
        with self._lock:
            if self._finished.is_set() or self._process is None or self._cancel_requested:
                return
            self._cancel_requested = True
        grace = self.grace_seconds if grace_seconds is None else grace_seconds
        process = self._process
        if grace <= 0 or not terminate_process_group(process):
            kill_process_tree(process)
            return

        def kill_if_still_running() -> None:
            if not self._finished.wait(grace) and process.poll() is None:
                kill_process_tree(process)

        threading.Thread(target=kill_if_still_running, daemon=True).start()

    # -- threads ------------------------------------------------------------------
    def _read_stderr(self) -> None:
        assert self._process is not None and self._process.stderr is not None
        for line in self._process.stderr:
            line = line.rstrip("\n")
            self._stderr.append(line)
            del self._stderr[:-self._stderr_lines]
            self._events.put({"event": "log", "stream": "stderr", "message": line})

    def _read_stdout_and_finish(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for line in self._process.stdout:
            event = parse_event(line)
            if event is None:
                continue
            if event.get("event") == "done":
                self.result = dict(event.get("outputs") or {})
            elif event.get("event") == "error":
                self.error = str(event.get("message", ""))
            self._events.put(event)
        self.returncode = self._process.wait()
        if self._cancel_requested and os.name != "nt":
            try:  # helpers the child started (data loaders, torchrun workers) go with it
                os.killpg(self._process.pid, signal.SIGKILL)
            except OSError:
                pass
        self._stderr_thread.join()
        self._finish()

    def _finish(self) -> None:
        with self._lock:
            if self._cancel_requested:
                state, message = CANCELLED, "cancelled"
            elif self.returncode == 0 and not self.error:
                state, message = DONE, ""
            else:
                state = FAILED
                tail = [ln for ln in self._stderr if ln.strip()]
                message = self.error or (tail[-1] if tail else f"exit status {self.returncode}")
            if state != DONE:
                self._remove_partial_outputs()
            self.error = message
            self.state = state
            self._events.put({"event": "finished", "state": state, "message": message,
                              "returncode": self.returncode})
            self._finished.set()

    def _remove_partial_outputs(self) -> None:
        remove_partial_outputs(self.outputs, self._before)


def own_process_group() -> Dict[str, Any]:
    """``Popen`` arguments that put the child in a process group of its own, so that a cancel or a kill
    reaches the helpers it starts and nothing else (and, on Windows, no console window flashes up)."""
    if os.name == "nt":
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)}
    return {"start_new_session": True}


def remove_partial_outputs(outputs: Iterable[Path], before: Mapping[Path, Optional[Tuple[int, int]]]) -> None:
    """Delete each output a job that did not finish created or changed (``before``: their states when it
    started), and the temporaries ``files.atomic_output`` may have left beside them."""
    for path in outputs:
        for tmp in leftover_temporaries(path):
            tmp.unlink(missing_ok=True)
        if _file_state(path) != before[path] and path.is_file():
            path.unlink()


#: Seconds ``EngineWorker.stop`` waits for the worker to exit by itself before killing it.
WORKER_STOP_SECONDS = 5.0
#: The final events of a worker request (``cli/worker.py``'s protocol), as of a ``caml`` job.
FINAL_EVENTS = ("done", "error", "cancelled")


class EngineWorker:
    """The warm engine: one ``caml worker`` child that keeps the model loaded between requests.

    The panel keeps one for its session (``CAMLSegmentationLogic.engineWorker``). ``submit`` sends
    one ``caml segment`` request over the worker's stdin and returns a ``WorkerRequest``, which the
    panel follows exactly like a ``Job``. Two threads read the worker's stdout and stderr and hand
    each event to the request it names; when the process ends (killed, crashed, or stopped), every
    request still open ends with it, failed or cancelled, and ``alive`` turns False so that the
    next Segment starts a new worker. The protocol is in ``CAMLSegmentationLib/cli/worker.py``.
    """

    def __init__(self, argv: Sequence[str], env: Optional[Mapping[str, str]] = None,
                 grace_seconds: float = DEFAULT_GRACE_SECONDS, stderr_lines: int = 200) -> None:
        self.argv = [str(a) for a in argv]
        self.env = dict(env) if env is not None else engine_environment()
        self.grace_seconds = grace_seconds
        self.returncode: Optional[int] = None
        self._stderr_lines = stderr_lines
        self._stderr: List[str] = []
        self._open: Dict[str, WorkerRequest] = {}  # submitted and not finished, oldest first
        self._count = 0
        self._lock = threading.Lock()
        self._stdin_lock = threading.Lock()
        self._ended = threading.Event()
        self._process: Optional[subprocess.Popen] = None

    def start(self) -> EngineWorker:
        """Launch the worker in its own process group; it loads nothing until the first request."""
        self._process = subprocess.Popen(
            self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.env,
            text=True, encoding="utf-8", errors="replace", bufsize=1, **own_process_group())
        self._stderr_thread = threading.Thread(target=self._read_stderr, daemon=True)
        self._stderr_thread.start()
        threading.Thread(target=self._read_stdout_until_exit, daemon=True).start()
        return self

    @property
    def pid(self) -> Optional[int]:
        return self._process.pid if self._process else None

    @property
    def alive(self) -> bool:
        """Started, and its process has not ended."""
        return self._process is not None and not self._ended.is_set() and self._process.poll() is None

    def submit(self, args: Sequence[str], outputs: Iterable[PathLike] = ()) -> WorkerRequest:
        """Ask for one ``caml segment ARGS``; ``outputs`` are removed unless it ends ``done``."""
        with self._lock:
            self._count += 1
            request = WorkerRequest(self, str(self._count), outputs)
            request.args = [str(a) for a in args]
            ended = self._ended.is_set()
            if not ended:
                self._open[request.ident] = request
        if ended:
            request._end(f"the engine worker is not running ({self._exit_reason()})")
        else:  # should the worker be dying, its end (read from its stdout) ends this request too
            self._send({"command": "segment", "request": request.ident, "args": request.args})
        return request

    def stop(self, timeout: float = WORKER_STOP_SECONDS) -> None:
        """End the worker: open requests are cancelled, it exits by itself, or is killed after ``timeout``."""
        process = self._process
        if process is None:
            return
        with self._lock:
            requests = list(self._open.values())
        for request in requests:
            request._cancel_requested = True
        self._send({"command": "shutdown"})
        with self._stdin_lock:
            try:
                process.stdin.close()
            except OSError:
                pass
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            kill_process_tree(process)
        self._ended.wait(timeout)

    def kill(self) -> None:
        """Kill the worker and its children at once (a cancel it did not honour within the grace period)."""
        if self._process is not None:
            kill_process_tree(self._process)

    # -- internals -----------------------------------------------------------------------------
    def _send(self, message: Dict[str, Any]) -> bool:
        process = self._process
        if process is None or process.stdin is None or self._ended.is_set():
            return False
        with self._stdin_lock:
            try:
                process.stdin.write(json.dumps(message) + "\n")
                process.stdin.flush()
            except (OSError, ValueError):  # a broken pipe, or stdin already closed by stop()
                return False
        return True

    def _oldest_open(self) -> Optional[WorkerRequest]:
        with self._lock:
            return next(iter(self._open.values()), None)

    def _read_stderr(self) -> None:
        assert self._process is not None and self._process.stderr is not None
        for line in self._process.stderr:
            line = line.rstrip("\n")
            self._stderr.append(line)
            del self._stderr[:-self._stderr_lines]
            request = self._oldest_open()  # requests run one at a time, oldest first
            if request is not None:
                request._deliver({"event": "log", "stream": "stderr", "message": line})

    def _read_stdout_until_exit(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for line in self._process.stdout:
            event = parse_event(line)
            if event is None or event.get("event") == "ready":
                continue
            ident = event.get("request")
            if ident is None and event.get("event") in FINAL_EVENTS:  # about a bad request line: no request's end
                event = {"event": "log", "stream": "stdout", "message": str(event.get("message", ""))}
            with self._lock:
                request = self._open.get(str(ident)) if ident is not None else next(iter(self._open.values()), None)
                if request is not None and event.get("event") in FINAL_EVENTS and ident is not None:
                    del self._open[request.ident]
            if request is not None:
                request._deliver(event)
        self.returncode = self._process.wait()
        self._stderr_thread.join()  # its last lines say why it ended
        with self._lock:
            self._ended.set()
            requests, self._open = list(self._open.values()), {}
        for request in requests:
            request._end(f"the engine worker stopped ({self._exit_reason()})")

    def _exit_reason(self) -> str:
        tail = [ln for ln in self._stderr if ln.strip()]
        status = "still running" if self.returncode is None else f"exit status {self.returncode}"
        return f"{status}: {tail[-1]}" if tail else status


class WorkerRequest(_EventFeed):
    """One request to an ``EngineWorker``, followed like a ``Job`` (``poll``, ``wait``, ``cancel``,
    ``state``, ``result``, ``error``): the panel's runs take either.

    ``cancel`` asks the worker to stop this request at its next unit boundary, which keeps the model
    loaded; only when the worker has not answered after ``grace_seconds`` is it killed (the next
    Segment then starts a new one). A request that does not end ``done`` removes its outputs.
    """

    def __init__(self, worker: EngineWorker, ident: str, outputs: Iterable[PathLike] = ()) -> None:
        self.worker = worker
        self.ident = ident
        #: The ``caml segment`` arguments asked for (set by ``EngineWorker.submit``).
        self.args: List[str] = []
        self.outputs = [Path(p) for p in outputs]
        self.state = RUNNING
        self.returncode: Optional[int] = None
        self.result: Dict[str, Any] = {}
        self.error = ""
        self.grace_seconds = worker.grace_seconds
        self._events: queue.Queue[Dict[str, Any]] = queue.Queue()
        self._cancel_requested = False
        self._finished = threading.Event()
        self._lock = threading.Lock()
        self._before = {p: _file_state(p) for p in self.outputs}

    @property
    def pid(self) -> Optional[int]:
        """The worker's process id (shared by all its requests)."""
        return self.worker.pid

    def cancel(self, grace_seconds: Optional[float] = None) -> None:
        """Ask the worker to drop this request; kill the worker if it has not after ``grace_seconds``
        (``0``: at once). Never blocks; the request ends as ``cancelled``."""
        with self._lock:
            if self._finished.is_set() or self._cancel_requested:
                return
            self._cancel_requested = True
        grace = self.grace_seconds if grace_seconds is None else grace_seconds
        if grace <= 0 or not self.worker._send({"command": "cancel", "request": self.ident}):
            self.worker.kill()
            return

        def kill_if_still_running() -> None:
            if not self._finished.wait(grace):
                self.worker.kill()

        threading.Thread(target=kill_if_still_running, daemon=True).start()

    def _deliver(self, event: Dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "done":
            self.result = dict(event.get("outputs") or {})
        elif kind == "error":
            self.error = str(event.get("message", ""))
        self._events.put(event)
        if kind in FINAL_EVENTS and event.get("request") is not None:
            self._end("" if kind == "done" else str(event.get("message", "")) or kind, answered=kind)

    def _end(self, message: str, answered: str = "") -> None:
        """The request is over: ``answered`` is its final event, "" when the worker ended without one."""
        with self._lock:
            if self._finished.is_set():
                return
            if self._cancel_requested or answered == "cancelled":
                state, message = CANCELLED, "cancelled"
            elif answered == "done":
                state, message = DONE, ""
            else:
                state, message = FAILED, self.error or message
            if state != DONE:
                remove_partial_outputs(self.outputs, self._before)
            self.error = message
            self.state = state
            self._events.put({"event": "finished", "state": state, "message": message,
                              "returncode": self.returncode})
            self._finished.set()


def parse_event(line: str) -> Optional[Dict[str, Any]]:
    """One stdout line as an event dict; non-JSON lines become ``log`` events, blank lines ``None``."""
    line = line.strip()
    if not line:
        return None
    try:
        event = json.loads(line)
    except ValueError:
        return {"event": "log", "stream": "stdout", "message": line}
    if not isinstance(event, dict) or "event" not in event:
        return {"event": "log", "stream": "stdout", "message": line}
    return event


def terminate_process_group(process: subprocess.Popen) -> bool:
    """Ask ``process`` and its process group to stop (SIGTERM; Ctrl-Break on Windows); False if it is gone."""
    if process.poll() is not None:
        return False
    try:
        if os.name == "nt":
            os.kill(process.pid, signal.CTRL_BREAK_EVENT)  # type: ignore[attr-defined]
        else:
            os.killpg(process.pid, signal.SIGTERM)
    except OSError:
        return False
    return True


def kill_process_tree(process: subprocess.Popen) -> None:
    """Kill ``process`` and its descendants (its process group on POSIX, ``taskkill /T`` on Windows)."""
    if process.poll() is not None and os.name == "nt":
        return
    if os.name == "nt":
        # CREATE_NO_WINDOW: no console window flashes up when Cancel is pressed in Slicer.
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(process.pid)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False,
                       creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
        return
    # Descendants first (some may have left the group), then the whole group.
    for pid in _descendants(process.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except OSError:
        pass


def _descendants(pid: int) -> List[int]:
    """Child, grandchild... pids of ``pid`` from /proc (Linux); empty where /proc is absent."""
    children: Dict[int, List[int]] = {}
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: the parent pid follows the last ")".
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 1:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found
