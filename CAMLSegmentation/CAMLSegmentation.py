"""3D Slicer module: one-click CAML left-atrium segmentation, correction in the Segment Editor.

Three classes, as in Slicer's scripted-module template (the Logic and the
background-run classes live in ``CAMLSegmentationLib/slicer/``):

- ``CAMLSegmentation``: module metadata.
- ``CAMLSegmentationWidget``: binds ``Resources/UI/CAMLSegmentation.ui`` to the
  parameter node and forwards clicks to the Logic; it computes nothing.
- ``CAMLSegmentationLogic``: everything the panel does, usable without it
  (and without Qt): parameters, dependency checks, device choice, the
  ``caml segment`` subprocess, turning its output into a segmentation node.
- ``CAMLSegmentationTest``: the in-Slicer self-test.

Qt, ctk and the scripted-module base classes exist only inside the Slicer
application. Outside it (the ``slicer-core`` wheels in the test suite) the
Logic runs on plain MRML, so those imports are guarded below. Heavy imports
(torch, the engine) happen inside functions: the module loads before torch
is installed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import slicer
import vtk
from CAMLSegmentationLib.slicer.framework import (
    DOCUMENTATION_URL,
    IN_SLICER_APP,
    TORCH_REQUIREMENT,
    ScriptedLoadableModule,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
    VTKObservationMixin,
    _,
    moduleResourcePath,
    qt,
    translate,
)
from CAMLSegmentationLib.slicer.logic import CAMLSegmentationLogic, makeTestVolume, registerSampleData
from CAMLSegmentationLib.slicer.parameters import (
    LARGEST_COMPONENT_CHOICES,
    CAMLSegmentationParameters,
    matchesQualityPreset,
)
from CAMLSegmentationLib.slicer.runs import ActiveLearningRun, SegmentationRun, runEndedAtTick

#
# CAMLSegmentation
#


class CAMLSegmentation(ScriptedLoadableModule):
    def __init__(self, parent: Any) -> None:
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("CAML Segmentation")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["CAMLSegmentation maintainers (see CONTRIBUTING.md)"]
        self.parent.helpText = _(
            "Segments the left atrium in an MRI with CAML (Correlation-Aware Mutual Learning). "
            "Pick a volume, press Segment, then Correct the result in the Segment Editor. "
            "Research use only, not a medical device.")
        self.parent.helpText += " " + _(
            'See more information in the <a href="{url}">module documentation</a>.').format(url=DOCUMENTATION_URL)
        self.parent.acknowledgementText = _(
            "CAML: Gao S., Zhang Z., Ma J., Li Z., Zhang S., Correlation-Aware Mutual Learning for "
            "Semi-supervised Medical Image Segmentation, MICCAI 2023 (arXiv 2307.06312).")
        if qt is not None:
            icon = moduleResourcePath("Icons/CAMLSegmentation.png")
            if icon.exists():
                self.parent.icon = qt.QIcon(str(icon))
            # Sample Data: registered once the application has started (as in the module template).
            slicer.app.connect("startupCompleted()", registerSampleData)




#
# CAMLSegmentationWidget
#


class CAMLSegmentationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: binds the .ui to the parameter node, forwards clicks to the Logic, shows progress."""

    def __init__(self, parent: Any = None) -> None:
        # State first: without a parent, the base class builds the panel (calls setup()) in its __init__.
        VTKObservationMixin.__init__(self)
        self.logic: Optional[CAMLSegmentationLogic] = None
        self._params: Optional[CAMLSegmentationParameters] = None
        self._updatingGUI = False
        self._run: Optional[SegmentationRun] = None
        self._loggedLines = 0
        self._timer = None
        ScriptedLoadableModuleWidget.__init__(self, parent)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(str(moduleResourcePath("UI/CAMLSegmentation.ui")))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = CAMLSegmentationLogic()

        ui = self.ui
        ui.deviceSelector.clear()
        for label, value in ((_("Auto (GPU if available)"), "auto"), (_("CPU"), "cpu"), (_("GPU (CUDA)"), "cuda")):
            ui.deviceSelector.addItem(label, value)
        ui.lccSelector.clear()
        for label, value in LARGEST_COMPONENT_CHOICES:
            ui.lccSelector.addItem(_(label), "model" if value is None else str(value).lower())
        self._fillQuality(custom=False)
        self._fillModels()
        ui.versionLabel.text = self.logic.versionsLine()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        ui.inputVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onInputVolumeChanged)
        for selector in (ui.roiSelector, ui.outputSegmentationSelector):
            selector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateParameterNodeFromGUI)
        for combo in (ui.modelSelector, ui.deviceSelector, ui.lccSelector):
            combo.connect("currentIndexChanged(int)", self.updateParameterNodeFromGUI)
        ui.qualitySelector.connect("currentIndexChanged(int)", self.onQualityChanged)
        for box in (ui.ttaCheckBox, ui.uncertaintyCheckBox):
            box.connect("toggled(bool)", self.updateParameterNodeFromGUI)
        ui.segmentButton.connect("clicked(bool)", self.onSegmentButton)
        ui.correctButton.connect("clicked(bool)", self.onCorrectButton)

        self._timer = qt.QTimer()
        self._timer.setInterval(100)
        self._timer.connect("timeout()", self.onTimer)
        self.setupActiveLearning()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Called when the application closes or the module is reloaded: stop the timer, end and forget the
        run, stop the warm engine (a reloaded module starts its own)."""
        if self._timer is not None:
            self._timer.stop()
        if self._run is not None and self._run.running:
            self.logic.cancel(self._run)
        self._run = None
        if self.logic is not None:
            self.logic.stopEngineWorker()
        self.cleanupActiveLearning()
        self.removeObservers()

    def enter(self) -> None:
        self._fillModels()
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._params is not None:
            self.removeObserver(self._params.node, vtk.vtkCommand.ModifiedEvent,
                                self.updateGUIFromParameterNode)
            self._params = None

    def onSceneStartClose(self, caller: Any, event: Any) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller: Any, event: Any) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        params = self.logic.getParameterNode()
        if params.inputVolume is None:
            params.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
        self.setParameterNode(params)

    def setParameterNode(self, params: Optional[CAMLSegmentationParameters]) -> None:
        if self._params is not None:
            self.removeObserver(self._params.node, vtk.vtkCommand.ModifiedEvent,
                                self.updateGUIFromParameterNode)
        self._params = params
        if params is not None:
            self.addObserver(params.node, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self.updateGUIFromParameterNode()

    def _fillModels(self) -> None:
        self.ui.modelSelector.blockSignals(True)
        self.ui.modelSelector.clear()
        for model in self.logic.availableModels():
            self.ui.modelSelector.addItem(model["label"], model["id"])
        self.ui.modelSelector.blockSignals(False)

    def _fillQuality(self, custom: bool) -> None:
        """The presets, and "Custom" while the advanced options differ from the chosen preset."""
        combo = self.ui.qualitySelector
        if combo.count == (3 if custom else 2):
            return
        combo.blockSignals(True)
        combo.clear()
        for label, value in ((_("Standard (as scored in the model card)"), "standard"),
                             (_("Fast preview (quicker, rougher)"), "fast")):
            combo.addItem(label, value)
        if custom:
            combo.addItem(_("Custom (advanced options changed)"), "custom")
        combo.blockSignals(False)

    def updateGUIFromParameterNode(self, caller: Any = None, event: Any = None) -> None:
        p = self._params
        if p is None or self._updatingGUI:
            return
        self._updatingGUI = True
        try:
            ui = self.ui
            ui.inputVolumeSelector.setCurrentNode(p.inputVolume)
            ui.roiSelector.setCurrentNode(p.roi)
            ui.outputSegmentationSelector.setCurrentNode(p.outputSegmentation)
            ui.show3DButton.setSegmentationNode(p.outputSegmentation)
            ui.modelSelector.setCurrentIndex(ui.modelSelector.findData(p.model))
            ui.deviceSelector.setCurrentIndex(ui.deviceSelector.findData(p.device))
            custom = not matchesQualityPreset(p)
            self._fillQuality(custom)
            ui.qualitySelector.setCurrentIndex(ui.qualitySelector.findData("custom" if custom else p.quality))
            ui.ttaCheckBox.checked = p.tta
            ui.uncertaintyCheckBox.checked = p.uncertainty
            lcc = p.largestComponent
            ui.lccSelector.setCurrentIndex(ui.lccSelector.findData("model" if lcc is None else str(lcc).lower()))
            running = self._run is not None and self._run.running
            ui.segmentButton.text = _("Cancel") if running else _("Segment")
            ui.segmentButton.enabled = running or (p.inputVolume is not None and bool(p.model))
            ui.segmentButton.toolTip = (_("Stop the running segmentation") if running else
                                        _("Segment the left atrium") if p.inputVolume is not None
                                        else _("Select an input volume"))
            ui.correctButton.enabled = not running and p.outputSegmentation is not None
            for widget in (ui.inputsCollapsibleButton, ui.advancedCollapsibleButton, ui.outputsCollapsibleButton):
                widget.enabled = not running
        finally:
            self._updatingGUI = False

    def updateParameterNodeFromGUI(self, *args: Any) -> None:
        p = self._params
        if p is None or self._updatingGUI:
            return
        ui = self.ui
        wasModifying = p.node.StartModify()
        try:
            p.roi = ui.roiSelector.currentNode()
            p.outputSegmentation = ui.outputSegmentationSelector.currentNode()
            if ui.modelSelector.currentIndex >= 0:
                p.model = ui.modelSelector.currentData
            p.device = ui.deviceSelector.currentData or "auto"
            p.tta = ui.ttaCheckBox.checked
            p.uncertainty = ui.uncertaintyCheckBox.checked
            p.largestComponent = {"model": None, "true": True, "false": False}[ui.lccSelector.currentData or "model"]
        finally:
            p.node.EndModify(wasModifying)

    def onInputVolumeChanged(self, node: Any) -> None:
        if self._params is None or self._updatingGUI:
            return
        self.logic.setInputVolume(self._params, node)

    def onQualityChanged(self, index: int) -> None:
        quality = self.ui.qualitySelector.itemData(index) if index >= 0 else None
        if self._params is None or self._updatingGUI or quality in (None, "custom"):
            return
        self.logic.applyQualityPreset(self._params, quality)

    def onSegmentButton(self) -> None:
        if self._run is not None and self._run.running:
            self.logic.cancel(self._run)
            return  # the timer sees the job end and resets the panel
        # The installation dialog first, without a wait cursor over it.
        with slicer.util.tryWithErrorDisplay(_("Failed to install the required Python packages.")):
            if not self.logic.ensureDependencies(slicer.util.confirmOkCancelDisplay, params=self._params):
                self.ui.statusLabel.text = _("Missing Python packages: segmentation not started.")
                return
        try:
            self._run = self.logic.startSegmentation(self._params)
        except Exception as exc:  # shown in one line, as the user needs it; details in the log
            logging.exception("CAMLSegmentation: the segmentation did not start")
            self.ui.statusLabel.text = _("Cannot segment: {why}").format(why=str(exc).splitlines()[0] if str(exc)
                                                                        else type(exc).__name__)
            return
        self.ui.progressBar.value = 0
        self.ui.statusLabel.text = self._run.status
        self.ui.logTextEdit.clear()
        self._loggedLines = 0
        self._timer.start()
        self.updateGUIFromParameterNode()

    def _showLog(self, run: Any) -> None:
        for line in run.log[self._loggedLines:]:
            self.ui.logTextEdit.appendPlainText(line)
        self._loggedLines = len(run.log)

    def onTimer(self) -> None:
        run = self._run
        ended = runEndedAtTick(run, self._timer, self.ui.progressBar, self.ui.statusLabel)
        if run is not None:
            self._showLog(run)
        if not ended:
            return
        self._run = None
        if run.job.state == "cancelled" or run.abandoned:
            self.logic.cancel(run)  # removes its files, forgets it
            self.ui.statusLabel.text = (_("Cancelled ({why}): nothing was added to the scene.").format(
                why=run.abandoned) if run.abandoned else _("Cancelled: nothing was added to the scene."))
            self.ui.progressBar.value = 0
        else:
            try:
                segNode = self.logic.finishSegmentation(run, self._params)
            except Exception as exc:
                logging.exception("CAMLSegmentation: the segmentation failed")
                self.ui.statusLabel.text = _("Segmentation failed: {why}").format(
                    why=str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__)
                self.ui.progressBar.value = 0
            else:
                self.ui.statusLabel.text = _("Done.") + " " + run.deviceMessage
                slicer.util.setSliceViewerLayers(background=run.inputNode, fit=True)
                if self._params.uncertaintyVolume is not None and self._params.uncertainty:
                    slicer.util.setSliceViewerLayers(foreground=self._params.uncertaintyVolume,
                                                     foregroundOpacity=0.4)
                segNode.GetDisplayNode().SetVisibility(True)
            self._showLog(run)
        self.updateGUIFromParameterNode()

    def onCorrectButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Cannot open the Segment Editor."), waitCursor=True):
            p = self._params
            editorNode = self.logic.prepareCorrection(p.outputSegmentation, p.inputVolume)
            slicer.util.selectModule("SegmentEditor")
            editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
            editor.setMRMLSegmentEditorNode(editorNode)
            editor.setSegmentationNode(editorNode.GetSegmentationNode())
            editor.setSourceVolumeNode(editorNode.GetSourceVolumeNode())
            editor.setCurrentSegmentID(editorNode.GetSelectedSegmentID())

    # -- the "Active learning" section: forwards clicks to the Logic's al* methods ----------
    def setupActiveLearning(self) -> None:
        ui = self.ui
        self._alRun: Optional[ActiveLearningRun] = None
        ui.alStrategySelector.clear()
        for label, value in (("Disagreement of models V and A", "disagreement"), ("Entropy of model V", "entropy"),
                             ("Random", "random"), ("Cohort order", "first")):
            ui.alStrategySelector.addItem(label, value)
        ui.alCohortPathLineEdit.connect("currentPathChanged(QString)", self.onAlCohortChanged)
        ui.alNextButton.connect("clicked(bool)", self.onAlNext)
        ui.alAcceptButton.connect("clicked(bool)", self.onAlAccept)
        ui.alRetrainButton.connect("clicked(bool)", self.onAlRetrain)
        ui.alUseVersionButton.connect("clicked(bool)", self.onAlUseVersion)
        self._alTimer = qt.QTimer()
        self._alTimer.setInterval(200)
        self._alTimer.connect("timeout()", self.onAlTimer)
        self._alUpdateButtons()

    def _alFolder(self) -> str:
        return self.ui.alCohortPathLineEdit.currentPath

    def _alUpdateButtons(self) -> None:
        running = self._alRun is not None and self._alRun.running
        hasCohort = self.logic.alIsCohort(self._alFolder())
        self.ui.alNextButton.enabled = hasCohort and not running
        self.ui.alAcceptButton.enabled = hasCohort and not running and bool(
            self.logic.getParameterNode().node.GetParameter("alCase"))
        self.ui.alRetrainButton.enabled = hasCohort and (not running or self._alRun.kind == "retrain")
        self.ui.alRetrainButton.text = "Cancel" if running and self._alRun.kind == "retrain" else "Retrain"
        self.ui.alUseVersionButton.enabled = hasCohort and not running

    def cleanupActiveLearning(self) -> None:
        if self._alRun is not None and self._alRun.running:
            self.logic.alCancel(self._alRun)
        self._alTimer.stop()

    def onAlCohortChanged(self, path: str) -> None:
        # The line edit reports every keystroke: act only on a folder that holds images/.
        if not path or not (Path(path) / "images").is_dir():
            self.ui.alStatusLabel.text = "Choose a folder that holds images/<id>.nrrd|.nii.gz|... files."
            self._alUpdateButtons()
            return
        with slicer.util.tryWithErrorDisplay("Cannot open the cohort.", waitCursor=True):
            weights = self.logic.alModelWeights(self._params.model if self._params is not None else "")
            status = self.logic.alOpenCohort(path, weights)
            counts = status["counts"]
            self.ui.alStatusLabel.text = (
                f"{status['cases']} cases: {counts['accepted-train']} training, {counts['accepted-val']} "
                f"validation, {counts['unlabeled'] + counts['predicted']} to label. "
                + " ".join(status["notes"] + status["problems"]))
            self.refreshAlVersions()
        self._alUpdateButtons()

    def onAlNext(self) -> None:
        with slicer.util.tryWithErrorDisplay("Next case failed to start.", waitCursor=True):
            device = self._params.device if self._params is not None else "auto"
            self._alRun = self.logic.alStartNext(self._alFolder(), self.ui.alStrategySelector.currentData,
                                                 device, self.ui.alUncertaintyCheckBox.checked)
            self._alTimer.start()
        self._alUpdateButtons()

    def onAlAccept(self) -> None:
        with slicer.util.tryWithErrorDisplay("Accept failed.", waitCursor=True):
            result = self.logic.alAccept(self._alFolder())
            self.ui.alStatusLabel.text = f"Accepted {result['case']} as {result['status']}."
            if result.get("retrain_due"):
                self.ui.alStatusLabel.text += " Retraining (every-N-accepts setting)..."
                self.onAlRetrain()
        self._alUpdateButtons()

    def onAlRetrain(self) -> None:
        if self._alRun is not None and self._alRun.running:
            self.logic.alCancel(self._alRun)
            return
        with slicer.util.tryWithErrorDisplay("Retrain failed to start.", waitCursor=True):
            device = self._params.device if self._params is not None else "auto"
            self._alRun = self.logic.alStartRetrain(self._alFolder(), device)
            self._alTimer.start()
        self._alUpdateButtons()

    def onAlTimer(self) -> None:
        run = self._alRun
        if not runEndedAtTick(run, self._alTimer, self.ui.alProgressBar, self.ui.alStatusLabel):
            return
        self._alRun = None
        if run.job.state == "cancelled":
            self.ui.alStatusLabel.text = "Cancelled: the cohort and its current version are unchanged."
        elif run.kind == "next":
            with slicer.util.tryWithErrorDisplay("Next case failed.", waitCursor=True):
                loaded = self.logic.alFinishNext(run)
                slicer.util.setSliceViewerLayers(background=loaded["volume"], fit=True)
                if loaded["uncertainty"] is not None:
                    slicer.util.setSliceViewerLayers(foreground=loaded["uncertainty"], foregroundOpacity=0.4)
                self.ui.alStatusLabel.text = (f"Case {loaded['case']} ({loaded['strategy']} score "
                                              f"{loaded['score']:.3g}): correct it, then Accept.")
                self._params.outputSegmentation = loaded["segmentation"]
                self._params.inputVolume = loaded["volume"]
        else:
            if run.job.state == "done":
                self.ui.alStatusLabel.text = run.job.result.get("reason", "Retrained.")
            else:
                self.ui.alStatusLabel.text = f"Retrain failed: {run.job.error}"
            self.refreshAlVersions()
        self._alUpdateButtons()

    def refreshAlVersions(self) -> None:
        versions = self.logic.alVersions(self._alFolder())
        table = self.ui.alVersionsTable
        table.setRowCount(len(versions))
        for row, v in enumerate(versions):
            dice = v["current_val_dice"] if v["current_val_dice"] is not None else v["val_dice"]
            cells = [("* " if v["current"] else "") + str(v["id"]), "-" if dice is None else f"{dice:.4f}", v["note"]]
            for col, text in enumerate(cells):
                table.setItem(row, col, qt.QTableWidgetItem(text))
        chart = self.logic.alUpdatePlot(self._alFolder(), versions)
        if versions:
            slicer.modules.plots.logic().ShowChartInLayout(chart)

    def onAlUseVersion(self) -> None:
        row = self.ui.alVersionsTable.currentRow()
        if row < 0:
            return
        with slicer.util.tryWithErrorDisplay("Cannot switch versions.", waitCursor=True):
            version = int(self.ui.alVersionsTable.item(row, 0).text().lstrip("* "))
            self.logic.alUseVersion(self._alFolder(), version)
            self.ui.alStatusLabel.text = f"Version {version} is now current."
            self.refreshAlVersions()




#
# CAMLSegmentationTest
#


class CAMLSegmentationTest(ScriptedLoadableModuleTest):
    """Self-test: Developer mode > Reload and Test (``runTest``), and CTest (``slicer_add_python_unittest``
    runs each ``test_*`` method).

    ``test_PanelEnablesSegment`` builds the panel and selects a volume as a user
    does; ``test_SegmentGeneratedVolume`` segments a generated volume with the
    bundled model on the CPU through the same ``caml segment`` child the panel
    uses. Where PyTorch or the engine's packages are missing, segmenting is
    skipped with the reason: logged by ``runTest`` (Reload and Test shows no
    error for a missing optional dependency), ``unittest.SkipTest`` under CTest.
    """

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_PanelEnablesSegment()
        self.setUp()
        missing = self.missingForSegmenting()
        if missing:
            reason = "CAMLSegmentation self-test: segmenting skipped, missing " + ", ".join(missing)
            logging.warning(reason)
            self.delayDisplay(reason)
            return
        self.test_SegmentGeneratedVolume()

    @staticmethod
    def missingForSegmenting() -> list:
        logic = CAMLSegmentationLogic()
        missing = ([f"PyTorch {TORCH_REQUIREMENT}"] if not logic.torchAvailable() else []) + logic.missingPackages()
        if not logic.getParameterNode().model:
            missing.append("a model in the catalog")
        return missing

    def test_PanelEnablesSegment(self) -> None:
        """The panel built as Slicer builds it: Segment waits for a volume, then is enabled."""
        self.delayDisplay("Building the panel")
        widget = CAMLSegmentationWidget()  # no parent: the base class makes one and calls setup()
        try:
            ui = widget.ui
            self.assertFalse(ui.segmentButton.enabled)
            self.assertEqual(ui.segmentButton.toolTip, _("Select an input volume"))
            volumeNode = makeTestVolume(slicer.mrmlScene, shape=(24, 20, 16))
            ui.inputVolumeSelector.setCurrentNode(volumeNode)
            self.assertIs(widget.logic.getParameterNode().inputVolume, volumeNode)
            self.assertTrue(ui.segmentButton.enabled)
            self.assertEqual(ui.segmentButton.text, _("Segment"))
            self.assertEqual(ui.segmentButton.toolTip, _("Segment the left atrium"))
        finally:
            widget.cleanup()
            widget.parent.close()
        self.delayDisplay("Panel test passed")

    def test_SegmentGeneratedVolume(self) -> None:
        missing = self.missingForSegmenting()
        if missing:
            reason = "CAMLSegmentation self-test not run, missing: " + ", ".join(missing)
            logging.warning(reason)
            self.skipTest(reason)
        self.delayDisplay("Generating a test volume")
        logic = CAMLSegmentationLogic()
        params = logic.getParameterNode()
        volumeNode = makeTestVolume(slicer.mrmlScene)
        params.inputVolume = volumeNode
        logic.applyQualityPreset(params, "fast")
        params.device = "cpu"

        self.delayDisplay("Segmenting (CPU)")
        pumpEvents = (lambda run: slicer.app.processEvents()) if IN_SLICER_APP else None
        try:
            segNode = logic.segment(params, progress=pumpEvents, timeout=600)
        finally:
            logic.stopEngineWorker()

        from CAMLSegmentationLib.slicer import mrml_bridge

        segmentId = segNode.GetSegmentation().GetSegmentIdBySegmentName(mrml_bridge.LEFT_ATRIUM_NAME)
        self.assertTrue(segmentId)
        self.assertIs(segNode.GetNodeReference(segNode.GetReferenceImageGeometryReferenceRole()), volumeNode)
        mask = mrml_bridge.segment_to_mask(segNode, segmentId, volumeNode)
        self.assertEqual(mask.shape, tuple(volumeNode.GetImageData().GetDimensions()))
        self.assertIs(params.outputSegmentation, segNode)
        self.delayDisplay("Test passed")
