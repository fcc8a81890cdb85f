"""Volume I/O: every reader gives the same grid and geometry, every writer keeps the input's grid."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import SimpleITK as sitk
from CAMLSegmentationLib.io.volume import (
    SEGMENT_COLOR,
    SEGMENT_NAME,
    ImageError,
    Volume,
    read_image,
    read_volume,
    write_image,
    write_mask,
    write_outputs,
)
from inference_helpers import GEOMETRIES, make_volume

MASK_ENDINGS = [".seg.nrrd", ".nii.gz", ".nrrd", ".mha"]


def random_mask(shape, seed=1) -> np.ndarray:
    return (np.random.default_rng(seed).random(shape) > 0.6).astype(np.uint8)


def lps_ijk_to_world(volume: Volume) -> np.ndarray:
    """The 4x4 index-to-physical (LPS) matrix a correct file must carry."""
    m = np.eye(4)
    m[:3, :3] = np.asarray(volume.direction) @ np.diag(volume.spacing)
    m[:3, 3] = volume.origin
    return m


def assert_same_geometry(read: Volume, ref: Volume, tol: float = 1e-5) -> None:
    assert read.shape == ref.shape
    np.testing.assert_allclose(read.spacing, ref.spacing, atol=tol)
    np.testing.assert_allclose(read.origin, ref.origin, atol=tol)
    np.testing.assert_allclose(read.direction, ref.direction, atol=tol)


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
@pytest.mark.parametrize("ending", [".nrrd", ".nii.gz", ".mha"])
def test_image_round_trip_keeps_voxels_and_geometry(tmp_path: Path, geometry: str, ending: str) -> None:
    ref = make_volume(GEOMETRIES[geometry])
    path = write_image(ref.array, ref, tmp_path / f"img{ending}")
    back = read_image(path)
    assert_same_geometry(back, ref)
    np.testing.assert_array_equal(back.array, ref.array)


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
@pytest.mark.parametrize("ending", MASK_ENDINGS)
def test_mask_lies_on_the_reference_grid(tmp_path: Path, geometry: str, ending: str) -> None:
    ref = make_volume(GEOMETRIES[geometry])
    mask = random_mask(ref.shape)
    path = write_mask(mask, ref, tmp_path / f"mask{ending}")
    img = sitk.ReadImage(str(path))
    assert img.GetPixelID() == sitk.sitkUInt8
    back = read_image(path)
    assert_same_geometry(back, ref)
    np.testing.assert_array_equal(back.array.astype(np.uint8), mask)


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
def test_seg_nrrd_is_a_slicer_segmentation_for_slicerio(tmp_path: Path, geometry: str) -> None:
    slicerio = pytest.importorskip("slicerio")
    ref = make_volume(GEOMETRIES[geometry])
    mask = random_mask(ref.shape)
    path = write_mask(mask, ref, tmp_path / "out.seg.nrrd")
    seg = slicerio.read_segmentation(str(path))
    assert slicerio.segment_names(seg) == [SEGMENT_NAME]
    segment = slicerio.segment_from_name(seg, SEGMENT_NAME)
    assert segment["labelValue"] == 1
    np.testing.assert_allclose(segment["color"], SEGMENT_COLOR, atol=1e-6)
    np.testing.assert_allclose(seg["ijkToLPS"], lps_ijk_to_world(ref), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(seg["voxels"]), mask)  # slicerio keeps [i, j, k] order


@pytest.mark.parametrize("geometry", ["flipped", "oblique"])
def test_seg_nrrd_loads_in_slicer_at_the_right_place(tmp_path: Path, geometry: str) -> None:
    """Slicer's own segmentation reader (slicer-core) puts each mask voxel where the image voxel is."""
    pytest.importorskip("slicer")
    import vtk
    from slicer import vtkMRMLScene, vtkMRMLSegmentationNode, vtkMRMLSegmentationStorageNode

    ref = make_volume(GEOMETRIES[geometry])
    mask = random_mask(ref.shape)
    path = write_mask(mask, ref, tmp_path / "out.seg.nrrd")
    scene = vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    assert isinstance(node, vtkMRMLSegmentationNode)
    storage = vtkMRMLSegmentationStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1
    segmentation = node.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 1
    assert segmentation.GetNthSegment(0).GetName() == SEGMENT_NAME
    labelmap = segmentation.GetNthSegment(0).GetRepresentation("Binary labelmap")
    matrix = vtk.vtkMatrix4x4()
    labelmap.GetImageToWorldMatrix(matrix)
    ijk_to_ras = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
    np.testing.assert_allclose(ijk_to_ras, np.diag([-1, -1, 1, 1]) @ lps_ijk_to_world(ref), atol=1e-5)
    from vtk.util.numpy_support import vtk_to_numpy

    e = labelmap.GetExtent()
    dims = (e[1] - e[0] + 1, e[3] - e[2] + 1, e[5] - e[4] + 1)
    loaded = vtk_to_numpy(labelmap.GetPointData().GetScalars()).reshape(dims[::-1]).transpose(2, 1, 0)
    # Slicer may crop the labelmap to the segment's extent: compare on that extent.
    np.testing.assert_array_equal(loaded > 0, mask[e[0]:e[1] + 1, e[2]:e[3] + 1, e[4]:e[5] + 1] > 0)
    assert int((loaded > 0).sum()) == int(mask.sum())


