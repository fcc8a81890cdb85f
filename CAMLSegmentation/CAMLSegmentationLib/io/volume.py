"""The canonical image container of the engine, its readers and the mask writers.

A ``Volume`` holds a float32 array indexed ``[i, j, k]`` (fastest-varying file
axis first, the ITK/VTK index order) plus its physical geometry. SimpleITK and
Slicer hand out arrays indexed ``[k, j, i]``; the one transpose happens here,
at the boundary, and nowhere else.

Readers accept every 3D scalar image SimpleITK reads (NRRD, NIfTI, MetaImage,
...), a folder holding a DICOM series, and the preprocessed LA ``.h5`` files.
Writers put a mask on exactly the grid and geometry of a reference volume, as
a Slicer segmentation (``.seg.nrrd``), NIfTI or plain NRRD, so the mask
overlays its image in any viewer, flipped and oblique axes included.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import CAMLError, MissingFileError, OutputError, SizeLimitError
from .files import atomic_outputs, check_utf8_name

if TYPE_CHECKING:  # SimpleITK is imported where it is used, so importing this module stays cheap
    import SimpleITK as sitk

#: Voxel size of the preprocessed LA h5 files (not stored in them).
LA_SPACING = (0.625, 0.625, 0.625)

#: How the segmentation is presented in Slicer: name, colour (RGB 0-1) and terminology.
#: The one definition, used by the ``.seg.nrrd`` writer here and by the Slicer module
#: (through ``mrml_bridge``). The terminology is Slicer's serialised form
#: (context~category~type~type modifier~anatomic context~region~region modifier) of
#: SNOMED CT 82471001 "Left atrium" in the "Segmentation category and type - DICOM
#: master list" context, where Slicer looks it up; the colour is that entry's
#: ``recommendedDisplayRGBValue`` (203, 108, 81).
SEGMENT_NAME = "Left atrium"
SEGMENT_ID = "left_atrium"
SEGMENT_COLOR_RGB = (203, 108, 81)
SEGMENT_COLOR = tuple(round(c / 255.0, 4) for c in SEGMENT_COLOR_RGB)
SEGMENT_TERMINOLOGY = ("Segmentation category and type - DICOM master list"
                       "~SCT^123037004^Anatomical Structure"
                       "~SCT^82471001^Left atrium"
                       "~^^"
                       "~Anatomic codes - DICOM master list~^^~^^")

#: File name endings the mask writer understands, longest first.
MASK_FORMATS = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


class ImageError(CAMLError, ValueError):
    """An input image that cannot be segmented; the message names the file and the problem."""


#: Largest image (voxels) read or resampled unless ``CAML_MAX_VOXELS`` says otherwise: 2^28, about
#: 268 million voxels (1 GiB as float32), several times a 576x576x88 clinical MRI. A header may
#: claim any size; the claim is checked before a byte is allocated.
DEFAULT_MAX_VOXELS = 1 << 28


def max_voxels() -> int:
    """The voxel limit: ``CAML_MAX_VOXELS`` from the environment, else ``DEFAULT_MAX_VOXELS``."""
    raw = os.environ.get("CAML_MAX_VOXELS", "").strip()
    if not raw:
        return DEFAULT_MAX_VOXELS
    try:
        value = int(float(raw))
    except ValueError:
        raise SizeLimitError(f"CAML_MAX_VOXELS={raw!r} is not a number") from None
    if value < 1:
        raise SizeLimitError(f"CAML_MAX_VOXELS={raw!r} must be positive")
    return value


def check_size(shape: Sequence[int], source: PathLike, what: str = "image") -> None:
    """Refuse a grid of more voxels than ``max_voxels()`` before anything of that size is allocated."""
    count = 1
    for n in shape:
        count *= max(0, int(n))
    limit = max_voxels()
    if count > limit:
        dims = "x".join(str(int(n)) for n in shape)
        raise SizeLimitError(f"{source}: {what} of {dims} = {count:,} voxels exceeds the limit of {limit:,} "
                             f"(set CAML_MAX_VOXELS to raise it if the machine has the memory)")


#: Geometry agreement between an image and a label on its grid: mm for spacing and origin
#: (NIfTI stores them as float32), unitless for the direction cosines.
GRID_TOL_MM = 1e-3
DIRECTION_TOL = 1e-4


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{float(v):.4g}" for v in values) + ")"


@dataclass
class Volume:
    """A 3D image: ``array[i, j, k]`` plus spacing (mm), origin (mm) and a 3x3 direction matrix.

    ``direction`` columns are the physical directions of the i, j, k axes (ITK convention).
    """

    array: np.ndarray
    spacing: Tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: Tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))

    @property
    def shape(self) -> Tuple[int, int, int]:
        return tuple(self.array.shape)  # type: ignore[return-value]

    def grid_differences(self, other: Volume) -> List[str]:
        """How ``other``'s grid differs from this one, as readable items (empty: the same grid).

        Shape exactly; spacing and origin to 0.001 mm and direction cosines to 1e-4, since NIfTI
        stores them as float32. What a label must match to lie on its image's grid.
        """
        if self.shape != other.shape:
            return [f"shape {other.shape} vs {self.shape}"]
        problems = []
        for name, tol in (("spacing", GRID_TOL_MM), ("origin", GRID_TOL_MM), ("direction", DIRECTION_TOL)):
            mine, theirs = np.ravel(getattr(self, name)), np.ravel(getattr(other, name))
            if not np.allclose(theirs, mine, rtol=0, atol=tol):
                problems.append(f"{name} {_fmt(theirs)} vs {_fmt(mine)}")
        return problems

    def same_geometry(self, other: Volume, tol: float = 1e-4) -> bool:
        return (self.shape == other.shape
                and np.allclose(self.spacing, other.spacing, atol=tol)
                and np.allclose(self.origin, other.origin, atol=tol)
                and np.allclose(self.direction, other.direction, atol=tol))


PathLike = Union[str, Path]


# --------------------------------------------------------------------------- reading


def read_volume(path: PathLike) -> Volume:
    """Read an image for segmentation: an LA ``.h5``, a DICOM folder or any SimpleITK format.

    The result is validated (3D, one component, no empty axis, finite, not
    constant); problems raise ``ImageError`` naming the file.
    """
    path = Path(path)
    if path.suffix.lower() in (".h5", ".hdf5"):
        volume, _ = read_la_h5(path)
    else:
        volume = read_image(path)
    validate_volume(volume, path)
    return volume


def read_image(path: PathLike) -> Volume:
    """Read a 3D scalar image (any SimpleITK format, or a folder with one DICOM series) as float32."""

    path = Path(path)
    check_utf8_name(path)
    if not path.exists():
        raise MissingFileError(f"{path}: no such file or folder")
    try:
        img = _read_dicom_folder(path) if path.is_dir() else _read_image_file(path)
    except RuntimeError as exc:
        raise ImageError(f"{path}: unreadable image ({_last_line(exc)})") from exc
    return volume_from_sitk(img, path)


def _read_image_file(path: Path) -> sitk.Image:
    """Read one image file after checking the size its header claims against ``max_voxels()``."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()  # the header only
    check_size(reader.GetSize(), path)
    return reader.Execute()


