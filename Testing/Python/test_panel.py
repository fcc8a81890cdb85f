"""The module's panel, driven as a user drives it, on real Qt (PyQt5, offscreen) under PythonQt's rules.

``Testing/SlicerHarness`` stands in for the Slicer application (see its README);
the scene is a real ``slicer-core`` MRML scene, ``slicer.util`` is Slicer's own,
and every Segment click runs the real ``caml segment`` child with the bundled
model. Each test asserts what the user sees: buttons, texts, the status line,
the nodes in the scene. Any exception inside a slot, timer or observer, and any
dialog a test did not expect, fails the test (PythonQt would only print them).
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("slicer", reason="needs the slicer-core wheels (pip install '.[test]')")
pytest.importorskip("PyQt5", reason="needs PyQt5 (pip install '.[test]')")
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "CAMLSegmentation"
HARNESS_DIR = REPO / "Testing" / "SlicerHarness"
for path in (str(MODULE_DIR), str(HARNESS_DIR)):
    if path not in sys.path:
        sys.path.insert(0, path)

import slicer_harness  # noqa: E402
from CAMLSegmentationLib.model import catalog  # noqa: E402

#: A volume big enough that the Standard protocol is still running when a test cancels it.
LONG_SHAPE = (160, 160, 96)


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    """The application with the module loaded, as Slicer's module factory loads it (fresh imports under
    the harness's qt; the modules the Logic tests imported are put back afterwards)."""
    ours = [name for name in sys.modules
            if name == "CAMLSegmentation" or name.startswith("CAMLSegmentationLib.slicer")]
    saved = {name: sys.modules.pop(name) for name in ours}
    home = tmp_path_factory.mktemp("caml_home")  # no user-trained models: the bundled catalog only
    old_home = os.environ.get("CAML_HOME")
    os.environ["CAML_HOME"] = str(home)
    h = slicer_harness.install()
    h.caml_home = home
    try:
        h.loadScriptedModule("CAMLSegmentation", MODULE_DIR / "CAMLSegmentation.py")
        h.app.startupCompleted.emit()
        yield h
    finally:
        widget = h.entries["CAMLSegmentation"]._panel
        if widget is not None and widget._python is not None:
            widget._python.cleanup()
        h.uninstall()
        for name in [n for n in sys.modules if n == "CAMLSegmentation" or n.startswith("CAMLSegmentationLib.slicer")]:
            del sys.modules[name]
        sys.modules.update(saved)
        if old_home is None:
            os.environ.pop("CAML_HOME", None)
        else:
            os.environ["CAML_HOME"] = old_home


@pytest.fixture()
def panel(harness, monkeypatch):
    """A fresh scene and the module entered; after the test, nothing unexpected may have happened."""
    # The application's home for the whole module (the Sample Data phantom was written there at startup),
    # not the per-test home conftest gives every test.
    monkeypatch.setenv("CAML_HOME", str(harness.caml_home))
    harness.closeScene()
    harness.takeErrors()
    harness.takeDialogs()
    widget = harness.openModule("CAMLSegmentation")
    yield widget
    if widget._run is not None and widget._run.running:
        widget.logic.cancel(widget._run)
        widget._run = None
        widget._timer.stop()
    errors, dialogs = harness.takeErrors(), harness.takeDialogs()
    assert not errors, "exceptions inside slots/observers:\n" + "\n".join(errors)
    assert not dialogs, f"dialogs the test did not expect: {dialogs}"


def volume(harness, name: str = "MRI", shape=(40, 36, 28)):
    from CAMLSegmentationLib.slicer.logic import makeTestVolume

    node = makeTestVolume(harness.scene, shape=shape)
    node.SetName(name)
    return node


def widget_of(ui_member):
    return slicer_harness.unwrap(ui_member)


def choose(selector, node) -> None:
    """The user picks ``node`` in a node selector's drop-down."""
    widget_of(selector).chooseAsUser(node)


