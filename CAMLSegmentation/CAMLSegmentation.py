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
        ui.uncertainRegionButton.connect("clicked(bool)", self.onUncertainRegionButton)

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
        self._alUpdateButtons()  # the loaded case went with the scene: nothing to accept

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
            ui.uncertainRegionButton.enabled = not running and p.uncertaintyVolume is not None
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

    def onUncertainRegionButton(self) -> None:
        """Centre the slice views on the next region where CAML's sub-models disagree, largest first."""
        with slicer.util.tryWithErrorDisplay(_("Cannot find the uncertain regions."), waitCursor=True):
            shown = self.logic.nextUncertainRegion(self._params.uncertaintyVolume)
            if shown["count"]:
                self.ui.statusLabel.text = _(
                    "Uncertain region {index} of {count}: {ml:.2f} mL, disagreement up to {peak:.2f}. "
                    "Correct it, or press again for the next.").format(
                    index=shown["index"], count=shown["count"], ml=shown["millilitres"], peak=shown["region"].peak)
            else:
                self.ui.statusLabel.text = _("CAML's two sub-models agree everywhere (no disagreement above "
                                             "{threshold}).").format(threshold=shown["threshold"])

    # -- the "Active learning" section: forwards clicks to the Logic's al* methods ----------
    def setupActiveLearning(self) -> None:
        from CAMLSegmentationLib.activelearning.strategies import STRATEGIES

        ui = self.ui
        self._alRun: Optional[ActiveLearningRun] = None
        self._alStatus: Optional[dict] = None  # the open cohort's last status
        labels = {"disagreement": _("Disagreement of models V and A"), "entropy": _("Entropy of model V"),
                  "random": _("Random"), "first": _("Cohort order")}
        self._alRetrainToolTip = ui.alRetrainButton.toolTip  # the .ui's, shown again after a Cancel
        ui.alStrategySelector.clear()
        for value in STRATEGIES:  # the engine's list sets the choices and their order
            ui.alStrategySelector.addItem(labels.get(value, value), value)
        ui.alCohortPathLineEdit.connect("currentPathChanged(QString)", self.onAlCohortChanged)
        ui.alCreateButton.connect("clicked(bool)", self.onAlCreate)
        ui.alNextButton.connect("clicked(bool)", self.onAlNext)
        ui.alAcceptButton.connect("clicked(bool)", self.onAlAccept)
        ui.alRetrainButton.connect("clicked(bool)", self.onAlRetrain)
        ui.alResumeButton.connect("clicked(bool)", self.onAlResume)
        ui.alUseVersionButton.connect("clicked(bool)", self.onAlUseVersion)
        ui.alShowChartButton.connect("clicked(bool)", self.onAlShowChart)
        self._alTimer = qt.QTimer()
        self._alTimer.setInterval(200)
        self._alTimer.connect("timeout()", self.onAlTimer)
        # The path edit restored the last folder opened (its history, kept in the settings): reopen it,
        # without asking anything while the module is being set up.
        self.onAlCohortChanged(self._alFolder(), ask=False)

    def _alFolder(self) -> str:
        return self.ui.alCohortPathLineEdit.currentPath

    def _alUpdateButtons(self) -> None:
        ui = self.ui
        run = self._alRun
        running = run is not None and run.running
        hasCohort = self._alStatus is not None
        idle = hasCohort and not running
        retraining = running and run.kind == "retrain"
        ui.alCreateButton.enabled = not running and self.logic.alFolderKind(self._alFolder()) == "images"
        ui.alNextButton.enabled = idle
        ui.alAcceptButton.enabled = not running and bool(self.logic.getParameterNode().node.GetParameter("alCase"))
        ui.alRetrainButton.enabled = idle or retraining
        ui.alRetrainButton.text = _("Cancel") if retraining else _("Retrain")
        ui.alRetrainButton.toolTip = (_("Stop the retrain: the cohort and its current version stay as they are; "
                                        "Resume retrain continues it later.") if retraining
                                      else self._alRetrainToolTip)
        ui.alResumeButton.enabled = idle and self.logic.alResumableJob(self._alFolder()) is not None
        ui.alUseVersionButton.enabled = idle and ui.alVersionsTable.rowCount > 0
        ui.alShowChartButton.enabled = hasCohort and ui.alVersionsTable.rowCount > 0

    def _alDependenciesReady(self, ask: bool = True) -> bool:
        """The install offer of the Segment path, before a cohort is touched: active learning needs PyTorch
        (in the child processes) and the engine's packages (numpy, SQLite, file locks here)."""
        if not ask:
            return self.logic.ensureDependencies(lambda text: False)
        with slicer.util.tryWithErrorDisplay(_("Failed to install the required Python packages.")):
            if self.logic.ensureDependencies(slicer.util.confirmOkCancelDisplay):
                return True
        self.ui.alStatusLabel.text = _("Missing Python packages: the cohort was not opened or changed.")
        return False

    def cleanupActiveLearning(self) -> None:
        if self._alRun is not None:
            if self._alRun.running:
                self.logic.alCancel(self._alRun)
            self.logic.alForget(self._alRun)
            self._alRun = None
        self._alTimer.stop()

    def onAlCohortChanged(self, path: str, ask: bool = True) -> None:
        """A folder was typed or chosen: open it when it is a cohort; never make it one (Create cohort does)."""
        self._alStatus = None
        kind = self.logic.alFolderKind(path)
        if kind == "none":
            self.ui.alStatusLabel.text = _("Choose a cohort folder, or a folder that holds images/<id>.nrrd|"
                                           ".nii.gz|... files to make one.")
        elif kind == "images":
            self.ui.alStatusLabel.text = _("Not a cohort yet: Create cohort makes it one (nothing is written "
                                           "before you confirm).")
        elif self._alDependenciesReady(ask):
            self._alOpen(path)
        elif not ask:
            self.ui.alStatusLabel.text = _("Active learning needs PyTorch and more Python packages: choose the "
                                           "folder again to install them.")
        self.refreshAlVersions()
        self._alUpdateButtons()

    def _alOpen(self, path: str) -> None:
        with slicer.util.tryWithErrorDisplay(_("Cannot open the cohort."), waitCursor=True):
            status = self.logic.alOpenCohort(path)
            self._alStatus = status
            self._alShowStatus(status)
            self._alRemember()

    def _alRemember(self) -> None:
        """Put the open folder first in the path edit's history (kept in the settings: the next session
        reopens it). Its signals are blocked meanwhile: reordering the list must not reopen anything."""
        pathEdit = self.ui.alCohortPathLineEdit
        wasBlocked = pathEdit.blockSignals(True)
        try:
            pathEdit.addCurrentPathToHistory()
        finally:
            pathEdit.blockSignals(wasBlocked)

    def _alShowStatus(self, status: dict, prefix: str = "") -> None:
        counts = status["counts"]
        line = _("{cases} cases: {train} training, {val} validation, {todo} to label; current version "
                 "{version}.").format(cases=status["cases"], train=counts["accepted-train"],
                                      val=counts["accepted-val"], todo=counts["unlabeled"] + counts["predicted"],
                                      version=status["current_version"] or _("none"))
        engineLines = [t[:1].upper() + t[1:] + ("" if t.endswith(".") else ".")
                       for t in [*status["notes"], *status["problems"]] if t]
        self.ui.alStatusLabel.text = " ".join(t for t in [prefix, line, *engineLines] if t)
        self.ui.alCorrectionLabel.text = self.logic.alCorrectionSummary(status)

    def _alReopen(self, prefix: str) -> None:
        """Read the cohort's status again after a change (the line edit may show another folder by now)."""
        if self.logic.alFolderKind(self._alFolder()) != "cohort":
            self.ui.alStatusLabel.text = prefix
            return
        with slicer.util.tryWithErrorDisplay(_("Cannot read the cohort."), waitCursor=True):
            self._alStatus = self.logic.alOpenCohort(self._alFolder())
            self._alShowStatus(self._alStatus, prefix)

    def _alStartRun(self, start: Any, what: str) -> None:
        with slicer.util.tryWithErrorDisplay(what, waitCursor=True):
            self._alRun = start()
            self.ui.alProgressBar.value = 0
            self.ui.alStatusLabel.text = self._alRun.status
            self._alTimer.start()
        self._alUpdateButtons()

    def _alDevice(self) -> str:
        return self._params.device if self._params is not None else "auto"

    def onAlCreate(self) -> None:
        folder = self._alFolder()
        if not self._alDependenciesReady():
            return
        model = self._params.model if self._params is not None else ""
        if not slicer.util.confirmOkCancelDisplay(self.logic.alCreateQuestion(folder, model),
                                                  windowTitle=_("Create cohort")):
            self.ui.alStatusLabel.text = _("Not created: nothing was written.")
            return
        self._alStartRun(lambda: self.logic.alStartCreate(folder, model), _("Cannot create the cohort."))

    def onAlNext(self) -> None:
        if not self._alDependenciesReady():
            return
        folder, strategy = self._alFolder(), self.ui.alStrategySelector.currentData
        uncertainty = self.ui.alUncertaintyCheckBox.checked
        self._alStartRun(lambda: self.logic.alStartNext(folder, strategy, self._alDevice(), uncertainty),
                         _("Next case failed to start."))

    def onAlAccept(self) -> None:
        result = None
        with slicer.util.tryWithErrorDisplay(_("Accept failed."), waitCursor=True):
            result = self.logic.alAccept()  # into the cohort the case came from
            self._alReopen(_("Accepted {case} into {cohort} as {status}.").format(
                case=result["case"], cohort=Path(result["cohort"]).name, status=result["status"]))
        self._alUpdateButtons()
        if result is None:
            return
        if self.logic.alCaseNodes() and slicer.util.confirmYesNoDisplay(
                _("Case {case} is stored in the cohort. Remove its image, segmentation and disagreement map "
                  "from the scene?").format(case=result["case"]), windowTitle=_("Accepted"),
                dontShowAgainSettingsKey="CAMLSegmentation/RemoveAcceptedCaseNodes"):
            self.logic.alRemoveCaseNodes()
        if result.get("retrain_due"):
            self.ui.alStatusLabel.text += " " + _("Retraining (every-N-accepts setting)...")
            self.onAlRetrain()

    def onAlRetrain(self) -> None:
        if self._alRun is not None and self._alRun.running:
            self.logic.alCancel(self._alRun)  # the timer reports the end
            self.ui.alStatusLabel.text = _("Cancelling: the retrain stops at its next checkpoint...")
            return
        if not self._alDependenciesReady():
            return
        folder = self._alFolder()
        self._alStartRun(lambda: self.logic.alStartRetrain(folder, self._alDevice()), _("Retrain failed to start."))

    def onAlResume(self) -> None:
        if not self._alDependenciesReady():
            return
        folder = self._alFolder()
        self._alStartRun(lambda: self.logic.alStartRetrain(folder, self._alDevice(), resume=True),
                         _("Resume failed to start."))

    def onAlUseVersion(self) -> None:
        row = self.ui.alVersionsTable.currentRow()
        if row < 0:
            self.ui.alStatusLabel.text = _("Select a version in the table first.")
            return
        if not self._alDependenciesReady():
            return
        folder = self._alFolder()
        version = int(self.ui.alVersionsTable.item(row, 0).text().lstrip("* "))
        self._alStartRun(lambda: self.logic.alStartUse(folder, version), _("Cannot switch versions."))

    def onAlShowChart(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Cannot show the chart."), waitCursor=True):
            self.logic.alShowChart(self._alFolder())

    def onAlTimer(self) -> None:
        run = self._alRun
        if not runEndedAtTick(run, self._alTimer, self.ui.alProgressBar, self.ui.alStatusLabel):
            return
        self._alRun = None
        self.logic.alForget(run)
        if run.abandoned:
            self.ui.alStatusLabel.text = _("Cancelled ({why}): nothing was loaded.").format(why=run.abandoned)
            self.ui.alProgressBar.value = 0
        elif run.job.state == "cancelled":
            self.ui.alStatusLabel.text = _("Cancelled: the cohort and its current version are unchanged.")
            self.ui.alProgressBar.value = 0
        elif run.kind == "next":
            self._alFinishNext(run)
        else:
            self._alFinishChange(run)
        self._alUpdateButtons()

    def _alFinishNext(self, run: Any) -> None:
        with slicer.util.tryWithErrorDisplay(_("Next case failed."), waitCursor=True):
            loaded = self.logic.alFinishNext(run)
            slicer.util.setSliceViewerLayers(background=loaded["volume"], fit=True)
            if loaded["uncertainty"] is not None:
                slicer.util.setSliceViewerLayers(foreground=loaded["uncertainty"], foregroundOpacity=0.4)
            score = loaded["score"]
            self.ui.alStatusLabel.text = _("Case {case} ({strategy} score {score}): correct it, then Accept.").format(
                case=loaded["case"], strategy=loaded["strategy"], score="-" if score is None else f"{score:.3g}")
            params = self._params if self._params is not None else self.logic.getParameterNode()
            params.inputVolume = loaded["volume"]
            params.outputSegmentation = loaded["segmentation"]
            params.uncertaintyVolume = loaded["uncertainty"]

    def _alFinishChange(self, run: Any) -> None:
        """A create, retrain or use ended: say how, then show the cohort as it is now."""
        try:
            result = self.logic.alResult(run)
        except RuntimeError as exc:
            failed = {"init": _("Cannot create the cohort: {why}"), "use": _("Cannot switch versions: {why}")}.get(
                run.kind, _("Retrain failed: {why}"))
            self.ui.alStatusLabel.text = failed.format(why=str(exc).strip().splitlines()[-1] if str(exc).strip()
                                                       else run.kind)
            self.ui.alProgressBar.value = 0
            self.refreshAlVersions()
            return
        if run.kind == "init":
            self._alReopen(_("Cohort created."))
            if run.cohort == self._alFolder():
                self._alRemember()
        elif run.kind == "use":
            self._alReopen(_("Version {version} is now current.").format(version=result.get("id", "?")))
        else:
            self._alReopen(str(result.get("reason") or _("Retrained.")))
        versions = self.refreshAlVersions()
        # The chart comes up by itself once a retrain made a second version (not into a scene closed meanwhile).
        if run.kind == "retrain" and len(versions) >= 2 and not run.sceneClosed:
            self.onAlShowChart()

    def refreshAlVersions(self) -> list:
        """The versions table of the open cohort (the chart only changes when shown: onAlShowChart)."""
        table = self.ui.alVersionsTable
        versions = []
        if self._alStatus is not None:
            with slicer.util.tryWithErrorDisplay(_("Cannot read the versions."), waitCursor=True):
                versions = self.logic.alVersions(self._alFolder())
        table.setRowCount(len(versions))
        for row, v in enumerate(versions):
            dice = v["current_val_dice"] if v["current_val_dice"] is not None else v["val_dice"]
            cells = [("* " if v["current"] else "") + str(v["id"]), "-" if dice is None else f"{dice:.4f}", v["note"]]
            for col, text in enumerate(cells):
                table.setItem(row, col, qt.QTableWidgetItem(text))
        return versions



#
# CAMLSegmentationTest
#


class CAMLSegmentationTest(ScriptedLoadableModuleTest):
    """Self-test: Developer mode > Reload and Test (``runTest``), and CTest (``slicer_add_python_unittest``
    runs each ``test_*`` method).

    ``test_PanelEnablesSegment`` builds the panel and selects a volume as a user
    does; ``test_SegmentGeneratedVolume`` segments a generated volume with the
    bundled model on the CPU through the same ``caml segment`` child the panel
    uses. Where the engine's packages, or what runs the model (an ONNX runtime for a model with an
    export, else PyTorch), are missing, segmenting is
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
        params = logic.getParameterNode()
        params.device = "cpu"  # the self-test segments on the CPU: the bundled model's export needs no PyTorch
        if logic.segmentationNeedsTorch(params):
            missing = [f"PyTorch {TORCH_REQUIREMENT}"] if not logic.torchAvailable() else []
        else:
            missing = logic.missingExportRuntime()
        missing += logic.missingPackages()
        if not params.model:
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
