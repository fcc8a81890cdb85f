"""Retrain: CAML fine-tuned from the current version, compared with it case by case, promoted if better.

One job, in order:

1. claim the cohort (one job at a time) and write the job's case lists into its folder:
   labeled = the accepted training cases, validation = the accepted validation cases at
   this moment; unlabeled = every other image of the cohort (the trainer's rule), or none
   with ``supervised_only`` (labeled cases and the Dice loss alone: the ablation that
   measures what the unlabeled stream adds, ``benchmarks/al_simulation_la.py``);
2. train with the fine-tuning preset, warm-started from the current version's weights
   (``TrainConfig.init_weights``); network width, voxel size and window come from the
   current version so the weights fit, and the candidate carries the current version's
   whole inference record (window, voxel size, normalisation, test-time flips, threshold,
   largest-component post-processing): the post-processing was chosen on the validation
   cases of the model the cohort started from, more than a young cohort has, and a retrain
   must not silently change what Segment returns;
3. score the candidate and the current version on the **current** validation set with the
   one predictor, each under its own stored settings as ``caml segment`` runs it (cached per
   version and label, so the current version is scored once);
4. decide (the promotion rule below), write the per-case evidence to the job's
   ``comparison.json``, copy the candidate into ``versions/`` and, in one transaction, record
   the version, its scores and, if it is promoted, make it current;
5. a promoted version is published to the user model catalog (``publish``), so Segment and
   ``caml segment --model`` use it; a catalog failure is reported, never undoes step 4.

The promotion rule (``compare_on_validation``; ``--promote auto``): the first version of a
cohort is promoted. With a current version, the candidate is compared with it on the same
validation cases, paired case by case; with fewer than ``MIN_VALIDATION`` validation cases
it is **kept** (recorded as a version, not promoted: ``caml al use`` can still choose it) and
the result says how many more are needed. It is promoted only when it is better on more
cases than it is worse **and** its mean per-case Dice gain is at least ``PROMOTION_MARGIN``;
a tie keeps the current version. ``--promote always|never`` override the rule.

Nothing before step 4's commit changes the cases, the versions or the current version:
a crash or a cancel at any point leaves them as they were (the job row says what
happened; ``--resume`` continues the training from its last checkpoint). Once step 4
has committed, the job is done: a cancel arriving later changes nothing.

Scores are kept with the SHA-256 of the label file they were computed against, read
when the label was read; before the commit, a case whose label changed meanwhile (an
``accept`` during the scoring) is scored again, so candidate and current version are
compared on the same labels. The job holds the cohort's job lock (``liveness``) for its
lifetime; a full disk ends it as "failed" with one line.
"""

from __future__ import annotations

import json
import os
import signal
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from ..io.files import atomic_output
from ..progress import Cancelled, CancelToken, ProgressCallback, ProgressEvent, no_progress
from . import storage
from .case_ids import check_seed, shown_name
from .cohort import IMAGE_ERRORS, MIN_VALIDATION, PROMOTION_MARGIN, Cohort, CohortError
from .database import fault_point
from .liveness import process_identity, this_host
from .publish import publish_current
from .versions import NEW_VERSION, ScoredCase

PROMOTE_CHOICES = ("auto", "always", "never")


