"""Retrain: CAML fine-tuned from the current version, scored against it, promoted if not worse.

One job, in order:

1. claim the cohort (one job at a time) and write the job's case lists into its folder:
   labeled = the accepted training cases, validation = the accepted validation cases at
   this moment; unlabeled = every other image of the cohort (the trainer's rule);
2. train with the fine-tuning preset, warm-started from the current version's weights
   (``TrainConfig.init_weights``); network width, voxel size and window come from the
   current version so the weights fit;
3. score the candidate and the current version on the **current** validation set with the
   one predictor (cached per version and label, so the current version is scored once);
4. copy the candidate into ``versions/`` and, in one transaction, record the version, its
   scores and, if it is promoted, make it current.

Nothing before step 4's commit changes the cases, the versions or the current version:
a crash or a cancel at any point leaves them as they were (the job row says what
happened; ``--resume`` continues the training from its last checkpoint).
"""

from __future__ import annotations

import json
import os
import signal
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from ..progress import Cancelled, CancelToken, ProgressCallback, ProgressEvent, no_progress
from .cohort import MIN_VALIDATION, Cohort, CohortError, fault_point

PROMOTE_CHOICES = ("auto", "always", "never")


def score_on_validation(cohort: Cohort, version: int, case_ids: Sequence[str], device: str = "auto",
                        weights: Optional[Path] = None, progress: ProgressCallback = no_progress,
                        cancel: Optional[CancelToken] = None, store: bool = True) -> Dict[str, float]:
    """Dice per validation case of a version (or of ``weights`` not yet a version: pass version -1).

    Uses ``segment_volume``, the predictor every user-facing command uses, and the cache of
    scores for versions already recorded; new scores are cached when ``store``.
    """
    from ..inference.metrics import dice
    from ..inference.predictor import InferenceOptions, load_inference_model, segment_volume

    cached = cohort.cached_val_scores(version, case_ids) if version >= 0 else {}
    todo = [c for c in case_ids if c not in cached]
    if not todo:
        return cached
    model = load_inference_model(weights or cohort.weights(version), device)
    out = dict(cached)
    for n, case_id in enumerate(todo, start=1):
        if cancel is not None:
            cancel.raise_if_cancelled()
        result = segment_volume(cohort.read_image(case_id), model, InferenceOptions(), cancel=cancel)
        out[case_id] = dice(result.mask > 0, cohort.label(case_id) > 0)
        progress(ProgressEvent("validate", n, len(todo), f"version {version if version >= 0 else 'new'} "
                                                          f"{case_id}"))
    if version >= 0 and store:
        cohort.store_val_scores(version, {c: out[c] for c in todo})
    return out


def mean(scores: Dict[str, float]) -> Optional[float]:
    return float(np.mean(list(scores.values()))) if scores else None


def rescore_versions(cohort: Cohort, device: str = "auto", progress: ProgressCallback = no_progress,
                     cancel: Optional[CancelToken] = None) -> Dict[int, Optional[float]]:
    """Mean Dice of every version on the current validation set (computing only what is not cached)."""
    val = cohort.validation_ids()
    out: Dict[int, Optional[float]] = {}
    for v in cohort.versions():
        if not val or not (cohort.root / v["weights"]).is_file():
            out[v["id"]] = None
            continue
        out[v["id"]] = mean(score_on_validation(cohort, v["id"], val, device, progress=progress, cancel=cancel))
    return out