def choose_item(combo, text: str) -> None:
    """The user picks the item that reads ``text`` in a combo box."""
    qcombo = widget_of(combo)
    index = qcombo.findText(text)
    assert index >= 0, f"no item {text!r} in {[qcombo.itemText(i) for i in range(qcombo.count())]}"
    qcombo.setCurrentIndex(index)
    qcombo.activated.emit(index)


def click(button) -> None:
    widget = widget_of(button)
    assert widget.isEnabled(), f"{widget.objectName()} is disabled: the user cannot click it"
    widget.click()


def items(combo):
    qcombo = widget_of(combo)
    return [qcombo.itemText(i) for i in range(qcombo.count())]


def segment_and_wait(harness, panel, timeout: float = 180.0) -> None:
    click(panel.ui.segmentButton)
    assert panel.ui.segmentButton.text == "Cancel"
    harness.waitUntil(lambda: panel._run is None, timeout, "the segmentation to end")


def left_atrium(node):
    return node.GetSegmentation().GetSegmentIdBySegmentName("Left atrium")


# -- opening, selecting, segmenting ------------------------------------------------------------------

def test_the_panel_opens_and_segment_waits_for_a_volume(harness, panel):
    ui = panel.ui
    assert not ui.segmentButton.enabled and ui.segmentButton.toolTip == "Select an input volume"
    assert not ui.correctButton.enabled and not ui.show3DButton.enabled
    assert items(ui.qualitySelector) == ["Standard (as scored in the model card)", "Fast preview (quicker, rougher)"]
    assert items(ui.lccSelector) == ["Model's choice", "Always", "Never"]
    assert ui.lccSelector.currentText == "Model's choice"
    default = catalog.default_model()  # the bundled default, listed under its title with its id
    assert ui.modelSelector.currentData == default.id and f"({default.id} v{default.version}, bundled)" in (
        ui.modelSelector.currentText)
    torch = importlib.metadata.version("torch")
    runtimes = "".join(f" · {name} {importlib.metadata.version(name)}" for name in ("openvino", "onnxruntime"))
    assert ui.versionLabel.text == f"CAML engine 0.1.0 · PyTorch {torch}{runtimes}"

    first, second = volume(harness, "first"), volume(harness, "second")
    harness.processEvents()
    assert widget_of(ui.inputVolumeSelector).displayedText() == "first"  # the first volume is preselected
    choose(ui.inputVolumeSelector, second)
    assert panel.logic.getParameterNode().inputVolume is second
    assert ui.segmentButton.enabled and ui.segmentButton.text == "Segment"
    assert ui.segmentButton.toolTip == "Segment the left atrium"
    assert first is not None


def test_segment_shows_progress_and_adds_the_left_atrium(harness, panel):
    ui = panel.ui
    mri = volume(harness)
    choose(ui.inputVolumeSelector, mri)
    choose_item(ui.qualitySelector, "Fast preview (quicker, rougher)")
    click(ui.segmentButton)
    assert ui.segmentButton.text == "Cancel" and ui.segmentButton.enabled
    assert not ui.inputsCollapsibleButton.enabled and not ui.correctButton.enabled
    assert ui.statusLabel.text.startswith("Starting")
    seen = set()
    harness.waitUntil(lambda: seen.add((ui.progressBar.value, ui.statusLabel.text)) or panel._run is None,
                      180, "the segmentation to end")
    assert any(0 < value < 100 for value, _ in seen) or len({t for _, t in seen}) > 2, seen

    assert ui.statusLabel.text.startswith("Done."), ui.statusLabel.text
    assert ui.progressBar.value == 100
    assert ui.segmentButton.text == "Segment" and ui.segmentButton.enabled
    assert ui.correctButton.enabled and ui.inputsCollapsibleButton.enabled
    segs = harness.scene.GetNodesByClass("vtkMRMLSegmentationNode")
    assert segs.GetNumberOfItems() == 1
    seg = segs.GetItemAsObject(0)
    assert left_atrium(seg)
    assert seg.GetNodeReference(seg.GetReferenceImageGeometryReferenceRole()) is mri
    assert ui.outputSegmentationSelector.currentNode() is seg
    assert widget_of(ui.outputSegmentationSelector).displayedText() == "MRI left atrium"
    assert ui.show3DButton.enabled and ui.show3DButton.segmentationNode() is seg
    red = harness.layoutManager.sliceLogic("Red").GetSliceCompositeNode()
    assert red.GetBackgroundVolumeID() == mri.GetID()  # shown in the views
    log = ui.logTextEdit.toPlainText()
    assert "Segmentation computed" in log and len(log.splitlines()) >= 2

    shown = ui.show3DButton.checked  # the result comes shown in 3D (it has a closed surface)
    assert shown == seg.GetSegmentation().ContainsRepresentation("Closed surface")
    click(ui.show3DButton)
    assert ui.show3DButton.checked is not shown
    assert seg.GetSegmentation().ContainsRepresentation("Closed surface") is not shown
    click(ui.show3DButton)
    assert ui.show3DButton.checked is shown