def scored_on_validation(cohort: Cohort, version: int, case_ids: Sequence[str], device: str = "auto",
                         weights: Optional[Path] = None, progress: ProgressCallback = no_progress,
                         cancel: Optional[CancelToken] = None, store: bool = True) -> Dict[str, ScoredCase]:
    """``{case: (Dice, sha256 of the label scored)}`` of a version (or of ``weights`` not yet a
    version: pass ``NEW_VERSION``) on validation cases.

    Uses ``segment_volume``, the predictor every user-facing command uses, and the cache of
    scores for versions already recorded; new scores are cached when ``store``, under the hash
    of the label file actually read (an accept replacing it meanwhile cannot mislabel them).
    """
    from ..inference.metrics import dice
    from ..inference.predictor import InferenceOptions, load_inference_model, segment_volume

    out: Dict[str, ScoredCase] = {}
    if version != NEW_VERSION:
        for case_id, value in cohort.cached_val_scores(version, case_ids).items():
            out[case_id] = (value, cohort.label_sha256(case_id))
    todo = [c for c in case_ids if c not in out]
    if not todo:
        return out
    model = load_inference_model(weights or cohort.weights(version), device)
    for n, case_id in enumerate(todo, start=1):
        if cancel is not None:
            cancel.raise_if_cancelled()
        result = segment_volume(cohort.read_image(case_id), model, InferenceOptions(), cancel=cancel)
        label, label_sha = cohort.read_label(case_id)
        out[case_id] = (dice(result.mask > 0, label > 0), label_sha)
        progress(ProgressEvent("validate", n, len(todo), f"version {version if version != NEW_VERSION else 'new'} "
                                                          f"{case_id}"))
    if version != NEW_VERSION and store:
        cohort.store_val_scores(version, {c: out[c] for c in todo})
    return out


def score_on_validation(cohort: Cohort, version: int, case_ids: Sequence[str], device: str = "auto",
                        weights: Optional[Path] = None, progress: ProgressCallback = no_progress,
                        cancel: Optional[CancelToken] = None, store: bool = True) -> Dict[str, float]:
    """Dice per validation case (see :func:`scored_on_validation`)."""
    scored = scored_on_validation(cohort, version, case_ids, device, weights, progress, cancel, store)
    return {c: value for c, (value, _) in scored.items()}


def _same_labels(cohort: Cohort, scored: Sequence[Dict[str, ScoredCase]]) -> List[str]:
    """Cases whose label file changed since one of ``scored`` read it (they are scored again)."""
    changed = []
    for case_id in sorted({c for s in scored for c in s}):
        now_sha = cohort.label_sha256(case_id)
        if any(case_id in s and s[case_id][1] != now_sha for s in scored):
            changed.append(case_id)
    return changed


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


def version_table(cohort: Any, rescore: bool = False, device: str = "auto", progress: Any = None) -> Any:
    """Versions with ``val_dice`` (when made) and ``current_val_dice`` (on today's validation set)."""
    val = cohort.validation_ids()
    if rescore:
        scores = rescore_versions(cohort, device, progress=progress or (lambda e: None))
    else:
        scores = {}
        for v in cohort.versions():
            cached = cohort.cached_val_scores(v["id"], val)
            scores[v["id"]] = mean(cached) if val and len(cached) == len(val) else None
    versions = cohort.versions()
    for v in versions:
        v["current_val_dice"] = scores.get(v["id"])
        path = comparison_path(cohort, v["job"]) if v["job"] is not None else None
        v["comparison"] = json.loads(path.read_text(encoding="utf-8")) if path is not None else None
    return versions, scores


def compare_on_validation(candidate: Dict[str, float], current: Dict[str, float],
                          base_version: int) -> Dict[str, Any]:
    """The promotion rule (module docstring) on per-case Dice ``{case: dice}`` of the candidate and of
    the current version ``base_version``, over the cases both were scored on: the per-case evidence,
    the counts, the mean gain, whether it promotes and why (one line)."""
    from ..training.data import _natural_key

    cases = sorted(set(candidate) & set(current), key=_natural_key)
    rows = [{"case": c, "current": current[c], "candidate": candidate[c], "difference": candidate[c] - current[c]}
            for c in cases]
    wins = sum(1 for r in rows if r["difference"] > 0)
    losses = sum(1 for r in rows if r["difference"] < 0)
    gain = float(np.mean([r["difference"] for r in rows])) if rows else None
    needed = max(0, MIN_VALIDATION - len(rows))
    if needed:
        promoted = False
        why = (f"kept, not promoted: {len(rows)} validation case(s), {MIN_VALIDATION} needed to compare it with "
               f"version {base_version}; accept {needed} more as validation")
    else:
        assert gain is not None
        promoted = wins > losses and gain >= PROMOTION_MARGIN
        evidence = (f"better on {wins} of {len(rows)} validation cases, worse on {losses}, mean Dice gain "
                    f"{gain:+.4f} over version {base_version}")
        why = (f"promoted: {evidence}" if promoted else
               f"kept, not promoted: {evidence}; promotion needs more wins than losses and a gain of at least "
               f"{PROMOTION_MARGIN}")
    return {"base_version": base_version, "cases": rows, "wins": wins, "losses": losses,
            "ties": len(rows) - wins - losses, "mean_gain": gain, "margin": PROMOTION_MARGIN,
            "min_validation": MIN_VALIDATION, "validation_needed": needed, "promoted": promoted, "reason": why}