def finetune_preset(cohort: Cohort, preset_name: Optional[str], base_weights: Optional[Path],
                    iterations: Optional[int]) -> Any:
    """The fine-tuning preset, fitted to the weights it starts from: their network width and the
    inference settings stored with them (window, voxel size, intensity normalisation)."""
    from ..model.checkpoint import read_checkpoint
    from ..model.settings import InferenceSettings
    from ..training.presets import load_preset

    preset = load_preset(preset_name or cohort.preset)
    if base_weights is not None:
        ckpt = read_checkpoint(base_weights)
        net = ckpt.get("network") or {}
        settings = InferenceSettings.from_checkpoint(ckpt)
        changes: Dict[str, Any] = {k: net[k] for k in ("base_filters", "feat_dim", "cma") if k in net}
        changes.update(patch_size=tuple(settings.window), spacing=settings.spacing,
                       normalization=settings.normalization)
        preset = replace(preset, **changes)
    if iterations is not None:
        if iterations < 1:
            raise CohortError("--iterations must be at least 1")
        preset = preset.with_overrides(iterations=iterations)
    return preset


def _write_list(path: Path, ids: Sequence[str]) -> Path:
    path.write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")
    return path


def _resumable_job(cohort: Cohort) -> Dict[str, Any]:
    jobs = [j for j in cohort.jobs() if j["kind"] == "retrain"]
    if not jobs or jobs[-1]["state"] not in ("interrupted", "cancelled", "failed"):
        raise CohortError(f"{cohort.root}: no interrupted, cancelled or failed retrain job to resume")
    job = jobs[-1]
    if job["base_version"] != cohort.current_version():
        raise CohortError(f"retrain job {job['id']} started from version {job['base_version']}, but the current "
                          f"version is now {cohort.current_version()}: start a new retrain")
    return job


def retrain(root: Path, iterations: Optional[int] = None, preset: Optional[str] = None, device: str = "auto",
            promote: str = "auto", resume: bool = False, seed: Optional[int] = None,
            progress: ProgressCallback = no_progress, cancel: Optional[CancelToken] = None) -> Dict[str, Any]:
    """Run one retrain job on the cohort at ``root``; returns what happened (see the module docstring)."""
    from ..training.trainer import TrainConfig, train

    if promote not in PROMOTE_CHOICES:
        raise CohortError(f"promote must be one of {', '.join(PROMOTE_CHOICES)}")
    with Cohort.open(root) as cohort:
        base = cohort.current_version()
        base_weights = cohort.weights(base) if base is not None else None
        resumed = _resumable_job(cohort) if resume else None
        if resumed is None:
            labeled, validation = cohort.training_ids(), cohort.validation_ids()
            ft = finetune_preset(cohort, preset, base_weights, iterations)
            if len(labeled) < ft.labeled_batch:
                raise CohortError(f"{len(labeled)} case(s) accepted for training; retraining needs at least "
                                  f"{ft.labeled_batch} (the preset's labeled batch)")
        job = cohort.start_job("retrain", base, resume_job=resumed["id"] if resumed else None)
        job_dir = cohort.root / job["folder"]
        try:
            if resumed is None:
                job_dir.mkdir(parents=True, exist_ok=True)
                _write_list(job_dir / "labeled.list", labeled)
                _write_list(job_dir / "validation.list", validation)
                (job_dir / "job.json").write_text(json.dumps({
                    "base_version": base, "preset": ft.to_dict(), "promote": promote, "device": device,
                    "seed": cohort.seed if seed is None else seed}, indent=2))
            settings = json.loads((job_dir / "job.json").read_text())
            from ..training.presets import TrainingPreset

            ft = TrainingPreset.from_dict(settings["preset"])
            labeled = [s for s in (job_dir / "labeled.list").read_text().split() if s]
            run_dir = job_dir / "train"
            cfg = TrainConfig(data_root=cohort.root, out_dir=run_dir, preset=ft,
                              labeled_list=job_dir / "labeled.list", device=device, seed=int(settings["seed"]),
                              resume=(run_dir / "last.pt").is_file(), init_weights=base_weights)
            progress(ProgressEvent("retrain", 0, 3, f"job {job['id']}: fine-tuning from version {base}"))
            result = train(cfg, progress=progress, cancel=cancel)
            candidate = run_dir / "candidate.pt"
            _save_candidate(result, run_dir / "last.pt", candidate, ft)
            fault_point("retrain-after-train")
            progress(ProgressEvent("retrain", 1, 3, "scoring on the validation cases"))

            # The current validation set (accepted-val cases now), not the job's snapshot.
            validation = cohort.validation_ids()
            cand_scores = score_on_validation(cohort, -1, validation, device, weights=candidate,
                                              progress=progress, cancel=cancel) if validation else {}
            base_scores = (score_on_validation(cohort, base, validation, device, progress=progress, cancel=cancel,
                                               store=False)  # cached by the commit below, with the version
                           if validation and base is not None else {})
            fault_point("retrain-after-score")
            cand_dice, base_dice = mean(cand_scores), mean(base_scores)
            if promote == "always":
                promoted, why = True, "promoted (forced)"
            elif promote == "never":
                promoted, why = False, "kept as a candidate (not promoted on request)"
            elif base is None or len(validation) < MIN_VALIDATION:
                promoted, why = True, (f"promoted without comparison: {len(validation)} validation case(s), "
                                       f"{MIN_VALIDATION} needed" if base is not None else "first version")
            else:
                promoted = cand_dice >= base_dice  # type: ignore[operator]
                why = (f"{'promoted' if promoted else 'not promoted'}: validation Dice {cand_dice:.4f} vs "
                       f"{base_dice:.4f} for version {base} on {len(validation)} cases")
            cohort.con.execute("SELECT 1")  # still open and sane before the one commit that changes state
            progress(ProgressEvent("retrain", 2, 3, why))
            version = cohort.add_version(
                candidate, parent=base, job=job["id"], val_dice=cand_dice, val_cases=len(validation),
                train_cases=labeled, promote=promoted, note=why,
                val_scores={-1: cand_scores, **({base: base_scores} if base is not None else {})},
                job_message=why)
        except Cancelled:
            cohort.end_job(job["id"], "cancelled", "cancelled; caml al retrain --resume continues it")
            raise
        except BaseException as exc:
            cohort.end_job(job["id"], "failed", f"{type(exc).__name__}: {exc}".splitlines()[0])
            raise
        progress(ProgressEvent("retrain", 3, 3, why))
        return {"job": job["id"], "version": version, "promoted": promoted, "reason": why,
                "candidate_dice": cand_dice, "current_dice": base_dice, "base_version": base,
                "current_version": cohort.current_version(), "validation_cases": len(validation),
                "weights": str(cohort.weights(version))}