def test_empty_mask_writes_a_valid_segmentation(tmp_path: Path) -> None:
    slicerio = pytest.importorskip("slicerio")
    ref = make_volume(np.eye(3))
    path = write_mask(np.zeros(ref.shape, np.uint8), ref, tmp_path / "empty.seg.nrrd")
    seg = slicerio.read_segmentation(str(path))
    assert slicerio.segment_names(seg) == [SEGMENT_NAME]
    assert int(np.asarray(seg["voxels"]).sum()) == 0


def write_dicom_series(folder: Path, volume: Volume) -> None:
    """One file per k-slice with the DICOM position/orientation tags a scanner would write."""
    folder.mkdir()
    image = sitk.Cast(sitk.GetImageFromArray(volume.array.transpose(2, 1, 0)), sitk.sitkInt16)
    image.SetSpacing(volume.spacing)  # the writer takes Pixel Spacing from the slice image itself
    d = np.asarray(volume.direction)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(volume.shape[2]):
        position = np.asarray(volume.origin) + d[:, 2] * volume.spacing[2] * k
        s = image[:, :, k]
        tags = {"0008|0060": "MR", "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
                "0020|000e": "1.2.826.0.1.3680043.2.1125.2", "0020|0013": str(k + 1),
                "0020|0032": "\\".join(f"{p:.6f}" for p in position),
                "0020|0037": "\\".join(f"{v:.6f}" for v in (*d[:, 0], *d[:, 1])),
                "0018|0050": f"{volume.spacing[2]:.6f}",
                "0008|0018": f"1.2.826.0.1.3680043.2.1125.3.{k + 1}"}
        for key, value in tags.items():
            s.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(s)


@pytest.mark.parametrize("geometry", ["axis_aligned", "oblique"])
def test_dicom_folder_reads_as_one_volume(tmp_path: Path, geometry: str) -> None:
    ref = make_volume(GEOMETRIES[geometry])
    ref.array = np.round(ref.array)
    write_dicom_series(tmp_path / "series", ref)
    back = read_volume(tmp_path / "series")
    assert_same_geometry(back, ref, tol=1e-4)
    np.testing.assert_array_equal(back.array, ref.array)


def test_la_h5_reads_with_la_spacing(tmp_path: Path) -> None:
    path = tmp_path / "mri_norm2.h5"
    image = np.random.default_rng(0).normal(size=(12, 10, 8)).astype(np.float32)
    with h5py.File(path, "w") as f:
        f.create_dataset("image", data=image)
    vol = read_volume(path)
    np.testing.assert_array_equal(vol.array, image)
    assert vol.spacing == (0.625, 0.625, 0.625)


