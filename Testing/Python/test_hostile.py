"""Hostile inputs: what a careless user or an attacker hands the `caml` command (issue 14, issue 9).

Weights that would run code, names that would escape the model store,
concurrent registrations, outputs that cannot all be written, cancels at any
moment, resume after a cancel, headers that claim huge images, file names
that are not UTF-8, malformed checkpoints and presets. Everything runs for
real: the CLI in this process where a crash cannot take pytest down, in a
child process where signals, concurrency, memory or a C++ abort are tested.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import torch
from CAMLSegmentationLib import cli
from CAMLSegmentationLib.errors import CAMLError
from CAMLSegmentationLib.io.volume import write_image
from CAMLSegmentationLib.model import catalog
from CAMLSegmentationLib.model.checkpoint import FORMAT, read_checkpoint, save_checkpoint
from CAMLSegmentationLib.progress import Cancelled
from CAMLSegmentationLib.training.presets import TrainingPreset
from inference_helpers import blob_volume, one_thread, tiny_checkpoint, tiny_network
from synthetic import write_la_layout

REPO = Path(__file__).resolve().parents[2]
_threads = pytest.fixture(autouse=True)(one_thread)

TINY = TrainingPreset(name="tiny", spacing=None, patch_size=(32, 32, 16), base_filters=4, feat_dim=8,
                      iterations=8, lr=0.05, memory_per_class=16, num_filtered=256, rampup_interval=1,
                      rampup_length=4, val_start=1, val_interval=1000, checkpoint_interval=1000)


@pytest.fixture(autouse=True)
def caml_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own CAML_HOME (user catalog), also seen by child processes."""
    home = tmp_path / "caml-home"
    monkeypatch.setenv("CAML_HOME", str(home))
    return home


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    return tiny_checkpoint(tmp_path / "tiny.pt", window=(16, 16, 16))


@pytest.fixture
def image(tmp_path: Path) -> Path:
    volume = blob_volume(shape=(30, 26, 18))
    return write_image(volume.array, volume, tmp_path / "mri.nii.gz")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("la")
    write_la_layout(root, 5, shape=(32, 32, 24))
    return root


def child_env(**extra: str) -> Dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO / "CAMLSegmentation"), OMP_NUM_THREADS="1",
                PYTHONUNBUFFERED="1", **extra)


def caml_argv(*args) -> List:
    return [sys.executable, "-m", "CAMLSegmentationLib.cli", *args]


def run_caml(args: List, capsys: pytest.CaptureFixture):
    """``caml ARGS`` in this process: (exit status, stdout, stderr)."""
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def json_events(stdout: str) -> List[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip().startswith("{")]


def final_events(events: List[dict]) -> List[dict]:
    return [e for e in events if e.get("event") in ("done", "error", "cancelled")]