def test_the_readme_picture_of_the_panel_shows_a_finished_run(harness, tmp_path):
    """``make screenshot`` (``python -m slicer_harness.picture``) on this harness: the phantom segmented
    through the panel, then the panel rendered with ``QWidget.grab()`` to a small palette PNG."""
    from slicer_harness.picture import segment_phantom_and_render

    harness.closeScene()
    out = tmp_path / "Panel.png"
    panel = segment_phantom_and_render(harness, out, quality="fast")
    ui = panel.ui
    assert widget_of(ui.inputVolumeSelector).displayedText() == "CAMLPhantom"
    assert ui.statusLabel.text.startswith("Done.") and ui.progressBar.value == 100
    assert widget_of(ui.outputSegmentationSelector).displayedText() == "CAMLPhantom left atrium"  # renamed node
    assert ui.correctButton.enabled and ui.segmentButton.text == "Segment"
    assert not harness.takeErrors() and not harness.takeDialogs()

    from PyQt5 import QtGui

    image = QtGui.QImage(str(out))
    assert image.format() == QtGui.QImage.Format_Indexed8
    assert image.width() >= 400 and 500 <= image.height() <= 700
    assert out.stat().st_size < 120_000
    assert len(set(image.colorTable())) > 16  # text, frames and the progress bar, not a blank widget


def test_a_second_volume_keeps_the_first_result(harness, panel):
    ui = panel.ui
    first, second = volume(harness, "first"), volume(harness, "second", shape=(36, 40, 28))
    choose(ui.inputVolumeSelector, first)
    choose_item(ui.qualitySelector, "Fast preview (quicker, rougher)")
    segment_and_wait(harness, panel)
    firstSeg = ui.outputSegmentationSelector.currentNode()
    assert firstSeg is not None and left_atrium(firstSeg)
    from CAMLSegmentationLib.slicer import mrml_bridge

    firstMask = mrml_bridge.segment_to_mask(firstSeg, left_atrium(firstSeg), first).copy()

    choose(ui.inputVolumeSelector, second)
    # The output belonged to the first volume: the selector now offers a new segmentation.
    assert ui.outputSegmentationSelector.currentNode() is None
    assert widget_of(ui.outputSegmentationSelector).displayedText() == "Create new segmentation"
    segment_and_wait(harness, panel)
    assert ui.statusLabel.text.startswith("Done."), ui.statusLabel.text
    secondSeg = ui.outputSegmentationSelector.currentNode()
    assert secondSeg is not None and secondSeg is not firstSeg
    assert harness.scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 2
    assert secondSeg.GetNodeReference(secondSeg.GetReferenceImageGeometryReferenceRole()) is second
    assert firstSeg.GetNodeReference(firstSeg.GetReferenceImageGeometryReferenceRole()) is first
    np.testing.assert_array_equal(mrml_bridge.segment_to_mask(firstSeg, left_atrium(firstSeg), first), firstMask)

    choose(ui.inputVolumeSelector, first)  # back to the first: its result is not another volume's
    choose(ui.outputSegmentationSelector, firstSeg)
    assert ui.outputSegmentationSelector.currentNode() is firstSeg


