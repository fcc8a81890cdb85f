"""Segmenting needs no h5py: a Python without it segments an NRRD; only .h5 input asks for it, in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from CAMLSegmentationLib.io.volume import write_image
from inference_helpers import blob_volume, tiny_checkpoint

PACKAGE_PARENT = Path(__file__).resolve().parents[2] / "CAMLSegmentation"

#: Runs `caml ARGS` in a Python where `import h5py` fails, as on a fresh Slicer without it.
WITHOUT_H5PY = """
import json, sys
sys.modules["h5py"] = None  # any `import h5py` now raises ImportError
from CAMLSegmentationLib import cli
code = cli.main(sys.argv[1:])
print(json.dumps({"code": code, "h5py_loaded": sys.modules.get("h5py") is not None}))
"""


def _caml_without_h5py(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(PACKAGE_PARENT), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-c", WITHOUT_H5PY, *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_segment_runs_without_h5py(tmp_path: Path) -> None:
    weights = tiny_checkpoint(tmp_path / "tiny.pt", window=(16, 16, 16))
    volume = blob_volume(shape=(24, 20, 16))
    src = write_image(volume.array, volume, tmp_path / "mri.nrrd")
    done = _caml_without_h5py("segment", str(src), str(tmp_path / "la.seg.nrrd"), "--weights", str(weights),
                              "--device", "cpu", "--progress", "none", "--snapshot", str(tmp_path / "la.png"))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"code": 0, "h5py_loaded": False}
    assert (tmp_path / "la.seg.nrrd").is_file() and (tmp_path / "la.png").is_file()


def test_h5_input_without_h5py_is_a_one_line_error(tmp_path: Path) -> None:
    weights = tiny_checkpoint(tmp_path / "tiny.pt", window=(16, 16, 16))
    (tmp_path / "case.h5").write_bytes(b"\x89HDF\r\n\x1a\n")
    done = _caml_without_h5py("segment", str(tmp_path / "case.h5"), "--weights", str(weights),
                              "--device", "cpu", "--progress", "none")
    assert json.loads(done.stdout.strip().splitlines()[-1])["code"] == 2
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and "h5py" in errors[0] and "pip install h5py" in errors[0]
