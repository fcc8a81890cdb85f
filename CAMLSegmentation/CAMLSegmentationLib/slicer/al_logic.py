"""The active-learning loop for the Logic (mixed into ``CAMLSegmentationLogic``): cohort, next
case, accept, retrain, versions and their plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

from .framework import _
from .runs import ActiveLearningRun

#: The parameter node's references to the nodes a Next case loaded (removed together after Accept).
AL_CASE_ROLES = ("ALVolume", "ALSegmentation", "ALUncertainty")


class ActiveLearningLogicMixin:
    """The active-learning loop for the Logic: cohort, next case, accept, retrain, versions and their plot.

    Slicer's process never imports torch. What reads the cohort (status, versions, the resumable
    retrain) and Accept (a label file and one SQLite transaction) run here on
    ``CAMLSegmentationLib.activelearning`` (numpy, SQLite); everything that loads a model or
    changes the model versions (``caml al init``, ``next``, ``retrain``, ``use``) runs as a
    ``caml al`` child process, the same commands a user types.
    """

    # -- children ----------------------------------------------------------------------------
    def _alCommand(self, *args: str) -> List[str]:
        from CAMLSegmentationLib.slicer.jobs import caml_command

        prefix = getattr(self, "engineCommand", None)
        return [*prefix, "al", *args] if prefix else caml_command("al", *args)

    def _alStart(self, kind: str, folder: str, *args: str) -> ActiveLearningRun:
        from CAMLSegmentationLib.slicer.jobs import Job

        run = ActiveLearningRun(Job(self._alCommand(*args)).start(), kind, str(folder))
        self._alTrack(run)
        return run

    def _alTrack(self, run: ActiveLearningRun) -> None:
        """Follow the scene while the run is not handled: closing it abandons a Next (its case must not
        land in the next scene) and tells any other run not to add nodes to the new scene."""
        import slicer

        runs = self.__dict__.setdefault("_alRuns", [])
        runs.append(run)
        if self.__dict__.get("_alSceneObserver") is None:
            self._alSceneObserver = self.scene.AddObserver(slicer.vtkMRMLScene.StartCloseEvent,
                                                           self._alOnSceneStartClose)

    def alForget(self, run: ActiveLearningRun) -> None:
        """The Widget handled the run's end: stop following the scene for it."""
        runs = self.__dict__.get("_alRuns", [])
        if run in runs:
            runs.remove(run)
        if not runs and self.__dict__.get("_alSceneObserver") is not None:
            self.scene.RemoveObserver(self._alSceneObserver)
            self._alSceneObserver = None

    def _alOnSceneStartClose(self, caller: Any = None, event: Any = None) -> None:
        for run in list(self.__dict__.get("_alRuns", [])):
            run.sceneClosed = True
            if run.kind == "next":
                run.abandoned = _("the scene was closed while it ran")
                run.job.cancel()

    def alCancel(self, run: ActiveLearningRun) -> None:
        """Stop a run through ``Job.cancel()``: the child is asked to stop (a retrain keeps a resumable
        checkpoint), killed after the grace period; the job ends as ``cancelled``. Never blocks."""
        run.job.cancel()

    @staticmethod
    def alResult(run: ActiveLearningRun) -> Dict[str, Any]:
        """What an ended run produced (the ``done`` event's outputs, or the ``--json`` object);
        ``RuntimeError`` with the child's one-line error when it did not finish."""
        state = run.job.wait()
        run.poll()
        if run.abandoned:
            raise RuntimeError(_("Cancelled ({why}).").format(why=run.abandoned))
        if state != "done":
            raise RuntimeError(run.job.error or state)
        return run.result()

    # -- the cohort ----------------------------------------------------------------------------
    def alFolderKind(self, folder: str) -> str:
        """``cohort`` (it has the state database), ``images`` (a folder of images, not a cohort yet)
        or ``none``; reads only the file system."""
        if not folder or not Path(folder).is_dir():
            return "none"
        if self.alIsCohort(folder):
            return "cohort"
        return "images" if (Path(folder) / "images").is_dir() else "none"

    def alOpenCohort(self, folder: str) -> Dict[str, Any]:
        """The cohort's status, read without changing anything (``caml al status --json``'s dict).

        A folder that is not a cohort is refused: it becomes one only through ``alStartCreate``.
        """
        from CAMLSegmentationLib.activelearning.cohort import Cohort, CohortError

        if self.alFolderKind(folder) != "cohort":
            raise CohortError(_("{folder} is not a cohort yet: create it first.").format(folder=folder))
        with Cohort.open(folder, read_only=True) as cohort:
            return cohort.status()

    def alCreateQuestion(self, folder: str, modelId: str) -> str:
        """What the user confirms before a folder becomes a cohort: where the state goes and what is copied."""
        from CAMLSegmentationLib.model.catalog import CatalogError, find_model

        images = [p for p in (Path(folder) / "images").iterdir() if p.is_file()] if Path(folder).is_dir() else []
        try:
            entry = find_model(modelId)
            size = entry.path.stat().st_size / 1e6 if entry.path.is_file() else 0.0
            model = _("a copy of the model {title} ({size:.0f} MB) as version 1").format(
                title=entry.title or entry.id, size=size)
        except CatalogError:
            model = _("the engine's default model as version 1")
        return _("Make {folder} an active-learning cohort?\n\n{n} files in images/. CAML keeps the cohort's "
                 "state in caml-al/ inside the folder, with {model}; accepted labels go to labels/.").format(
            folder=folder, n=len(images), model=model)

    def alStartCreate(self, folder: str, modelId: str = "") -> ActiveLearningRun:
        """``caml al init`` in a child (it reads the model's weights, which needs torch)."""
        if self.alFolderKind(folder) != "images":
            raise ValueError(_("{folder} holds no images/ folder, or is already a cohort.").format(folder=folder))
        return self._alStart("init", folder, "init", str(folder), "--json", *(["--model", modelId] if modelId else []))

    @staticmethod
    def alResumableJob(folder: str) -> Optional[Dict[str, Any]]:
        """The retrain job ``caml al retrain --resume`` would continue (interrupted, cancelled or failed,
        from the current version), or None."""
        from CAMLSegmentationLib.activelearning.cohort import Cohort, CohortError
        from CAMLSegmentationLib.activelearning.retrain import resumable_job

        try:
            with Cohort.open(folder, read_only=True) as cohort:
                return resumable_job(cohort)
        except CohortError:
            return None

    @staticmethod
    def alCorrectionSummary(status: Dict[str, Any], last: int = 3) -> str:
        """One line on how much the user corrected the latest accepted cases (``status["correction"]``:
        Dice between the model's proposal and the accepted label, voxels changed, seconds); "" when the
        cohort records none (an engine without correction effort, or nothing accepted yet)."""
        records = [r for r in (status.get("correction") or []) if isinstance(r, dict)]
        if not records:
            return ""
        records = sorted(records, key=lambda r: r.get("accept_order") or 0)[-last:]
        parts = []
        for r in reversed(records):
            dice = r.get("dice")
            seconds = r.get("seconds")
            if dice is None:  # accepted without a proposal served (or its file unreadable): nothing to compare
                part = _("{case}: no proposal to compare").format(case=r.get("case", "?"))
            else:
                part = _("{case}: Dice {dice:.3f}, {voxels} voxels changed").format(
                    case=r.get("case", "?"), dice=float(dice), voxels=r.get("voxels_changed", "?"))
            if seconds is not None:
                part += _(", {seconds:.0f} s").format(seconds=float(seconds))
            parts.append(part)
        return _("Correction effort (latest first): {cases}").format(cases="; ".join(parts))

    # -- next case -----------------------------------------------------------------------------
    def alStartNext(self, folder: str, strategy: str = "disagreement", device: str = "cpu",
                    uncertainty: bool = False) -> ActiveLearningRun:
        from CAMLSegmentationLib.activelearning.strategies import STRATEGIES

        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, not {strategy!r}")
        return self._alStart("next", folder, "next", str(folder), "--strategy", strategy, "--device", device,
                             "--progress", "json", *(["--uncertainty"] if uncertainty else []))

    def alFinishNext(self, run: ActiveLearningRun, showIn3D: bool = True) -> Dict[str, Any]:
        """Load the chosen case, its prediction (and uncertainty map) into the scene; remember the case
        and the cohort it came from. Refused (scene unchanged) when the scene was closed meanwhile."""
        from CAMLSegmentationLib.slicer import al_mrml

        try:
            chosen = self.alResult(run)
        finally:
            self.alForget(run)
        loaded = al_mrml.load_case(self.scene, run.cohort, chosen["case"], prediction=chosen.get("prediction"),
                                   uncertainty=chosen.get("uncertainty"), show_3d=showIn3D)
        if loaded["uncertainty"] is not None:
            self.setupUncertaintyDisplay(loaded["uncertainty"])
        node = self.getParameterNode().node
        node.SetParameter("alCohort", str(run.cohort))
        node.SetParameter("alCase", chosen["case"])
        for role, key in zip(AL_CASE_ROLES, ("volume", "segmentation", "uncertainty")):
            node.SetNodeReferenceID(role, loaded[key].GetID() if loaded[key] is not None else None)
        return dict(loaded, case=chosen["case"], score=chosen.get("score"), strategy=chosen.get("strategy"))

    def alNext(self, folder: str, strategy: str = "disagreement", device: str = "cpu", uncertainty: bool = False,
               timeout: Optional[float] = None, showIn3D: bool = True) -> Dict[str, Any]:
        """Blocking Next case (scripts and tests)."""
        run = self.alStartNext(folder, strategy, device, uncertainty)
        if run.job.wait(timeout) == "running":
            run.job.cancel(grace_seconds=0)
            self.alForget(run)
            raise TimeoutError(f"caml al next did not finish within {timeout} s")
        return self.alFinishNext(run, showIn3D)

    # -- accept ----------------------------------------------------------------------------------
    def alAccept(self, folder: Optional[str] = None, caseId: Optional[str] = None, segmentationNode: Any = None,
                 volumeNode: Any = None, role: str = "auto") -> Dict[str, Any]:
        """Store the edited "Left atrium" segment as the case's label (on the image's grid) and accept it.

        Defaults: the case, volume and segmentation the last Next case loaded, into the cohort that
        case came from (whatever folder the panel shows now).
        """
        from CAMLSegmentationLib.slicer import al_mrml

        node = self.getParameterNode().node
        folder = folder or node.GetParameter("alCohort")
        caseId = caseId or node.GetParameter("alCase")
        segmentationNode = segmentationNode or node.GetNodeReference("ALSegmentation")
        volumeNode = volumeNode or node.GetNodeReference("ALVolume")
        if not folder or not caseId or segmentationNode is None or volumeNode is None:
            raise ValueError(_("Load a case with Next case first."))
        result = al_mrml.accept_segment(folder, caseId, segmentationNode, volumeNode, role)
        node.SetParameter("alCase", "")
        return dict(result, cohort=str(folder))

    def alCaseNodes(self) -> List[Any]:
        """The nodes the last Next case added (image, segmentation, disagreement map) still in the scene."""
        node = self.getParameterNode().node
        return [n for n in (node.GetNodeReference(role) for role in AL_CASE_ROLES) if n is not None]

    def alRemoveCaseNodes(self) -> int:
        """Remove the last Next case's nodes with their display and storage nodes; returns how many
        data nodes went (so Next after Next does not pile cases up in the scene)."""
        nodes = self.alCaseNodes()
        for data in nodes:
            owned = []
            if hasattr(data, "GetNumberOfDisplayNodes"):
                owned += [data.GetNthDisplayNode(i) for i in range(data.GetNumberOfDisplayNodes())]
            if hasattr(data, "GetNumberOfStorageNodes"):
                owned += [data.GetNthStorageNode(i) for i in range(data.GetNumberOfStorageNodes())]
            self.scene.RemoveNode(data)
            for extra in owned:
                if extra is not None and extra.GetScene() is self.scene:
                    self.scene.RemoveNode(extra)
        node = self.getParameterNode().node
        for role in AL_CASE_ROLES:
            node.SetNodeReferenceID(role, None)
        return len(nodes)

    # -- retrain ---------------------------------------------------------------------------------
    def alStartRetrain(self, folder: str, device: str = "auto", iterations: Optional[int] = None,
                       promote: str = "auto", resume: bool = False) -> ActiveLearningRun:
        args = ["retrain", str(folder), "--device", device, "--progress", "json"]
        if resume:
            args.append("--resume")
        else:
            args += ["--promote", promote]
            if iterations:
                args += ["--iterations", str(int(iterations))]
        return self._alStart("retrain", folder, *args)

    # -- versions --------------------------------------------------------------------------------
    def alVersions(self, folder: str) -> List[Dict[str, Any]]:
        """Versions with ``val_dice`` (when made) and ``current_val_dice`` (cached scores on today's
        validation set), read without scoring anything."""
        from CAMLSegmentationLib.activelearning.cohort import Cohort
        from CAMLSegmentationLib.activelearning.retrain import version_table

        with Cohort.open(folder, read_only=True) as cohort:
            versions, _scores = version_table(cohort, False, "cpu")
        return versions

    def alStartUse(self, folder: str, version: int) -> ActiveLearningRun:
        """``caml al use`` in a child: the engine also updates what the model catalog lists."""
        return self._alStart("use", folder, "use", str(folder), str(int(version)), "--json")

    def alUpdatePlot(self, folder: str, versions: Optional[List[Dict[str, Any]]] = None) -> Any:
        """The plot chart node of validation Dice per version (one point per version), refreshed in place."""
        from CAMLSegmentationLib.slicer import al_mrml

        node = self.getParameterNode().node
        versions = self.alVersions(folder) if versions is None else versions
        chart = al_mrml.update_version_plot(self.scene, versions, node.GetNodeReference("ALVersionPlot"))
        node.SetNodeReferenceID("ALVersionPlot", chart.GetID())
        return chart

    def alShowChart(self, folder: str, versions: Optional[List[Dict[str, Any]]] = None) -> Any:
        """Refresh the chart and show it: the layout switches to one with a plot view (only when asked,
        or after a retrain that made a second version; opening a cohort never does)."""
        import slicer

        chart = self.alUpdatePlot(folder, versions)
        slicer.modules.plots.logic().ShowChartInLayout(chart)
        return chart

