"""The warm engine (#26 item 3): one ``caml worker`` child per panel session that keeps the model loaded.

Everything runs for real: the worker is a child process of this Python, the
model is the bundled default (its ONNX export, as the panel's ``auto`` picks
it), the scene is a ``slicer-core`` MRML scene. Checked here: the worker's
mask equals a plain ``caml segment`` run's, the second click reuses the
loaded model, a model or backend change reloads it, a cancel keeps it, a
killed or failing worker ends the run with one line and the next click
starts a new one, and the documented protocol answers as documented.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheels (pip install '.[test]')")
pytest.importorskip("SimpleITK")

MODULE_DIR = Path(__file__).resolve().parents[2] / "CAMLSegmentation"
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))

from CAMLSegmentationLib.slicer import jobs, mrml_bridge  # noqa: E402
from CAMLSegmentationLib.slicer import logic as slicer_logic  # noqa: E402

ENGINE = [sys.executable, "-m", "CAMLSegmentationLib.cli"]
#: Big enough that the Standard protocol (flips, dense windows) is still running seconds after it started.
LONG_SHAPE = (160, 160, 96)


@pytest.fixture()
def caml_home(tmp_path, monkeypatch):
    home = tmp_path / "caml_home"  # no user models: the bundled catalog only
    home.mkdir()
    monkeypatch.setenv("CAML_HOME", str(home))
    return home


@pytest.fixture()
def scene():
    return slicer.vtkMRMLScene()


@pytest.fixture()
def logic(scene, caml_home):
    lg = slicer_logic.CAMLSegmentationLogic(scene)
    lg.engineCommand = list(ENGINE)
    yield lg
    lg.stopEngineWorker()


@pytest.fixture()
def params(logic, scene):
    p = logic.getParameterNode()
    assert p.model, "the bundled catalog has a default model"
    p.inputVolume = slicer_logic.makeTestVolume(scene, shape=(48, 40, 32))
    logic.applyQualityPreset(p, "fast")
    p.device = "cpu"
    return p


def _mask(seg, volume_node) -> np.ndarray:
    segment_id = seg.GetSegmentation().GetSegmentIdBySegmentName(mrml_bridge.LEFT_ATRIUM_NAME)
    return mrml_bridge.segment_to_mask(seg, segment_id, volume_node)


def _wait_for_progress(run, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while run.fraction == 0 and run.running and time.time() < deadline:
        run.poll()
        time.sleep(0.02)
    assert 0 < run.fraction < 1 and run.running, f"no progress seen: {run.status}"


def _wait_dead(pid: int, timeout: float = 20.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:  # our own child: reap it if it became a zombie
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        except ChildProcessError:
            pass
        time.sleep(0.05)
    return False


def test_the_worker_gives_caml_segments_mask_and_the_second_click_is_warm(logic, params, tmp_path):
    first = logic.startSegmentation(params)
    seg = logic.finishSegmentation(first, params)
    worker = logic.engineWorker()
    assert first.job.pid == worker.pid and worker.alive
    assert first.info["warm"] is False and any("loaded model" in line for line in first.log)
    assert f"Loading model {params.model}" in first.log  # the status line while the model loads
    assert first.device.startswith("cpu (openvino, ")  # auto: the export, on OpenVINO (installed by the test extra)

    second = logic.startSegmentation(params)
    assert logic.finishSegmentation(second, params) is seg
    assert second.job.pid == worker.pid  # the same process ...
    assert second.info["warm"] is True  # ... with the model it already had
    assert not any("loaded model" in line or "Loading model" in line for line in second.log)

    # The same voxels through a plain `caml segment` child give the same mask.
    inp, out = tmp_path / "in.nrrd", tmp_path / "out.nrrd"
    slicer_logic.writeVolume(mrml_bridge.volume_from_node(params.inputVolume), inp)
    argv = logic.segmentCommand(inp, out, params, params.device)
    done = subprocess.run(argv, capture_output=True, text=True, env=jobs.engine_environment(), timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    from CAMLSegmentationLib.io.volume import read_image

    expected = read_image(out).array.astype(np.uint8)
    assert 0 < expected.sum() < expected.size
    np.testing.assert_array_equal(_mask(seg, params.inputVolume), expected)


def test_another_model_reloads_in_the_same_worker(logic, params):
    logic.segment(params, timeout=300)
    pid = logic.engineWorker().pid
    others = [m["id"] for m in logic.availableModels() if m["id"] != params.model]
    assert others, "the bundled catalog has a second model"
    params.model = others[0]
    run = logic.startSegmentation(params)
    logic.finishSegmentation(run, params)
    assert run.job.pid == pid and run.info["warm"] is False
    assert any("loaded model" in line and others[0] in line for line in run.log)


def test_cancel_keeps_the_model_loaded_and_the_worker_alive(logic, params, scene):
    small = params.inputVolume
    logic.segment(params, timeout=300)  # loads the model
    worker = logic.engineWorker()
    params.inputVolume = slicer_logic.makeTestVolume(scene, shape=LONG_SHAPE)
    logic.applyQualityPreset(params, "standard")  # dense windows and flips: the run lasts
    run = logic.startSegmentation(params)
    _wait_for_progress(run)
    started = time.time()
    logic.cancel(run)
    assert run.job.state == "cancelled" and time.time() - started < 30
    assert not run.workDir.exists()
    with pytest.raises(RuntimeError, match="cancelled"):
        logic.finishSegmentation(run, params)
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 1  # only the first click's
    assert worker.alive and logic.engineWorker() is worker  # the cancel did not end the process

    params.inputVolume = small
    logic.applyQualityPreset(params, "fast")
    after = logic.startSegmentation(params)
    logic.finishSegmentation(after, params)
    assert after.job.pid == worker.pid and after.info["warm"] is True


def test_closing_the_scene_cancels_the_request_not_the_worker(logic, params, scene):
    params.inputVolume = slicer_logic.makeTestVolume(scene, shape=LONG_SHAPE)
    logic.applyQualityPreset(params, "standard")
    run = logic.startSegmentation(params)
    _wait_for_progress(run)
    worker = logic.engineWorker()
    scene.Clear(0)
    assert run.job.state == "cancelled" and run.abandoned and not run.workDir.exists()
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0
    assert worker.alive and logic._activeRuns == []


def test_a_killed_worker_fails_its_run_in_one_line_and_the_next_click_starts_another(logic, params, scene):
    small = params.inputVolume
    params.inputVolume = slicer_logic.makeTestVolume(scene, shape=LONG_SHAPE)
    logic.applyQualityPreset(params, "standard")
    run = logic.startSegmentation(params)
    _wait_for_progress(run)
    old_pid = run.job.pid
    os.kill(old_pid, signal.SIGKILL)  # the worker crashes (out of memory, say) in the middle of a request
    assert run.job.wait(30) == "failed"
    with pytest.raises(RuntimeError, match=r"the engine worker stopped \(exit status -9\)") as failure:
        logic.finishSegmentation(run, params)
    assert "\n" not in str(failure.value)
    assert not run.workDir.exists() and scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0

    logic.applyQualityPreset(params, "fast")
    params.inputVolume = small
    again = logic.startSegmentation(params)  # the next click: a new worker, a normal result
    seg = logic.finishSegmentation(again, params)
    assert again.job.pid != old_pid and logic.engineWorker().alive
    assert _mask(seg, small).any()


def test_stop_ends_the_worker_and_an_engine_that_cannot_start_says_why(logic, params):
    logic.segment(params, timeout=300)
    pid = logic.engineWorker().pid
    logic.stopEngineWorker()
    assert _wait_dead(pid)

    logic.engineCommand = [sys.executable, "-c", "import sys; sys.exit('no CAML engine here')"]
    run = logic.startSegmentation(params)
    assert run.job.wait(60) == "failed"
    with pytest.raises(RuntimeError, match="no CAML engine here"):
        logic.finishSegmentation(run, params)



def test_a_worker_that_ignores_a_cancel_is_killed_after_the_grace_period(logic, params, tmp_path):
    """A worker stuck inside one unit of work (a hung library call, say) cannot honour a cancel: after the
    grace period it is killed, the run ends cancelled with nothing left behind, the next click starts anew.
    The stuck worker is a real child that reads requests and never answers."""
    stuck = tmp_path / "stuck_worker.py"
    stuck.write_text("import sys, time\nprint('{\"event\": \"ready\"}', flush=True)\n"
                     "for line in sys.stdin:\n    time.sleep(3600)\n")
    logic.engineCommand = [sys.executable, str(stuck)]
    run = logic.startSegmentation(params)
    worker = logic.engineWorker()
    assert run.job.pid == worker.pid and worker.alive
    run.job.grace_seconds = 1.0
    started = time.time()
    logic.cancel(run)
    assert run.job.state == "cancelled" and time.time() - started < 20
    assert _wait_dead(worker.pid) and not worker.alive and not run.workDir.exists()

    logic.engineCommand = list(ENGINE)
    after = logic.startSegmentation(params)
    logic.finishSegmentation(after, params)
    assert after.job.pid != worker.pid and after.info["warm"] is False

def test_the_model_cache_reloads_exactly_when_the_model_changes(tmp_path, caml_home):
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    from CAMLSegmentationLib.cli.worker import ModelCache, segment_arguments
    from CAMLSegmentationLib.model.catalog import default_model

    entry = default_model()
    cache = ModelCache()

    def load(*extra: str, with_a: bool = False):
        return cache.load(segment_arguments(["in.nrrd", "out.nrrd", "--device", "cpu", *extra]), with_a=with_a)

    onnx = load("--model", entry.id)
    assert type(onnx).__name__ == "OnnxModel" and cache.warm is False
    assert load("--model", entry.id) is onnx and cache.warm is True
    assert load() is onnx  # no --model: the catalog default, the same entry
    # The runtime and the precision are part of the key: each change loads the model it asks for.
    assert onnx.backend == "openvino"
    full = load("--precision", "float32")
    assert full is not onnx and cache.warm is False and (full.backend, full.precision) == ("openvino", "float32")
    assert load("--precision", "float32") is full and cache.warm is True
    ort = load("--backend", "onnx", "--precision", "float32")
    assert ort is not full and (ort.backend, ort.precision) == ("onnx", "float32")
    # OpenVINO gone (unimportable): `auto` now means ONNX Runtime, so the cached OpenVINO model is not reused.
    with pytest.MonkeyPatch.context() as m:
        m.setitem(sys.modules, "openvino", None)
        after = load("--precision", "float32")
        assert after is not full and after.backend == "onnx" and cache.warm is False
    assert load("--precision", "float32").backend == "openvino" and cache.warm is False
    torch_model = load("--model", entry.id, "--backend", "torch")
    assert type(torch_model).__name__ == "InferenceModel" and cache.warm is False
    with_a = load("--model", entry.id, "--backend", "torch", with_a=True)
    assert with_a is not torch_model and "a" in with_a.networks

    weights = tmp_path / "copy.pt"
    weights.write_bytes(entry.path.read_bytes())
    first = load("--weights", str(weights))
    assert load("--weights", str(weights)) is first
    os.utime(weights, ns=(time.time_ns(), time.time_ns() + 10**9))  # replaced on disk: loaded again
    assert load("--weights", str(weights)) is not first and cache.warm is False


class _Worker:
    """``caml worker`` driven line by line, as the panel drives it."""

    def __init__(self) -> None:
        self.process = subprocess.Popen([*ENGINE, "worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, env=jobs.engine_environment())
        self.events = []

    def send(self, **request) -> None:
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()

    def send_line(self, line: str) -> None:
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def until_final(self, ident: str):
        """Events up to and including request ``ident``'s final one."""
        for line in self.process.stdout:
            self.events.append(json.loads(line))
            event = self.events[-1]
            if event.get("request") == ident and event["event"] in ("done", "error", "cancelled"):
                return event
        raise AssertionError(f"the worker ended before answering {ident}: {self.process.stderr.read()[-2000:]}")