def _read_dicom_folder(path: Path) -> sitk.Image:
    import SimpleITK as sitk

    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path))
    if not series:
        raise ImageError(f"{path}: a folder, but it holds no DICOM series")
    # Several series in one folder (localisers, other sequences): take the one with most slices.
    files = max((sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), s) for s in series), key=len)
    first = sitk.ImageFileReader()
    first.SetFileName(files[0])
    first.ReadImageInformation()
    check_size(tuple(first.GetSize()[:2]) + (len(files),), path)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    return reader.Execute()


def _last_line(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__


def volume_from_sitk(img: sitk.Image, source: PathLike = "image") -> Volume:
    """Convert a SimpleITK image to a float32 ``Volume`` (the one KJI -> IJK transpose)."""
    import SimpleITK as sitk

    dim = img.GetDimension()
    if dim == 4:
        raise ImageError(f"{source}: a 4D image (e.g. a time series); expected one 3D volume")
    if dim != 3:
        raise ImageError(f"{source}: expected a 3D image, found {dim}D")
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise ImageError(f"{source}: expected one component per voxel, found "
                         f"{img.GetNumberOfComponentsPerPixel()} (a multi-component image, e.g. RGB "
                         f"or a vector field)")
    if 0 in img.GetSize():
        raise ImageError(f"{source}: an axis of zero length (size {img.GetSize()})")
    arr = sitk.GetArrayViewFromImage(img).transpose(2, 1, 0).astype(np.float32)
    return Volume(array=np.ascontiguousarray(arr),
                  spacing=tuple(float(s) for s in img.GetSpacing()),  # type: ignore[arg-type]
                  origin=tuple(float(o) for o in img.GetOrigin()),  # type: ignore[arg-type]
                  direction=np.array(img.GetDirection(), dtype=float).reshape(3, 3))


def import_h5py(needed_for: PathLike = "an .h5 file") -> Any:
    """The ``h5py`` module, or an ``ImageError`` saying how to get it.

    Only LA ``.h5`` files need it (reading them, training on them); segmenting any
    other image never imports it, so it is an optional dependency (``pip install h5py``).
    """
    try:
        import h5py
    except ImportError as exc:
        raise ImageError(f"{needed_for}: reading HDF5 (.h5) files needs the h5py package, which is not "
                         f"installed (pip install h5py)") from exc
    return h5py


def read_la_h5(path: PathLike) -> Tuple[Volume, Optional[np.ndarray]]:
    """Read a preprocessed LA ``mri_norm2.h5``: (image Volume, label array or None)."""
    h5py = import_h5py(path)
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"{path}: no such file")
    try:
        with h5py.File(path, "r") as f:
            if "image" not in f:
                raise ImageError(f"{path}: no 'image' dataset (not an LA mri_norm2.h5 file)")
            check_size(f["image"].shape, path)
            image = np.asarray(f["image"][()], dtype=np.float32)
            label = np.asarray(f["label"][()], dtype=np.uint8) if "label" in f else None
    except OSError as exc:
        raise ImageError(f"{path}: unreadable HDF5 file ({_last_line(exc)})") from exc
    if image.ndim != 3:
        raise ImageError(f"{path}: expected a 3D 'image' dataset, found shape {image.shape}")
    # The release z-scored each scan before cropping it, so these values are on an arbitrary
    # scale like any scanner's: they go through the same normalisation as every other input.
    return Volume(array=image, spacing=LA_SPACING), label