def test_correct_opens_the_segment_editor_on_the_segmentations_own_volume(harness, panel):
    ui = panel.ui
    first, second = volume(harness, "first"), volume(harness, "second")
    choose(ui.inputVolumeSelector, first)
    choose_item(ui.qualitySelector, "Fast preview (quicker, rougher)")
    segment_and_wait(harness, panel)
    seg = ui.outputSegmentationSelector.currentNode()
    # The user selects another input, then picks the first result as the output again.
    choose(ui.inputVolumeSelector, second)
    choose(ui.outputSegmentationSelector, seg)
    assert ui.correctButton.enabled
    click(ui.correctButton)
    assert harness.current == "SegmentEditor"
    editor = slicer_harness.unwrap(harness.modules.segmenteditor.widgetRepresentation()).self().editor
    assert editor.segmentationNode() is seg
    assert editor.sourceVolumeNode() is first  # its own volume, not the panel's current input
    assert editor.currentSegmentID() == left_atrium(seg)


def test_cancel_during_a_run(harness, panel):
    ui = panel.ui
    choose(ui.inputVolumeSelector, volume(harness, shape=LONG_SHAPE))
    click(ui.segmentButton)
    run = panel._run
    harness.waitUntil(lambda: run.status and not run.status.startswith("Starting"), 120, "the child to report")
    assert ui.segmentButton.text == "Cancel"
    assert ui.segmentButton.toolTip == "Stop the running segmentation"
    click(ui.segmentButton)
    harness.waitUntil(lambda: panel._run is None, 60, "the cancel to land")
    assert ui.statusLabel.text == "Cancelled: nothing was added to the scene."
    assert ui.progressBar.value == 0
    assert ui.segmentButton.text == "Segment" and ui.segmentButton.enabled and not ui.correctButton.enabled
    assert harness.scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0
    assert run.job.state == "cancelled" and not run.workDir.exists()


def test_close_scene_during_a_run(harness, panel):
    ui = panel.ui
    choose(ui.inputVolumeSelector, volume(harness, shape=LONG_SHAPE))
    click(ui.segmentButton)
    run = panel._run
    harness.waitUntil(lambda: run.status and not run.status.startswith("Starting"), 120, "the child to report")
    harness.closeScene()
    harness.waitUntil(lambda: panel._run is None, 60, "the panel to see the run end")
    assert ui.statusLabel.text == "Cancelled (the scene was closed while it ran): nothing was added to the scene."
    assert run.job.state == "cancelled" and not run.workDir.exists()
    assert harness.scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0
    assert harness.scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 0
    assert not ui.segmentButton.enabled and ui.segmentButton.text == "Segment"
    assert ui.segmentButton.toolTip == "Select an input volume"



def _ended(pid: int, timeout: float = 20.0) -> bool:
    """The process ``pid`` (a child of this Python) has exited; reaped if it was left a zombie."""
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        except ChildProcessError:  # already reaped by its Popen
            return True
        time.sleep(0.05)
    return False


def test_the_warm_engine_is_restarted_after_it_died_and_stopped_with_the_panel(harness, panel):
    """The first Segment starts the warm engine and later clicks reuse it; killed, the next click starts
    another; a panel's cleanup (a module reload, Slicer closing) ends it."""
    import signal

    pyModule = harness.entries["CAMLSegmentation"].pyModule
    other = pyModule.CAMLSegmentationWidget()  # its own Logic, so its own engine
    try:
        ui = other.ui
        choose(ui.inputVolumeSelector, volume(harness))
        choose_item(ui.qualitySelector, "Fast preview (quicker, rougher)")
        for click_number in (1, 2):
            click(ui.segmentButton)
            harness.waitUntil(lambda: other._run is None, 180, "the segmentation to end")
            assert ui.statusLabel.text.startswith("Done."), ui.statusLabel.text
            if click_number == 1:
                first = other.logic._engineWorker
                assert first is not None and first.alive
        assert other.logic._engineWorker is first  # the second click went to the same process

        os.kill(first.pid, signal.SIGKILL)
        assert _ended(first.pid) and not first.alive
        click(ui.segmentButton)
        harness.waitUntil(lambda: other._run is None, 180, "the segmentation to end")
        assert ui.statusLabel.text.startswith("Done."), ui.statusLabel.text
        second = other.logic._engineWorker
        assert second is not first and second.alive and second.pid != first.pid
    finally:
        other.cleanup()
        other.parent.close()
    assert _ended(second.pid) and other.logic._engineWorker is None
    assert not harness.takeErrors()

