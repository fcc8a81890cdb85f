"""3D Slicer module: one-click CAML left-atrium segmentation, correction in the Segment Editor.

Four classes, as in Slicer's scripted-module template:

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
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import slicer
import vtk

try:  # the Slicer application
    import qt
    from slicer.ScriptedLoadableModule import (
        ScriptedLoadableModule,
        ScriptedLoadableModuleLogic,
        ScriptedLoadableModuleTest,
        ScriptedLoadableModuleWidget,
    )
    from slicer.util import VTKObservationMixin

    IN_SLICER_APP = True
except ImportError:  # MRML without a GUI (slicer-core wheels): the Logic and its helpers still work
    qt = None

    class ScriptedLoadableModule:  # type: ignore[no-redef]
        def __init__(self, parent: Any) -> None:
            self.parent = parent

    class ScriptedLoadableModuleWidget:  # type: ignore[no-redef]
        pass

    class ScriptedLoadableModuleLogic:  # type: ignore[no-redef]
        def __init__(self, parent: Any = None) -> None:
            pass

    class ScriptedLoadableModuleTest:  # type: ignore[no-redef]
        pass

    class VTKObservationMixin:  # type: ignore[no-redef]
        def __init__(self) -> None:
            pass

    IN_SLICER_APP = False

try:  # Slicer >= 5.4: user-visible strings go through Slicer's translation machinery
    from slicer.i18n import tr as _
    from slicer.i18n import translate
except ImportError:  # older Slicer, or the slicer-core wheels

    def _(text: str) -> str:
        return text

    def translate(context: str, text: str) -> str:
        return text

MODULE_NAME = "CAMLSegmentation"
MODULE_DIR = Path(__file__).resolve().parent
DOCUMENTATION_URL = "https://github.com/camlsegmentation/SlicerCAMLSegmentation#readme"
#: The oldest PyTorch the engine runs on (checked from the installed package, never by importing it here).
TORCH_REQUIREMENT = ">=2.0"


def moduleResourcePath(relative: str) -> Path:
    """Where a resource (``UI/x.ui``, ``Icons/x.png``, ``Models/models.json``) lives.

    Installed by the extension it sits in ``Resources/`` next to this file, which
    is where Slicer's ``resourcePath()`` looks; in a source checkout (module path
    added by hand) the top-level ``Resources/`` one folder up is used.
    """
    installed = MODULE_DIR / "Resources" / relative
    if installed.exists():
        return installed
    source = MODULE_DIR.parent / "Resources" / relative
    return source if source.exists() else installed


#
# CAMLSegmentation
#


class CAMLSegmentation(ScriptedLoadableModule):
    def __init__(self, parent: Any) -> None:
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("CAML Segmentation")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["CAMLSegmentation contributors"]
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
# Sample data
#

#: What the Sample Data module shows; the volume is generated on click, never downloaded.
SAMPLE_NAME = "CAMLPhantom"


def registerSampleData() -> None:
    """A synthetic MRI-like chest phantom in the Sample Data module ("CAML Segmentation" category).

    No patient data ships with the extension: a click generates the project's
    phantom (``CAMLSegmentationLib.io.phantom``, numpy only) into the scene.
    """
    try:
        import SampleData
    except ImportError:  # Sample Data module disabled
        return
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        # No URI, file or node name: SampleDataSource needs those lists of equal length, and the
        # custom downloader makes the node itself.
        category="CAML Segmentation", sampleName=SAMPLE_NAME, uris=[], fileNames=[],
        thumbnailFileName=str(moduleResourcePath("Icons/CAMLSegmentation.png")),
        customDownloader=lambda source=None: CAMLSegmentationLogic().loadSamplePhantom())


#
# Parameters
#

#: Speed vs quality: the engine's inference protocol (``caml segment --protocol``) and whether
#: it uses the test-time flips (the TTA box starts there; tests check these match the engine).
QUALITY_PRESETS: Dict[str, Dict[str, Any]] = {
    "standard": {"protocol": "default", "tta": True},
    "fast": {"protocol": "fast", "tta": False},
}
DEVICES = ("auto", "cpu", "cuda")


class CAMLSegmentationParameters:
    """Typed access to the module's parameter node (a ``vtkMRMLScriptedModuleNode``).

    The node is the single source of the panel's state and is saved with the scene.
    """

    _NODE_ROLES = {"inputVolume": "InputVolume", "roi": "ROI",
                   "outputSegmentation": "OutputSegmentation", "uncertaintyVolume": "UncertaintyVolume"}
    # The defaults are the settings the bundled model's card was scored with (`caml segment`'s
    # defaults: dense averaged windows with test-time flips, and the largest-component filter as
    # the model's validation chose it: "model" passes neither --lcc nor --no-lcc).
    _DEFAULTS = {"model": "", "device": "auto", "quality": "standard",
                 "tta": str(QUALITY_PRESETS["standard"]["tta"]).lower(),
                 "uncertainty": "false", "largestComponent": "model"}

    def __init__(self, node: Any) -> None:
        object.__setattr__(self, "node", node)

    def setDefaults(self) -> None:
        for key, value in self._DEFAULTS.items():
            if not self.node.GetParameter(key):
                self.node.SetParameter(key, value)

    def __getattr__(self, name: str) -> Any:
        if name in self._NODE_ROLES:
            return self.node.GetNodeReference(self._NODE_ROLES[name])
        if name in ("tta", "uncertainty"):
            return (self.node.GetParameter(name) or self._DEFAULTS[name]) == "true"
        if name == "largestComponent":  # None: the model's own choice (stored with its weights)
            return {"true": True, "false": False}.get(self.node.GetParameter(name) or self._DEFAULTS[name])
        if name == "quality":  # a scene saved by an older version may name a retired preset
            value = self.node.GetParameter(name)
            return value if value in QUALITY_PRESETS else self._DEFAULTS[name]
        if name in self._DEFAULTS:
            return self.node.GetParameter(name) or self._DEFAULTS[name]
        raise AttributeError(name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self._NODE_ROLES:
            self.node.SetNodeReferenceID(self._NODE_ROLES[name], value.GetID() if value is not None else None)
            return
        if name not in self._DEFAULTS:
            raise AttributeError(name)
        if name == "device" and value not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, not {value!r}")
        if name == "quality" and value not in QUALITY_PRESETS:
            raise ValueError(f"quality must be one of {sorted(QUALITY_PRESETS)}, not {value!r}")
        if name == "largestComponent" and value not in (None, True, False):
            raise ValueError(f"largestComponent must be None (the model's choice), True or False, not {value!r}")
        if value is None and name == "largestComponent":
            value = "model"
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        self.node.SetParameter(name, text)


#
# A segmentation run (one subprocess)
#


def runEndedAtTick(run: Any, timer: Any, progressBar: Any, statusLabel: Any) -> bool:
    """One timer tick of a child run (segmentation or active learning): poll it and show its
    progress. True, with the timer stopped, once the run has ended and its outcome needs handling."""
    if run is None:
        timer.stop()
        return False
    run.poll()
    progressBar.value = int(round(100 * run.fraction))
    statusLabel.text = run.status
    if run.running:
        return False
    timer.stop()
    return True


class SegmentationRun:
    """State of one ``caml segment`` job started by ``CAMLSegmentationLogic.startSegmentation``."""

    def __init__(self, job: Any, workDir: Path, inputNode: Any, outputNode: Any,
                 engineInput: Any, cropStart: Tuple[int, int, int], fullShape: Tuple[int, int, int],
                 outputPath: Path, uncertaintyPath: Optional[Path], requestedDevice: str = "auto") -> None:
        self.job = job
        #: The Volume the engine was given (cropped to the ROI); its output must be on this grid.
        self.engineInput = engineInput
        self.workDir = workDir
        self.inputNode = inputNode
        self.outputNode = outputNode
        self.cropStart = cropStart
        self.fullShape = fullShape
        self.outputPath = outputPath
        self.uncertaintyPath = uncertaintyPath
        self.requestedDevice = requestedDevice
        #: The device the engine reports it ran on ("cpu", "cuda", ...), known once the job is done.
        self.device = ""
        #: Why the Logic ended the run on its own (the scene was closed), or "".
        self.abandoned = ""
        self.fraction = 0.0
        self.status = _("Starting (device: {device})...").format(device=requestedDevice)
        self.log: List[str] = []

    @property
    def deviceMessage(self) -> str:
        """For the status line: where the engine ran, as it reported it."""
        return _("Ran on {device}.").format(device=self.device) if self.device else ""

    @property
    def running(self) -> bool:
        return self.job.running

    def poll(self) -> List[Dict[str, Any]]:
        """New events from the child; updates ``fraction``, ``status`` and ``log``."""
        events = self.job.poll()
        for event in events:
            fraction, status = describeEvent(event)
            if fraction is not None:
                self.fraction = fraction
            if status:
                self.status = status
            if event.get("event") == "log":
                self.log.append(str(event.get("message", "")))
            if event.get("event") == "done":
                self.device = str((event.get("info") or {}).get("device", "")) or self.device
        return events


def describeEvent(event: Dict[str, Any]) -> Tuple[Optional[float], str]:
    """What a progress-protocol event means for the panel: (progress fraction or None, status line)."""
    kind = event.get("event")
    if kind == "progress":
        total = event.get("total") or 0
        done = event.get("done") or 0
        fraction = min(max(done / total, 0.0), 1.0) if total else None
        stage = str(event.get("stage", "")).replace("_", " ")
        message = str(event.get("message", "") or "")
        text = f"{stage.capitalize()}: {done}/{total}" if total else stage.capitalize()
        return fraction, f"{text} {message}".strip()
    if kind == "done":
        return 1.0, "Segmentation computed, loading it..."
    if kind == "error":
        return None, f"Error: {event.get('message', '')}"
    if kind == "finished":
        state = event.get("state")
        return (1.0 if state == "done" else None), {"done": "Done.", "cancelled": "Cancelled."}.get(
            state, f"Failed: {event.get('message', '')}")
    return None, ""


#
# Active learning (Logic and Widget parts, mixed into the classes below)
#


class ActiveLearningRun:
    """One ``caml al next`` or ``caml al retrain`` child process followed by the panel."""

    def __init__(self, job: Any, kind: str, cohort: str) -> None:
        self.job = job
        self.kind = kind
        self.cohort = cohort
        self.fraction = 0.0
        self.status = f"Starting {kind}..."
        self.log: List[str] = []

    @property
    def running(self) -> bool:
        return self.job.running

    def poll(self) -> List[Dict[str, Any]]:
        events = self.job.poll()
        for event in events:
            fraction, status = describeEvent(event)
            if fraction is not None and event.get("stage") in (None, "train", "score", "retrain", "validate"):
                self.fraction = fraction
            if event.get("event") == "done":
                status = "Done."
            if status:
                self.status = status
            if event.get("event") == "log":
                self.log.append(str(event.get("message", "")))
        return events


class ActiveLearningLogicMixin:
    """The active-learning loop for the Logic: cohort, next case, accept, retrain, versions and their plot.

    The cohort's state and files are handled by ``CAMLSegmentationLib.activelearning`` (plain
    Python, in-process for quick steps); inference and training run as ``caml al`` children.
    """

    AL_STRATEGIES = ("disagreement", "entropy", "random", "first")

    def _alCommand(self, *args: str) -> List[str]:
        from CAMLSegmentationLib.slicer.jobs import caml_command

        prefix = getattr(self, "engineCommand", None)
        return [*prefix, "al", *args] if prefix else caml_command("al", *args)

    def alOpenCohort(self, folder: str, modelWeights: Optional[str] = None) -> Dict[str, Any]:
        """The cohort's status; a folder of images that is not a cohort yet becomes one, with
        ``modelWeights`` (e.g. the selected catalog model's file) as its first version."""
        from CAMLSegmentationLib.activelearning.cohort import Cohort, db_path

        if not db_path(folder).exists():
            Cohort.init(folder, model=Path(modelWeights) if modelWeights else None).close()
        with Cohort.open(folder) as cohort:
            return cohort.status()

    def alModelWeights(self, modelId: str) -> Optional[str]:
        """The verified weights file of a catalog model id ("" or None: none)."""
        if not modelId:
            return None
        from CAMLSegmentationLib.model.catalog import find_model, verify

        return str(verify(find_model(modelId)))

    def alStartNext(self, folder: str, strategy: str = "disagreement", device: str = "cpu",
                    uncertainty: bool = False) -> ActiveLearningRun:
        from CAMLSegmentationLib.slicer.jobs import Job

        if strategy not in self.AL_STRATEGIES:
            raise ValueError(f"strategy must be one of {self.AL_STRATEGIES}, not {strategy!r}")
        argv = self._alCommand("next", str(folder), "--strategy", strategy, "--device", device,
                               "--progress", "json", *(["--uncertainty"] if uncertainty else []))
        return ActiveLearningRun(Job(argv).start(), "next", str(folder))

    def alFinishNext(self, run: ActiveLearningRun, showIn3D: bool = True) -> Dict[str, Any]:
        """Load the chosen case, its prediction (and uncertainty map) into the scene; remember the case."""
        from CAMLSegmentationLib.activelearning import mrml as al_mrml

        state = run.job.wait()
        run.poll()
        if state != "done":
            raise RuntimeError(f"Next case {state}: {run.job.error}" if run.job.error else f"Next case {state}.")
        chosen = run.job.result
        loaded = al_mrml.load_case(self.scene, run.cohort, chosen["case"], prediction=chosen.get("prediction"),
                                   uncertainty=chosen.get("uncertainty"), show_3d=showIn3D)
        if loaded["uncertainty"] is not None:
            self.setupUncertaintyDisplay(loaded["uncertainty"])
        node = self.getParameterNode().node
        node.SetParameter("alCohort", str(run.cohort))
        node.SetParameter("alCase", chosen["case"])
        node.SetNodeReferenceID("ALVolume", loaded["volume"].GetID())
        node.SetNodeReferenceID("ALSegmentation", loaded["segmentation"].GetID())
        return dict(loaded, case=chosen["case"], score=chosen.get("score"), strategy=chosen.get("strategy"))

    def alNext(self, folder: str, strategy: str = "disagreement", device: str = "cpu", uncertainty: bool = False,
               timeout: Optional[float] = None, showIn3D: bool = True) -> Dict[str, Any]:
        """Blocking Next case (scripts and tests)."""
        run = self.alStartNext(folder, strategy, device, uncertainty)
        if run.job.wait(timeout) == "running":
            run.job.cancel()
            raise TimeoutError(f"caml al next did not finish within {timeout} s")
        return self.alFinishNext(run, showIn3D)

    def alAccept(self, folder: Optional[str] = None, caseId: Optional[str] = None, segmentationNode: Any = None,
                 volumeNode: Any = None, role: str = "auto") -> Dict[str, Any]:
        """Store the edited "Left atrium" segment as the case's label (on the image's grid) and accept it.

        Defaults: the case, volume and segmentation the last Next case loaded.
        """
        from CAMLSegmentationLib.activelearning import mrml as al_mrml

        node = self.getParameterNode().node
        folder = folder or node.GetParameter("alCohort")
        caseId = caseId or node.GetParameter("alCase")
        segmentationNode = segmentationNode or node.GetNodeReference("ALSegmentation")
        volumeNode = volumeNode or node.GetNodeReference("ALVolume")
        if not folder or not caseId or segmentationNode is None or volumeNode is None:
            raise ValueError("Load a case with Next case first.")
        result = al_mrml.accept_segment(folder, caseId, segmentationNode, volumeNode, role)
        node.SetParameter("alCase", "")
        return result

    def alStartRetrain(self, folder: str, device: str = "auto", iterations: Optional[int] = None,
                       promote: str = "auto", resume: bool = False) -> ActiveLearningRun:
        from CAMLSegmentationLib.slicer.jobs import Job

        args = ["retrain", str(folder), "--device", device, "--progress", "json", "--promote", promote]
        if iterations:
            args += ["--iterations", str(int(iterations))]
        if resume:
            args.append("--resume")
        return ActiveLearningRun(Job(self._alCommand(*args)).start(), "retrain", str(folder))

    def alCancel(self, run: ActiveLearningRun, grace: float = 30.0) -> None:
        """Stop a run: SIGTERM first (a retrain keeps a resumable checkpoint), then kill the process tree."""
        import os
        import signal

        if run.running and run.job.pid and hasattr(signal, "SIGTERM") and os.name != "nt":
            try:
                os.kill(run.job.pid, signal.SIGTERM)
            except OSError:
                pass
            if run.job.wait(grace) != "running":
                return
        run.job.cancel()
        run.job.wait(timeout=30)

    def alVersions(self, folder: str, rescore: bool = False, device: str = "cpu") -> List[Dict[str, Any]]:
        """Versions with ``val_dice`` (when made) and ``current_val_dice`` (on today's validation set)."""
        from CAMLSegmentationLib.activelearning.al_cli import version_table
        from CAMLSegmentationLib.activelearning.cohort import Cohort

        with Cohort.open(folder) as cohort:
            versions, _ = version_table(cohort, rescore, device)
        return versions

    def alUseVersion(self, folder: str, version: int) -> Dict[str, Any]:
        from CAMLSegmentationLib.activelearning.cohort import Cohort

        with Cohort.open(folder) as cohort:
            return cohort.use(int(version))

    def alUpdatePlot(self, folder: str, versions: Optional[List[Dict[str, Any]]] = None) -> Any:
        """The plot chart node of validation Dice per version (one point per version), refreshed in place."""
        from CAMLSegmentationLib.activelearning import mrml as al_mrml

        node = self.getParameterNode().node
        versions = self.alVersions(folder) if versions is None else versions
        chart = al_mrml.update_version_plot(self.scene, versions, node.GetNodeReference("ALVersionPlot"))
        node.SetNodeReferenceID("ALVersionPlot", chart.GetID())
        return chart


class ActiveLearningWidgetMixin:
    """The panel's "Active learning" section: forwards clicks to the Logic's ``al*`` methods."""

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
        hasCohort = bool(self._alFolder()) and (Path(self._alFolder()) / "caml-al" / "state.sqlite").is_file()
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
# CAMLSegmentationLogic
#


class CAMLSegmentationLogic(ActiveLearningLogicMixin, ScriptedLoadableModuleLogic):
    """All behaviour of the module; works on any MRML scene, with or without the Slicer GUI."""

    #: Python packages ``caml segment`` needs besides torch (import name -> pip requirement). h5py is
    #: not among them: only ``.h5`` input and training read HDF5, and they import it when they do.
    ENGINE_REQUIREMENTS = {"numpy": "numpy>=1.21", "scipy": "scipy>=1.7", "SimpleITK": "SimpleITK>=2.1",
                           "filelock": "filelock>=3.0"}
    #: Packages Slicer bundles: never reinstalled or upgraded from here.
    SLICER_BUNDLED = ("numpy", "SimpleITK", "requests")

    def __init__(self, scene: Any = None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.scene = scene if scene is not None else slicer.mrmlScene
        #: argv prefix that runs ``caml`` (replaceable, e.g. by a test's stand-in engine).
        self.engineCommand: Optional[List[str]] = None
        #: Runs started here and not finished or cancelled yet: closing the scene cancels them.
        self._activeRuns: List[SegmentationRun] = []
        self._sceneCloseObserver: Optional[int] = None

    # -- parameters --------------------------------------------------------------
    def getParameterNode(self) -> CAMLSegmentationParameters:
        """The module's singleton parameter node in ``self.scene``, with defaults filled in.

        Found as the scripted-module base class finds it: by singleton tag, with the
        ``ModuleName`` attribute that node selectors filter on (restored after a scene close).
        """
        node = self.scene.GetSingletonNode(MODULE_NAME, "vtkMRMLScriptedModuleNode")
        if node is None:
            node = slicer.vtkMRMLScriptedModuleNode()
            node.SetSingletonTag(MODULE_NAME)
            node.SetName(self.scene.GenerateUniqueName(MODULE_NAME))
            node.SetAttribute("ModuleName", MODULE_NAME)
            node = self.scene.AddNode(node)
        elif node.GetAttribute("ModuleName") != MODULE_NAME:
            node.SetAttribute("ModuleName", MODULE_NAME)
        params = CAMLSegmentationParameters(node)
        params.setDefaults()
        if not params.model:
            params.model = self.defaultModelId(self.availableModels())
        return params

    @staticmethod
    def applyQualityPreset(params: CAMLSegmentationParameters, quality: str) -> None:
        """Set quality and the test-time flips it starts with."""
        params.quality = quality
        params.tta = QUALITY_PRESETS[quality]["tta"]

    # -- models ------------------------------------------------------------------
    def availableModels(self, catalogs: Optional[Sequence[Tuple[Path, str]]] = None) -> List[Dict[str, Any]]:
        """Bundled then user-trained models, read by the engine's catalog code (the ``caml`` CLI's view).

        ``catalogs`` are ``(models.json, "bundled" | "user")`` pairs (default: the engine's
        bundled and user catalogs). Returns dicts with ``id``, ``label``, ``source`` and the
        engine's ``entry``. A catalog that cannot be read is skipped (logged), never fatal
        for the panel; an id listed twice keeps its first entry.
        """
        from CAMLSegmentationLib.model import catalog

        if catalogs is None:
            catalogs = [(catalog.bundled_catalog_path(), "bundled"), (catalog.user_catalog_path(), "user")]
        models: List[Dict[str, Any]] = []
        seen = set()
        for path, source in catalogs:
            try:
                entries = catalog.read_catalog(path, source)
            except catalog.CatalogError as exc:
                logging.warning("CAMLSegmentation: ignoring model catalog: %s", exc)
                continue
            for entry in entries:
                if entry.id in seen:
                    logging.warning("CAMLSegmentation: model id %r listed again in %s; ignored", entry.id, path)
                    continue
                seen.add(entry.id)
                label = f"{entry.id} (v{entry.version}, {source})"
                models.append({"id": entry.id, "label": label, "source": source, "entry": entry})
        return models

    @staticmethod
    def defaultModelId(models: Sequence[Dict[str, Any]]) -> str:
        """The engine's choice (``catalog.default_model``) among ``models``; "" when there is none."""
        from CAMLSegmentationLib.model import catalog

        entry = catalog.default_model([m["entry"] for m in models])
        return entry.id if entry is not None else ""

    # -- dependencies ------------------------------------------------------------
    @staticmethod
    def installedTorchVersion() -> Optional[str]:
        """The installed PyTorch's version, read from its package metadata (torch is not imported here)."""
        import importlib.metadata

        try:
            return importlib.metadata.version("torch")
        except importlib.metadata.PackageNotFoundError:
            return None

    @staticmethod
    def versionSatisfies(version: str, requirement: str = TORCH_REQUIREMENT) -> bool:
        """``version`` (e.g. ``2.13.0+cpu``) against a ``>=X.Y`` requirement, by its leading numbers."""
        import re

        def numbers(text: str) -> Tuple[int, ...]:
            return tuple(int(n) for n in re.findall(r"\d+", text.split("+")[0])[:3])

        minimum = requirement.strip()
        if not minimum.startswith(">="):
            raise ValueError(f"only '>=' requirements are supported, not {requirement!r}")
        have, need = numbers(version), numbers(minimum[2:])
        width = max(len(have), len(need))
        return have + (0,) * (width - len(have)) >= need + (0,) * (width - len(need))

    def torchAvailable(self) -> bool:
        """PyTorch is installed and recent enough (``TORCH_REQUIREMENT``)."""
        version = self.installedTorchVersion()
        return version is not None and self.versionSatisfies(version)

    def missingPackages(self, requirements: Optional[Dict[str, str]] = None) -> List[str]:
        """pip requirements of the engine whose package cannot be imported here."""
        import importlib.util

        requirements = self.ENGINE_REQUIREMENTS if requirements is None else requirements
        return [req for name, req in requirements.items() if importlib.util.find_spec(name) is None]

    def ensureDependencies(self, confirm: Callable[[str], bool],
                           installTorch: Optional[Callable[[], Any]] = None,
                           pipInstall: Optional[Callable[[List[str]], Any]] = None) -> bool:
        """Offer, with one confirmation, to install what is missing; True when all is there.

        torch comes from the PyTorch extension (which picks the CUDA build for the
        driver), at ``TORCH_REQUIREMENT`` or newer; the other packages from pip, never
        touching the ones Slicer bundles. Nothing is imported: torch is only ever loaded
        by the ``caml`` child process, so upgrading it here needs no restart.
        """
        version = self.installedTorchVersion()
        needTorch = not self.torchAvailable()
        packages = [p for p in self.missingPackages()
                    if not any(p.startswith(b) for b in self.SLICER_BUNDLED)]
        if not needTorch and not packages:
            return True
        torchLine = (_("PyTorch {requirement} (installed: {version}), through the PyTorch extension").format(
            requirement=TORCH_REQUIREMENT, version=version) if version else
            _("PyTorch (through the PyTorch extension)"))
        what = ([torchLine] if needTorch else []) + packages
        if not confirm(_("CAML Segmentation needs these Python packages, which will be downloaded and "
                         "installed now (this can take several minutes):") + "\n\n  " + "\n  ".join(what)):
            return False
        if needTorch:
            (installTorch or self._installTorchWithPyTorchExtension)()
        if packages:
            (pipInstall or self._pipInstall)(packages)
        return self.torchAvailable() and not [p for p in self.missingPackages()
                                              if not any(p.startswith(b) for b in self.SLICER_BUNDLED)]

    @staticmethod
    def _installTorchWithPyTorchExtension() -> None:
        try:
            import PyTorchUtils
        except ImportError as exc:
            raise RuntimeError(_("The PyTorch extension is required: install 'PyTorch' from the "
                                 "Extensions Manager and restart Slicer.")) from exc
        torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False,
                                                              torchVersionRequirement=TORCH_REQUIREMENT)
        if torch is None:
            raise RuntimeError(_("PyTorch could not be installed."))

    @staticmethod
    def _pipInstall(requirements: List[str]) -> None:
        """``slicer.packaging.pip_ensure`` (Slicer 5.12+; the user already confirmed), else ``pip_install``."""
        try:
            from slicer.packaging import pip_ensure
        except ImportError:
            pip_ensure = None
        if pip_ensure is not None:
            pip_ensure(requirements, prompt_install=False, requester=MODULE_NAME)
        else:
            slicer.util.pip_install(requirements)

    # -- the segmentation job ----------------------------------------------------
    def segmentCommand(self, inputPath: Path, outputPath: Path, params: CAMLSegmentationParameters,
                       device: str, uncertaintyPath: Optional[Path] = None) -> List[str]:
        """argv of the ``caml segment`` run the parameters describe."""
        from CAMLSegmentationLib.slicer.jobs import caml_command

        args = ["segment", str(inputPath), str(outputPath), "--device", device,
                "--protocol", QUALITY_PRESETS[params.quality]["protocol"], "--progress", "json"]
        if params.model:
            args += ["--model", params.model]
        args.append("--tta" if params.tta else "--no-tta")
        if params.largestComponent is not None:
            args.append("--lcc" if params.largestComponent else "--no-lcc")
        if uncertaintyPath is not None:
            args += ["--uncertainty", str(uncertaintyPath)]
        prefix = self.engineCommand
        return [*prefix, *args] if prefix else caml_command(*args)

    @staticmethod
    def makeWorkDirectory() -> Path:
        """A fresh folder for one job's files: under Slicer's temporary folder in the application."""
        if IN_SLICER_APP:
            return Path(slicer.util.tempDirectory("CAMLSegmentation-"))
        return Path(tempfile.mkdtemp(prefix="CAMLSegmentation-"))

    def startSegmentation(self, params: CAMLSegmentationParameters) -> SegmentationRun:
        """Write the input (cropped to the ROI), start ``caml segment`` in the background, return the run.

        The device choice goes to the engine as is (``auto`` included): the child
        process picks CUDA or the CPU and reports which it used, so Slicer's own
        process never imports torch.
        """
        from CAMLSegmentationLib.slicer import mrml_bridge
        from CAMLSegmentationLib.slicer.jobs import Job

        inputNode = params.inputVolume
        if inputNode is None or inputNode.GetImageData() is None:
            raise ValueError(_("Select an input volume first."))
        volume = mrml_bridge.volume_from_node(inputNode)
        start, stop = (0, 0, 0), volume.shape
        if params.roi is not None:
            start, stop = mrml_bridge.roi_index_bounds(params.roi, inputNode)
            volume = mrml_bridge.crop_volume(volume, start, stop)

        workDir = self.makeWorkDirectory()
        try:
            inputPath = workDir / "input.nrrd"
            writeVolume(volume, inputPath)
            outputPath = workDir / "segmentation.nrrd"
            uncertaintyPath = workDir / "uncertainty.nrrd" if params.uncertainty else None
            argv = self.segmentCommand(inputPath, outputPath, params, params.device, uncertaintyPath)
            outputs = [outputPath] + ([uncertaintyPath] if uncertaintyPath else [])
            job = Job(argv, outputs=outputs, cwd=workDir).start()
        except Exception:
            shutil.rmtree(workDir, ignore_errors=True)
            raise
        fullShape = tuple(int(d) for d in inputNode.GetImageData().GetDimensions())
        run = SegmentationRun(job, workDir, inputNode, params.outputSegmentation, volume, start, fullShape,
                              outputPath, uncertaintyPath, params.device)
        self._track(run)
        return run

    # -- runs and the scene --------------------------------------------------------
    def _track(self, run: SegmentationRun) -> None:
        self._activeRuns.append(run)
        if self._sceneCloseObserver is None:
            self._sceneCloseObserver = self.scene.AddObserver(slicer.vtkMRMLScene.StartCloseEvent,
                                                              self._onSceneStartClose)

    def _forget(self, run: SegmentationRun) -> None:
        if run in self._activeRuns:
            self._activeRuns.remove(run)
        if not self._activeRuns and self._sceneCloseObserver is not None:
            self.scene.RemoveObserver(self._sceneCloseObserver)
            self._sceneCloseObserver = None

    def _onSceneStartClose(self, caller: Any = None, event: Any = None) -> None:
        """The scene is being closed: a result must not land in the next, empty scene. Cancel every run."""
        for run in list(self._activeRuns):
            run.abandoned = _("the scene was closed while it ran")
            self.cancel(run)

    def inputStillInScene(self, run: SegmentationRun) -> bool:
        node = run.inputNode
        return (node is not None and node.GetScene() is self.scene
                and self.scene.GetNodeByID(node.GetID()) is node)

    def cancel(self, run: SegmentationRun) -> None:
        """Kill the job and its children; nothing is added to the scene."""
        run.job.cancel()
        run.job.wait(timeout=30)
        shutil.rmtree(run.workDir, ignore_errors=True)
        self._forget(run)

    def finishSegmentation(self, run: SegmentationRun,
                           params: Optional[CAMLSegmentationParameters] = None) -> Any:
        """Turn a finished run into the "Left atrium" segment (and the uncertainty volume); returns the node.

        Raises ``RuntimeError`` if the job failed or was cancelled, or if its input
        volume is no longer in the scene (closed or deleted meanwhile); the scene is
        then unchanged.
        """
        from CAMLSegmentationLib.io.volume import read_image
        from CAMLSegmentationLib.slicer import mrml_bridge

        try:
            state = run.job.wait()
            run.poll()
            if run.abandoned:
                raise RuntimeError(_("Segmentation cancelled: {why}.").format(why=run.abandoned))
            if state != "done":
                raise RuntimeError(f"Segmentation {state}: {run.job.error}" if run.job.error
                                   else f"Segmentation {state}.")
            if not self.inputStillInScene(run):
                raise RuntimeError(_("The input volume is no longer in the scene: the result was discarded."))
            if run.outputNode is not None and self.scene.GetNodeByID(run.outputNode.GetID()) is not run.outputNode:
                run.outputNode = None  # the chosen output node was deleted meanwhile: make a new one
            result = read_image(run.outputPath)
            if not result.same_geometry(run.engineInput, tol=1e-3):
                raise RuntimeError(f"the engine's mask ({result.shape} voxels) is not on the input's grid "
                                   f"({run.engineInput.shape} voxels)")
            mask = mrml_bridge.paste_mask((result.array > 0.5).astype("uint8"), run.fullShape, run.cropStart)
            segNode, _segmentId = mrml_bridge.mask_to_segmentation_node(
                mask, run.inputNode, self.scene, segmentation_node=run.outputNode)
            if run.outputNode is None:
                segNode.SetName(self.scene.GenerateUniqueName(f"{run.inputNode.GetName()} left atrium"))
            if params is not None:
                params.outputSegmentation = segNode
            if run.uncertaintyPath is not None and run.uncertaintyPath.exists():
                uncertaintyNode = self.loadUncertainty(run, read_image(run.uncertaintyPath),
                                                       params.uncertaintyVolume if params else None)
                if params is not None:
                    params.uncertaintyVolume = uncertaintyNode
            return segNode
        finally:
            shutil.rmtree(run.workDir, ignore_errors=True)
            self._forget(run)

    def loadUncertainty(self, run: SegmentationRun, uncertainty: Any, node: Any = None) -> Any:
        """Put the uncertainty map (on the cropped grid) into a volume node on the input's full grid."""
        import numpy as np
        from CAMLSegmentationLib.slicer import mrml_bridge

        if not uncertainty.same_geometry(run.engineInput, tol=1e-3):
            raise RuntimeError("the engine's uncertainty map is not on the input's grid")

        full = mrml_bridge.volume_from_node(run.inputNode)
        values = np.zeros(run.fullShape, dtype=np.float32)
        sl = tuple(slice(s, s + n) for s, n in zip(run.cropStart, uncertainty.shape))
        values[sl] = uncertainty.array
        full.array = values
        if node is None:
            node = mrml_bridge.volume_to_node(
                full, self.scene, self.scene.GenerateUniqueName(f"{run.inputNode.GetName()} uncertainty"))
        else:
            mrml_bridge.volume_to_node(full, self.scene, node=node)
        node.SetAndObserveTransformNodeID(run.inputNode.GetTransformNodeID())
        self.setupUncertaintyDisplay(node)
        return node

    @staticmethod
    def setupUncertaintyDisplay(node: Any) -> None:
        """Show the map as a 0..1 heat overlay (the Widget puts it in the slice foreground)."""
        if node.GetDisplayNode() is None:
            node.CreateDefaultDisplayNodes()
        display = node.GetDisplayNode()
        display.SetAutoWindowLevel(False)
        display.SetWindowLevelMinMax(0.0, 1.0)
        scene = node.GetScene()
        for colorId in ("vtkMRMLColorTableNodeFileColdToHotRainbow.txt", "vtkMRMLColorTableNodeRed"):
            if scene is not None and scene.GetNodeByID(colorId) is not None:
                display.SetAndObserveColorNodeID(colorId)
                break

    def segment(self, params: CAMLSegmentationParameters,
                progress: Optional[Callable[[SegmentationRun], None]] = None,
                timeout: Optional[float] = None) -> Any:
        """Blocking convenience for scripts and tests: start, follow, finish; returns the segment's node.

        ``progress(run)`` is called about ten times a second while waiting (the self-test
        passes one that processes Qt events, so Slicer stays responsive).
        """
        run = self.startSegmentation(params)
        deadline = None if timeout is None else time.time() + timeout
        while run.running:
            run.poll()
            if progress is not None:
                progress(run)
            if deadline is not None and time.time() > deadline:
                self.cancel(run)
                raise TimeoutError(f"segmentation did not finish within {timeout} s")
            run.job.wait(0.1)
        return self.finishSegmentation(run, params)

    # -- correction --------------------------------------------------------------
    # -- sample data ---------------------------------------------------------------
    def loadSamplePhantom(self, name: str = SAMPLE_NAME) -> Any:
        """Add the synthetic MRI-like phantom (the README picture's image) to the scene as a volume node."""
        from CAMLSegmentationLib.cli.demo import PHANTOM_SEED
        from CAMLSegmentationLib.io.phantom import mri_phantom
        from CAMLSegmentationLib.slicer import mrml_bridge

        volume, _label = mri_phantom(seed=PHANTOM_SEED)
        node = mrml_bridge.volume_to_node(volume, self.scene, self.scene.GenerateUniqueName(name))
        node.SetAttribute("CAMLSegmentation.Synthetic", "phantom: not patient data")
        if node.GetDisplayNode() is None:
            node.CreateDefaultDisplayNodes()
        return node

    def prepareCorrection(self, segmentationNode: Any, volumeNode: Any) -> Any:
        """A Segment Editor parameter node set up to edit the left-atrium segment on the input volume."""
        from CAMLSegmentationLib.slicer.mrml_bridge import LEFT_ATRIUM_NAME

        if segmentationNode is None:
            raise ValueError("Segment first: there is no segmentation to correct.")
        editorNode = self.scene.GetSingletonNode("SegmentEditor", "vtkMRMLSegmentEditorNode")
        if editorNode is None:
            editorNode = slicer.vtkMRMLSegmentEditorNode()
            editorNode.SetSingletonTag("SegmentEditor")
            editorNode = self.scene.AddNode(editorNode)
        editorNode.SetAndObserveSegmentationNode(segmentationNode)
        if volumeNode is not None:
            editorNode.SetAndObserveSourceVolumeNode(volumeNode)
        segmentId = segmentationNode.GetSegmentation().GetSegmentIdBySegmentName(LEFT_ATRIUM_NAME)
        if segmentId:
            editorNode.SetSelectedSegmentID(segmentId)
        return editorNode


def writeVolume(volume: Any, path: Path) -> None:
    """Write an engine ``Volume`` (LPS geometry) for ``caml`` to read, with SimpleITK like the engine."""
    import numpy as np
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(volume.array).transpose(2, 1, 0)))
    image.SetSpacing([float(s) for s in volume.spacing])
    image.SetOrigin([float(o) for o in volume.origin])
    image.SetDirection([float(d) for d in np.asarray(volume.direction, dtype=float).ravel()])
    sitk.WriteImage(image, str(path), True)