def comparison_path(cohort: Any, job_id: int) -> Optional[Path]:
    """The job's ``comparison.json`` (the evidence of its promotion decision), None when it has none."""
    for job in cohort.jobs():
        if job["id"] == job_id and job["folder"]:
            path = cohort.root / job["folder"] / "comparison.json"
            return path if path.is_file() else None
    return None


def finetune_preset(cohort: Cohort, preset_name: Optional[str], base_weights: Optional[Path],
                    iterations: Optional[int]) -> Any:
    """The fine-tuning preset, fitted to the weights it starts from: their network width and the
    inference settings stored with them (window, voxel size, intensity normalisation)."""
    from ..model.checkpoint import read_checkpoint
    from ..model.settings import InferenceSettings
    from ..training.presets import load_preset

    preset = load_preset(preset_name or cohort.preset_source)
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
    """One id per line (ids are checked to hold no line break, '#' or edge spaces: ``case_id_problem``)."""
    path.write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")
    return path


def _read_list(path: Path) -> List[str]:
    """The ids of a list file, by lines, so that ids with spaces come back whole."""
    from ..training.data import read_id_list

    return read_id_list(path) if path.read_text(encoding="utf-8").strip() else []


def _usable_unlabeled(cohort: Cohort, labeled: Sequence[str], progress: ProgressCallback,
                      cancel: Optional[CancelToken]) -> List[str]:
    """The images of the unlabeled stream (every case not labeled for training, as the trainer's
    default), without those that cannot be read or segmented: each is noted for ``status``."""
    taken = set(labeled)
    known_bad = cohort.image_problems()
    ids = [c.id for c in cohort.cases() if c.id not in taken and c.id not in known_bad]
    usable = []
    for n, case_id in enumerate(ids, start=1):
        if cancel is not None:
            cancel.raise_if_cancelled()
        try:
            cohort.read_image(case_id)
        except (CohortError, *IMAGE_ERRORS) as exc:
            cohort.note_image_problem(case_id, str(exc))
            continue
        usable.append(case_id)
        progress(ProgressEvent("check", n, len(ids), case_id))
    return usable


def _resumable_job(cohort: Cohort) -> Dict[str, Any]:
    jobs = [j for j in cohort.jobs() if j["kind"] == "retrain"]
    if not jobs or jobs[-1]["state"] not in ("interrupted", "cancelled", "failed"):
        raise CohortError(f"{cohort.root}: no interrupted, cancelled or failed retrain job to resume")
    job = jobs[-1]
    if job["base_version"] != cohort.current_version():
        raise CohortError(f"retrain job {job['id']} started from version {job['base_version']}, but the current "
                          f"version is now {cohort.current_version()}: start a new retrain")
    return job


def resumable_job(cohort: Cohort) -> Optional[Dict[str, Any]]:
    """The retrain job ``retrain(..., resume=True)`` would continue, or None (what the panel's Resume offers)."""
    try:
        return _resumable_job(cohort)
    except CohortError:
        return None


