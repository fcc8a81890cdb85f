"""Training data: where the cases are, which are labeled, how they are loaded and augmented.

Two folder layouts are recognised by :func:`open_source` (README-data.md has the details):

- **LA**: the preprocessed left-atrium release, ``<root>/train.list`` and
  ``<root>/2018LA_Seg_Training Set/<id>/mri_norm2.h5`` (0.625 mm; its own z-scoring, done
  before cropping, is treated as an arbitrary scanner scale like any other).
- **generic**: image files SimpleITK reads, ``<root>/images/<id>.<ext>`` with
  optional ``<root>/labels/<id>.<ext>`` (or nnU-Net's ``imagesTr/<id>_0000.<ext>``
  and ``labelsTr/<id>.<ext>``); an optional ``<root>/train.list`` fixes the case
  set and its order. A case without a label file is unlabeled-only.

Every problem with the data is a :class:`DataError` whose message names the
file, folder or case at fault, so a training job fails before it starts rather
than hours into it. Augmentation draws all its randomness from the
``numpy.random.Generator`` it is given, so a trainer that saves the generator's
state resumes with exactly the same crops.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import CAMLError
from ..inference.preprocess import axis_starts, model_grid, normalize_intensity
from ..io.volume import ImageError, Volume, read_image, read_la_h5
from ..model.settings import AUGMENTATION_FLIP_AXES, PERCENTILE
from ..progress import CancelToken, ProgressCallback, ProgressEvent, check_cancel

PathLike = Union[str, Path]

#: Folder of the LA release holding one sub-folder per case (the spaces are part of the name).
LA_CASES_FOLDER = "2018LA_Seg_Training Set"
LA_FILE_NAME = "mri_norm2.h5"
#: Optional file fixing the case set and order (the LA release always has one).
ORDER_FILE = "train.list"
#: Image file extensions of the generic layout, longest first so ``.nii.gz`` wins over ``.gz``.
IMAGE_EXTENSIONS = (".seg.nrrd", ".nii.gz", ".nrrd", ".nii", ".mha", ".mhd")
#: (images folder, labels folder, channel suffix of image names) for the generic layouts.
GENERIC_FOLDERS = (("images", "labels", ""), ("imagesTr", "labelsTr", "_0000"))


class DataError(CAMLError, ValueError):
    """A problem with the training data; the message names the file, folder or case and the problem."""


@dataclass
class Case:
    """One loaded case.

    ``image``: float32 ``[i, j, k]`` on a grid of ``spacing`` (mm), normalised by
    ``preprocess.normalize_intensity`` from the file's own voxels, whatever the layout, exactly
    as ``caml segment`` normalises an image.
    ``label``: uint8 in {0, 1} of the same shape, or None when not loaded or absent.
    """

    case_id: str
    image: np.ndarray
    label: Optional[np.ndarray]
    spacing: Tuple[float, float, float]


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


# --------------------------------------------------------------------------- id lists


def read_id_list(path: PathLike) -> List[str]:
    """Case ids of a text file, one per line; blank lines and ``#`` comments are ignored.

    Raises DataError when the file is missing, holds no id, or repeats an id.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: case list not found")
    ids: List[str] = []
    seen: Dict[str, int] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        case_id = line.split("#", 1)[0].strip()
        if not case_id:
            continue
        if case_id in seen:
            raise DataError(f"{path}: case id {case_id!r} appears twice (lines {seen[case_id]} and {lineno})")
        seen[case_id] = lineno
        ids.append(case_id)
    if not ids:
        raise DataError(f"{path}: case list is empty (no ids, only blank or '#' lines)")
    return ids


def _natural_key(text: str) -> List[Union[int, str]]:
    # "case2" before "case10", as people number their cases.
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


# --------------------------------------------------------------------------- sources