def test_the_protocol_as_documented(tmp_path, caml_home):
    from CAMLSegmentationLib.io.volume import read_image

    inp = tmp_path / "in.nrrd"
    slicer_logic.writeVolume(mrml_bridge.volume_from_node(
        slicer_logic.makeTestVolume(slicer.vtkMRMLScene(), shape=(40, 32, 24))), inp)

    def args(name, *extra):
        return [str(inp), str(tmp_path / f"{name}.nrrd"), "--protocol", "fast", *extra]

    w = _Worker()
    try:
        ready = json.loads(w.process.stdout.readline())
        assert ready["event"] == "ready" and ready["pid"] == w.process.pid
        w.send_line("not json")
        w.send(command="segment", request="a", args=args("a", "--no-such-flag"))
        assert "--no-such-flag" in w.until_final("a")["message"]
        bad_line = [e for e in w.events if e["event"] == "error" and e["request"] is None]
        assert bad_line and bad_line[0]["message"].startswith("not a worker request")

        w.send(command="segment", request="b", args=args("b"))
        w.send(command="segment", request="b", args=args("b2"))  # an id in use: refused, b goes on
        w.send(command="segment", request="c", args=args("c"))
        w.send(command="cancel", request="c")  # still queued behind b: never starts
        b = w.until_final("b")
        assert b["event"] == "done" and b["info"]["warm"] is False and (tmp_path / "b.nrrd").is_file()
        assert Path(b["outputs"]["mask"]) == tmp_path / "b.nrrd"
        stages = [e["stage"] for e in w.events if e.get("request") == "b" and e["event"] == "progress"]
        assert stages[0] == "loading_model" and "inference" in stages
        assert [e for e in w.events if e["event"] == "error" and "not in use" in e["message"]]
        assert w.until_final("c")["event"] == "cancelled" and not (tmp_path / "c.nrrd").exists()

        w.send(command="segment", request="d", args=[str(tmp_path / "missing.nrrd"), str(tmp_path / "d.nrrd")])
        d = w.until_final("d")
        assert d["event"] == "error" and "\n" not in d["message"] and "missing.nrrd" in d["message"]
        w.send(command="segment", request="e", args=args("e"))
        e = w.until_final("e")
        assert e["event"] == "done" and e["info"]["warm"] is True  # after an error, still warm
        assert "loading_model" not in [x.get("stage") for x in w.events if x.get("request") == "e"]
        np.testing.assert_array_equal(read_image(tmp_path / "b.nrrd").array, read_image(tmp_path / "e.nrrd").array)

        # After a shutdown nothing more is read (both lines in one write: the worker may be gone after it).
        w.send_line(json.dumps({"command": "shutdown"}) + "\n"
                    + json.dumps({"command": "segment", "request": "f", "args": args("f")}))
        assert w.process.wait(60) == 0
        assert w.process.stdout.read() == "" and not (tmp_path / "f.nrrd").exists()
    finally:
        if w.process.poll() is None:
            w.process.kill()


def test_the_worker_is_hidden_from_caml_help_but_has_its_own():
    listing = subprocess.run([*ENGINE, "--help"], capture_output=True, text=True, env=jobs.engine_environment())
    own = subprocess.run([*ENGINE, "worker", "--help"], capture_output=True, text=True,
                         env=jobs.engine_environment())
    assert listing.returncode == 0 and "worker" not in listing.stdout
    assert own.returncode == 0 and "JSON lines" in own.stdout