def one_line_error(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def files_in(folder: Path) -> set:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")}


def write_preset(path: Path, preset: TrainingPreset) -> Path:
    path.write_text(json.dumps(preset.to_dict()))
    return path


# --------------------------------------------------------------------------- weights never run code


class _MakesAFile:
    """Unpickling this calls ``open(marker, "w")``: a stand-in for any code an attacker wants run."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def malicious_checkpoint(path: Path, marker: Path) -> Path:
    net = tiny_network()
    torch.save({"format": FORMAT, "network": net.config.to_dict(), "model": net.state_dict(),
                "preset": {"name": "tiny", "patch_size": [16, 16, 16]}, "trap": _MakesAFile(marker)}, path)
    return path


def test_a_malicious_pickle_runs_nothing_through_any_command(tmp_path: Path, image: Path, dataset: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    marker = tmp_path / "pwned"
    evil = malicious_checkpoint(tmp_path / "evil.pt", marker)
    (tmp_path / "cases.list").write_text("case000\n")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    malicious_checkpoint(run_dir / "last.pt", marker)
    commands = {
        "segment": ["segment", image, tmp_path / "out.seg.nrrd", "--weights", evil, "--device", "cpu"],
        "evaluate": ["evaluate", "--data", dataset, "--list", tmp_path / "cases.list", "--weights", evil,
                     "--out", tmp_path / "eval", "--device", "cpu"],
        "register": ["models", "register", evil, "--id", "evil"],
        "train --resume": ["train", "--data", dataset, "--labeled", "2", "--out", run_dir, "--resume",
                           "--preset", write_preset(tmp_path / "p.json", TINY), "--device", "cpu"],
    }
    for name, args in commands.items():
        code, _, err = run_caml(args + ["--progress", "none"] if name != "register" else args, capsys)
        assert code == 2, name
        assert "refused" in one_line_error(err) and "run code" in err, (name, err)
        assert not marker.exists(), f"`caml {name}` ran the code in the weights file"
    assert not (tmp_path / "out.seg.nrrd").exists() and not (tmp_path / "eval").exists()
    assert catalog.read_catalog(catalog.user_catalog_path()) == []
    # The file really is an attack: the unsafe loader the engine used to call runs it.
    torch.load(evil, weights_only=False)
    assert marker.exists()


def test_official_state_dicts_and_the_shipped_model_still_load(tmp_path: Path) -> None:
    official = read_checkpoint(tiny_checkpoint(tmp_path / "iter_15000.pth", official=True))
    assert official["source"] == "plain state_dict" and len(official["model"]) > 100
    shipped = catalog.default_model(catalog.read_catalog(catalog.bundled_catalog_path(), "bundled"))
    assert shipped is not None and read_checkpoint(shipped.path)["trained"]["iteration"] > 0


def test_checkpoints_hold_only_plain_types(tmp_path: Path) -> None:
    """numpy values (what metrics and RNG states produce) are stored as plain values, so they load."""
    save_checkpoint(tmp_path / "c.pt", {"model": tiny_network().state_dict(), "val": {"dice": np.float64(0.5)},
                                        "counts": np.arange(3), "pair": (np.int64(1), 2)})
    back = read_checkpoint(tmp_path / "c.pt")
    assert back["val"]["dice"] == 0.5 and type(back["val"]["dice"]) is float
    assert back["counts"].tolist() == [0, 1, 2] and back["pair"] == (1, 2)


# --------------------------------------------------------------------------- the model store


@pytest.mark.parametrize("option,value", [
    ("--id", "../../escaped"), ("--id", "a/b"), ("--id", "..\\x"), ("--id", ".hidden"), ("--id", "a@b"),
    ("--id", "x" * 65), ("--id", ""), ("--version", "../../../tmp/evil"), ("--version", "1/2"),
    ("--version", ".."),
])
def test_register_refuses_names_that_are_not_plain(tmp_path: Path, weights: Path, caml_home: Path, option: str,
                                                   value: str, capsys: pytest.CaptureFixture) -> None:
    args = ["models", "register", weights, "--id", "ok", "--version", "1"]
    args[args.index(option) + 1] = value
    before = files_in(tmp_path)
    code, _, err = run_caml(args, capsys)
    assert code == 2 and "not allowed" in one_line_error(err)
    assert files_in(tmp_path) == before, "something was written"


def test_ids_and_versions_that_used_to_share_a_file_get_their_own(weights: Path, caml_home: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    assert run_caml(["models", "register", weights, "--id", "a-1", "--version", "2"], capsys)[0] == 0
    assert run_caml(["models", "register", weights, "--id", "a", "--version", "1-2", "--fp16"], capsys)[0] == 0
    entries = catalog.read_catalog(catalog.user_catalog_path(), "user")
    assert sorted(e.file for e in entries) == ["a-1@2.pt", "a@1-2.pt"]
    code, out, _ = run_caml(["models", "verify"], capsys)
    assert code == 0 and out.count("ok ") >= 2
    code, _, err = run_caml(["models", "register", weights, "--id", "A-1"], capsys)  # same id but for case
    assert code == 2 and "already in the catalog" in err


def test_concurrent_registers_all_land_once(tmp_path: Path, weights: Path, caml_home: Path) -> None:
    """Processes released together: each distinct id lands once, a repeated id exactly once."""
    go = tmp_path / "go"
    waiter = ("import os, sys, time\n"
              "import CAMLSegmentationLib.model.catalog, CAMLSegmentationLib.model.checkpoint\n"
              "from CAMLSegmentationLib import cli\n"
              f"while not os.path.exists({str(go)!r}): time.sleep(0.01)\n"
              "sys.exit(cli.main(sys.argv[1:]))\n")
    ids = [f"m{n}" for n in range(5)] + ["same"] * 3
    procs = [subprocess.Popen([sys.executable, "-c", waiter, "models", "register", str(weights), "--id", i],
                              env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in ids]
    time.sleep(1.0)
    go.touch()
    results = [(i, p.wait(timeout=300), p.stderr.read()) for i, p in zip(ids, procs)]
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    assert all(code == 0 for i, code, _ in results if i != "same"), results
    same = [(code, err) for i, code, err in results if i == "same"]
    assert sorted(code for code, _ in same) == [0, 2, 2], same
    assert all("already in the catalog" in err for code, err in same if code == 2)
    listed = [e.id for e in catalog.read_catalog(catalog.user_catalog_path(), "user")]
    assert sorted(listed) == sorted(set(ids)), listed
    stored = sorted(p.name for p in catalog.user_catalog_path().parent.glob("*.pt"))
    assert stored == sorted(f"{i}@1.pt" for i in set(ids))
    for entry in catalog.read_catalog(catalog.user_catalog_path(), "user"):
        catalog.verify(entry)


def test_a_damaged_catalog_does_not_block_a_model_named_from_another(
        tmp_path: Path, weights: Path, image: Path, caml_home: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    bundled = tmp_path / "bundled" / "models.json"
    monkeypatch.setattr(catalog, "bundled_catalog_path", lambda: bundled)
    catalog.register_model(weights, "shipped", catalog_path=bundled)
    user = catalog.user_catalog_path()
    user.parent.mkdir(parents=True)
    dup = {"id": "dup", "version": "1", "file": "dup.pt", "sha256": "0" * 64}
    user.write_text(json.dumps({"models": [dup, dup]}))
    code, _, err = run_caml(["segment", image, tmp_path / "o.nii.gz", "--model", "shipped", "--device", "cpu",
                             "--progress", "none"], capsys)
    assert code == 0, err
    code, _, err = run_caml(["segment", image, tmp_path / "p.nii.gz", "--model", "dup", "--progress", "none"],
                            capsys)
    assert code == 2 and "listed 2 times" in one_line_error(err)
    user.write_text("{not json")
    code, _, err = run_caml(["segment", image, tmp_path / "q.nii.gz", "--model", "shipped", "--device", "cpu",
                             "--progress", "none"], capsys)
    assert code == 0, err


def test_a_second_default_replaces_the_first(weights: Path, caml_home: Path, capsys: pytest.CaptureFixture) -> None:
    assert run_caml(["models", "register", weights, "--id", "first", "--default"], capsys)[0] == 0
    assert catalog.default_model().id == "first"
    assert run_caml(["models", "register", weights, "--id", "second", "--default"], capsys)[0] == 0
    assert catalog.default_model().id == "second"
    raw = json.loads(catalog.user_catalog_path().read_text())["models"]
    assert [m["id"] for m in raw if m["default"]] == ["second"]


# --------------------------------------------------------------------------- outputs: all or nothing


@pytest.mark.parametrize("problem", ["folder is a file", "uncertainty = mask", "probability = input",
                                     "mhd", "upper-case ending", "float map as seg.nrrd", "output is a folder"])
def test_output_problems_are_found_before_inference(tmp_path: Path, weights: Path, image: Path, problem: str,
                                                    capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "a-folder").mkdir()
    mask, extra = tmp_path / "mask.seg.nrrd", ["--uncertainty", str(tmp_path / "u.nii.gz"),
                                               "--probability", str(tmp_path / "p.nrrd")]
    if problem == "folder is a file":
        mask = tmp_path / "a-file" / "mask.seg.nrrd"
    elif problem == "uncertainty = mask":
        extra[1] = str(mask)
    elif problem == "probability = input":
        extra[3] = str(image)
    elif problem == "mhd":
        mask = tmp_path / "out.mhd"
    elif problem == "upper-case ending":
        mask = tmp_path / "OUT.NII.GZ"
    elif problem == "float map as seg.nrrd":
        extra[3] = str(tmp_path / "p.seg.nrrd")
    elif problem == "output is a folder":
        mask = tmp_path / "a-folder"
    before = files_in(tmp_path)
    code, out, err = run_caml(["segment", image, mask, "--weights", weights, "--device", "cpu",
                               "--progress", "json", *extra], capsys)
    assert code == 2, err
    one_line_error(err)
    events = json_events(out)
    assert not [e for e in events if e.get("stage") == "inference"], "the error came after the inference"
    assert final_events(events) == [events[-1]] and events[-1]["event"] == "error"
    assert files_in(tmp_path) == before


# --------------------------------------------------------------------------- cancel


def test_cancel_cannot_be_swallowed_by_library_code() -> None:
    with pytest.raises(Cancelled):
        try:
            raise Cancelled("stop")
        except Exception:  # what a library does to turn errors into messages
            pytest.fail("a cancel was caught as an ordinary error")


def _wait_for_cancel_handler(proc: subprocess.Popen, timeout: float = 60.0) -> None:
    """Until ``proc`` has a SIGTERM handler (Linux: the SigCgt mask in /proc/PID/status)."""
    status = Path(f"/proc/{proc.pid}/status")
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
        except OSError:
            break
        if int(fields["SigCgt"].strip(), 16) & (1 << (signal.SIGTERM - 1)):
            return
        time.sleep(0.005)
    raise AssertionError("the child never installed its SIGTERM handler")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads signal masks from /proc (Linux)")
def test_sigterm_at_any_moment_ends_with_130_one_event_and_no_output(tmp_path: Path) -> None:
    """From the moment the handler exists (before any work) to deep in the inference."""
    weights = tiny_checkpoint(tmp_path / "w.pt", window=(16, 16, 16))
    volume = blob_volume(shape=(96, 96, 64))
    src = write_image(volume.array, volume, tmp_path / "big.nrrd")
    before = files_in(tmp_path)
    rng = random.Random(14)
    delays = [0.0, 0.05] + [rng.uniform(0.1, 4.0) for _ in range(4)]
    for n, delay in enumerate(delays):
        proc = subprocess.Popen(caml_argv("segment", src, tmp_path / "out.seg.nrrd", "--weights", weights,
                                          "--overlap", "0.8", "--batch-size", "1", "--uncertainty",
                                          tmp_path / "u.nii.gz", "--progress", "json"),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
        try:
            _wait_for_cancel_handler(proc)
            time.sleep(delay)
            proc.send_signal(signal.SIGTERM)
            if n % 2:  # an impatient parent signals twice: still one clean cancel
                time.sleep(0.01)
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 130, (delay, err)
        events = json_events(out)
        assert final_events(events) == [{"event": "cancelled", "message": "terminated by a signal"}], (delay, out)
        assert events[-1]["event"] == "cancelled"
        assert "Traceback" not in err, err
        assert files_in(tmp_path) == before, (delay, files_in(tmp_path) - before)


def _train_and_cut(base: List, out: Path, stop_after: int, fraction: float) -> int:
    """Run ``caml train`` in a child and SIGTERM it ``fraction`` of an iteration after iteration
    ``stop_after`` ended (inside the next step); returns the iteration its last.pt holds."""
    proc = subprocess.Popen(caml_argv(*base, "--out", out, "--progress", "json"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
    lines, times = [], []
    try:
        for line in proc.stdout:
            lines.append(line)
            event = json.loads(line)
            if event.get("stage") == "train":
                times.append(event["time"])
                if event["done"] >= stop_after:
                    break
        period = (times[-1] - times[0]) / max(1, len(times) - 1)
        time.sleep(fraction * period)
        proc.send_signal(signal.SIGTERM)
        rest, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    events = json_events("".join(lines) + rest)
    assert final_events(events) == [events[-1]] and events[-1]["event"] == "cancelled"
    return read_checkpoint(out / "last.pt")["iteration"]


def test_sigterm_then_resume_equals_the_uninterrupted_run(tmp_path: Path, dataset: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    """Bit for bit, wherever in an iteration the signal lands (the step is never cut in two)."""
    preset = write_preset(tmp_path / "p.json", TINY)
    base = ["train", "--data", dataset, "--labeled", "2", "--preset", preset, "--device", "cpu", "--seed", "7"]
    code, _, err = run_caml(base + ["--out", tmp_path / "straight", "--progress", "none"], capsys)
    assert code == 0, err
    straight = read_checkpoint(tmp_path / "straight" / "last.pt")
    for n, (stop_after, fraction) in enumerate([(2, 0.5), (3, 0.25), (4, 0.75)]):
        out = tmp_path / f"cut{n}"
        stopped = _train_and_cut(base, out, stop_after, fraction)
        assert stop_after <= stopped < TINY.iterations
        code, stdout, err = run_caml(base + ["--out", out, "--resume", "--progress", "json"], capsys)
        assert code == 0, err
        assert final_events(json_events(stdout))[-1]["event"] == "done"
        resumed = read_checkpoint(out / "last.pt")
        assert resumed["iteration"] == straight["iteration"] == TINY.iterations
        for key, value in straight["model"].items():
            assert torch.equal(value, resumed["model"][key]), \
                f"{key} differs after SIGTERM at {fraction} of iteration {stop_after + 1} and resume"


def test_train_json_ends_with_exactly_one_final_event(tmp_path: Path, dataset: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    preset = write_preset(tmp_path / "p.json", TINY.with_overrides(iterations=2))
    code, out, err = run_caml(["train", "--data", dataset, "--labeled", "2", "--preset", preset, "--device", "cpu",
                               "--out", tmp_path / "run", "--progress", "json"], capsys)
    assert code == 0, err
    events = json_events(out)
    assert final_events(events) == [events[-1]] and events[-1]["event"] == "done"
    assert events[-1]["outputs"] == {"last": str(tmp_path / "run" / "last.pt")}  # no validation: no best.pt
    assert all(Path(p).is_file() for p in events[-1]["outputs"].values())
    code, out, err = run_caml(["train", "--data", tmp_path / "nowhere", "--labeled", "2", "--preset", preset,
                               "--out", tmp_path / "run2", "--progress", "json"], capsys)
    assert code == 2
    events = json_events(out)
    assert final_events(events) == [events[-1]] and events[-1]["event"] == "error"
    assert "nowhere" in events[-1]["message"] and "nowhere" in one_line_error(err)


# --------------------------------------------------------------------------- sizes and names


def write_claiming_nrrd(path: Path, sizes=(1000, 1000, 1000)) -> Path:
    """A few hundred bytes of NRRD whose header claims ``sizes`` float voxels (4 GB for 1000^3)."""
    header = ("NRRD0004\ntype: float\ndimension: 3\nsizes: " + " ".join(map(str, sizes))
              + "\nspace: left-posterior-superior\nspace directions: (1,0,0) (0,1,0) (0,0,1)\n"
              "endian: little\nencoding: raw\n\n")
    path.write_bytes(header.encode() + np.zeros(64, np.float32).tobytes())
    return path


def test_an_oversized_header_is_refused_without_allocating(tmp_path: Path, weights: Path) -> None:
    src = write_claiming_nrrd(tmp_path / "claims-4GB.nrrd")
    # VmHWM is this process's own high-water mark (a new address space at exec); ru_maxrss can
    # carry over the parent's peak, which a long pytest run makes larger than the bound.
    probe = ("import os, resource, sys\n"
             "from CAMLSegmentationLib import cli\n"
             "code = cli.main(sys.argv[1:])\n"
             "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')] "
             "if os.path.exists('/proc/self/status') else []\n"
             "peak = int(hwm[0].split()[1]) if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
             "print('peak_kb', peak, file=sys.stderr)\n"
             "sys.exit(code)\n")
    done = subprocess.run([sys.executable, "-c", probe, "segment", str(src), str(tmp_path / "o.seg.nrrd"),
                           "--weights", str(weights), "--device", "cpu", "--progress", "none"],
                          capture_output=True, text=True, env=child_env(), timeout=300)
    assert done.returncode == 2, done.stderr
    message, peak = done.stderr.strip().splitlines()
    assert "1000x1000x1000" in message and "CAML_MAX_VOXELS" in message
    assert int(peak.split()[1]) < 1_500_000, "the claimed 4 GB (or a good part of it) was allocated"
    assert {p.name for p in tmp_path.iterdir()} <= {"claims-4GB.nrrd", "tiny.pt", "caml-home"}


def test_the_voxel_limit_covers_h5_and_resampling_and_can_be_raised(
        tmp_path: Path, weights: Path, image: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    import h5py

    with h5py.File(tmp_path / "claims.h5", "w") as f:  # chunked, never written: a few KB on disk
        f.create_dataset("image", shape=(1000, 1000, 1000), dtype="f4", chunks=(16, 16, 16), compression="gzip")
    code, _, err = run_caml(["segment", tmp_path / "claims.h5", tmp_path / "o.nii.gz", "--weights", weights,
                             "--progress", "none"], capsys)
    assert code == 2 and "exceeds the limit" in one_line_error(err)
    # 4x4x4 voxels of 1e5 mm, for a model trained at 1 mm: a grid of 400000^3 after resampling.
    from CAMLSegmentationLib.io.volume import Volume

    far = Volume(np.random.default_rng(0).normal(size=(4, 4, 4)).astype(np.float32), spacing=(1e5,) * 3)
    write_image(far.array, far, tmp_path / "far.nrrd")
    mm = tiny_checkpoint(tmp_path / "mm.pt", window=(16, 16, 16), spacing=(1.0, 1.0, 1.0))
    code, _, err = run_caml(["segment", tmp_path / "far.nrrd", tmp_path / "o.nii.gz", "--weights", mm,
                             "--progress", "none"], capsys)
    assert code == 2 and "resampled" in one_line_error(err)
    monkeypatch.setenv("CAML_MAX_VOXELS", "1000")  # a 30x26x18 image is over it...
    code, _, err = run_caml(["segment", image, tmp_path / "o.nii.gz", "--weights", weights, "--progress", "none"],
                            capsys)
    assert code == 2 and "CAML_MAX_VOXELS" in one_line_error(err)
    monkeypatch.setenv("CAML_MAX_VOXELS", "100000")  # ...and under this one
    code, _, err = run_caml(["segment", image, tmp_path / "o.nii.gz", "--weights", weights, "--progress", "none",
                             "--device", "cpu"], capsys)
    assert code == 0, err


@pytest.mark.skipif(sys.platform in ("win32", "darwin"), reason="needs a file system that takes any bytes")
@pytest.mark.parametrize("where", ["input", "output"])
def test_a_non_utf8_file_name_is_refused_up_front(tmp_path: Path, weights: Path, image: Path, where: str) -> None:
    bad = os.fsencode(str(tmp_path)) + b"/mri\xff.nii.gz"
    if where == "input":
        os.link(image, bad)
        args = [bad, os.fsencode(str(tmp_path / "out.seg.nrrd"))]
    else:
        args = [os.fsencode(str(image)), bad]
    before = files_in(tmp_path)
    done = subprocess.run([os.fsencode(sys.executable), b"-m", b"CAMLSegmentationLib.cli", b"segment", *args,
                           b"--weights", os.fsencode(str(weights)), b"--progress", b"none"],
                          capture_output=True, env=child_env(), timeout=300)
    err = done.stderr.decode("utf-8", "replace")
    assert done.returncode == 2, err  # not 134 (abort) after the inference
    assert "not valid UTF-8" in one_line_error(err)
    assert files_in(tmp_path) == before


# --------------------------------------------------------------------------- malformed files


def _one_d_conv(path: Path) -> Path:
    state = tiny_network().state_dict()
    state["encoder1.block_one.conv.0.weight"] = torch.zeros(4)
    torch.save(state, path)
    return path


def _without_model(path: Path) -> Path:
    torch.save({"format": FORMAT, "network": {"base_filters": 4}}, path)
    return path


def _string_preset(path: Path) -> Path:
    net = tiny_network()
    torch.save({"format": FORMAT, "network": net.config.to_dict(), "model": net.state_dict(), "preset": "big"},
               path)
    return path


def _string_filters(path: Path) -> Path:
    net = tiny_network()
    torch.save({"format": FORMAT, "network": dict(net.config.to_dict(), base_filters="4"),
                "model": net.state_dict()}, path)
    return path


def _bad_patch(path: Path) -> Path:
    net = tiny_network()
    torch.save({"format": FORMAT, "network": net.config.to_dict(), "model": net.state_dict(),
                "preset": {"patch_size": "abc"}}, path)
    return path


@pytest.mark.parametrize("make", [_one_d_conv, _without_model, _string_preset, _string_filters, _bad_patch])
def test_malformed_checkpoints_are_one_line_errors(tmp_path: Path, image: Path, make,
                                                   capsys: pytest.CaptureFixture) -> None:
    bad = make(tmp_path / "bad.pt")
    for args in (["segment", image, tmp_path / "o.nii.gz", "--weights", bad, "--progress", "none"],
                 ["models", "register", bad, "--id", "bad"]):
        code, _, err = run_caml(args, capsys)
        assert code == 2, err
        assert "bad.pt" in one_line_error(err)
    assert not (tmp_path / "o.nii.gz").exists()


@pytest.mark.parametrize("change", [{"iterations": "many"}, {"lr": True}, {"patch_size": [32, 32]},
                                    {"labeled_batch": 0}, {"spacing": "fine"}, {"amp": "yes"}])
def test_presets_with_wrong_types_are_refused_before_anything_is_written(
        tmp_path: Path, dataset: Path, change: dict, capsys: pytest.CaptureFixture) -> None:
    preset = tmp_path / "p.json"
    preset.write_text(json.dumps(dict(TINY.to_dict(), **change)))
    code, _, err = run_caml(["train", "--data", dataset, "--labeled", "2", "--preset", preset,
                             "--out", tmp_path / "run"], capsys)
    assert code == 2 and next(iter(change)) in one_line_error(err)
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- errors, resume, files (issue 9)


def test_user_errors_share_one_base_class() -> None:
    from CAMLSegmentationLib.devices import DeviceError
    from CAMLSegmentationLib.errors import MissingFileError, OutputError, SizeLimitError, UserError
    from CAMLSegmentationLib.io.volume import ImageError
    from CAMLSegmentationLib.model.catalog import CatalogError
    from CAMLSegmentationLib.model.checkpoint import CheckpointError
    from CAMLSegmentationLib.training.presets import PresetError
    from CAMLSegmentationLib.training.sources import DataError

    for cls in (CatalogError, CheckpointError, DataError, DeviceError, ImageError, PresetError, UserError,
                MissingFileError, OutputError, SizeLimitError):
        assert issubclass(cls, CAMLError), cls


def test_a_real_bug_keeps_its_traceback(tmp_path: Path, weights: Path, image: Path,
                                        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """A ValueError from deep inside (a shape bug) is not a user error: no exit 2, the traceback stays."""
    from CAMLSegmentationLib.inference import predictor as inference

    def shape_bug(*args, **kwargs):
        return np.zeros((2, 3)) + np.zeros((4, 5))  # operands could not be broadcast: ValueError

    monkeypatch.setattr(inference, "segment_volume", shape_bug)
    with pytest.raises(ValueError, match="broadcast"):
        cli.main(["segment", str(image), str(tmp_path / "o.nii.gz"), "--weights", str(weights), "--device", "cpu",
                  "--progress", "json"])
    events = json_events(capsys.readouterr().out)
    assert final_events(events) == [events[-1]] and events[-1]["event"] == "error"
    assert "internal error" in events[-1]["message"]


def test_an_enabled_scaler_resumes_from_the_empty_state_of_a_cpu_run() -> None:
    from CAMLSegmentationLib.training.trainer import restore_scaler

    if not hasattr(torch.amp, "GradScaler"):
        pytest.skip("torch.amp.GradScaler is newer than this torch")
    cpu_run = torch.amp.GradScaler("cpu", enabled=False).state_dict()
    assert cpu_run == {}
    enabled = torch.amp.GradScaler("cpu", enabled=True, init_scale=1024.0)
    with pytest.raises(RuntimeError):
        enabled.load_state_dict(cpu_run)  # what the trainer used to do
    restore_scaler(enabled, cpu_run)
    assert enabled.get_scale() == 1024.0
    saved = torch.amp.GradScaler("cpu", enabled=True, init_scale=8.0).state_dict()
    restore_scaler(enabled, saved)
    assert enabled.get_scale() == 8.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_cpu_started_run_resumes_on_cuda(tmp_path: Path, dataset: Path, capsys: pytest.CaptureFixture) -> None:
    base = ["train", "--data", dataset, "--labeled", "2", "--out", tmp_path / "run", "--progress", "none"]
    first = write_preset(tmp_path / "p2.json", TINY.with_overrides(iterations=2))
    assert run_caml(base + ["--preset", first, "--device", "cpu"], capsys)[0] == 0
    more = write_preset(tmp_path / "p4.json", TINY.with_overrides(iterations=4))
    code, _, err = run_caml(base + ["--preset", more, "--device", "cuda", "--resume"], capsys)
    assert code == 0, err
    assert read_checkpoint(tmp_path / "run" / "last.pt")["iteration"] == 4


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="names file descriptors through /proc (Linux)")
def test_checkpoints_are_fsynced_before_the_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The temporary file's data, then the rename, then the folder entry: the order that survives a power cut."""
    log: List[tuple] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        log.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst) -> None:
        log.append(("replace", str(src), str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    target = tmp_path / "last.pt"
    save_checkpoint(target, {"model": tiny_network().state_dict(), "iteration": 3})
    kinds = [entry[0] for entry in log]
    assert kinds == ["fsync", "replace", "fsync"], log
    tmp = log[1][1]
    assert log[0][1] == tmp and log[1][2] == str(target)  # the data of the very file renamed
    assert log[2][1] == str(tmp_path)  # then the folder holding the new name
    assert read_checkpoint(target)["iteration"] == 3