def retrain(root: Path, iterations: Optional[int] = None, preset: Optional[str] = None, device: str = "auto",
            promote: str = "auto", resume: bool = False, seed: Optional[int] = None,
            progress: ProgressCallback = no_progress, cancel: Optional[CancelToken] = None,
            supervised_only: bool = False, publish: bool = True) -> Dict[str, Any]:
    """Run one retrain job on the cohort at ``root``; returns what happened (see the module docstring).

    ``supervised_only``: train on the labeled cases alone (no unlabeled stream, no consistency
    or OCC loss); a resumed job keeps the choice it started with.
    ``publish``: list a promoted version in the user model catalog (off for simulations, which make
    cohorts by the dozen and must leave the user's catalog alone)."""
    if promote not in PROMOTE_CHOICES:
        raise CohortError(f"promote must be one of {', '.join(PROMOTE_CHOICES)}")
    with Cohort.open(root) as cohort:
        base = cohort.current_version()
        base_weights = cohort.weights(base) if base is not None else None
        resumed = _resumable_job(cohort) if resume else None
        if resumed is None:
            labeled, validation = cohort.training_ids(), cohort.validation_ids()
            ft = finetune_preset(cohort, preset, base_weights, iterations)
            job_seed = check_seed(cohort.seed if seed is None else seed)
            if len(labeled) < ft.labeled_batch:
                raise CohortError(f"{len(labeled)} case(s) accepted for training; retraining needs at least "
                                  f"{ft.labeled_batch} (the preset's labeled batch)")
        job = cohort.start_job("retrain", base, resume_job=resumed["id"] if resumed else None)
        job_dir = cohort.root / job["folder"]
        try:
            result = _run_job(cohort, job, job_dir, base, base_weights, promote, device, progress, cancel,
                              None if resumed else (labeled, validation, ft, job_seed, supervised_only), publish)
        except Cancelled:
            _end_job(cohort, job["id"], "cancelled", "cancelled; caml al retrain --resume continues it")
            raise
        except BaseException as exc:
            problem = storage.describe(exc, job_dir)
            message = problem or f"{type(exc).__name__}: {exc}"
            _end_job(cohort, job["id"], "failed", message.splitlines()[0])
            if problem is not None:
                raise CohortError(f"retrain job {job['id']} failed: {problem}; then caml al retrain --resume "
                                  "continues it") from None
            raise
        finally:
            cohort.job_lock.release()
        return result


def _end_job(cohort: Cohort, job_id: int, state: str, message: str) -> None:
    """Record how a job ended; when even that cannot be written (a full disk), the released job
    lock still tells every later command that the job is not running."""
    try:
        cohort.end_job(job_id, state, message)
    except (CohortError, OSError) as exc:
        if not isinstance(exc, CohortError) and storage.storage_kind(exc) is None:
            raise


