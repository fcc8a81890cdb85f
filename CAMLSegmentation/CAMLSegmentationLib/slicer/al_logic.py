"""The active-learning loop for the Logic (mixed into ``CAMLSegmentationLogic``): cohort, next
case, accept, retrain, versions and their plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

from .runs import ActiveLearningRun


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
        from CAMLSegmentationLib.slicer import al_mrml

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
        from CAMLSegmentationLib.slicer import al_mrml

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
        from CAMLSegmentationLib.activelearning.cohort import Cohort
        from CAMLSegmentationLib.activelearning.retrain import version_table

        with Cohort.open(folder) as cohort:
            versions, _ = version_table(cohort, rescore, device)
        return versions

    def alUseVersion(self, folder: str, version: int) -> Dict[str, Any]:
        from CAMLSegmentationLib.activelearning.cohort import Cohort

        with Cohort.open(folder) as cohort:
            return cohort.use(int(version))

    def alUpdatePlot(self, folder: str, versions: Optional[List[Dict[str, Any]]] = None) -> Any:
        """The plot chart node of validation Dice per version (one point per version), refreshed in place."""
        from CAMLSegmentationLib.slicer import al_mrml

        node = self.getParameterNode().node
        versions = self.alVersions(folder) if versions is None else versions
        chart = al_mrml.update_version_plot(self.scene, versions, node.GetNodeReference("ALVersionPlot"))
        node.SetNodeReferenceID("ALVersionPlot", chart.GetID())
        return chart