# --------------------------------------------------------------------------- bad inputs


def _nrrd(tmp_path: Path, img: sitk.Image, name: str = "bad.nrrd") -> Path:
    path = tmp_path / name
    sitk.WriteImage(img, str(path))
    return path


def _from(array: np.ndarray) -> sitk.Image:
    return sitk.GetImageFromArray(array)


BAD_INPUTS = {
    "unreadable": (lambda p: _file(p / "garbage.nrrd", b"NRRD0004\nthis is not an image\n"), "unreadable"),
    "not_3d": (lambda p: _nrrd(p, _from(np.ones((5, 6), np.float32))), "3D"),
    "four_d": (lambda p: _nrrd(p, sitk.Image([4, 4, 4, 3], sitk.sitkFloat32)), "4D"),
    "multi_component": (lambda p: _nrrd(p, sitk.Image([4, 4, 4], sitk.sitkVectorFloat32, 3)), "multi-component"),
    "nan": (lambda p: _nrrd(p, _from(np.where(np.eye(4)[None].repeat(3, 0) > 0, np.nan, 1.0)
                                     .astype(np.float32))), "NaN or Inf"),
    "inf": (lambda p: _nrrd(p, _from(np.where(np.arange(48).reshape(3, 4, 4) == 5, np.inf, 2.0)
                                     .astype(np.float32))), "NaN or Inf"),
    "constant": (lambda p: _nrrd(p, _from(np.full((3, 4, 5), 7.0, np.float32))), "constant"),
    "zero_length_axis": (lambda p: _h5(p, np.zeros((0, 4, 4), np.float32)), "zero length"),
    "empty_folder": (lambda p: _folder(p / "emptydir"), "no DICOM series"),
}


def _file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _folder(path: Path) -> Path:
    path.mkdir()
    return path


def _h5(tmp_path: Path, image: np.ndarray) -> Path:
    path = tmp_path / "bad.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("image", data=image)
    return path


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_error_names_the_file_and_the_problem(tmp_path: Path, case: str) -> None:
    make, problem = BAD_INPUTS[case]
    path = make(tmp_path)
    with pytest.raises(ImageError) as info:
        read_volume(path)
    message = str(info.value)
    assert str(path) in message
    assert problem in message


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere.nrrd"):
        read_volume(tmp_path / "nowhere.nrrd")


# --------------------------------------------------------------------------- nothing half-written


def test_failed_multi_output_write_leaves_nothing(tmp_path: Path) -> None:
    ref = make_volume(np.eye(3))
    good = random_mask(ref.shape)
    items = [("mask", "mask", good, tmp_path / "a.seg.nrrd"),
             ("uncertainty", "image", np.zeros((2, 2, 2), np.float32), tmp_path / "u.nrrd")]
    with pytest.raises(ValueError, match="not on the reference grid"):
        write_outputs(items, ref)
    assert list(tmp_path.iterdir()) == []
    # An unwritable destination (its parent is a file) fails after the first file was written
    # to its temporary name: that one must be gone too.
    (tmp_path / "afile").write_text("x")
    items = [("mask", "mask", good, tmp_path / "a.seg.nrrd"),
             ("probability", "image", good.astype(np.float32), tmp_path / "afile" / "p.nrrd")]
    with pytest.raises(OSError):
        write_outputs(items, ref)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_unknown_output_format_is_refused(tmp_path: Path) -> None:
    ref = make_volume(np.eye(3))
    with pytest.raises(ValueError, match="unknown output format"):
        write_mask(random_mask(ref.shape), ref, tmp_path / "mask.png")
    with pytest.raises(ValueError, match="float map"):
        write_image(ref.array, ref, tmp_path / "prob.seg.nrrd")