def test_quality_flips_and_largest_component_reach_the_command(harness, panel):
    ui = panel.ui
    choose(ui.inputVolumeSelector, volume(harness))
    widget_of(ui.advancedCollapsibleButton).setCollapsed(False)
    choose_item(ui.qualitySelector, "Fast preview (quicker, rougher)")
    assert not ui.ttaCheckBox.checked  # the preset's flips
    widget_of(ui.ttaCheckBox).click()
    assert ui.qualitySelector.currentText == "Custom (advanced options changed)"
    choose_item(ui.lccSelector, "Never")
    params = panel.logic.getParameterNode()
    assert (params.quality, params.tta, params.largestComponent) == ("fast", True, False)
    click(ui.segmentButton)
    args = panel._run.job.args  # the warm worker's request: caml segment's arguments
    assert args[args.index("--protocol") + 1] == "fast"
    assert "--tta" in args and "--no-lcc" in args and "--lcc" not in args
    click(ui.segmentButton)  # Cancel
    harness.waitUntil(lambda: panel._run is None, 60, "the cancel to land")

    choose_item(ui.lccSelector, "Always")
    choose_item(ui.qualitySelector, "Standard (as scored in the model card)")
    assert items(ui.qualitySelector)[-1] != "Custom (advanced options changed)"  # back on a preset
    assert ui.ttaCheckBox.checked and params.largestComponent is True
    choose_item(ui.lccSelector, "Model's choice")
    assert params.largestComponent is None
    params.largestComponent = False  # from a saved scene or a script: the panel follows
    assert ui.lccSelector.currentText == "Never"


def test_an_input_that_cannot_be_segmented_says_why_in_one_line(harness, panel, monkeypatch):
    ui = panel.ui
    monkeypatch.setenv("CAML_MAX_VOXELS", "20000")  # the engine's size limit, small: this volume is too big
    big = volume(harness, "big")
    choose(ui.inputVolumeSelector, big)
    choose_item(ui.qualitySelector, "Fast preview (quicker, rougher)")
    click(ui.segmentButton)
    harness.waitUntil(lambda: panel._run is None, 180, "the segmentation to end")
    status = ui.statusLabel.text
    assert status.startswith(("Segmentation failed: ", "Cannot segment: ")) and "\n" not in status, status
    assert "exceeds the limit" in status and len(status) < 300, status
    assert harness.scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0
    assert ui.segmentButton.enabled and ui.segmentButton.text == "Segment"
    monkeypatch.delenv("CAML_MAX_VOXELS")

    empty = harness.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "no image")
    choose(ui.inputVolumeSelector, empty)
    click(ui.segmentButton)
    assert ui.statusLabel.text == "Cannot segment: Select an input volume first."
    assert panel._run is None and ui.segmentButton.text == "Segment"


# -- the module's self-test, as Slicer runs it ----------------------------------------------------

def test_the_self_test_passes_as_ctest_runs_it(harness, panel):
    """CTest (``slicer_add_python_unittest``) loads ``CAMLSegmentationTest`` with unittest and runs each
    ``test_*`` method: the panel test builds a second Widget without a parent, as the template does."""
    import io
    import unittest

    selfTest = harness.entries["CAMLSegmentation"].pyModule.CAMLSegmentationTest
    suite = unittest.TestLoader().loadTestsFromTestCase(selfTest)
    assert sorted(t._testMethodName for t in suite) == ["test_PanelEnablesSegment", "test_SegmentGeneratedVolume"]
    out = io.StringIO()
    result = unittest.TextTestRunner(stream=out, verbosity=2).run(suite)
    assert result.wasSuccessful() and result.testsRun == 2 and not result.skipped, out.getvalue()
    segs = harness.scene.GetNodesByClass("vtkMRMLSegmentationNode")
    assert segs.GetNumberOfItems() == 1 and left_atrium(segs.GetItemAsObject(0))


