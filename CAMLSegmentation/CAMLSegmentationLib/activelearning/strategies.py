"""Which case to label next: the selection strategies and their scores (higher = label sooner).

``first``
    The cohort's order (``train.list``, else natural sort of the ids): score ``-position``.
``random``
    A uniform number in [0, 1) drawn from SHA-256 of ``seed:version:case id``: reproducible,
    and a new draw for each model version.
``disagreement`` (CAML's own)
    ``mean over R of |p_V - p_A|`` with ``R = {p_V > 0.5} or {p_A > 0.5}``, the voxels where
    either sub-model predicts the atrium. Why this region: far from the atrium both models
    are confidently background, so a mean over the whole volume mostly measures how much
    background the scan has (its field of view), not how unsure the models are about the
    atrium. Over ``R`` the score is a soft ``1 - Jaccard(V, A)`` (for hard masks it is exactly
    the fraction of R where V and A disagree): 0 when the two models draw the same atrium,
    1 when they draw disjoint ones, the same for a big and a small atrium. V and A are
    trained to agree on unlabeled data, so where they still differ the case holds something
    the labeled cases did not teach. A case where neither model finds any atrium (R empty)
    scores 1, the maximum: the model cannot segment it at all.
``entropy``
    ``mean over R of H(p_V)``, the binary entropy in bits of model V's probability (the one
    the user is shown), over the same region and for the same reason; 1 when R is empty.

Scores come from one inference pass per case through the one predictor
(``inference.segment_volume``) with the ``fast`` protocol (``SCORING_PROTOCOL``): every window
runs models V and A in the same network call, and without the test-time flips and dense windows
of the default protocol a case is scored about 13 times sooner (``benchmarks/bench_al_ranking.py``).
The ranking is the fast protocol's own: without the flips V and A disagree more, and not by the
same amount on every case (on 6 LA cases the rank correlation with the default protocol's scores
was 0.43 for disagreement, 0.94 for entropy, the top pick the same), and the LA simulation
(``benchmarks/al_simulation_la.py``) measures the strategies as they rank this way. The mask the
user corrects, the proposal, is the default protocol's (``PROPOSAL_PROTOCOL``), computed for the
chosen case alone, as ``caml segment`` would give it. Scores are cached in the cohort's
database per strategy and model version, and recomputed only for a version that has not scored
the case yet. An image that cannot be read or segmented is noted in the cohort (``status``
names it) and skipped.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ..progress import CancelToken, ProgressCallback, ProgressEvent, no_progress
from .cohort import IMAGE_ERRORS, Cohort, CohortError

STRATEGIES = ("disagreement", "entropy", "random", "first")
MODEL_STRATEGIES = ("disagreement", "entropy")
#: Version key of scores that need no model (``first``, ``random`` before any version exists).
NO_MODEL = 0
#: Inference protocol of the candidates' scores (a ranking), and of the chosen case's proposal (a mask to correct).
SCORING_PROTOCOL = "fast"
PROPOSAL_PROTOCOL = "default"


def foreground_region(p_v: np.ndarray, p_a: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Voxels where either sub-model predicts foreground."""
    return (np.asarray(p_v) > threshold) | (np.asarray(p_a) > threshold)


def disagreement_score(p_v: np.ndarray, p_a: np.ndarray) -> float:
    region = foreground_region(p_v, p_a)
    if not region.any():
        return 1.0
    return float(np.abs(np.asarray(p_v, np.float64) - np.asarray(p_a, np.float64))[region].mean())


def binary_entropy(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), 1e-12, 1 - 1e-12)
    return -(p * np.log2(p) + (1 - p) * np.log2(1 - p))


def entropy_score(p_v: np.ndarray, p_a: np.ndarray) -> float:
    region = foreground_region(p_v, p_a)
    if not region.any():
        return 1.0
    return float(binary_entropy(np.asarray(p_v)[region]).mean())


