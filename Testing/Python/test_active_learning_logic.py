"""The module's active-learning Logic on a real MRML scene (slicer-core wheels), with real ``caml al`` children.

Next case loads the image and its prediction (and the disagreement map), the
edited segment is accepted as a label on the image's grid (an oblique one), and
the versions plot holds one point per version.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheels (pip install '.[test]')")

MODULE_DIR = Path(__file__).resolve().parents[2] / "CAMLSegmentation"
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))

import torch  # noqa: E402
from CAMLSegmentationLib.activelearning.cohort import ACCEPTED_TRAIN, Cohort  # noqa: E402
from CAMLSegmentationLib.io.volume import Volume, read_image, write_image, write_mask  # noqa: E402
from CAMLSegmentationLib.slicer import al_mrml, mrml_bridge  # noqa: E402
from CAMLSegmentationLib.slicer import logic as slicer_logic  # noqa: E402
from CAMLSegmentationLib.slicer.framework import moduleResourcePath  # noqa: E402
from synthetic import blob_case  # noqa: E402
from test_active_learning import SHAPE, save_model  # noqa: E402

torch.set_num_threads(1)
ENGINE = [sys.executable, "-m", "CAMLSegmentationLib.cli"]


def _oblique_cohort(root: Path, n: int = 4) -> Path:
    angle = np.radians(25.0)
    direction = np.array([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0, 0, 1.0]])
    (root / "images").mkdir(parents=True)
    (root / "truth").mkdir()
    rng = np.random.default_rng(1)
    for i in range(n):
        image, label = blob_case(SHAPE, rng)
        vol = Volume(array=(image * 40 + 150).astype(np.float32), spacing=(0.8, 0.9, 1.5),
                     origin=(12.0, -7.0, 30.0), direction=direction)
        write_image(vol.array, vol, root / "images" / f"pt{i}.nrrd")
        write_mask(label, vol, root / "truth" / f"pt{i}.nrrd")
    return root


@pytest.fixture
def logic_and_cohort(tmp_path):
    root = _oblique_cohort(tmp_path / "cohort")
    weights = save_model(tmp_path / "start.pt", seed=2, fg_bias=0.3)
    scene = slicer.vtkMRMLScene()
    logic = slicer_logic.CAMLSegmentationLogic(scene)
    logic.engineCommand = ENGINE
    Cohort.init(root, model=weights).close()
    status = logic.alOpenCohort(str(root))
    assert status["current_version"] == 1 and status["cases"] == 4
    return logic, scene, root


@pytest.mark.slow
def test_next_loads_the_case_and_its_prediction(logic_and_cohort):
    logic, scene, root = logic_and_cohort
    loaded = logic.alNext(str(root), "disagreement", device="cpu", uncertainty=True, timeout=300, showIn3D=False)
    case = loaded["case"]
    image = read_image(root / "images" / f"{case}.nrrd")
    volume = mrml_bridge.volume_from_node(loaded["volume"])
    assert volume.same_geometry(image, tol=1e-5)
    np.testing.assert_allclose(volume.array, image.array)
    with Cohort.open(root) as cohort:
        row = cohort.case(case)
        assert row.status == "predicted" and row.predicted_version == 1
        predicted = read_image(root / row.prediction_file)
        # The highest disagreement score of the cohort was picked.
        scores = cohort.cached_scores("disagreement", 1)
        assert scores[case] == max(scores.values())
    mask = mrml_bridge.segment_to_mask(loaded["segmentation"], loaded["segment_id"], loaded["volume"])
    np.testing.assert_array_equal(mask, (predicted.array > 0.5).astype(np.uint8))
    assert 0 < mask.sum() < mask.size  # a real prediction, not an empty or full placeholder
    assert loaded["uncertainty"] is not None
    unc = mrml_bridge.volume_from_node(loaded["uncertainty"])
    assert unc.same_geometry(image, tol=1e-5) and 0 <= unc.array.min() and unc.array.max() <= 1
    params = logic.getParameterNode().node
    assert params.GetParameter("alCase") == case
    assert params.GetNodeReference("ALSegmentation") is loaded["segmentation"]


@pytest.mark.slow
def test_accept_writes_the_edited_segment_as_a_label_on_the_image_grid(logic_and_cohort):
    logic, scene, root = logic_and_cohort
    loaded = logic.alNext(str(root), "first", device="cpu", timeout=300, showIn3D=False)
    case = loaded["case"]
    assert case == "pt0"
    # "Edit" the segment: replace it with the true label, as a user's correction would.
    corrected = read_image(root / "truth" / f"{case}.nrrd").array.astype(np.uint8)
    mrml_bridge.mask_to_segmentation_node(corrected, loaded["volume"], scene,
                                          segmentation_node=loaded["segmentation"], show_3d=False)
    result = logic.alAccept()
    assert result["case"] == case and result["status"] == ACCEPTED_TRAIN
    label = read_image(root / "labels" / f"{case}.nrrd")
    image = read_image(root / "images" / f"{case}.nrrd")
    assert label.same_geometry(image, tol=1e-6)  # on the image's (oblique) grid
    np.testing.assert_array_equal(label.array, corrected)
    assert logic.getParameterNode().node.GetParameter("alCase") == ""
    with pytest.raises(ValueError, match="Next case first"):
        logic.alAccept()


def test_version_plot_holds_one_point_per_version(logic_and_cohort, tmp_path):
    logic, scene, root = logic_and_cohort
    chart = logic.alUpdatePlot(str(root))
    assert al_mrml.plot_values(chart)[0].tolist() == [1.0]
    with Cohort.open(root) as cohort:
        for c in ("pt0", "pt1"):
            cohort.accept(c, read_image(root / "truth" / f"{c}.nrrd"), role="val")
        for seed in (3, 4):
            cohort.add_version(save_model(tmp_path / f"v{seed}.pt", seed=seed), 1, None, None, 0, [], promote=False)
    from CAMLSegmentationLib.activelearning.retrain import version_table

    with Cohort.open(root) as cohort:  # scoring loads models: a child's work in Slicer, done here in the test
        version_table(cohort, True, "cpu")
    versions = logic.alVersions(str(root))  # the cached scores, read without torch
    chart2 = logic.alUpdatePlot(str(root), versions)
    assert chart2 is chart  # refreshed in place, no new nodes
    assert scene.GetNumberOfNodesByClass("vtkMRMLPlotChartNode") == 1
    assert scene.GetNumberOfNodesByClass("vtkMRMLPlotSeriesNode") == 1
    xs, ys = al_mrml.plot_values(chart)
    assert xs.tolist() == [1.0, 2.0, 3.0]
    assert ys.tolist() == pytest.approx([v["current_val_dice"] for v in versions])
    assert all(0.0 <= y <= 1.0 for y in ys)
    used = logic.alResult(logic.alStartUse(str(root), 3))  # `caml al use` in a child
    assert used["id"] == 3 and used["current"]
    assert [v["current"] for v in logic.alVersions(str(root))] == [False, False, True]


def test_every_widget_the_panel_code_names_is_in_the_ui_file():
    ui = moduleResourcePath("UI/CAMLSegmentation.ui").read_text()
    names = set(re.findall(r'<widget class="[^"]+" name="([^"]+)"', ui))
    source = (MODULE_DIR / "CAMLSegmentation.py").read_text()
    used = set(re.findall(r"\bui\.(al\w+)", source))
    assert used and used <= names, used - names
    everywhere = set(re.findall(r"\bui\.(\w+)", source))  # the segmentation panel's widgets too
    assert {"qualitySelector", "ttaCheckBox"} <= everywhere <= names, everywhere - names
    assert "activeLearningCollapsibleButton" in names
    assert ui.index("activeLearningCollapsibleButton") > ui.index("correctButton")  # below segmentation


def test_correction_effort_line_from_the_status_json():
    """``caml al status --json`` carries ``correction`` (one record per accepted case) once the engine records
    it; the panel's line shows the latest first and is empty without it."""
    summary = slicer_logic.CAMLSegmentationLogic.alCorrectionSummary
    assert summary({"counts": {}}) == "" and summary({"correction": []}) == ""
    records = [{"case": f"c{n}", "accept_order": n, "proposal_version": 1, "dice": 0.80 + n / 100,
                "voxels_changed": 1000 - 100 * n, "seconds": 60.0 - n} for n in (1, 4, 2, 3)]
    records.append({"case": "c5", "accept_order": 5, "proposal_version": None, "dice": None,
                    "voxels_changed": None, "seconds": None})  # painted from scratch: no proposal
    assert summary({"correction": records}) == (
        "Correction effort (latest first): c5: no proposal to compare; "
        "c4: Dice 0.840, 600 voxels changed, 56 s; c3: Dice 0.830, 700 voxels changed, 57 s")