def check_intensities(array: np.ndarray, source: PathLike = "image") -> np.ndarray:
    """The array as float32, after refusing NaN/Inf voxels and constant images (nothing to segment).

    The one check of an image's intensities: readers, normalisation and
    inference all call it, so every path refuses the same images with the same words.
    """
    a = np.asarray(array, dtype=np.float32)
    finite = np.isfinite(a)
    if not finite.all():
        bad = int(a.size - np.count_nonzero(finite))
        raise ImageError(f"{source}: {bad} voxels are NaN or Inf")
    if a.size == 0 or float(a.max()) == float(a.min()):
        value = f" (every voxel is {float(a.flat[0]):g})" if a.size else ""
        raise ImageError(f"{source}: a constant image{value}: nothing to segment")
    return a


def validate_volume(volume: Volume, source: PathLike = "image") -> None:
    """Raise ``ImageError`` naming ``source`` when the volume cannot be segmented."""
    a = volume.array
    if a.ndim != 3:
        raise ImageError(f"{source}: expected a 3D image, found an array of shape {a.shape}")
    if 0 in a.shape:
        raise ImageError(f"{source}: an axis of zero length (shape {a.shape})")
    check_intensities(a, source)
    if min(volume.spacing) <= 0 or not np.all(np.isfinite(volume.spacing)):
        raise ImageError(f"{source}: invalid voxel spacing {volume.spacing}")


