"""The panel's "Active learning" section and "Next uncertain region", driven as a user drives them (#22 items 8-9).

Same harness as ``test_panel.py`` (real Qt offscreen under PythonQt's rules, a real ``slicer-core``
scene, Slicer's own ``slicer.util``); every Create, Next, Retrain and Use runs the real ``caml al``
child. One test per defect the issue lists, each asserting what the user sees and what is on disk.
"""

# ruff: noqa: F811 - the harness and panel fixtures come from test_panel
from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest
from test_panel import choose_item, click, harness, panel, widget_of  # noqa: F401 - fixtures

pytest.importorskip("torch", reason="the active-learning children need PyTorch")

from CAMLSegmentationLib.activelearning.cohort import Cohort, db_path  # noqa: E402
from CAMLSegmentationLib.io.volume import Volume, read_image  # noqa: E402
from PyQt5 import QtCore, QtWidgets  # noqa: E402
from test_active_learning import save_model  # noqa: E402
from test_active_learning_logic import _oblique_cohort  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
OK, CANCEL = QtWidgets.QMessageBox.Ok, QtWidgets.QMessageBox.Cancel
YES, NO = QtWidgets.QMessageBox.Yes, QtWidgets.QMessageBox.No
PRESETS = REPO / "CAMLSegmentation" / "CAMLSegmentationLib" / "training" / "presets"


def make_cohort(tmp_path: Path, name: str = "cohort", iterations: int = 0, accepted=()) -> Path:
    """A cohort of 4 small oblique cases with a tiny model as version 1 (engine set-up, in the test process);
    ``iterations``: its retrain preset's length; ``accepted``: cases accepted with their true labels."""
    root = _oblique_cohort(tmp_path / name)
    kwargs = {}
    if iterations:
        preset = json.loads((PRESETS / "al-finetune.json").read_text())
        preset.update(iterations=iterations, name=f"al-test-{iterations}")
        (tmp_path / f"{name}-preset.json").write_text(json.dumps(preset))
        kwargs["preset"] = str(tmp_path / f"{name}-preset.json")
    Cohort.init(root, model=save_model(tmp_path / f"{name}-start.pt", seed=2, fg_bias=0.3), **kwargs).close()
    with Cohort.open(root) as cohort:
        for case in accepted:
            cohort.accept(case, read_image(root / "truth" / f"{case}.nrrd"), role="train")
    return root


def open_folder(panel, folder: Path) -> None:
    """The user types or picks the folder in the path edit."""
    panel.ui.alCohortPathLineEdit.currentPath = str(folder)


def wait_al(harness, panel, timeout: float = 300.0) -> None:
    harness.waitUntil(lambda: panel._alRun is None, timeout, "the active-learning run to end")


def next_case(harness, panel, strategy: str = "Cohort order") -> None:
    choose_item(panel.ui.alStrategySelector, strategy)
    click(panel.ui.alNextButton)
    wait_al(harness, panel)
    assert panel.ui.alStatusLabel.text.startswith("Case "), panel.ui.alStatusLabel.text


def nodes(harness, cls: str) -> int:
    return harness.scene.GetNumberOfNodesByClass(cls)


# -- choosing, creating, remembering a cohort ------------------------------------------------------------

def test_choosing_a_folder_never_makes_it_a_cohort_and_create_asks_first(harness, panel, tmp_path):
    ui = panel.ui
    root = _oblique_cohort(tmp_path / "scans")
    open_folder(panel, root)
    assert not (root / "caml-al").exists()  # choosing it wrote nothing
    assert ui.alStatusLabel.text.startswith("Not a cohort yet")
    assert ui.alCreateButton.enabled and not ui.alNextButton.enabled and not ui.alRetrainButton.enabled

    harness.answerNextDialog(CANCEL)
    click(ui.alCreateButton)
    (asked,) = harness.takeDialogs()
    assert str(root) in asked["text"] and "caml-al" in asked["text"] and "4 files in images/" in asked["text"]
    assert "MB) as version 1" in asked["text"]  # says what is copied, and how big
    assert ui.alStatusLabel.text == "Not created: nothing was written." and not (root / "caml-al").exists()

    harness.answerNextDialog(OK)
    click(ui.alCreateButton)
    assert harness.takeDialogs()[0]["text"] == asked["text"]
    wait_al(harness, panel)
    assert ui.alStatusLabel.text.startswith("Cohort created. 4 cases: 0 training, 0 validation, 4 to label; "
                                            "current version 1."), ui.alStatusLabel.text
    assert db_path(root).is_file() and not ui.alCreateButton.enabled
    assert ui.alNextButton.enabled and ui.alVersionsTable.rowCount == 1
    assert ui.alVersionsTable.item(0, 0).text() == "* 1"


