"""Which cases are labeled, unlabeled, validation and held out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from .sources import CaseSource, DataError, PathLike, read_id_list


@dataclass
class Split:
    """Case ids per role. Validation cases stay in ``unlabeled`` too: training sees only their images.
    ``holdout`` cases are in no role at all: training never sees them and they choose nothing
    (neither the checkpoint nor the post-processing), so ``caml evaluate`` on them is a test score."""

    labeled: List[str]
    unlabeled: List[str]
    validation: List[str] = field(default_factory=list)
    holdout: List[str] = field(default_factory=list)

    def to_dict(self) -> Dict[str, List[str]]:
        return {"labeled": list(self.labeled), "unlabeled": list(self.unlabeled),
                "validation": list(self.validation), "holdout": list(self.holdout)}


def make_split(source: CaseSource, labeled: Optional[int] = None,
               labeled_list: Optional[PathLike] = None, val_list: Optional[PathLike] = None,
               min_labeled: int = 1, val_last: Optional[int] = None,
               unlabeled_list: Optional[PathLike] = None, holdout_list: Optional[PathLike] = None) -> Split:
    """Labeled / unlabeled / validation case ids.

    Exactly one of ``labeled`` (the first N cases, in ``case_ids()`` order, that have a label; on LA
    exactly "the first N of train.list") and ``labeled_list`` (a file of ids). Validation comes from
    ``val_list`` (a file of ids) or ``val_last`` (the last N labeled cases of the order), or is empty.
    Unlabeled is every case that is not labeled, validation cases included: training uses only
    their images, their labels serve model selection alone. ``min_labeled`` is the labeled batch size.
    ``unlabeled_list`` (a file of ids) replaces that default: its images, and only they, feed the
    unlabeled stream; labeled ids may appear in it (with every training case labeled, their images
    are the only unlabeled data that leaves the validation images unseen), validation ids may not.
    ``holdout_list`` (a file of labeled ids) takes cases out of everything: they are skipped by
    ``labeled``/``val_last`` counts, left out of the default unlabeled stream, and refused in any
    other list.
    """
    holdout = _checked_list(source, holdout_list, "held-out") if holdout_list is not None else []
    held = set(holdout)
    ids = [i for i in source.case_ids() if i not in held]
    if (labeled is None) == (labeled_list is None):
        raise DataError("give exactly one of: a number of labeled cases, or a labeled case list")
    if val_list is not None and val_last is not None:
        raise DataError("give at most one of: a validation case list, or a number of last cases "
                        "to validate on")

    # The ids that have a label, looked up once (a file check per case) when a count needs them.
    with_label = [i for i in ids if source.has_label(i)] if labeled is not None or val_last else []
    if labeled_list is not None:
        labeled_ids = _checked_list(source, labeled_list, "labeled")
    else:
        assert labeled is not None
        if labeled < 0:
            raise DataError(f"number of labeled cases must be positive, got {labeled}")
        if labeled > len(with_label):
            raise DataError(f"{source.root}: {labeled} labeled cases asked for, but only {len(with_label)} "
                            f"of the {len(ids)} cases have a label")
        labeled_ids = with_label[:labeled]
    if len(labeled_ids) < min_labeled:
        raise DataError(f"{len(labeled_ids)} labeled case(s), but training takes {min_labeled} labeled "
                        f"case(s) per batch: label at least {min_labeled} cases or use a preset with a "
                        "smaller labeled batch")

    if val_list is not None:
        validation = _checked_list(source, val_list, "validation")
    elif val_last:
        if val_last < 0:
            raise DataError(f"number of validation cases must be positive, got {val_last}")
        if val_last > len(with_label):
            raise DataError(f"{source.root}: {val_last} validation cases asked for, but only "
                            f"{len(with_label)} cases have a label")
        validation = with_label[len(with_label) - val_last:]
    else:
        validation = []
    both = [i for i in validation if i in set(labeled_ids)]
    if both:
        where = f" ({val_list})" if val_list is not None else ""
        raise DataError(f"validation case(s) also labeled for training{where}: {', '.join(both[:5])}; "
                        "a model must not be selected on cases it was trained on")

    for name, role in ((labeled_list, labeled_ids), (val_list, validation)):
        _refuse_holdout(name, role, held)
    labeled_set = set(labeled_ids)
    if unlabeled_list is not None:
        unlabeled = read_id_list(unlabeled_list)
        known = set(ids)
        unknown = [i for i in unlabeled if i not in known]
        if unknown:
            raise DataError(f"{unlabeled_list}: unknown case id(s) {', '.join(repr(i) for i in unknown[:5])} "
                            f"(not in {source.root})")
        seen = [i for i in unlabeled if i in set(validation)]
        if seen:
            raise DataError(f"{unlabeled_list}: validation case(s) in the unlabeled list: {', '.join(seen[:5])}; "
                            "leave them out or validate on other cases")
        _refuse_holdout(unlabeled_list, unlabeled, held)
    else:
        unlabeled = [i for i in ids if i not in labeled_set]
    return Split(labeled=labeled_ids, unlabeled=unlabeled, validation=validation, holdout=holdout)


def _refuse_holdout(path: Optional[PathLike], ids: Sequence[str], held: set) -> None:
    both = [i for i in ids if i in held]
    if path is not None and both:
        raise DataError(f"{path}: held-out case(s) in this list: {', '.join(both[:5])}; a held-out case "
                        "takes no part in training or model selection")


def _checked_list(source: CaseSource, path: PathLike, role: str) -> List[str]:
    ids = read_id_list(path)  # raises on duplicates
    known = set(source.case_ids())
    unknown = [i for i in ids if i not in known]
    if unknown:
        raise DataError(f"{path}: unknown case id(s) {', '.join(repr(i) for i in unknown[:5])} "
                        f"(not in {source.root})")
    unlabeled = [i for i in ids if not source.has_label(i)]
    if unlabeled:
        raise DataError(f"{path}: {role} case(s) without a label: {', '.join(unlabeled[:5])}")
    return ids
