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


class Job:
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
        kwargs: Dict[str, Any] = {}
        if os.name == "nt":
            kwargs["creationflags"] = (subprocess.CREATE_NEW_PROCESS_GROUP
                                       | getattr(subprocess, "CREATE_NO_WINDOW", 0))
        else:
            kwargs["start_new_session"] = True
        self._process = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=self.env, cwd=self.cwd, text=True, encoding="utf-8", errors="replace", bufsize=1, **kwargs)
        self._stderr_thread = threading.Thread(target=self._read_stderr, daemon=True)
        self._stderr_thread.start()
        threading.Thread(target=self._read_stdout_and_finish, daemon=True).start()
        return self

    @property
    def pid(self) -> Optional[int]:
        return self._process.pid if self._process else None

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
        """Block until the job has ended (or ``timeout``); return its state."""
        self._finished.wait(timeout)
        return self.state

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
        for path in self.outputs:
            for tmp in leftover_temporaries(path):
                tmp.unlink(missing_ok=True)
            if _file_state(path) != self._before[path] and path.is_file():
                path.unlink()


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