def test_the_cohort_folder_is_remembered(harness, panel, tmp_path):
    ui = panel.ui
    root = make_cohort(tmp_path)
    open_folder(panel, root)
    assert ui.alStatusLabel.text.startswith("4 cases:") and ui.alNextButton.enabled
    history = QtCore.QSettings().value("ctkPathLineEdit/CAMLSegmentationCohort")
    assert str(root) in ([history] if isinstance(history, str) else history)

    # The next session (a new panel, as after a restart): the folder is there, opened, without a question.
    pyModule = harness.entries["CAMLSegmentation"].pyModule
    later = pyModule.CAMLSegmentationWidget()
    try:
        assert later.ui.alCohortPathLineEdit.currentPath == str(root)
        assert later.ui.alStatusLabel.text.startswith("4 cases:") and later.ui.alNextButton.enabled
        assert not harness.takeDialogs()
    finally:
        later.cleanup()
        later.parent.close()


def test_dependencies_are_offered_before_the_first_cohort_action(harness, panel, tmp_path, monkeypatch):
    """A Slicer without PyTorch: choosing a folder asks nothing; Create (or opening a cohort) offers the same
    installation the Segment path offers, and a refusal leaves the folder as it was."""
    ui = panel.ui
    monkeypatch.setattr(type(panel.logic), "installedTorchVersion", staticmethod(lambda: None))
    scans = _oblique_cohort(tmp_path / "scans")
    open_folder(panel, scans)
    assert not harness.takeDialogs()
    harness.answerNextDialog(CANCEL)
    click(ui.alCreateButton)
    (offer,) = harness.takeDialogs()  # the installation offer, and no Create question after the refusal
    assert "PyTorch" in offer["text"] and "installed now" in offer["text"]
    assert ui.alStatusLabel.text == "Missing Python packages: the cohort was not opened or changed."
    assert not (scans / "caml-al").exists()

    cohort = make_cohort(tmp_path)
    harness.answerNextDialog(CANCEL)
    open_folder(panel, cohort)
    assert "PyTorch" in harness.takeDialogs()[0]["text"]
    assert not ui.alNextButton.enabled and not ui.alRetrainButton.enabled


# -- next case, accept ------------------------------------------------------------------------------

def test_accept_writes_into_the_cohort_the_case_came_from(harness, panel, tmp_path):
    ui = panel.ui
    first, second = make_cohort(tmp_path, "first"), make_cohort(tmp_path, "second")
    open_folder(panel, first)
    next_case(harness, panel)
    assert ui.alStatusLabel.text.startswith("Case pt0 (first score")
    assert ui.alAcceptButton.enabled
    open_folder(panel, second)  # the user looks at another cohort before accepting
    assert ui.alStatusLabel.text.startswith("4 cases:")

    harness.answerNextDialog(NO)
    click(ui.alAcceptButton)
    assert harness.takeDialogs()[0]["text"].startswith("Case pt0 is stored in the cohort.")
    assert ui.alStatusLabel.text.startswith("Accepted pt0 into first as accepted-train. 4 cases:")
    assert (first / "labels" / "pt0.nrrd").is_file() and not (second / "labels").exists()
    with Cohort.open(first) as cohort:
        assert cohort.case("pt0").status == "accepted-train"
    assert not ui.alAcceptButton.enabled


def test_after_accept_the_case_nodes_can_be_removed(harness, panel, tmp_path):
    ui = panel.ui
    root = make_cohort(tmp_path)
    open_folder(panel, root)
    before = {cls: nodes(harness, cls) for cls in ("vtkMRMLScalarVolumeNode", "vtkMRMLSegmentationNode")}
    ui.alUncertaintyCheckBox.checked = True
    next_case(harness, panel)
    assert nodes(harness, "vtkMRMLScalarVolumeNode") == before["vtkMRMLScalarVolumeNode"] + 2  # image and map
    assert nodes(harness, "vtkMRMLSegmentationNode") == before["vtkMRMLSegmentationNode"] + 1
    assert ui.uncertainRegionButton.enabled  # the case's disagreement map can be reviewed

    harness.answerNextDialog(YES)
    click(ui.alAcceptButton)
    assert "Remove its image, segmentation and disagreement map" in harness.takeDialogs()[0]["text"]
    assert {cls: nodes(harness, cls) for cls in before} == before
    for display in ("vtkMRMLScalarVolumeDisplayNode", "vtkMRMLSegmentationDisplayNode"):
        assert nodes(harness, display) == 0, display
    assert (root / "labels" / "pt0.nrrd").is_file()
    assert not ui.uncertainRegionButton.enabled and not ui.correctButton.enabled