def _run_job(cohort: Cohort, job: Dict[str, Any], job_dir: Path, base: Optional[int], base_weights: Optional[Path],
             promote: str, device: str, progress: ProgressCallback, cancel: Optional[CancelToken],
             new: Optional[tuple], publish: bool = True) -> Dict[str, Any]:
    from ..training.presets import TrainingPreset
    from ..training.trainer import TrainConfig, train

    if new is not None:
        labeled, validation, ft, job_seed, supervised_only = new
        job_dir.mkdir(parents=True, exist_ok=True)
        _write_list(job_dir / "labeled.list", labeled)
        _write_list(job_dir / "validation.list", validation)
        (job_dir / "job.json").write_text(json.dumps({
            "base_version": base, "preset": ft.to_dict(), "promote": promote, "device": device,
            "seed": job_seed, "supervised_only": supervised_only}, indent=2))
    settings = json.loads((job_dir / "job.json").read_text())
    ft = TrainingPreset.from_dict(settings["preset"])
    supervised_only = bool(settings.get("supervised_only", False))
    labeled = _read_list(job_dir / "labeled.list")
    unlabeled_list = job_dir / "unlabeled.list"
    restart_unlabeled = False
    if not unlabeled_list.is_file():
        _write_list(unlabeled_list, [] if supervised_only else _usable_unlabeled(cohort, labeled, progress, cancel))
    else:  # a resumed job keeps the stream it started with, as long as its images are there
        gone = [c for c in _read_list(unlabeled_list) if not cohort.image_path(c).is_file()]
        if gone:
            progress(ProgressEvent("warning", 0, 0, f"{len(gone)} image(s) of the job's unlabeled stream are gone "
                                                    f"({', '.join(gone[:5])}): the unlabeled stream starts afresh "
                                                    "from the cohort's images"))
            _write_list(unlabeled_list, _usable_unlabeled(cohort, labeled, progress, cancel))
            restart_unlabeled = True
    run_dir = job_dir / "train"
    cfg = TrainConfig(data_root=cohort.root, out_dir=run_dir, preset=ft, labeled_list=job_dir / "labeled.list",
                      unlabeled_list=unlabeled_list if _read_list(unlabeled_list) else None, device=device,
                      seed=check_seed(int(settings["seed"])), resume=(run_dir / "last.pt").is_file(),
                      init_weights=base_weights, restart_unlabeled=restart_unlabeled,
                      supervised_only=supervised_only)
    progress(ProgressEvent("retrain", 0, 3, f"job {job['id']}: fine-tuning from version {base}"))
    train(cfg, progress=progress, cancel=cancel)
    candidate = run_dir / "candidate.pt"
    _save_candidate(run_dir / "last.pt", candidate, base_inference(base_weights))
    fault_point("retrain-after-train")
    progress(ProgressEvent("retrain", 1, 3, "scoring on the validation cases"))

    # The current validation set (accepted-val cases now), not the job's snapshot.
    validation = cohort.validation_ids()
    cand_scores: Dict[str, ScoredCase] = {}
    base_scores: Dict[str, ScoredCase] = {}
    todo = list(validation)
    for _ in range(5):  # labels replaced during the scoring are scored again, for both
        if validation:
            cand_scores.update(scored_on_validation(cohort, NEW_VERSION, todo, device, weights=candidate,
                                                    progress=progress, cancel=cancel))
            if base is not None:  # cached by the commit below, with the version
                base_scores.update(scored_on_validation(cohort, base, todo, device, progress=progress,
                                                        cancel=cancel, store=False))
        todo = _same_labels(cohort, [cand_scores, base_scores])
        if not todo:
            break
    else:
        raise CohortError(f"validation labels {', '.join(todo[:3])} keep changing during the scoring; "
                          "run caml al retrain --resume when the accepts are done")
    fault_point("retrain-after-score")
    cand_per_case = {c: v for c, (v, _) in cand_scores.items()}
    cand_dice = mean(cand_per_case)
    base_dice = mean({c: v for c, (v, _) in base_scores.items()})
    comparison = None
    if base is not None:
        comparison = compare_on_validation(cand_per_case, {c: v for c, (v, _) in base_scores.items()}, base)
    if promote == "always":
        promoted, why = True, "promoted (forced)"
    elif promote == "never":
        promoted, why = False, "kept as a candidate (not promoted on request)"
    elif comparison is None:
        promoted, why = True, "first version"
    else:
        promoted, why = comparison["promoted"], comparison["reason"]
    if comparison is not None:
        with atomic_output(job_dir / "comparison.json") as tmp:
            tmp.write_text(json.dumps(dict(comparison, decision=why, decided=promoted), indent=2), encoding="utf-8")
    progress(ProgressEvent("retrain", 2, 3, why))
    version = cohort.add_version(
        candidate, parent=base, job=job["id"], val_dice=cand_dice, val_cases=len(validation),
        train_cases=labeled, promote=promoted, note=why,
        val_scores={NEW_VERSION: cand_scores, **({base: base_scores} if base is not None else {})},
        job_message=why, final=True)
    progress(ProgressEvent("retrain", 3, 3, why))
    published = publish_current(cohort, progress) if promoted and publish else None
    return {"job": job["id"], "version": version, "promoted": promoted, "reason": why,
            "candidate_dice": cand_dice, "current_dice": base_dice, "base_version": base,
            "current_version": cohort.current_version(), "validation_cases": len(validation),
            "validation_needed": comparison["validation_needed"] if comparison is not None else 0,
            "comparison": comparison, "catalog": published,
            "weights": str(cohort.root / cohort.version(version)["weights"])}


