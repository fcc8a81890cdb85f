"""The panel's active learning never imports torch in Slicer's process (#22 item 9).

As ``test_no_h5py.py`` does for h5py, a Python where ``import torch`` fails runs the
module's Logic on a ``slicer-core`` scene through a whole cohort round: create (a
``caml al init`` child), open, status, versions, the resumable retrain, Accept of an
edited segment, Use of a version (a ``caml al use`` child) and the versions plot.
The children are ordinary ``caml`` processes with torch; Slicer's own process must
do all of its part without it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("slicer", reason="needs the slicer-core wheels (pip install '.[test]')")
pytest.importorskip("torch", reason="the caml al children need PyTorch")

from test_active_learning import save_model  # noqa: E402
from test_active_learning_logic import _oblique_cohort  # noqa: E402

MODULE_DIR = Path(__file__).resolve().parents[2] / "CAMLSegmentation"

PROBE = """
import json, sys
sys.modules["torch"] = None  # any `import torch` in this process now raises ImportError
import slicer
from CAMLSegmentationLib.io.volume import read_image
from CAMLSegmentationLib.slicer import al_mrml, mrml_bridge
from CAMLSegmentationLib.slicer.logic import CAMLSegmentationLogic

folder, weights = sys.argv[1], sys.argv[2]
scene = slicer.vtkMRMLScene()
logic = CAMLSegmentationLogic(scene)
logic.engineCommand = [sys.executable, "-m", "CAMLSegmentationLib.cli"]
report = {"kind before": logic.alFolderKind(folder)}
report["created"] = logic.alResult(logic.alStartCreate(folder, weights))["current_version"]
status = logic.alOpenCohort(folder)
report["cases"] = status["cases"]
report["correction line"] = logic.alCorrectionSummary(status)
report["versions"] = [v["id"] for v in logic.alVersions(folder)]
report["resumable"] = logic.alResumableJob(folder)
loaded = al_mrml.load_case(scene, folder, "pt1", show_3d=False)
edited = read_image(folder + "/truth/pt1.nrrd").array.astype("uint8")
mrml_bridge.mask_to_segmentation_node(edited, loaded["volume"], scene, segmentation_node=loaded["segmentation"],
                                      show_3d=False)
report["accepted"] = logic.alAccept(folder, "pt1", loaded["segmentation"], loaded["volume"])["status"]
report["used"] = logic.alResult(logic.alStartUse(folder, 1))["id"]
report["plot points"] = len(al_mrml.plot_values(logic.alUpdatePlot(folder))[0])
report["torch loaded"] = sys.modules.get("torch") is not None
report["checkpoint code loaded"] = "CAMLSegmentationLib.model.checkpoint" in sys.modules
print(json.dumps(report))
"""


def test_a_cohort_round_in_slicers_process_without_torch(tmp_path: Path) -> None:
    root = _oblique_cohort(tmp_path / "cohort")
    weights = save_model(tmp_path / "start.pt", seed=2, fg_bias=0.3)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(MODULE_DIR), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", CAML_HOME=str(tmp_path / "home"))
    done = subprocess.run([sys.executable, "-c", PROBE, str(root), str(weights)], capture_output=True, text=True,
                          env=env, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"kind before": "images", "created": 1, "cases": 4, "correction line": report["correction line"],
                      "versions": [1], "resumable": None, "accepted": "accepted-train", "used": 1, "plot points": 1,
                      "torch loaded": False, "checkpoint code loaded": False}
    assert (root / "labels" / "pt1.nrrd").is_file()