def test_the_self_test_without_torch_segments_through_the_export(harness, panel, monkeypatch, caplog):
    """An application without PyTorch but with an ONNX runtime: the bundled model has an export, so Reload
    and Test segments all the same. (torch is installed here: the Logic's metadata lookup is made to find
    none, as in an application without it.)"""
    import logging

    pyModule = harness.entries["CAMLSegmentation"].pyModule
    monkeypatch.setattr(pyModule.CAMLSegmentationLogic, "installedTorchVersion", staticmethod(lambda: None))
    assert pyModule.CAMLSegmentationTest.missingForSegmenting() == []
    with caplog.at_level(logging.INFO):
        pyModule.CAMLSegmentationTest().runTest()
    assert not [r for r in caplog.records if r.levelno == logging.WARNING and "self-test" in r.getMessage()]
    assert harness.scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 1


def test_the_self_test_without_torch_or_a_runtime_logs_a_skip(harness, panel, monkeypatch, caplog):
    """Neither PyTorch nor an ONNX runtime: Reload and Test (``runTest``) still checks the panel and logs why
    it did not segment (the runtime it would offer) instead of raising; under CTest the segmenting test is
    reported as skipped. The runtimes are made unimportable as ``import x`` sees it (``sys.modules``)."""
    import io
    import logging
    import unittest

    pyModule = harness.entries["CAMLSegmentation"].pyModule
    monkeypatch.setattr(pyModule.CAMLSegmentationLogic, "installedTorchVersion", staticmethod(lambda: None))
    for runtime in ("openvino", "onnxruntime"):
        monkeypatch.setitem(sys.modules, runtime, None)
    with caplog.at_level(logging.INFO):
        pyModule.CAMLSegmentationTest().runTest()
    skips = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "self-test" in r.getMessage()]
    offered = pyModule.CAMLSegmentationLogic.EXPORT_RUNTIME_REQUIREMENTS["openvino"]
    assert skips == [f"CAMLSegmentation self-test: segmenting skipped, missing {offered}"]
    assert "Panel test passed" in caplog.text
    assert harness.scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0

    suite = unittest.TestLoader().loadTestsFromTestCase(pyModule.CAMLSegmentationTest)
    result = unittest.TextTestRunner(stream=io.StringIO()).run(suite)
    assert result.wasSuccessful() and [t._testMethodName for t, _ in result.skipped] == [
        "test_SegmentGeneratedVolume"]


# -- Sample Data ----------------------------------------------------------------------------------

def test_sample_data_loads_the_phantom_both_ways_and_shows_it(harness, panel):
    """Against the behaviour of Slicer's ``Modules/Scripted/SampleData/SampleData.py`` as read (Slicer/Slicer
    at 01c2def0e79b; ``slicer-core`` does not ship it, so ``slicer_harness.sampledata`` re-implements it):
    ``SampleData.downloadSample(name)`` never calls the custom downloader, it copies the source's URI into
    the cache and loads the file; only the module's button calls ``customDownloader(source)``. Both load the
    phantom the module wrote once under ``$CAML_HOME/samples``; the button also shows it in the views."""
    import SampleData
    from CAMLSegmentationLib.io.phantom import PHANTOM_SEED, mri_phantom
    from CAMLSegmentationLib.slicer import mrml_bridge
    from CAMLSegmentationLib.slicer.logic import samplePhantomPath

    expected, _label = mri_phantom(seed=PHANTOM_SEED)
    source = SampleData.SampleDataLogic().sourceForSampleName("CAMLPhantom")
    assert source is not None and source in SampleData.SampleDataLogic.sampleDataSourcesByCategory("CAML Segmentation")
    assert samplePhantomPath().is_file() and source.uris == [samplePhantomPath().as_uri()]

    node = SampleData.downloadSample("CAMLPhantom")
    assert node.IsA("vtkMRMLScalarVolumeNode") and node.GetName() == "CAMLPhantom"
    got = mrml_bridge.volume_from_node(node)
    assert got.same_geometry(expected, tol=1e-4)
    np.testing.assert_array_equal(got.array, expected.array)
    # The panel (entered) offers the new volume at once: Segment can be pressed.
    assert panel.logic.getParameterNode().inputVolume is node and panel.ui.segmentButton.enabled

    harness.closeScene()
    red = harness.layoutManager.sliceLogic("Red")
    red.GetSliceNode().SetFieldOfView(250, 250, 1)
    clicked = SampleData.clickSample("CAMLPhantom")  # the Sample Data module's button
    assert clicked.GetName() == "CAMLPhantom" and clicked.GetAttribute("CAMLSegmentation.Synthetic")
    np.testing.assert_array_equal(mrml_bridge.volume_from_node(clicked).array, expected.array)
    assert red.GetSliceCompositeNode().GetBackgroundVolumeID() == clicked.GetID()
    fov = red.GetSliceNode().GetFieldOfView()
    assert max(fov[:2]) < 120, fov  # fitted to the 90 x 80 mm phantom, not the 250 mm default