# --------------------------------------------------------------------------- writing


def to_sitk(array: np.ndarray, reference: Volume) -> sitk.Image:
    """A SimpleITK image holding ``array[i, j, k]`` with the reference volume's geometry."""
    import SimpleITK as sitk

    if tuple(array.shape) != reference.shape:
        raise ValueError(f"array of shape {tuple(array.shape)} is not on the reference grid {reference.shape}")
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array).transpose(2, 1, 0)))
    img.SetSpacing([float(s) for s in reference.spacing])
    img.SetOrigin([float(o) for o in reference.origin])
    img.SetDirection([float(d) for d in np.asarray(reference.direction, dtype=float).ravel()])
    return img


def mask_format(path: PathLike) -> str:
    """The writer format picked from a file name (``.seg.nrrd``, ``.nii.gz``, ...); ValueError if unknown."""
    name = Path(path).name.lower()
    for ending in MASK_FORMATS:
        if name.endswith(ending):
            return ending
    raise OutputError(f"{path}: unknown output format; use one of {', '.join(MASK_FORMATS)}")


def segmentation_metadata(mask: np.ndarray) -> Dict[str, str]:
    """The NRRD header fields that make a labelmap a one-segment Slicer segmentation."""
    nonzero = np.nonzero(mask)
    if nonzero[0].size:
        extent = " ".join(f"{int(ax.min())} {int(ax.max())}" for ax in nonzero)
    else:
        extent = "0 -1 0 -1 0 -1"  # Slicer's notation for an empty segment
    color = " ".join(f"{c:g}" for c in SEGMENT_COLOR)
    return {
        "Segment0_ID": SEGMENT_ID,
        "Segment0_Name": SEGMENT_NAME,
        "Segment0_NameAutoGenerated": "0",
        "Segment0_Color": color,
        "Segment0_ColorAutoGenerated": "0",
        "Segment0_LabelValue": "1",
        "Segment0_Layer": "0",
        "Segment0_Extent": extent,
        "Segment0_Tags": f"TerminologyEntry:{SEGMENT_TERMINOLOGY}|",
        # "Source" is the current name, "Master" what Slicer before 5.2 reads.
        "Segmentation_SourceRepresentation": "Binary labelmap",
        "Segmentation_MasterRepresentation": "Binary labelmap",
        "Segmentation_ContainedRepresentationNames": "Binary labelmap|",
        "Segmentation_ReferenceImageExtentOffset": "0 0 0",
    }


def write_mask(mask: np.ndarray, reference: Volume, path: PathLike) -> Path:
    """Write a binary mask ``[i, j, k]`` on the reference volume's grid; the format follows the name.

    ``.seg.nrrd`` gives a Slicer segmentation with one segment "Left atrium"
    (label value 1); ``.nii.gz``/``.nii``/``.nrrd``/``.mha`` give a uint8
    labelmap. The file appears complete or not at all.
    """
    write_outputs([("mask", "mask", mask, Path(path))], reference)
    return Path(path)


def write_image(array: np.ndarray, reference: Volume, path: PathLike) -> Path:
    """Write a float map (probability, uncertainty) on the reference grid as ``.nrrd``/``.nii.gz``/..."""
    write_outputs([("image", "image", array, Path(path))], reference)
    return Path(path)