def _save_candidate(result: Any, last: Path, target: Path, preset: Any) -> None:
    """The candidate's weights file: the last iteration's model with everything stored beside it
    (network, preset, inference settings, split), without the optimizer and sampler state."""
    from ..model.checkpoint import read_checkpoint, save_checkpoint
    from ..training.trainer import RESUME_ONLY_KEYS

    ckpt = read_checkpoint(last)
    payload = {k: v for k, v in ckpt.items() if k not in RESUME_ONLY_KEYS and k not in ("format", "format_version")}
    payload["trained"] = {"iteration": ckpt.get("iteration"), "split": ckpt.get("split"), "seed": ckpt.get("seed")}
    save_checkpoint(target, payload)


def cancel_running(root: Path) -> Dict[str, Any]:
    """Ask the cohort's running retrain to stop (SIGTERM: it keeps a resumable checkpoint and exits)."""
    with Cohort.open(root) as cohort:
        job = cohort.running_job()
        if job is None:
            raise CohortError(f"{cohort.root}: no retrain job is running")
        try:
            os.kill(int(job["pid"]), signal.SIGTERM)
        except ProcessLookupError:
            pass
        return {"job": job["id"], "pid": job["pid"], "signal": "SIGTERM"}


def training_lists(cohort: Cohort) -> Dict[str, List[str]]:
    return {"labeled": cohort.training_ids(), "validation": cohort.validation_ids()}