def base_inference(base_weights: Optional[Path]) -> Optional[Dict[str, Any]]:
    """The inference record a candidate inherits: the base version's whole ``InferenceSettings``
    (None without a base: a first version keeps what its training wrote)."""
    from ..model.checkpoint import read_checkpoint
    from ..model.settings import InferenceSettings

    if base_weights is None:
        return None
    return InferenceSettings.from_checkpoint(read_checkpoint(base_weights)).to_dict()


def _save_candidate(last: Path, target: Path, inference: Optional[Dict[str, Any]]) -> None:
    """The candidate's weights file: the last iteration's model with everything stored beside it
    (network, preset, split), without the optimizer and sampler state; its inference settings are
    ``inference`` (the base version's) when given."""
    from ..model.checkpoint import read_checkpoint, save_checkpoint
    from ..training.trainer import RESUME_ONLY_KEYS

    ckpt = read_checkpoint(last)
    payload = {k: v for k, v in ckpt.items() if k not in RESUME_ONLY_KEYS and k not in ("format", "format_version")}
    if inference is not None:
        payload["inference"] = dict(inference)
    payload["trained"] = {"iteration": ckpt.get("iteration"), "split": ckpt.get("split"), "seed": ckpt.get("seed")}
    save_checkpoint(target, payload)


def cancel_running(root: Path) -> Dict[str, Any]:
    """Stop the cohort's running retrain (SIGTERM: it keeps a resumable checkpoint and exits).

    Only a process verifiably the job is signalled: on this host, with the pid *and* the start
    time recorded when the job started, while the job lock is held. A job whose process is gone
    (killed, crashed, its machine rebooted; on any host) is marked interrupted instead, and the
    result says so. A live job on another host is left alone: cancel it there.
    """
    with Cohort.open(root) as cohort:
        job = cohort.running_job()
        if job is None:
            dead = cohort.mark_dead_jobs_interrupted("found by caml al retrain --cancel")
            if dead:
                return {"job": dead[-1], "pid": None, "signal": None, "state": "interrupted",
                        "message": f"retrain job {dead[-1]} was not running (its process is gone): marked as "
                                   "interrupted; caml al retrain --resume continues it"}
            raise CohortError(f"{cohort.root}: no retrain job is running")
        pid, host = int(job["pid"] or 0), job["host"]
        if host != this_host():
            raise CohortError(f"retrain job {job['id']} runs on host {shown_name(host)} (pid {pid}), not on this "
                              f"one ({shown_name(this_host())}): cancel it there")
        identity = process_identity(pid) if pid > 0 else None
        if identity is None or identity != job.get("process_start"):
            raise CohortError(f"retrain job {job['id']} holds the cohort, but pid {pid} cannot be verified to be "
                              "its process (not found, or started at another time): nothing was signalled")
        os.kill(pid, signal.SIGTERM)
        return {"job": job["id"], "pid": pid, "signal": "SIGTERM", "state": "running",
                "message": f"asked retrain job {job['id']} (pid {pid}) to stop"}


def training_lists(cohort: Cohort) -> Dict[str, List[str]]:
    return {"labeled": cohort.training_ids(), "validation": cohort.validation_ids()}
