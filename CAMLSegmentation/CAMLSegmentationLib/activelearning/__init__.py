"""Active learning on a cohort: pick the case to label, accept its corrected label, retrain CAML.

- ``cohort``: the cohort folder and its SQLite state (cases, labels, accepts, status), the entry point,
  made of ``versions`` (model versions, weights, score caches) and ``jobs`` (retrain job rows),
  on top of ``database`` (schema, upgrades, connection checks) and ``case_ids`` (case-id rules, seeds);
- ``strategies``: which case next (disagreement, entropy, random, first) and the score cache;
- ``retrain``: warm-started CAML fine-tuning, validation comparison, promotion, rollback;

The ``caml al`` command is ``cli.al``; what the Slicer module needs on top (load a case,
accept a segment, the Dice plot) is ``slicer.al_mrml``.

Imports point down only: this package uses training, inference and io, never the reverse.
"""

from .cohort import ACCEPTED_TRAIN, ACCEPTED_VAL, PREDICTED, UNLABELED, Cohort, CohortError

__all__ = ["Cohort", "CohortError", "UNLABELED", "PREDICTED", "ACCEPTED_TRAIN", "ACCEPTED_VAL"]