def test_sample_data_without_a_writable_home_is_refused_in_one_line(harness, tmp_path, monkeypatch, caplog):
    """When the phantom cannot be written, the source is not registered and start-up logs one line."""
    import logging

    import SampleData
    from CAMLSegmentationLib.slicer import logic as slicer_logic

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the samples folder would be")
    monkeypatch.setenv("CAML_HOME", str(blocker))
    saved = harness.modules.sampleDataSources
    harness.modules.sampleDataSources = {}
    try:
        with caplog.at_level(logging.WARNING):
            slicer_logic.registerSampleData()
        assert SampleData.SampleDataLogic().sourceForSampleName("CAMLPhantom") is None
    finally:
        harness.modules.sampleDataSources = saved
    lines = [r.getMessage() for r in caplog.records if "CAMLSegmentation" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("CAMLSegmentation: no CAMLPhantom sample data: ")
    assert "\n" not in lines[0]


# -- what a user does around a run ------------------------------------------------------------------

def test_leaving_and_reentering_closing_the_scene_and_a_reloaded_panel(harness, panel):
    """Another module and back, File > Close Scene while idle, and a panel cleaned up as a module reload does:
    the panel keeps following the scene, and the old one no longer reacts."""
    ui = panel.ui
    mri = volume(harness)
    choose(ui.inputVolumeSelector, mri)
    choose_item(ui.qualitySelector, "Fast preview (quicker, rougher)")
    segment_and_wait(harness, panel)
    seg = ui.outputSegmentationSelector.currentNode()
    assert seg is not None and ui.correctButton.enabled

    harness.openModule("SegmentEditor")
    harness.openModule("CAMLSegmentation")
    assert ui.inputVolumeSelector.currentNode() is mri and ui.outputSegmentationSelector.currentNode() is seg
    assert ui.qualitySelector.currentText == "Fast preview (quicker, rougher)" and ui.segmentButton.enabled

    harness.closeScene()  # idle: nothing to cancel
    assert ui.inputVolumeSelector.currentNode() is None and ui.outputSegmentationSelector.currentNode() is None
    assert not ui.segmentButton.enabled and not ui.correctButton.enabled and not ui.show3DButton.enabled
    assert ui.segmentButton.toolTip == "Select an input volume"
    second = volume(harness, "after close")
    harness.processEvents()
    assert ui.inputVolumeSelector.currentNode() is second and ui.segmentButton.enabled

    # A reload: Slicer calls cleanup() on the old panel and builds a new one; the old one must stay quiet.
    pyModule = harness.entries["CAMLSegmentation"].pyModule
    old = pyModule.CAMLSegmentationWidget()
    old.cleanup()
    params = panel.logic.getParameterNode()
    params.inputVolume = None
    harness.closeScene()
    assert not harness.takeErrors()
    assert not ui.segmentButton.enabled  # the panel that is still in use follows
    old.parent.close()
