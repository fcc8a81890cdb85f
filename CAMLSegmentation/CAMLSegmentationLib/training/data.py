"""Training data in one import: the names of :mod:`.sources` (where the cases are, reading one
case), :mod:`.split` (which cases play which role), :mod:`.loading` (loading a split before
training) and :mod:`.augment` (augmentations of training crops), where each is defined.

Kept so that ``from ..training.data import open_source`` and ``training.data.random_crop`` go
on working; new code imports from the module that defines the name.
"""

from __future__ import annotations

from .augment import random_crop, random_intensity, random_roi, random_rot_flip, random_shifted_pair
from .loading import load_cases
from .sources import (
    GENERIC_FOLDERS,
    IMAGE_EXTENSIONS,
    LA_CASES_FOLDER,
    LA_FILE_NAME,
    ORDER_FILE,
    Case,
    CaseSource,
    DataError,
    FolderSource,
    LASource,
    PathLike,
    _natural_key,
    open_source,
    read_id_list,
)
from .split import Split, make_split

__all__ = ["GENERIC_FOLDERS", "IMAGE_EXTENSIONS", "LA_CASES_FOLDER", "LA_FILE_NAME", "ORDER_FILE", "Case",
           "CaseSource", "DataError", "FolderSource", "LASource", "PathLike", "Split", "_natural_key",
           "load_cases", "make_split", "open_source", "random_crop", "random_intensity", "random_roi",
           "random_rot_flip", "random_shifted_pair", "read_id_list"]
