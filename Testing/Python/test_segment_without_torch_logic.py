"""Segment in Slicer without PyTorch (#26 items 2 and 1), on the slicer-core Logic.

A Python without torch is made for real: ``python -S`` (no site-packages)
with a folder of links to every installed package except torch and its
companions on PYTHONPATH, so ``import torch`` fails and torch's package
metadata is gone, as in a Slicer where the PyTorch extension never ran. The
same hides one ONNX runtime or both. The Logic there must ask for nothing
when the model has an ONNX export and OpenVINO or ONNX Runtime is installed
(and offer only openvino when neither is), ask for PyTorch for a GPU or a
model without an export, and a whole Segment (Logic -> the engine's child
process -> segment node) must work with the bundled model on either runtime
alone.
"""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
from pathlib import Path
from typing import Sequence

import pytest

slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheels (pip install '.[test]')")
pytest.importorskip("onnxruntime", reason="both ONNX runtimes are tested: needs onnxruntime")
pytest.importorskip("openvino", reason="both ONNX runtimes are tested: needs openvino")

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "CAMLSegmentation"
#: Distributions that come with torch and are useless without it.
TORCH_FAMILY = ("torch", "functorch", "torchgen", "triton", "nvidia")
#: The ONNX runtimes' distributions (OpenVINO's telemetry package goes with it), and the name each
#: gives itself in the engine's ``device`` string.
RUNTIMES = {"openvino": ("openvino",), "onnxruntime": ("onnxruntime",)}


def _site_without(tmp_path: Path, hidden: Sequence[str]) -> Path:
    """A folder linking every installed top-level package and .dist-info except those starting with ``hidden``."""
    folder = tmp_path / f"site-without-{'-'.join(hidden[:1])}"
    folder.mkdir()
    for packages in site.getsitepackages():
        for entry in Path(packages).iterdir():
            name = entry.name.lower()
            if entry.suffix == ".pth" or name.startswith("__pycache__") or name.startswith("camlsegmentation"):
                continue  # .pth files are not read with -S; this checkout's engine comes first on the path
            if any(name.startswith(h) for h in hidden):
                continue
            target = folder / entry.name
            if not target.exists():
                target.symlink_to(entry)
    return folder


PROBE = """
import importlib.metadata, json, sys, time
from pathlib import Path
import slicer
import CAMLSegmentation as m
from CAMLSegmentationLib.slicer import logic as slicer_logic
try:
    importlib.metadata.version("torch")
    raise SystemExit("torch is still installed in the probe")
except importlib.metadata.PackageNotFoundError:
    pass
logic = m.CAMLSegmentationLogic(slicer.vtkMRMLScene())
logic.engineCommand = [sys.executable, "-S", "-m", "CAMLSegmentationLib.cli"]
p = logic.getParameterNode()
report = {"torchAvailable": logic.torchAvailable()}
for case, changes in [("default", {}), ("uncertainty", {"uncertainty": True}), ("cuda", {"device": "cuda"}),
                      ("no export", {"model": "no-export"})]:
    for key, value in changes.items():
        setattr(p, key, value)
    asked = []
    ok = logic.ensureDependencies(lambda text: asked.append(text) or False, params=p,
                                  installTorch=lambda: asked.append("INSTALLED TORCH"),
                                  pipInstall=lambda reqs: asked.append("PIP " + " ".join(reqs)))
    report[case] = {"ok": ok, "asked": asked, "needsTorch": logic.segmentationNeedsTorch(p)}
    p.device, p.model, p.uncertainty = "auto", "", False
asked = []
report["training"] = {"ok": logic.ensureDependencies(lambda text: asked.append(text) or False), "asked": asked}
if SEGMENT:
    p.inputVolume = slicer_logic.makeTestVolume(logic.scene, shape=(48, 40, 24))
    p.uncertainty = True
    run = logic.startSegmentation(p)
    while run.running:
        run.poll()
        time.sleep(0.2)
    node = logic.finishSegmentation(run, p)
    report["segment"] = {"device": run.device, "segments": node.GetSegmentation().GetNumberOfSegments(),
                         "uncertainty": p.uncertaintyVolume is not None}
report["torchImported"] = "torch" in sys.modules
print(json.dumps(report))
"""


def _probe(tmp_path: Path, hidden: Sequence[str], segment: bool) -> dict:
    site_dir = _site_without(tmp_path, hidden)
    home = tmp_path / "home"
    # A user model without an ONNX export (written as a catalog entry: no torch is needed to list it).
    (home / "models").mkdir(parents=True)
    bundled = json.loads((REPO / "Resources" / "Models" / "models.json").read_text())["models"][0]
    (home / "models" / "no-export.pt").write_bytes((REPO / "Resources" / "Models" / bundled["file"]).read_bytes())
    (home / "models" / "models.json").write_text(json.dumps({"schema_version": 1, "models": [
        {"id": "no-export", "version": "1", "file": "no-export.pt", "sha256": bundled["sha256"]}]}))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(MODULE_DIR), str(site_dir)]),
               CAML_HOME=str(home), OMP_NUM_THREADS="1")
    code = f"SEGMENT = {segment!r}\n" + PROBE
    done = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, env=env,
                          timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("runtime", sorted(RUNTIMES))
def test_segment_without_torch_asks_for_nothing_and_runs_on_either_runtime_alone(tmp_path: Path,
                                                                                 runtime: str) -> None:
    """torch and the other runtime unimportable: nothing is asked for, and Segment runs on ``runtime``."""
    other = [name for name in RUNTIMES if name != runtime][0]
    report = _probe(tmp_path, TORCH_FAMILY + RUNTIMES[other], segment=True)
    assert report["torchAvailable"] is False
    # The bundled model has exports of V and A: nothing to install, with or without the uncertainty map.
    for case in ("default", "uncertainty"):
        assert report[case] == {"ok": True, "asked": [], "needsTorch": False}, case
    # A GPU, a model without an export, training: PyTorch (declined here, so nothing is installed).
    for case in ("cuda", "no export"):
        assert report[case]["needsTorch"] is True and report[case]["ok"] is False, case
        assert len(report[case]["asked"]) == 1 and "PyTorch" in report[case]["asked"][0], case
    assert report["training"]["ok"] is False and "PyTorch" in report["training"]["asked"][0]
    # A whole Segment through the Logic and the engine's child process, torch nowhere.
    assert report["segment"] == {"device": report["segment"]["device"], "segments": 1, "uncertainty": True}
    assert report["segment"]["device"].startswith(f"cpu ({runtime}, "), report["segment"]["device"]
    assert report["torchImported"] is False


def test_without_torch_or_any_runtime_only_openvino_is_asked_for(tmp_path: Path) -> None:
    report = _probe(tmp_path, TORCH_FAMILY + RUNTIMES["openvino"] + RUNTIMES["onnxruntime"], segment=False)
    default = report["default"]
    assert default["ok"] is False and default["needsTorch"] is False and len(default["asked"]) == 1
    asked = default["asked"][0]
    assert "openvino>=" in asked and "onnxruntime" not in asked and "PyTorch" not in asked
