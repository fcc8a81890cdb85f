"""The subprocess job runner, with real child processes (and grandchildren) speaking JSON lines."""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time
from pathlib import Path

import pytest
from CAMLSegmentationLib.slicer import jobs


def _script(tmp_path: Path, body: str) -> list:
    path = tmp_path / "child.py"
    path.write_text(textwrap.dedent(body))
    return [sys.executable, str(path)]


def _alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (dead, not yet reaped) counts as dead."""
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists():
        try:
            return stat.read_text().rsplit(")", 1)[-1].split()[0] != "Z"
        except OSError:
            return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def _events_until(job: jobs.Job, predicate, timeout: float = 20.0) -> list:
    seen, deadline = [], time.time() + timeout
    while time.time() < deadline:
        seen += job.poll()
        if any(predicate(e) for e in seen):
            return seen
        time.sleep(0.02)
    raise AssertionError(f"no matching event within {timeout} s; saw {seen}")


WRITER = """
    import json, sys
    from CAMLSegmentationLib.io.files import atomic_output
    out = sys.argv[1]
    for i in range(3):
        print(json.dumps({"event": "progress", "stage": "segment", "done": i + 1, "total": 3,
                          "message": "window", "values": {"i": i}}), flush=True)
    print("a plain line", flush=True)
    with atomic_output(out) as tmp:
        tmp.write_text("mask")
    print(json.dumps({"event": "done", "outputs": {"segmentation": out}}), flush=True)