class CaseSource:
    """A folder of cases. Subclasses find the files; ``load`` validates and preprocesses one case."""

    root: Path
    layout: str = ""

    def __init__(self, root: PathLike) -> None:
        self.root = Path(root)
        self._ids: List[str] = []
        self._known: set = set()

    def case_ids(self) -> List[str]:
        """All case ids in the dataset's standard order (``train.list`` when there is one)."""
        return list(self._ids)

    def has_label(self, case_id: str) -> bool:
        raise NotImplementedError

    def describe(self, case_id: str) -> str:
        """The file (or files) holding a case, for messages."""
        raise NotImplementedError

    def _read(self, case_id: str, with_label: bool) -> Tuple[Volume, Optional[np.ndarray]]:
        """(image volume, label array or None) as stored."""
        raise NotImplementedError

    def read(self, case_id: str, with_label: bool = True) -> Tuple[Volume, Optional[np.ndarray]]:
        """A case as stored: the image Volume on its own grid and the checked label (or None).

        What ``caml evaluate`` and the trainer's validation segment, through the
        same predictor as ``caml segment``, so their scores are a user's scores.
        """
        self._check_known(case_id)
        volume, label = self._read(case_id, with_label)
        where = self.describe(case_id)
        if volume.array.ndim != 3:
            raise DataError(f"{where}: expected a 3D image, found shape {volume.array.shape}")
        if label is not None:
            label = _check_label(label, volume.shape, where)
        return volume, label

    def _set_ids(self, ids: List[str]) -> None:
        self._ids = list(ids)
        self._known = set(ids)

    def _check_known(self, case_id: str) -> None:
        if case_id not in self._known:
            raise DataError(f"{self.root}: unknown case id {case_id!r}")

    def load(self, case_id: str, target_spacing: Optional[Sequence[float]] = None,
             with_label: bool = True, normalization: str = PERCENTILE) -> Case:
        """Read, check and preprocess one case; see :func:`load_cases`."""
        volume, label = self.read(case_id, with_label)
        try:
            image = normalize_intensity(volume.array, normalization, self.describe(case_id))
        except ImageError as exc:
            raise DataError(str(exc)) from exc

        spacing = tuple(float(s) for s in volume.spacing)
        if target_spacing is not None:
            target = tuple(float(s) for s in target_spacing)
            if len(target) != 3 or min(target) <= 0:
                raise DataError(f"target spacing must be three positive numbers, got {target_spacing!r}")
            # The grid segment_volume puts the model on, anchored in patient space (the image's
            # own grid, untouched, along axes already at the target spacing).
            grid = model_grid(image.shape, spacing, target, axis_starts(volume))
            image = grid.sample(image, "linear").astype(np.float32, copy=False)
            if label is not None:
                label = grid.sample(label, "nearest").astype(np.uint8, copy=False)
            spacing = target
        return Case(case_id=case_id, image=np.ascontiguousarray(image),
                    label=None if label is None else np.ascontiguousarray(label),
                    spacing=spacing)  # type: ignore[arg-type]


def _check_label(label: np.ndarray, image_shape: Tuple[int, ...], where: str) -> np.ndarray:
    if tuple(label.shape) != tuple(image_shape):
        raise DataError(f"{where}: label shape {tuple(label.shape)} differs from image shape "
                        f"{tuple(image_shape)}")
    values = np.unique(label)
    bad = values[(values != 0) & (values != 1)]
    if bad.size:
        shown = ", ".join(f"{v:g}" for v in values[:10].astype(float))
        more = f" and {values.size - 10} more" if values.size > 10 else ""
        raise DataError(f"{where}: label must be binary (0 = background, 1 = left atrium); "
                        f"found values {shown}{more}")
    return label.astype(np.uint8, copy=False)


