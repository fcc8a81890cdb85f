"""The `caml segment`, `caml evaluate` and `caml models` commands, run for real on small generated data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from CAMLSegmentationLib import cli
from CAMLSegmentationLib.io.volume import SEGMENT_NAME, read_image, write_image
from inference_helpers import GEOMETRIES, blob_volume, one_thread, tiny_checkpoint
from synthetic import write_la_layout

REPO = Path(__file__).resolve().parents[2]
_threads = pytest.fixture(autouse=True)(one_thread)


@pytest.fixture(autouse=True)
def empty_user_catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own CAML_HOME, so nothing from ~/.caml leaks in or out."""
    home = tmp_path / "caml-home"
    monkeypatch.setenv("CAML_HOME", str(home))
    return home


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    return tiny_checkpoint(tmp_path / "tiny.pt", window=(16, 16, 16))


def image_file(tmp_path: Path, geometry: str = "oblique", name: str = "mri.nii.gz") -> Path:
    volume = blob_volume(shape=(30, 26, 18), direction=GEOMETRIES[geometry])
    return write_image(volume.array, volume, tmp_path / name)


def files_in(folder: Path) -> set:
    return {p.name for p in folder.iterdir()}


@pytest.mark.parametrize("geometry", ["flipped", "oblique"])
def test_segment_writes_every_output_on_the_input_grid(tmp_path: Path, weights: Path, geometry: str,
                                                       capsys: pytest.CaptureFixture) -> None:
    src = image_file(tmp_path, geometry)
    ref = read_image(src)
    code = cli.main(["segment", str(src), "--weights", str(weights), "--device", "cpu", "--progress", "none",
                     "--uncertainty", str(tmp_path / "u.nii.gz"), "--probability", str(tmp_path / "p.nrrd")])
    assert code == 0
    out = tmp_path / "mri_left_atrium.seg.nrrd"  # the default name, beside the input
    assert str(out) in capsys.readouterr().out
    for path in (out, tmp_path / "u.nii.gz", tmp_path / "p.nrrd"):
        back = read_image(path)
        assert ref.same_geometry(back, tol=1e-5), path
    assert sitk.ReadImage(str(out)).GetMetaData("Segment0_Name") == SEGMENT_NAME
    u = read_image(tmp_path / "u.nii.gz").array
    assert 0.0 <= u.min() and u.max() <= 1.0