def makeTestVolume(scene: Any, shape: Tuple[int, int, int] = (48, 40, 32)) -> Any:
    """A synthetic MRI-like volume: a bright ellipsoid ("atrium") in noise, oblique geometry."""
    import numpy as np
    from CAMLSegmentationLib.io.volume import Volume
    from CAMLSegmentationLib.slicer import mrml_bridge

    rng = np.random.default_rng(7)
    i, j, k = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    centre = np.array(shape, dtype=np.float32) / 2
    inside = (((i - centre[0]) / (shape[0] / 4)) ** 2 + ((j - centre[1]) / (shape[1] / 5)) ** 2
              + ((k - centre[2]) / (shape[2] / 4)) ** 2) <= 1.0
    array = (rng.normal(100.0, 10.0, size=shape) + 300.0 * inside).astype(np.float32)
    angle = np.radians(20.0)
    direction = np.array([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0],
                          [0.0, 0.0, 1.0]])
    volume = Volume(array=array, spacing=(0.9, 0.9, 1.2), origin=(-20.0, 15.0, -30.0), direction=direction)
    return mrml_bridge.volume_to_node(volume, scene, "CAMLTestVolume")


#
# CAMLSegmentationWidget
#


class CAMLSegmentationWidget(ActiveLearningWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: binds the .ui to the parameter node, forwards clicks to the Logic, shows progress."""

    def __init__(self, parent: Any = None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic: Optional[CAMLSegmentationLogic] = None
        self._params: Optional[CAMLSegmentationParameters] = None
        self._updatingGUI = False
        self._run: Optional[SegmentationRun] = None
        self._timer = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(str(moduleResourcePath("UI/CAMLSegmentation.ui")))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = CAMLSegmentationLogic()

        self.ui.deviceSelector.clear()
        for label, value in ((_("Auto (GPU if available)"), "auto"), (_("CPU"), "cpu"), (_("GPU (CUDA)"), "cuda")):
            self.ui.deviceSelector.addItem(label, value)
        self.ui.qualitySelector.clear()
        for label, value in ((_("Standard (as scored in the model card)"), "standard"),
                             (_("Fast preview (quicker, rougher)"), "fast")):
            self.ui.qualitySelector.addItem(label, value)
        self._fillModels()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        ui = self.ui
        for selector in (ui.inputVolumeSelector, ui.roiSelector, ui.outputSegmentationSelector):
            selector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateParameterNodeFromGUI)
        for combo in (self.ui.modelSelector, self.ui.deviceSelector):
            combo.connect("currentIndexChanged(int)", self.updateParameterNodeFromGUI)
        self.ui.qualitySelector.connect("currentIndexChanged(int)", self.onQualityChanged)
        for box in (self.ui.ttaCheckBox, self.ui.uncertaintyCheckBox):
            box.connect("toggled(bool)", self.updateParameterNodeFromGUI)
        # Three states: partly checked = the model's own choice, stored with its weights.
        self.ui.lccCheckBox.connect("stateChanged(int)", self.updateParameterNodeFromGUI)
        self.ui.segmentButton.connect("clicked(bool)", self.onSegmentButton)
        self.ui.correctButton.connect("clicked(bool)", self.onCorrectButton)

        self._timer = qt.QTimer()
        self._timer.setInterval(100)
        self._timer.connect("timeout()", self.onTimer)
        self.setupActiveLearning()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Called when the application closes or the module is reloaded: stop the timer, end and forget the run."""
        if self._timer is not None:
            self._timer.stop()
        if self._run is not None and self._run.running:
            self.logic.cancel(self._run)
        self._run = None
        self.cleanupActiveLearning()
        self.removeObservers()

    def enter(self) -> None:
        self._fillModels()
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._params is not None:
            self.removeObserver(self._params.node, vtk.vtkCommand.ModifiedEvent,
                                self.updateGUIFromParameterNode)

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

    def updateGUIFromParameterNode(self, caller: Any = None, event: Any = None) -> None:
        p = self._params
        if p is None or self._updatingGUI:
            return
        self._updatingGUI = True
        try:
            self.ui.inputVolumeSelector.setCurrentNode(p.inputVolume)
            self.ui.roiSelector.setCurrentNode(p.roi)
            self.ui.outputSegmentationSelector.setCurrentNode(p.outputSegmentation)
            self.ui.modelSelector.setCurrentIndex(self.ui.modelSelector.findData(p.model))
            self.ui.deviceSelector.setCurrentIndex(self.ui.deviceSelector.findData(p.device))
            self.ui.qualitySelector.setCurrentIndex(self.ui.qualitySelector.findData(p.quality))
            self.ui.ttaCheckBox.checked = p.tta
            self.ui.uncertaintyCheckBox.checked = p.uncertainty
            self.ui.lccCheckBox.checkState = {None: qt.Qt.PartiallyChecked, True: qt.Qt.Checked,
                                              False: qt.Qt.Unchecked}[p.largestComponent]
            running = self._run is not None and self._run.running
            self.ui.segmentButton.text = _("Cancel") if running else _("Segment")
            self.ui.segmentButton.enabled = running or (p.inputVolume is not None and bool(p.model))
            self.ui.segmentButton.toolTip = (_("Stop the running segmentation") if running else
                                             _("Segment the left atrium") if p.inputVolume is not None
                                             else _("Select an input volume"))
            self.ui.correctButton.enabled = not running and p.outputSegmentation is not None
            for widget in (self.ui.inputsCollapsibleButton, self.ui.advancedCollapsibleButton,
                           self.ui.outputsCollapsibleButton):
                widget.enabled = not running
        finally:
            self._updatingGUI = False

    def updateParameterNodeFromGUI(self, *args: Any) -> None:
        p = self._params
        if p is None or self._updatingGUI:
            return
        wasModifying = p.node.StartModify()
        try:
            p.inputVolume = self.ui.inputVolumeSelector.currentNode()
            p.roi = self.ui.roiSelector.currentNode()
            p.outputSegmentation = self.ui.outputSegmentationSelector.currentNode()
            if self.ui.modelSelector.currentIndex >= 0:
                p.model = self.ui.modelSelector.currentData
            p.device = self.ui.deviceSelector.currentData or "auto"
            p.tta = self.ui.ttaCheckBox.checked
            p.uncertainty = self.ui.uncertaintyCheckBox.checked
            state = self.ui.lccCheckBox.checkState
            p.largestComponent = (None if state == qt.Qt.PartiallyChecked else state == qt.Qt.Checked)
        finally:
            p.node.EndModify(wasModifying)

    def onQualityChanged(self, index: int) -> None:
        if self._params is None or self._updatingGUI or index < 0:
            return
        self.logic.applyQualityPreset(self._params, self.ui.qualitySelector.itemData(index))

    def onSegmentButton(self) -> None:
        if self._run is not None and self._run.running:
            self.logic.cancel(self._run)
            return  # the timer sees the job end and resets the panel
        # The installation dialog first, without a wait cursor over it.
        with slicer.util.tryWithErrorDisplay(_("Failed to install the required Python packages.")):
            if not self.logic.ensureDependencies(slicer.util.confirmOkCancelDisplay):
                self.ui.statusLabel.text = _("Missing Python packages: segmentation not started.")
                return
        with slicer.util.tryWithErrorDisplay(_("Failed to start the segmentation."), waitCursor=True):
            self._run = self.logic.startSegmentation(self._params)
            self.ui.progressBar.value = 0
            self.ui.statusLabel.text = self._run.status
            self._timer.start()
            self.updateGUIFromParameterNode()

    def onTimer(self) -> None:
        run = self._run
        if not runEndedAtTick(run, self._timer, self.ui.progressBar, self.ui.statusLabel):
            return
        self._run = None
        if run.job.state == "cancelled" or run.abandoned:
            self.logic.cancel(run)  # removes its files, forgets it
            self.ui.statusLabel.text = (_("Cancelled ({why}): nothing was added to the scene.").format(
                why=run.abandoned) if run.abandoned else _("Cancelled: nothing was added to the scene."))
            self.ui.progressBar.value = 0
        else:
            with slicer.util.tryWithErrorDisplay(_("Segmentation failed."), waitCursor=True):
                segNode = self.logic.finishSegmentation(run, self._params)
                self.ui.statusLabel.text = _("Done.") + " " + run.deviceMessage
                slicer.util.setSliceViewerLayers(background=run.inputNode, fit=True)
                if self._params.uncertaintyVolume is not None and self._params.uncertainty:
                    slicer.util.setSliceViewerLayers(foreground=self._params.uncertaintyVolume,
                                                     foregroundOpacity=0.4)
                segNode.GetDisplayNode().SetVisibility(True)
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


#
# CAMLSegmentationTest
#


class CAMLSegmentationTest(ScriptedLoadableModuleTest):
    """Self-test: Developer mode > Reload and Test, and CTest (``slicer_add_python_unittest``).

    It segments a generated volume with the bundled model on the CPU through the
    same ``caml segment`` child process the panel uses. Where PyTorch or the
    engine's packages are missing it does not pass quietly: it reports a skip
    with the reason (``unittest.SkipTest``, logged too).
    """

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_SegmentGeneratedVolume()

    def test_SegmentGeneratedVolume(self) -> None:
        import unittest

        self.delayDisplay("Generating a test volume")
        logic = CAMLSegmentationLogic()
        params = logic.getParameterNode()
        missing = ([f"PyTorch {TORCH_REQUIREMENT}"] if not logic.torchAvailable() else []) + logic.missingPackages()
        if not params.model:
            missing.append("a model in the catalog")
        if missing:
            reason = "CAMLSegmentation self-test not run, missing: " + ", ".join(missing)
            logging.warning(reason)
            self.delayDisplay(reason)
            raise unittest.SkipTest(reason)
        volumeNode = makeTestVolume(slicer.mrmlScene)
        params.inputVolume = volumeNode
        logic.applyQualityPreset(params, "fast")
        params.device = "cpu"

        self.delayDisplay("Segmenting (CPU)")
        pumpEvents = (lambda run: slicer.app.processEvents()) if IN_SLICER_APP else None
        segNode = logic.segment(params, progress=pumpEvents, timeout=600)

        from CAMLSegmentationLib.slicer import mrml_bridge

        segmentId = segNode.GetSegmentation().GetSegmentIdBySegmentName(mrml_bridge.LEFT_ATRIUM_NAME)
        self.assertTrue(segmentId)
        self.assertIs(segNode.GetNodeReference(segNode.GetReferenceImageGeometryReferenceRole()), volumeNode)
        mask = mrml_bridge.segment_to_mask(segNode, segmentId, volumeNode)
        self.assertEqual(mask.shape, tuple(volumeNode.GetImageData().GetDimensions()))
        self.assertIs(params.outputSegmentation, segNode)
        self.delayDisplay("Test passed")