class LASource(CaseSource):
    """The preprocessed LA release: ``2018LA_Seg_Training Set/<id>/mri_norm2.h5``, recognised by
    that case folder. ``train.list`` fixes the case set and order when present; without it (a
    folder holding only ``test.list``, say) the cases are the sub-folders holding the file,
    in natural order."""

    layout = "LA"

    def __init__(self, root: PathLike) -> None:
        super().__init__(root)
        if (self.root / ORDER_FILE).is_file():
            ids = read_id_list(self.root / ORDER_FILE)
        else:
            cases = self.root / LA_CASES_FOLDER
            ids = sorted((d.name for d in cases.iterdir() if (d / LA_FILE_NAME).is_file()), key=_natural_key)
            if not ids:
                raise DataError(f"{cases}: no case folder holds {LA_FILE_NAME}")
        missing = [i for i in ids if not self._path(i).is_file()]
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise DataError(f"{self.root}: {len(missing)} case(s) of {ORDER_FILE} have no "
                            f"'{LA_CASES_FOLDER}/<id>/{LA_FILE_NAME}': {shown}")
        self._set_ids(ids)
        self._labeled: Dict[str, bool] = {}

    def _path(self, case_id: str) -> Path:
        return self.root / LA_CASES_FOLDER / case_id / LA_FILE_NAME

    def describe(self, case_id: str) -> str:
        return str(self._path(case_id))

    def has_label(self, case_id: str) -> bool:
        self._check_known(case_id)
        if case_id not in self._labeled:
            import h5py

            try:
                with h5py.File(self._path(case_id), "r") as f:
                    self._labeled[case_id] = "label" in f
            except OSError as exc:
                raise DataError(f"{self._path(case_id)}: unreadable HDF5 file ({exc})") from exc
        return self._labeled[case_id]

    def _read(self, case_id: str, with_label: bool) -> Tuple[Volume, Optional[np.ndarray]]:
        path = self._path(case_id)
        try:
            volume, label = read_la_h5(path)
        except KeyError as exc:
            raise DataError(f"{path}: no 'image' dataset in the HDF5 file") from exc
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: unreadable HDF5 file ({exc})") from exc
        if with_label and label is None:
            raise DataError(f"{path}: no 'label' dataset (case {case_id} is unlabeled)")
        return volume, (label if with_label else None)


class FolderSource(CaseSource):
    """Image files SimpleITK reads: ``images/<id>.<ext>`` + ``labels/<id>.<ext>`` (or imagesTr/labelsTr)."""

    layout = "generic"

    def __init__(self, root: PathLike, images_dir: str, labels_dir: str, channel_suffix: str) -> None:
        super().__init__(root)
        self.images_dir = self.root / images_dir
        self.labels_dir = self.root / labels_dir
        self._images = self._scan(self.images_dir, channel_suffix)
        self._labels = self._scan(self.labels_dir, "") if self.labels_dir.is_dir() else {}
        if not self._images:
            raise DataError(f"{self.images_dir}: no image files ({', '.join(IMAGE_EXTENSIONS)})")
        orphans = sorted(set(self._labels) - set(self._images), key=_natural_key)
        if orphans:
            raise DataError(f"{self.labels_dir}: label file(s) without an image in {self.images_dir}: "
                            + ", ".join(self._labels[i].name for i in orphans[:5]))
        order = self.root / ORDER_FILE
        if order.is_file():
            ids = read_id_list(order)
            missing = [i for i in ids if i not in self._images]
            if missing:
                raise DataError(f"{order}: case id(s) with no image in {self.images_dir}: "
                                + ", ".join(missing[:5]))
            self._set_ids(ids)
        else:
            self._set_ids(sorted(self._images, key=_natural_key))

    @staticmethod
    def _scan(folder: Path, channel_suffix: str) -> Dict[str, Path]:
        found: Dict[str, Path] = {}
        for path in sorted(folder.iterdir()):
            if not path.is_file() or path.name.startswith("."):
                continue
            ext = next((e for e in IMAGE_EXTENSIONS if path.name.lower().endswith(e)), None)
            if ext is None:
                continue  # .raw/.zraw data files of .mhd headers, notes, ...
            case_id = path.name[: -len(ext)]
            if channel_suffix:
                channel = re.search(r"_(\d{4})$", case_id)
                if channel is None:
                    raise DataError(f"{path}: nnU-Net image names end in '_0000' before the extension")
                if channel.group(1) != "0000":
                    raise DataError(f"{path}: extra input channel {channel.group(1)}; CAML segments a "
                                    "single MRI channel (only '_0000' images)")
                case_id = case_id[: -len(channel_suffix)]
            if case_id in found:
                raise DataError(f"{folder}: case {case_id!r} has two files: {found[case_id].name} "
                                f"and {path.name}")
            found[case_id] = path
        return found

    def image_path(self, case_id: str) -> Path:
        self._check_known(case_id)
        return self._images[case_id]

    def label_path(self, case_id: str) -> Optional[Path]:
        self._check_known(case_id)
        return self._labels.get(case_id)

    def describe(self, case_id: str) -> str:
        label = self._labels.get(case_id)
        return f"{self._images[case_id]}" + (f" (label {label})" if label is not None else "")

    def has_label(self, case_id: str) -> bool:
        self._check_known(case_id)
        return case_id in self._labels

    def _read(self, case_id: str, with_label: bool) -> Tuple[Volume, Optional[np.ndarray]]:
        image_path = self._images[case_id]
        volume = _read_volume(image_path)
        if not with_label:
            return volume, None
        label_path = self._labels.get(case_id)
        if label_path is None:
            raise DataError(f"{image_path}: case {case_id} has no label file in {self.labels_dir}")
        label = _read_volume(label_path)
        if label.shape != volume.shape:
            raise DataError(f"{label_path}: label shape {label.shape} differs from image shape "
                            f"{volume.shape} of {image_path.name}")
        problems = volume.grid_differences(label)
        if problems:
            raise DataError(f"{label_path}: label geometry differs from image {image_path.name}: "
                            + "; ".join(problems))
        return volume, label.array