def test_json_progress_protocol(tmp_path: Path, weights: Path, capsys: pytest.CaptureFixture) -> None:
    src = image_file(tmp_path)
    out = tmp_path / "mask.nrrd"
    assert cli.main(["segment", str(src), str(out), "--weights", str(weights), "--progress", "json",
                     "--lcc"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[-1]["event"] == "done"
    assert lines[-1]["outputs"] == {"mask": str(out)}
    progress = [e for e in lines[:-1] if e["event"] == "progress"]
    assert progress and progress[-1]["done"] == progress[-1]["total"] == lines[-1]["info"]["windows"]
    assert len(lines) == len(progress) + 1


def test_official_checkpoint_is_accepted(tmp_path: Path) -> None:
    official = tiny_checkpoint(tmp_path / "iter_15000.pth", official=True)
    src = image_file(tmp_path)
    # A plain state_dict carries no preset: the paper's 112x112x80 window, input padded to it.
    assert cli.main(["segment", str(src), str(tmp_path / "m.nii.gz"), "--weights", str(official),
                     "--progress", "none"]) == 0
    assert read_image(tmp_path / "m.nii.gz").shape == (30, 26, 18)


def _error(capsys: pytest.CaptureFixture) -> str:
    return capsys.readouterr().err.strip()


def test_bad_image_fails_cleanly_and_writes_nothing(tmp_path: Path, weights: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "nan.nrrd"
    arr = np.random.default_rng(0).random((8, 8, 8)).astype(np.float32)
    arr[1, 2, 3] = np.nan
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(bad))
    before = files_in(tmp_path)
    assert cli.main(["segment", str(bad), "--weights", str(weights), "--progress", "json"]) == 2
    captured = capsys.readouterr()
    assert str(bad) in captured.err and "NaN or Inf" in captured.err
    last = json.loads(captured.out.splitlines()[-1])
    assert last["event"] == "error" and str(bad) in last["message"] and "NaN or Inf" in last["message"]
    assert files_in(tmp_path) == before


def test_weights_of_another_architecture(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    other = tmp_path / "unet.pth"
    torch.save(torch.nn.Conv3d(1, 8, 3).state_dict(), other)
    src = image_file(tmp_path)
    assert cli.main(["segment", str(src), "--weights", str(other), "--progress", "none"]) == 2
    err = _error(capsys)
    assert "another architecture" in err and str(other) in err
    assert not (tmp_path / "mri_left_atrium.seg.nrrd").exists()


def test_missing_model_and_bad_options(tmp_path: Path, weights: Path, capsys: pytest.CaptureFixture,
                                       no_bundled_models: Path) -> None:
    src = image_file(tmp_path)
    assert cli.main(["segment", str(src), "--progress", "none"]) == 2
    assert "no trained model in the catalog" in _error(capsys)
    assert cli.main(["models"]) == 0
    assert "No models in the catalog yet" in capsys.readouterr().out
    assert cli.main(["segment", str(src), "--model", "nonexistent", "--progress", "none"]) == 2
    assert "no model 'nonexistent'" in _error(capsys)
    assert cli.main(["segment", str(src), str(tmp_path / "m.png"), "--weights", str(weights)]) == 2
    assert "unknown output format" in _error(capsys)
    assert cli.main(["segment", str(src), "--weights", str(weights), "--uncertainty",
                     str(tmp_path / "u.seg.nrrd")]) == 2
    assert "float map" in _error(capsys)
    assert cli.main(["segment", str(src), "--weights", str(weights), "--protocol", "official", "--tta"]) == 2
    assert "cannot be combined" in _error(capsys)
    if not torch.cuda.is_available():
        assert cli.main(["segment", str(src), "--weights", str(weights), "--device", "cuda"]) == 2
        assert "CUDA is not available" in _error(capsys)
    assert files_in(tmp_path) <= {src.name, weights.name, "caml-home"}


def test_models_register_list_and_checksum(tmp_path: Path, weights: Path, empty_user_catalog: Path,
                                           capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["models"]) == 0
    assert "tiny-la" not in capsys.readouterr().out
    assert cli.main(["models", "register", str(weights), "--id", "tiny-la", "--version", "2", "--default",
                     "--title", "tiny test model"]) == 0
    capsys.readouterr()
    stored_entry = json.loads((empty_user_catalog / "models" / "models.json").read_text())["models"][0]
    assert stored_entry["title"] == "tiny test model"  # what the panel's Model list shows
    assert cli.main(["models"]) == 0
    listing = capsys.readouterr().out
    assert "tiny-la" in listing and "(default)" in listing
    assert cli.main(["models", "verify"]) == 0
    src = image_file(tmp_path)
    # A user model registered with --default is used when no --model is given.
    assert cli.main(["segment", str(src), str(tmp_path / "a.nrrd"), "--progress", "json"]) == 0
    assert "tiny-la (version 2)" in capsys.readouterr().out
    stored = empty_user_catalog / "models" / "tiny-la@2.pt"
    stored.write_bytes(stored.read_bytes()[:-10])  # truncated: a broken download
    capsys.readouterr()
    assert cli.main(["segment", str(src), str(tmp_path / "b.nrrd"), "--model", "tiny-la",
                     "--progress", "none"]) == 2
    err = _error(capsys)
    assert "checksum mismatch" in err and str(stored) in err
    assert not (tmp_path / "b.nrrd").exists()
    assert cli.main(["models", "verify", "tiny-la"]) == 1
    assert cli.main(["models", "register", str(weights), "--id", "tiny-la"]) == 2
    assert "already in the catalog" in _error(capsys)


def test_evaluate_prints_the_table_and_writes_csv_and_json(tmp_path: Path, weights: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "LA"
    ids = write_la_layout(root, 2, shape=(24, 20, 18))
    (tmp_path / "test.list").write_text("\n".join(ids) + "\n")
    out = tmp_path / "eval"
    code = cli.main(["evaluate", "--data", str(root), "--list", str(tmp_path / "test.list"),
                     "--weights", str(weights), "--protocol", "official", "--out", str(out),
                     "--progress", "none"])
    assert code == 0
    text = capsys.readouterr().out
    assert "protocol official" in text and "mean±std" in text and ids[0] in text and ids[1] in text
    report = json.loads((out / "metrics.json").read_text())
    assert [c["case"] for c in report["cases"]] == ids
    dices = [c["dice"] for c in report["cases"]]
    assert report["summary"]["dice"]["mean"] == pytest.approx(np.mean(dices))
    rows = (out / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("case,dice,jaccard,hd95_voxels,asd_voxels,hd95_mm,asd_mm")
    assert [r.split(",")[0] for r in rows[1:]] == [*ids, "mean", "std"]


def test_evaluate_recognises_the_la_layout_by_its_case_folder_with_any_list(
        tmp_path: Path, weights: Path, capsys: pytest.CaptureFixture) -> None:
    """An LA folder holding the case folder and test.list but no train.list is still the LA layout."""
    root = tmp_path / "LA"
    ids = write_la_layout(root, 3, shape=(20, 18, 16))
    (root / "train.list").unlink()
    (root / "test.list").write_text("\n".join(ids[1:]) + "\n")
    out = tmp_path / "eval"
    assert cli.main(["evaluate", "--data", str(root), "--list", str(root / "test.list"),
                     "--weights", str(weights), "--out", str(out), "--progress", "none"]) == 0
    assert [c["case"] for c in json.loads((out / "metrics.json").read_text())["cases"]] == ids[1:]


def test_evaluate_names_a_missing_case(tmp_path: Path, weights: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "LA"
    write_la_layout(root, 1, shape=(16, 16, 16))
    (tmp_path / "l.list").write_text("case000\nmissing_case\n")
    assert cli.main(["evaluate", "--data", str(root), "--list", str(tmp_path / "l.list"),
                     "--weights", str(weights), "--out", str(tmp_path / "e"), "--progress", "none"]) == 2
    assert "missing_case" in _error(capsys)
    assert not (tmp_path / "e").exists()


def test_sigterm_cancels_and_leaves_nothing(tmp_path: Path) -> None:
    """What the Slicer panel's Cancel does: terminate the process; no output, no temporary file."""
    weights = tiny_checkpoint(tmp_path / "w.pt", window=(16, 16, 16))
    volume = blob_volume(shape=(96, 96, 64))
    src = write_image(volume.array, volume, tmp_path / "big.nrrd")
    env = dict(os.environ, PYTHONPATH=str(REPO / "CAMLSegmentation"), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "CAMLSegmentationLib.cli", "segment", str(src),
                             str(tmp_path / "out.seg.nrrd"), "--weights", str(weights), "--overlap", "0.75",
                             "--batch-size", "1", "--progress", "json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        first = proc.stdout.readline()  # the first progress event: inference has started
        assert json.loads(first)["event"] == "progress", first + proc.stderr.read()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    last = json.loads(out.strip().splitlines()[-1])
    assert last["event"] == "cancelled"
    assert files_in(tmp_path) == {"w.pt", "big.nrrd"}


@pytest.mark.parametrize("command", [[], ["train"], ["segment"], ["evaluate"], ["models"]])
def test_help_does_not_import_torch(command):
    """`caml --help` answers at once: torch (seconds to import) loads only when a command runs."""
    probe = ("import sys\n"
             "from CAMLSegmentationLib.cli import main\n"
             "try:\n"
             f"    main({command + ['--help']!r})\n"
             "except SystemExit as exc:\n"
             "    assert exc.code == 0, exc.code\n"
             "print('HEAVY', sorted(m for m in ('torch', 'scipy', 'SimpleITK', 'h5py') if m in sys.modules))\n")
    env = dict(os.environ, PYTHONPATH=str(REPO / "CAMLSegmentation"))
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "usage: caml" in run.stdout
    assert run.stdout.strip().splitlines()[-1] == "HEAVY []"


def test_protocol_overlap_and_flips_options(capsys: pytest.CaptureFixture) -> None:
    """--protocol picks a whole setting; --overlap and --tta/--no-tta change it; bad values are refused."""
    from CAMLSegmentationLib.cli import build_parser
    from CAMLSegmentationLib.cli.segment import options_from_args
    from CAMLSegmentationLib.errors import UserError
    from CAMLSegmentationLib.inference.predictor import InferenceOptions
    from CAMLSegmentationLib.model.settings import DEFAULT_OVERLAP

    def options(*flags: str) -> InferenceOptions:
        return options_from_args(build_parser().parse_args(["segment", "in.nrrd", *flags]))

    assert options() == InferenceOptions()
    assert options().overlap == DEFAULT_OVERLAP and options().tta and options().blend == "constant"
    fast = options("--protocol", "fast")
    assert fast == InferenceOptions.fast() and not fast.tta and fast.overlap == 0.25
    assert options("--protocol", "fast", "--tta").tta and not options("--no-tta").tta
    assert options("--overlap", "0.5").overlap == 0.5
    assert options("--overlap", "0.5,0.5,0.75").overlap == (0.5, 0.5, 0.75)
    assert options("--protocol", "official") == InferenceOptions.official()
    with pytest.raises(UserError, match="cannot be combined"):
        options("--protocol", "official", "--overlap", "0.5")
    for bad in ("0.99", "0.5,0.5", "-0.1", "half"):
        with pytest.raises(SystemExit):
            options("--overlap", bad)
        assert "--overlap" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the dropped exception
def test_a_cancel_signal_lost_in_a_finaliser_still_stops_the_job() -> None:
    """Python drops an exception raised inside ``__del__``; the signal's cancel must not be lost with it."""
    import gc

    from CAMLSegmentationLib.cli.segment import progress_callback
    from CAMLSegmentationLib.progress import Cancelled, ProgressEvent, install_cancel_handler, restore_handlers

    class SignalsWhenCollected:
        def __del__(self) -> None:
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(100):  # bytecode for the handler to run in, here where it cannot propagate
                pass

    previous = install_cancel_handler(None)
    try:
        report = progress_callback("none")
        report(ProgressEvent("inference", 0, 2, "windows"))  # no signal yet: nothing happens
        SignalsWhenCollected()
        gc.collect()
        with pytest.raises(Cancelled):
            report(ProgressEvent("inference", 1, 2, "windows"))
    finally:
        restore_handlers(previous)