def write_outputs(items: Sequence[Tuple[str, str, np.ndarray, PathLike]], reference: Volume,
                  commit: bool = False) -> Dict[str, str]:
    """Write several outputs all-or-nothing and return ``{name: path}``.

    Each item is ``(name, kind, array, path)`` with kind ``"mask"`` (binary,
    written as uint8 or a Slicer segmentation) or ``"image"`` (float32 map).
    Every file is first written beside its target under a temporary name; the
    renames happen only after all writes succeeded, so a failure (bad array,
    disk full, unwritable folder) leaves none of them behind. ``commit``:
    these are the job's final outputs (see ``files.atomic_outputs``).
    """
    import SimpleITK as sitk

    images = [(name, _output_image(kind, array, reference, Path(path)), Path(path))
              for name, kind, array, path in items]  # every check before the first byte is written
    written: Dict[str, str] = {}
    with atomic_outputs([path for _, _, path in images], commit=commit) as temps:
        for (name, img, path), tmp in zip(images, temps):
            try:
                sitk.WriteImage(img, str(tmp), useCompression=True)
            except RuntimeError as exc:
                raise OutputError(f"{path}: could not write ({_last_line(exc)})") from exc
            written[name] = str(path)
    return written


def check_output_paths(items: Sequence[Tuple[str, str, PathLike]], inputs: Sequence[PathLike] = ()) -> None:
    """Refuse, before any work, outputs that could not all be written: ``(name, kind, path)`` items.

    Image outputs (kind ``mask`` or ``image``) must have a known lower-case
    ending that suits their kind (``.mhd`` writes two files, so it is
    refused); other kinds (``table``) are checked for place only. No two outputs may be
    the same file, none may be an input or a folder, and each must lie in a
    folder this process can write (or create).
    """
    seen: Dict[str, str] = {}
    protected = {os.path.normcase(str(Path(p).resolve())) for p in inputs}
    for name, kind, path in items:
        path = Path(path)
        check_utf8_name(path, f"{name} output")
        fmt = mask_format(path) if kind in ("mask", "image") else path.suffix
        if not path.name.endswith(fmt):
            raise OutputError(f"{path}: write the file name ending in lower case ({fmt}); the image "
                              f"writers choose the format from a case-sensitive ending")
        if fmt == ".mhd":
            raise OutputError(f"{path}: .mhd writes two files; use .mha, .nrrd or .nii.gz")
        if kind == "image" and fmt == ".seg.nrrd":
            raise OutputError(f"{path}: a .seg.nrrd holds a segmentation, not a float map; "
                              f"use .nrrd or .nii.gz")
        key = os.path.normcase(str(path.resolve()))
        if key in protected:
            raise OutputError(f"{path}: the {name} output would overwrite an input")
        if key in seen:
            raise OutputError(f"{path}: named for both the {seen[key]} and the {name} output")
        seen[key] = name
        if path.is_dir():
            raise OutputError(f"{path}: a folder; the {name} output needs a file name")
        folder = path.resolve().parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
            raise OutputError(f"{path}: cannot write the {name} output: {folder} is not a writable folder")


def _output_image(kind: str, array: np.ndarray, reference: Volume, path: Path) -> sitk.Image:
    check_utf8_name(path)
    fmt = mask_format(path)
    if fmt == ".mhd":
        # A .mhd has a companion .raw that a single-file atomic rename cannot carry.
        raise OutputError(f"{path}: .mhd writes two files; use .mha, .nrrd or .nii.gz")
    if kind == "mask":
        labels = (np.asarray(array) > 0).astype(np.uint8)
        img = to_sitk(labels, reference)
        if fmt == ".seg.nrrd":
            for key, value in segmentation_metadata(labels).items():
                img.SetMetaData(key, value)
        return img
    if kind != "image":
        raise ValueError(f"unknown output kind {kind!r}")
    if fmt == ".seg.nrrd":
        raise OutputError(f"{path}: a .seg.nrrd holds a segmentation, not a float map; use .nrrd or .nii.gz")
    return to_sitk(np.asarray(array, dtype=np.float32), reference)
