"""Background runs the panel follows: one ``caml segment`` or ``caml al`` child process each,
and what their progress events mean for the panel (progress fraction, status line, log)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from .framework import _


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
    """State of one segmentation started by ``CAMLSegmentationLogic.startSegmentation``: ``job`` is the
    warm worker's request (``jobs.WorkerRequest``), followed as a ``caml segment`` ``Job`` would be."""

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
        #: What the engine reports with its result (``caml segment``'s ``info``: seconds, windows, and from
        #: the warm worker whether the model was already loaded), known once the job is done.
        self.info: Dict[str, Any] = {}
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
                if status != self.status:
                    self.log.append(status)  # the panel's log: each new stage line once
                self.status = status
            if event.get("event") == "log":
                self.log.append(str(event.get("message", "")))
            if event.get("event") == "done":
                self.info = dict(event.get("info") or {})
                self.device = str(self.info.get("device", "")) or self.device
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



class ActiveLearningRun:
    """One ``caml al`` child process followed by the panel: ``init``, ``next``, ``retrain`` or ``use``."""

    def __init__(self, job: Any, kind: str, cohort: str) -> None:
        self.job = job
        self.kind = kind
        #: The cohort folder the command works on (a Next case is accepted into this one).
        self.cohort = cohort
        #: Why the Logic gave the run up (the scene was closed under a Next), or "": its result is ignored.
        self.abandoned = ""
        #: The scene was closed while the run was followed: it must not add nodes to the new one.
        self.sceneClosed = False
        self.fraction = 0.0
        self.status = _("Starting {kind}...").format(kind=kind)
        self.log: List[str] = []
        self._stdout: List[str] = []

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
                status = _("Done.")
            if status:
                self.status = status
            if event.get("event") == "log":
                if event.get("stream") == "stdout":
                    self._stdout.append(str(event.get("message", "")))
                else:
                    self.log.append(str(event.get("message", "")))
        return events

    def result(self) -> Dict[str, Any]:
        """The finished command's result: the ``done`` event's outputs (``--progress json``), else the one
        JSON object a ``--json`` command printed (several lines, which the job reads as log lines)."""
        if self.job.result:
            return dict(self.job.result)
        import json

        text = "\n".join(self._stdout).strip()
        start = text.find("{")
        try:
            value = json.loads(text[start:]) if start >= 0 else None
        except ValueError:
            value = None
        if not isinstance(value, dict):
            raise RuntimeError(f"caml al {self.kind} printed no result")
        return value