def test_scene_close_cancels_a_running_next_and_ignores_a_finished_one(harness, panel, tmp_path):
    ui = panel.ui
    root = make_cohort(tmp_path)
    open_folder(panel, root)
    choose_item(ui.alStrategySelector, "Cohort order")
    click(ui.alNextButton)
    run = panel._alRun
    harness.closeScene()  # while the child still runs
    wait_al(harness, panel)
    assert run.job.state == "cancelled"
    assert ui.alStatusLabel.text == "Cancelled (the scene was closed while it ran): nothing was loaded."
    assert nodes(harness, "vtkMRMLScalarVolumeNode") == 0 and nodes(harness, "vtkMRMLSegmentationNode") == 0

    click(ui.alNextButton)
    run = panel._alRun
    assert run.job.wait(300) == "done"  # it finished, but the panel has not taken its result yet
    harness.closeScene()
    wait_al(harness, panel)
    assert ui.alStatusLabel.text == "Cancelled (the scene was closed while it ran): nothing was loaded."
    assert nodes(harness, "vtkMRMLScalarVolumeNode") == 0 and nodes(harness, "vtkMRMLSegmentationNode") == 0
    assert not ui.alAcceptButton.enabled


# -- retrain, resume, versions -------------------------------------------------------------------------

def test_cancel_of_a_retrain_says_nothing_changed_and_resume_continues_it(harness, panel, tmp_path):
    ui = panel.ui
    root = make_cohort(tmp_path, iterations=100000, accepted=("pt0", "pt1"))
    open_folder(panel, root)
    assert not ui.alResumeButton.enabled
    click(ui.alRetrainButton)
    run = panel._alRun
    assert ui.alRetrainButton.text == "Cancel" and ui.alRetrainButton.enabled and not ui.alNextButton.enabled
    harness.waitUntil(lambda: run.status.startswith("Train"), 300, "the retrain to train")
    click(ui.alRetrainButton)
    wait_al(harness, panel, 120)
    assert run.job.state == "cancelled"
    assert ui.alStatusLabel.text == "Cancelled: the cohort and its current version are unchanged."
    with Cohort.open(root) as cohort:
        assert cohort.current_version() == 1 and len(cohort.versions()) == 1
    assert ui.alRetrainButton.text == "Retrain" and ui.alResumeButton.enabled

    click(ui.alResumeButton)
    resumed = panel._alRun
    assert "--resume" in resumed.job.argv and resumed.kind == "retrain"
    harness.waitUntil(lambda: resumed.status.startswith("Train"), 300, "the resumed retrain to train")
    click(ui.alRetrainButton)
    wait_al(harness, panel, 120)
    assert ui.alStatusLabel.text == "Cancelled: the cohort and its current version are unchanged."


def test_the_chart_is_shown_on_request_not_when_a_cohort_opens(harness, panel, tmp_path):
    ui = panel.ui
    root = make_cohort(tmp_path)
    with Cohort.open(root) as cohort:
        cohort.add_version(save_model(tmp_path / "v2.pt", seed=5), 1, None, None, 0, [], promote=False)
    layout = harness.layoutManager.layoutNode
    arrangement = layout.GetViewArrangement()
    open_folder(panel, root)
    assert ui.alVersionsTable.rowCount == 2 and ui.alVersionsTable.item(0, 0).text() == "* 1"
    assert layout.GetViewArrangement() == arrangement  # opening never switches the layout
    assert nodes(harness, "vtkMRMLPlotChartNode") == 0

    click(ui.alShowChartButton)
    assert layout.GetViewArrangement() != arrangement
    assert nodes(harness, "vtkMRMLPlotChartNode") == 1
    chart = harness.scene.GetFirstNodeByClass("vtkMRMLPlotChartNode")
    from CAMLSegmentationLib.slicer.al_mrml import plot_values

    assert plot_values(chart)[0].tolist() == [1.0, 2.0]
    layout.SetViewArrangement(arrangement)


def test_a_retrain_that_makes_a_second_version_shows_the_chart(harness, panel, tmp_path):
    ui = panel.ui
    root = make_cohort(tmp_path, iterations=2, accepted=("pt0", "pt1"))
    layout = harness.layoutManager.layoutNode
    arrangement = layout.GetViewArrangement()
    open_folder(panel, root)
    click(ui.alRetrainButton)
    run = panel._alRun
    wait_al(harness, panel, 600)
    with Cohort.open(root) as cohort:
        assert len(cohort.versions()) == 2, ui.alStatusLabel.text
    assert ui.alStatusLabel.text.startswith(run.job.result["reason"] + " 4 cases: 2 training")
    assert ui.alVersionsTable.rowCount == 2 and ui.alProgressBar.value == 100
    assert layout.GetViewArrangement() != arrangement and nodes(harness, "vtkMRMLPlotChartNode") == 1
    layout.SetViewArrangement(arrangement)