"""


def test_successful_job_reports_progress_and_outputs(tmp_path):
    out = tmp_path / "seg.nrrd"
    job = jobs.Job(_script(tmp_path, WRITER) + [str(out)], outputs=[out]).start()
    assert job.wait(timeout=30) == jobs.DONE
    events = job.poll()
    progress = [e for e in events if e["event"] == "progress"]
    assert [e["done"] for e in progress] == [1, 2, 3] and progress[-1]["total"] == 3
    assert {"event": "log", "stream": "stdout", "message": "a plain line"} in events
    assert events[-1]["event"] == "finished" and events[-1]["state"] == jobs.DONE
    assert job.result == {"segmentation": str(out)}
    assert out.read_text() == "mask"


def test_failed_job_removes_its_partial_output_and_says_why(tmp_path):
    out = tmp_path / "seg.nrrd"
    child = _script(tmp_path, """
        import json, sys
        open(sys.argv[1], "w").write("half a mask")
        print(json.dumps({"event": "error", "message": "out of memory on window 7"}), flush=True)
        sys.exit(1)
    """)
    job = jobs.Job(child + [str(out)], outputs=[out]).start()
    assert job.wait(timeout=30) == jobs.FAILED
    assert job.error == "out of memory on window 7"
    assert not out.exists()


def test_crash_without_error_event_reports_stderr(tmp_path):
    child = _script(tmp_path, "raise SystemExit('caml segment: error: no such file: x.nrrd')")
    job = jobs.Job(child).start()
    assert job.wait(timeout=30) == jobs.FAILED
    assert job.returncode == 1
    assert "no such file" in job.error


def test_failure_keeps_an_older_output_it_did_not_touch(tmp_path):
    out = tmp_path / "seg.nrrd"
    out.write_text("last week's result")
    child = _script(tmp_path, "import sys; sys.exit(3)")
    job = jobs.Job(child, outputs=[out]).start()
    assert job.wait(timeout=30) == jobs.FAILED
    assert out.read_text() == "last week's result"


def test_cancel_kills_the_process_tree_and_leaves_no_partial_output(tmp_path):
    out = tmp_path / "seg.nrrd"
    child = _script(tmp_path, """
        import json, subprocess, sys, time
        from CAMLSegmentationLib.io.files import atomic_output
        grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        with atomic_output(sys.argv[1]) as tmp:
            tmp.write_text("partial")
            print(json.dumps({"event": "progress", "stage": "segment", "done": 0, "total": 1,
                              "values": {"grandchild": grandchild.pid}}), flush=True)
            time.sleep(600)
    """)
    job = jobs.Job(child + [str(out)], outputs=[out]).start()
    events = _events_until(job, lambda e: e["event"] == "progress")
    grandchild = next(e for e in events if e["event"] == "progress")["values"]["grandchild"]
    assert _alive(grandchild)
    assert list(tmp_path.glob(".seg-*.nrrd")), "the child should be mid-write"

    started = time.time()
    job.cancel()
    assert job.wait(timeout=20) == jobs.CANCELLED
    assert time.time() - started < 10
    deadline = time.time() + 10
    while _alive(grandchild) and time.time() < deadline:
        time.sleep(0.05)
    assert not _alive(grandchild), "the grandchild survived the cancel"
    assert not out.exists()
    assert not list(tmp_path.glob(".seg-*")), "an atomic_output temporary was left behind"
    assert job.poll()[-1]["state"] == jobs.CANCELLED


def test_cancel_after_the_end_changes_nothing(tmp_path):
    out = tmp_path / "seg.nrrd"
    job = jobs.Job(_script(tmp_path, WRITER) + [str(out)], outputs=[out]).start()
    assert job.wait(timeout=30) == jobs.DONE
    job.cancel()
    assert job.state == jobs.DONE and out.exists()


def test_child_imports_this_engine_package_from_anywhere(tmp_path):
    env = jobs.engine_environment({k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    argv = [sys.executable, "-c",
            "import json, CAMLSegmentationLib as m; print(json.dumps({'event': 'done', 'outputs': "
            "{'package': m.__file__}}))"]
    job = jobs.Job(argv, env=env, cwd=tmp_path).start()
    assert job.wait(timeout=30) == jobs.DONE
    assert Path(job.result["package"]).resolve().parent == jobs.PACKAGE_PARENT / "CAMLSegmentationLib"


def test_caml_command_runs_the_cli_module():
    argv = jobs.caml_command("segment", "in.nrrd", "out.nrrd", python="/opt/py")
    assert argv == ["/opt/py", "-m", "CAMLSegmentationLib.cli", "segment", "in.nrrd", "out.nrrd"]


@pytest.mark.parametrize("line, expected", [
    ('{"event": "progress", "done": 1}', {"event": "progress", "done": 1}),
    ("loading weights", {"event": "log", "stream": "stdout", "message": "loading weights"}),
    ("[1, 2]", {"event": "log", "stream": "stdout", "message": "[1, 2]"}),
    ("   ", None),
])
def test_parse_event(line, expected):
    assert jobs.parse_event(line) == expected
    if expected and expected["event"] != "log":
        assert json.loads(line) == expected


def test_inside_slicer_pythonslicer_is_found_on_path_first(tmp_path, monkeypatch):
    slicer_bin = tmp_path / "Slicer-5.8" / "bin"
    slicer_bin.mkdir(parents=True)
    (slicer_bin / "PythonSlicer").write_text("")
    on_path = tmp_path / "launcher-path" / "PythonSlicer"
    monkeypatch.setattr(sys, "executable", str(slicer_bin / "SlicerApp-real"))
    monkeypatch.setattr(jobs.shutil, "which", lambda name: str(on_path) if name == "PythonSlicer" else None)
    assert jobs.python_executable() == str(on_path)
    monkeypatch.setattr(jobs.shutil, "which", lambda name: None)
    assert jobs.python_executable() == str(slicer_bin / "PythonSlicer")


def test_inside_slicer_sys_executable_is_pythonslicer_and_is_used_as_is(tmp_path, monkeypatch):
    """Slicer sets sys.executable to the PythonSlicer launcher: the engine runs with it, nothing else is searched."""
    launcher = tmp_path / "Slicer-5.8" / "bin" / "PythonSlicer"
    monkeypatch.setattr(sys, "executable", str(launcher))
    monkeypatch.setattr(jobs.shutil, "which", lambda name: str(tmp_path / "elsewhere" / name))
    assert jobs.python_executable() == str(launcher)
    assert jobs.caml_command("segment")[0] == str(launcher)


@pytest.mark.parametrize("empty", ["", None])
def test_an_empty_sys_executable_is_refused_in_one_line(monkeypatch, empty):
    """Slicer sets sys.executable to "" when no PythonSlicer is on PATH; Python may leave it empty or None."""
    monkeypatch.setattr(sys, "executable", empty)
    with pytest.raises(RuntimeError) as caught:
        jobs.caml_command("segment", "in.nrrd", "out.nrrd")
    message = str(caught.value)
    assert "\n" not in message and "sys.executable is empty" in message and "PythonSlicer" in message


def test_child_output_is_utf8_whatever_the_locale(tmp_path):
    env = jobs.engine_environment({"PATH": os.environ.get("PATH", ""), "LC_ALL": "C", "LANG": "C"})
    assert env["PYTHONIOENCODING"] == "utf-8" and env["PYTHONUTF8"] == "1"
    argv = _script(tmp_path, """
        import json, sys
        print(json.dumps({"event": "progress", "stage": "Vorhof ä ✓", "done": 1, "total": 1},
                         ensure_ascii=False), flush=True)
        print("Wörter ✓", file=sys.stderr, flush=True)
    """)
    job = jobs.Job(argv, env=env).start()
    assert job.wait(30) == "done"
    events = job.poll()
    assert any(e.get("stage") == "Vorhof ä ✓" for e in events)
    assert any(e.get("stream") == "stderr" and e.get("message") == "Wörter ✓" for e in events)
def test_cancel_asks_first_so_the_child_can_save_its_work(tmp_path):
    """SIGTERM first: a training run gets to write its resumable last.pt before it goes."""
    saved = tmp_path / "last.pt"
    child = _script(tmp_path, """
        import json, signal, sys, time
        def stop(signum, frame):
            time.sleep(0.5)  # writing a checkpoint takes a moment
            open(sys.argv[1], "w").write("resumable")
            print(json.dumps({"event": "cancelled", "message": "terminated by a signal"}), flush=True)
            sys.exit(130)
        signal.signal(signal.SIGTERM, stop)
        print(json.dumps({"event": "progress", "stage": "train", "done": 1, "total": 9}), flush=True)
        time.sleep(600)
    """)
    job = jobs.Job(child + [str(saved)], grace_seconds=20).start()
    _events_until(job, lambda e: e["event"] == "progress")
    job.cancel()
    assert job.wait(timeout=30) == jobs.CANCELLED
    assert job.returncode == 130, "the child was killed instead of asked"
    assert saved.read_text() == "resumable"
    assert [e["event"] for e in job.poll()][-2:] == ["cancelled", "finished"]


def test_cancel_kills_a_child_that_ignores_the_request_after_the_grace_period(tmp_path):
    child = _script(tmp_path, """
        import json, signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print(json.dumps({"event": "progress", "stage": "train", "done": 1, "total": 9}), flush=True)
        time.sleep(600)
    """)
    job = jobs.Job(child, grace_seconds=1.0).start()
    _events_until(job, lambda e: e["event"] == "progress")
    started = time.time()
    job.cancel()
    assert job.wait(timeout=0.5) == jobs.RUNNING  # still within its grace period; cancel() did not block
    assert job.wait(timeout=30) == jobs.CANCELLED
    assert 0.9 < time.time() - started < 15
    assert job.returncode == -9