def _read_volume(path: Path) -> Volume:
    try:
        return read_image(path)
    except (ValueError, FileNotFoundError) as exc:
        message = str(exc)
        raise DataError(message if str(path) in message else f"{path}: {message}") from exc


def open_source(root: PathLike) -> CaseSource:
    """Recognise the layout of a data folder and list its cases (no image is read yet).

    LA layout when ``root`` holds ``2018LA_Seg_Training Set/`` (with any case list); otherwise the
    generic layout, ``images/`` (+ ``labels/``) or nnU-Net's ``imagesTr/`` (+ ``labelsTr/``).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found")
    if (root / LA_CASES_FOLDER).is_dir():
        return LASource(root)
    for images_dir, labels_dir, suffix in GENERIC_FOLDERS:
        if (root / images_dir).is_dir():
            return FolderSource(root, images_dir, labels_dir, suffix)
    raise DataError(f"{root}: no recognisable cases: expected '{LA_CASES_FOLDER}/<id>/{LA_FILE_NAME}' "
                    f"(LA layout), 'images/<id>.nrrd|.nii.gz|...' with optional "
                    "'labels/<id>.<ext>', or nnU-Net 'imagesTr/<id>_0000.<ext>' + 'labelsTr/<id>.<ext>'")


# --------------------------------------------------------------------------- split


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


# --------------------------------------------------------------------------- loading


def load_cases(source: CaseSource, ids: Sequence[str], target_spacing: Optional[Sequence[float]] = None,
               with_label: bool = True, progress: Optional[ProgressCallback] = None,
               cancel: Optional[CancelToken] = None, normalization: str = PERCENTILE) -> List[Case]:
    """Load, check and preprocess the cases ``ids`` of ``source``, in that order.

    Checks (a DataError names the file): 3D single-component image, no NaN/Inf, not constant;
    label of the image's shape and (generic layout) geometry, with values 0 and 1 only.
    Every image is normalised by ``normalize_intensity(image, normalization)``, the layout
    makes no difference. With
    ``target_spacing`` differing from a case's spacing, the image is resampled linearly and the
    label by nearest neighbour to the grid of the same extent at that spacing.
    ``progress`` receives ``ProgressEvent("load", done, total)`` before the first and after each case.
    """
    total = len(ids)
    if progress is not None:
        progress(ProgressEvent("load", 0, total))
    cases = []
    for n, case_id in enumerate(ids, start=1):
        check_cancel(cancel)
        cases.append(source.load(case_id, target_spacing, with_label=with_label, normalization=normalization))
        if progress is not None:
            progress(ProgressEvent("load", n, total, message=case_id))
    return cases


# --------------------------------------------------------------------------- augmentation


def random_rot_flip(image: np.ndarray, label: Optional[np.ndarray],
                    rng: np.random.Generator) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """The official LA augmentation: rot90 by k in 0..3 in the (i, j) plane, then a flip of axis 0 or 1.

    The same transform is applied to ``image`` and ``label`` (which may be None). As in the
    official code the flip always happens, so the result is always one of the 4 reflections of
    the (i, j) plane (rot90(k) + flip(0) equals rot90(k + 2) + flip(1)), never a pure rotation.
    """
    k = int(rng.integers(0, 4))
    axis = int(rng.choice(AUGMENTATION_FLIP_AXES))
    image = np.ascontiguousarray(np.flip(np.rot90(image, k, axes=(0, 1)), axis=axis))
    if label is not None:
        label = np.ascontiguousarray(np.flip(np.rot90(label, k, axes=(0, 1)), axis=axis))
    return image, label


def _pad_short_axes(image: np.ndarray, label: Optional[np.ndarray], patch: Sequence[int],
                    ) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """The official code's padding before a crop: once any axis is no longer than ``patch``, every
    axis gets ``max((patch - size) // 2 + 3, 0)`` zeros on each side - so an axis 1-4 voxels
    longer than the patch is padded too (by 2, 2, 1, 1; floor division of a negative number)."""
    if all(s > p for s, p in zip(image.shape, patch)):
        return image, label
    pad = [(max((p - s) // 2 + 3, 0),) * 2 for s, p in zip(image.shape, patch)]
    if not any(before for before, _ in pad):
        return image, label
    image = np.pad(image, pad, mode="constant", constant_values=0)
    if label is not None:
        label = np.pad(label, pad, mode="constant", constant_values=0)
    return image, label


def random_crop(image: np.ndarray, label: Optional[np.ndarray], patch_size: Sequence[int],
                rng: np.random.Generator, margin: Sequence[int] = (0, 0, 0),
                ) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """A uniformly random ``patch_size`` crop of ``image`` and ``label`` (which may be None).

    When an axis is no longer than the patch, the image is first padded with zeros as the
    official code pads it (``_pad_short_axes``; zero is the mean of a z-scored image).
    Unlike the official code, the crop may also start at the last possible offset.

    ``margin`` (voxels per axis, default none) lets the crop reach that far past the
    image's border, the outside being 0 (the body's darkest intensities after
    ``normalize_intensity``) and background. On the LA crops a 64-voxel patch
    nearly spans some axes, so without a margin the atrium sits at almost the
    same place in every patch and the model learns that place; users' ROI crops
    and whole-chest scans put it elsewhere. The number of random draws does not
    depend on the margin.
    """
    patch = tuple(int(p) for p in patch_size)
    if len(patch) != image.ndim or min(patch) < 1:
        raise ValueError(f"patch size {patch_size!r} does not fit a {image.ndim}D image")
    if label is not None and label.shape != image.shape:
        raise ValueError(f"label shape {label.shape} differs from image shape {image.shape}")
    if any(margin):
        outside = [(int(m), int(m)) for m in margin]
        image = np.pad(image, outside, mode="constant", constant_values=0)
        if label is not None:
            label = np.pad(label, outside, mode="constant", constant_values=0)
    image, label = _pad_short_axes(image, label, patch)
    start = [int(rng.integers(0, s - p + 1)) for s, p in zip(image.shape, patch)]
    window = tuple(slice(b, b + p) for b, p in zip(start, patch))
    image = np.ascontiguousarray(image[window])
    if label is not None:
        label = np.ascontiguousarray(label[window])
    return image, label


def random_roi(image: np.ndarray, label: Optional[np.ndarray], rng: np.random.Generator,
               probability: float, min_fraction: float,
               ) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """With ``probability``, crop ``image`` and ``label`` to a random box, as a user's ROI would.

    Each axis keeps a length drawn uniformly between ``min_fraction`` of its size and all
    of it, at a uniform offset. The LA crops are tight around the atrium, so without this
    the atrium never touches an image border in training and the model learns that
    "near the border" means background; a user's ROI, or a crop by 80 % of each axis,
    then cuts the atrium. Measured, it did not make ROI crops agree better (README,
    "Resampling and augmentation"): the crop problem came from sliding-window placement and is
    solved by the default inference protocol; off in the shipped presets. The crop is a
    real crop (not masking), so ``random_crop`` then pads it exactly as inference pads
    a small image. Seven values are drawn from ``rng`` whether or not the crop happens,
    so later draws do not depend on the probability.
    """
    if label is not None and label.shape != image.shape:
        raise ValueError(f"label shape {label.shape} differs from image shape {image.shape}")
    apply = rng.random() < probability
    lengths = [int(round(rng.uniform(min_fraction, 1.0) * s)) for s in image.shape]
    offsets = [rng.random() for _ in image.shape]
    if not apply:
        return image, label
    lengths = [min(max(n, 1), s) for n, s in zip(lengths, image.shape)]
    box = tuple(slice(int(o * (s - n + 1)), int(o * (s - n + 1)) + n)
                for o, n, s in zip(offsets, lengths, image.shape))
    image = np.ascontiguousarray(image[box])
    if label is not None:
        label = np.ascontiguousarray(label[box])
    return image, label


def random_shifted_pair(image: np.ndarray, patch_size: Sequence[int], rng: np.random.Generator,
                        max_shift: Sequence[int]) -> Tuple[np.ndarray, np.ndarray, Tuple[int, int, int]]:
    """Two ``patch_size`` crops of ``image`` offset by a random shift ``d`` (the second starts ``d`` later).

    Each axis's shift is uniform in ``[-m, m]``, ``m`` being ``max_shift`` or the room the
    image leaves around the patch if smaller; the crops overlap on ``patch - |d|`` voxels,
    where a model should predict the same whatever else its window holds
    (``losses.shift_consistency_loss``). Keeping both crops inside the image matters:
    crops reaching into padding that ``random_crop`` would not add shift BatchNorm's
    running statistics, and a model trained so (shifts of a quarter patch on the LA
    crops, padded) predicted empty masks at inference after 350 iterations.
    An axis no longer than the patch is padded as ``random_crop`` pads it (shift 0).
    """
    patch = tuple(int(p) for p in patch_size)
    room = [max(0, s - p) for s, p in zip(image.shape, patch)]
    shift = tuple(int(rng.integers(-m, m + 1)) for m in (min(int(x), r) for x, r in zip(max_shift, room)))
    span = [p + abs(d) for p, d in zip(patch, shift)]
    image, _ = _pad_short_axes(image, None, patch)
    start = [int(rng.integers(0, s - n + 1)) for s, n in zip(image.shape, span)]
    first = tuple(slice(b + max(0, -d), b + max(0, -d) + p) for b, d, p in zip(start, shift, patch))
    second = tuple(slice(b + max(0, d), b + max(0, d) + p) for b, d, p in zip(start, shift, patch))
    return np.ascontiguousarray(image[first]), np.ascontiguousarray(image[second]), shift  # type: ignore[return-value]


def random_intensity(image: np.ndarray, rng: np.random.Generator, probability: float,
                     scale: Tuple[float, float], shift: float, gamma: Tuple[float, float],
                     noise: float) -> np.ndarray:
    """Intensity augmentation of a normalised crop (the preset's ``intensity_*`` fields).

    With ``probability``: a contrast curve ``x**gamma`` on the positive part
    (gamma log-uniform in ``gamma``), a factor log-uniform in ``scale``, an
    offset uniform in ``[-shift, shift]`` and Gaussian noise with a standard
    deviation uniform in ``[0, noise]``. Normalisation maps every image's body
    to about [0, 1], but what lands where still varies between scanners and
    with the field of view (the blood pool's mean from 0.5 to 0.85 on the LA
    cases; a crop moves the scale by a few percent): the model must not hinge
    on one exact scale. Every draw comes from ``rng`` (resumable), even when
    the augmentation is skipped, so crops do not depend on the probability.
    """
    apply = rng.random() < probability
    g = float(np.exp(rng.uniform(np.log(gamma[0]), np.log(gamma[1]))))
    s = float(np.exp(rng.uniform(np.log(scale[0]), np.log(scale[1]))))
    b = float(rng.uniform(-shift, shift)) if shift > 0 else 0.0
    sd = float(rng.uniform(0.0, noise)) if noise > 0 else 0.0
    seed = int(rng.integers(0, 2**31 - 1))
    if not apply:
        return image
    out = image.astype(np.float32, copy=True)
    if g != 1.0:
        positive = out > 0
        out[positive] = out[positive] ** g
    out = out * s + b
    if sd > 0:
        out += np.random.default_rng(seed).normal(0.0, sd, out.shape).astype(np.float32)
    return out.astype(np.float32, copy=False)