def test_use_selected_version_runs_in_a_child_and_the_table_follows(harness, panel, tmp_path):
    ui = panel.ui
    root = make_cohort(tmp_path)
    with Cohort.open(root) as cohort:
        cohort.add_version(save_model(tmp_path / "v2.pt", seed=5), 1, None, None, 0, [], promote=False)
    open_folder(panel, root)
    widget_of(ui.alVersionsTable).selectRow(1)
    click(ui.alUseVersionButton)
    assert panel._alRun.kind == "use"
    wait_al(harness, panel, 120)
    assert ui.alStatusLabel.text.startswith("Version 2 is now current."), ui.alStatusLabel.text
    assert [ui.alVersionsTable.item(r, 0).text() for r in range(2)] == ["1", "* 2"]


# -- correction effort, uncertain regions, translation -------------------------------------------------

def test_correction_effort_line_tolerates_a_cohort_without_it(harness, panel, tmp_path):
    root = make_cohort(tmp_path, accepted=("pt0",))
    open_folder(panel, root)
    with Cohort.open(root, read_only=True) as cohort:
        status = cohort.status()
    expected = panel.logic.alCorrectionSummary(status)
    assert panel.ui.alCorrectionLabel.text == expected  # "" until the engine records the effort
    assert ("correction" in status) == bool(expected)


def test_next_uncertain_region_button_visits_the_regions_largest_first(harness, panel):
    ui = panel.ui
    assert not ui.uncertainRegionButton.enabled
    array = np.zeros((40, 36, 28), dtype=np.float32)
    array[4:9, 4:9, 4:9] = 0.9        # 125 voxels
    array[20:30, 20:30, 10:16] = 0.7  # 600 voxels: first
    from CAMLSegmentationLib.slicer import mrml_bridge

    volume = Volume(array=array, spacing=(1.0, 1.0, 2.0), origin=(5.0, -3.0, 10.0))
    node = mrml_bridge.volume_to_node(volume, harness.scene, "disagreement")
    panel.logic.getParameterNode().uncertaintyVolume = node  # as a segmentation with the overlay leaves it
    assert ui.uncertainRegionButton.enabled
    red = harness.layoutManager.sliceLogic("Red").GetSliceNode()

    def centre():
        m = red.GetSliceToRAS()
        return np.array([m.GetElement(r, 3) for r in range(3)])

    click(ui.uncertainRegionButton)
    assert ui.statusLabel.text.startswith("Uncertain region 1 of 2: 1.20 mL, disagreement up to 0.70.")
    first = centre()
    lps = np.asarray(volume.origin) + np.array([20, 20, 10]) * np.asarray(volume.spacing)
    assert np.all(first * [-1, -1, 1] >= lps - 1e-6)  # inside the big region's box, in RAS
    click(ui.uncertainRegionButton)
    assert ui.statusLabel.text.startswith("Uncertain region 2 of 2: 0.25 mL, disagreement up to 0.90.")
    assert not np.allclose(centre(), first)
    click(ui.uncertainRegionButton)
    assert ui.statusLabel.text.startswith("Uncertain region 1 of 2")


def test_active_learning_strings_are_translatable():
    """User-visible text of the section goes through ``_()``: no bare literal with words in it, no f-string."""
    source = (REPO / "CAMLSegmentation" / "CAMLSegmentation.py").read_text()
    tree = ast.parse(source)
    widget = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "CAMLSegmentationWidget")
    methods = [f for f in widget.body if isinstance(f, ast.FunctionDef)
               and (f.name.startswith(("onAl", "_al", "refreshAl")) or "ActiveLearning" in f.name
                    or f.name == "onUncertainRegionButton")]
    assert len(methods) > 15
    def words(text: str) -> bool:
        return " " in text.strip() and any(c.isalpha() for c in text)

    translated = set()
    for f in methods:
        if ast.get_docstring(f):
            translated.add(id(f.body[0].value))
        for call in ast.walk(f):
            if isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "_":
                translated.update(id(a) for a in call.args)
    bare = []
    for f in methods:
        for node in ast.walk(f):
            if isinstance(node, ast.JoinedStr) and words("".join(
                    v.value for v in node.values if isinstance(v, ast.Constant))):
                bare.append(f"{f.name}: f-string with words at line {node.lineno}")
            elif (isinstance(node, ast.Constant) and isinstance(node.value, str) and words(node.value)
                  and id(node) not in translated):
                bare.append(f"{f.name}: {node.value!r}")
    assert not bare, bare
    logic_source = (REPO / "CAMLSegmentation" / "CAMLSegmentationLib" / "slicer" / "al_logic.py").read_text()
    assert "from .framework import _" in logic_source