def random_score(case_id: str, version: int, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}:{version}:{case_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def model_scores(p_v: np.ndarray, p_a: np.ndarray) -> Dict[str, float]:
    return {"disagreement": disagreement_score(p_v, p_a), "entropy": entropy_score(p_v, p_a)}


# --------------------------------------------------------------------------- inference


def load_dual_model(weights: Path, device: str = "auto") -> Any:
    from ..inference.predictor import load_inference_model

    return load_inference_model(weights, device, with_a=True)


def predict_case(model: Any, volume: Any, cancel: Optional[CancelToken] = None,
                 protocol: str = PROPOSAL_PROTOCOL) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(mask, p_V, p_A, |p_V - p_A|) of one volume, through the one predictor under ``protocol``.

    One ``segment_volume`` call with the uncertainty map: each window goes through V and A in
    the same network call, and the result carries both probabilities.
    """
    from ..inference.predictor import InferenceOptions, segment_volume

    options = InferenceOptions.for_protocol(protocol).with_changes(uncertainty=True)
    result = segment_volume(volume, model, options, cancel=cancel)
    return result.mask, result.probability, result.probability_a, result.uncertainty


def prediction_paths(cohort: Cohort, case_id: str, version: int) -> Tuple[Path, Path]:
    folder = cohort.state_dir / "predictions"
    return folder / f"{case_id}.v{version}.seg.nrrd", folder / f"{case_id}.v{version}.uncertainty.nrrd"


def score_candidates(cohort: Cohort, strategy: str, device: str = "auto",
                     progress: ProgressCallback = no_progress, cancel: Optional[CancelToken] = None,
                     model: Any = None) -> Dict[str, Any]:
    """Scores of every candidate case at the current version, computing only what is not cached.

    Returns ``{"scores": {case: score}, "version": v, "computed": [ids], "cached": [ids],
    "skipped": {case: why}}``. A model strategy scores with ``SCORING_PROTOCOL`` and writes no
    mask (``next_case`` writes the chosen case's proposal); a case whose image cannot be read or
    segmented is noted and skipped.
    """
    if strategy not in STRATEGIES:
        raise CohortError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    candidates = cohort.candidate_ids()
    if not candidates:
        raise CohortError(f"{cohort.root}: every case is accepted: nothing left to label")
    current = cohort.current_version()
    if strategy in MODEL_STRATEGIES and current is None:
        raise CohortError(f"strategy {strategy} needs a model: init the cohort with --model, or start with "
                          "--strategy first or random and retrain")
    version = current if (current is not None and strategy != "first") else NO_MODEL
    cached = cohort.cached_scores(strategy, version)
    todo = [c for c in candidates if c not in cached]
    computed: List[str] = []
    skipped: Dict[str, str] = {}
    if todo and strategy == "first":
        positions = {c.id: c.position for c in cohort.cases()}
        cohort.store_scores(version, {c: {"first": -float(positions[c])} for c in todo})
        computed = todo
    elif todo and strategy == "random":
        cohort.store_scores(version, {c: {"random": random_score(c, version, cohort.seed)} for c in todo})
        computed = todo
    elif todo:
        model = model or load_dual_model(cohort.weights(current), device)
        progress(ProgressEvent("score", 0, len(todo), "cases"))
        for n, case_id in enumerate(todo, start=1):
            if cancel is not None:
                cancel.raise_if_cancelled()
            try:
                volume = cohort.read_image(case_id)
                _, p_v, p_a, _ = predict_case(model, volume, cancel, SCORING_PROTOCOL)
            except IMAGE_ERRORS as exc:
                cohort.note_image_problem(case_id, str(exc))
                skipped[case_id] = str(exc)
                continue
            cohort.store_scores(version, {case_id: model_scores(p_v, p_a)})  # both model scores, one pass
            computed.append(case_id)
            progress(ProgressEvent("score", n, len(todo), case_id))
    scores = cohort.cached_scores(strategy, version)
    candidates = [c for c in candidates if c not in skipped]
    if not candidates:
        raise CohortError(f"{cohort.root}: no case left to label whose image can be used (see caml al status)")
    return {"scores": {c: scores[c] for c in candidates}, "version": version, "computed": computed,
            "cached": [c for c in candidates if c not in computed], "skipped": skipped}


def rank(scores: Dict[str, float], order: Dict[str, int]) -> List[str]:
    """Case ids by decreasing score; ties by cohort order."""
    return sorted(scores, key=lambda c: (-scores[c], order.get(c, 0)))


def next_case(cohort: Cohort, strategy: str, device: str = "auto", uncertainty: bool = False,
              progress: ProgressCallback = no_progress, cancel: Optional[CancelToken] = None) -> Dict[str, Any]:
    """Pick the most informative candidate, make sure its proposal (``PROPOSAL_PROTOCOL``, and the
    uncertainty map when asked) exists, and record that the case was served (``Cohort.serve``)."""
    from ..inference.predictor import InferenceOptions, segment_volume
    from ..io.volume import write_image, write_mask

    model = None
    scored = score_candidates(cohort, strategy, device, progress, cancel)
    order = {c.id: c.position for c in cohort.cases()}
    ranking = rank(scored["scores"], order)
    current = cohort.current_version()
    skipped = dict(scored["skipped"])
    for case_id in ranking:
        out: Dict[str, Any] = {"case": case_id, "image": str(cohort.image_path(case_id)), "strategy": strategy,
                               "score": scored["scores"][case_id], "version": current, "prediction": None,
                               "uncertainty": None, "ranking": [c for c in ranking if c not in skipped][:10],
                               "computed": len(scored["computed"]), "skipped": skipped}
        if current is None:
            cohort.serve(case_id)
            return out
        mask_path, unc_path = prediction_paths(cohort, case_id, current)
        if not mask_path.is_file() or (uncertainty and not unc_path.is_file()):
            model = model or load_dual_model(cohort.weights(current), device)
            options = InferenceOptions.for_protocol(PROPOSAL_PROTOCOL).with_changes(uncertainty=uncertainty)
            try:
                volume = cohort.read_image(case_id)
                result = segment_volume(volume, model, options, cancel=cancel)
            except IMAGE_ERRORS as exc:  # first / random do not read images before choosing
                cohort.note_image_problem(case_id, str(exc))
                skipped[case_id] = str(exc)
                continue
            write_mask(result.mask, volume, mask_path)
            if uncertainty:
                write_image(result.uncertainty, volume, unc_path)
        cohort.serve(case_id, current, mask_path)
        out["prediction"] = str(mask_path)
        out["uncertainty"] = str(unc_path) if uncertainty else None
        return out
    raise CohortError(f"{cohort.root}: no case left to label whose image can be used (see caml al status)")
