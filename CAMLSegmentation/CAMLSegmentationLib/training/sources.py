"""Case sources: where the cases of a training set are, and reading and checking one case.

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
than hours into it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import CAMLError
from ..inference.preprocess import axis_starts, model_grid, normalize_intensity
from ..io.volume import ImageError, Volume, read_image, read_la_h5
from ..model.settings import PERCENTILE

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
