"""The MRML bridge against Slicer's own MRML and segmentation libraries (the slicer-core wheels)."""

from __future__ import annotations

import math

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheels (pip install '.[test]')")
SimpleITK = pytest.importorskip("SimpleITK")

from CAMLSegmentationLib.io.volume import Volume, read_image  # noqa: E402
from CAMLSegmentationLib.slicer import mrml_bridge  # noqa: E402


def _rotation(axis: int, degrees: float) -> np.ndarray:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    a, b = [i for i in range(3) if i != axis]
    r = np.eye(3)
    r[a, a], r[a, b], r[b, a], r[b, b] = c, -s, s, c
    return r


GEOMETRIES = {
    "axis_aligned": np.eye(3),
    "flipped": np.diag([-1.0, 1.0, -1.0]),
    "oblique": _rotation(2, 30) @ _rotation(0, -20),
}


def _volume(direction: np.ndarray, shape=(9, 7, 5), seed=0) -> Volume:
    rng = np.random.default_rng(seed)
    return Volume(array=rng.normal(size=shape).astype(np.float32), spacing=(0.6, 0.8, 1.5),
                  origin=(12.5, -40.0, 7.25), direction=direction)


def _world_lps(volume: Volume, ijk) -> np.ndarray:
    return np.asarray(volume.origin) + np.asarray(volume.direction) @ (np.asarray(ijk) * volume.spacing)


def _node_world_ras(node, ijk) -> np.ndarray:
    m = mrml_bridge.node_ijk_to_ras(node)
    return (m @ np.array([*ijk, 1.0]))[:3]


@pytest.fixture()
def scene():
    return slicer.vtkMRMLScene()


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
def test_volume_round_trips_exactly(scene, geometry):
    vol = _volume(GEOMETRIES[geometry])
    node = mrml_bridge.volume_to_node(vol, scene, "input")
    back = mrml_bridge.volume_from_node(node)
    assert back.array.dtype == np.float32
    np.testing.assert_array_equal(back.array, vol.array)
    assert back.same_geometry(vol, tol=1e-9)
    # The same voxel is the same physical point: LPS in the engine, RAS in Slicer.
    ijk = (3, 5, 2)
    lps = _world_lps(vol, ijk)
    np.testing.assert_allclose(_node_world_ras(node, ijk), [-lps[0], -lps[1], lps[2]], atol=1e-9)


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
def test_volume_from_node_agrees_with_file_readers(scene, tmp_path, geometry):
    """A file loaded by Slicer's own reader and the same file read by the engine describe one grid."""
    vol = _volume(GEOMETRIES[geometry])
    img = SimpleITK.GetImageFromArray(vol.array.transpose(2, 1, 0))
    img.SetSpacing(vol.spacing)
    img.SetOrigin(vol.origin)
    img.SetDirection(np.asarray(vol.direction).ravel().tolist())
    path = tmp_path / "image.nrrd"
    SimpleITK.WriteImage(img, str(path))

    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "loaded")
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(node)

    from_slicer = mrml_bridge.volume_from_node(node)
    from_engine = read_image(path)
    np.testing.assert_array_equal(from_slicer.array, from_engine.array)
    assert from_slicer.same_geometry(from_engine, tol=1e-5)


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
def test_mask_lands_on_the_input_voxels(scene, geometry):
    vol = _volume(GEOMETRIES[geometry])
    ref = mrml_bridge.volume_to_node(vol, scene, "input")
    mask = np.zeros(vol.shape, dtype=np.uint8)
    mask[2:6, 1:4, 1:3] = 1
    mask[8, 6, 4] = 1  # a corner voxel: off-by-one or flipped axes would move it

    seg, segment_id = mrml_bridge.mask_to_segmentation_node(mask, ref, scene)
    segment = seg.GetSegmentation().GetSegment(segment_id)
    assert segment.GetName() == "Left atrium"
    np.testing.assert_allclose(segment.GetColor(), mrml_bridge.LEFT_ATRIUM_COLOR)
    assert "82471001" in segment.GetTerminology()
    assert seg.GetNodeReference(seg.GetReferenceImageGeometryReferenceRole()) is ref

    # The stored labelmap puts the corner voxel at the input's physical position.
    labelmap = slicer.vtkOrientedImageData()
    slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(seg, segment_id, labelmap)
    import vtk

    m = vtk.vtkMatrix4x4()
    labelmap.GetImageToWorldMatrix(m)
    ext = labelmap.GetExtent()
    stored = mrml_bridge._array_from_image_data(labelmap)
    on = np.argwhere(stored > 0) + np.array([ext[0], ext[2], ext[4]])
    world = (mrml_bridge._numpy_matrix(m) @ np.c_[on, np.ones(len(on))].T).T[:, :3]
    expected = np.array([_node_world_ras(ref, ijk) for ijk in np.argwhere(mask > 0)])
    assert len(world) == len(expected)
    np.testing.assert_allclose(np.sort(world, axis=0), np.sort(expected, axis=0), atol=1e-6)

    np.testing.assert_array_equal(mrml_bridge.segment_to_mask(seg, segment_id, ref), mask)


def test_segment_visible_in_slices_and_3d(scene):
    vol = _volume(np.eye(3))
    ref = mrml_bridge.volume_to_node(vol, scene, "input")
    mask = np.zeros(vol.shape, dtype=np.uint8)
    mask[2:7, 2:6, 1:4] = 1
    seg, segment_id = mrml_bridge.mask_to_segmentation_node(mask, ref, scene)
    display = seg.GetDisplayNode()
    assert display.GetVisibility() and display.GetVisibility2DFill() and display.GetVisibility3D()
    assert display.GetSegmentVisibility(segment_id)
    assert seg.GetSegmentation().ContainsRepresentation("Closed surface")
    poly = seg.GetSegmentation().GetSegment(segment_id).GetRepresentation("Closed surface")
    assert poly.GetNumberOfPoints() > 0


def test_rerun_replaces_the_segment(scene):
    vol = _volume(np.eye(3))
    ref = mrml_bridge.volume_to_node(vol, scene, "input")
    first = np.zeros(vol.shape, dtype=np.uint8)
    first[1:3, 1:3, 1:3] = 1
    second = np.zeros(vol.shape, dtype=np.uint8)
    second[4:8, 2:5, 2:4] = 1
    seg, _ = mrml_bridge.mask_to_segmentation_node(first, ref, scene, show_3d=False)
    seg2, segment_id = mrml_bridge.mask_to_segmentation_node(second, ref, scene, segmentation_node=seg,
                                                             show_3d=False)
    assert seg2 is seg and seg.GetSegmentation().GetNumberOfSegments() == 1
    np.testing.assert_array_equal(mrml_bridge.segment_to_mask(seg, segment_id, ref), second)


def test_mask_shape_must_match_reference(scene):
    ref = mrml_bridge.volume_to_node(_volume(np.eye(3)), scene, "input")
    with pytest.raises(ValueError, match="shape"):
        mrml_bridge.mask_to_segmentation_node(np.zeros((3, 3, 3), np.uint8), ref, scene)


def test_segment_to_mask_resamples_onto_another_reference(scene):
    """A segment drawn on one grid is read back on the input's grid (correction on a resampled view)."""
    vol = _volume(GEOMETRIES["oblique"], shape=(8, 8, 8))
    ref = mrml_bridge.volume_to_node(vol, scene, "input")
    mask = np.zeros(vol.shape, dtype=np.uint8)
    mask[2:6, 3:7, 1:5] = 1
    seg, segment_id = mrml_bridge.mask_to_segmentation_node(mask, ref, scene, show_3d=False)
    # The same grid, described by a second node: the export must not shift anything.
    twin = mrml_bridge.volume_to_node(vol, scene, "twin")
    np.testing.assert_array_equal(mrml_bridge.segment_to_mask(seg, segment_id, twin), mask)


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
def test_seg_nrrd_save_and_reload_keeps_name_colour_and_geometry(scene, tmp_path, geometry):
    vol = _volume(GEOMETRIES[geometry])
    ref = mrml_bridge.volume_to_node(vol, scene, "input")
    mask = np.zeros(vol.shape, dtype=np.uint8)
    mask[1:5, 2:6, 0:3] = 1
    mask[8, 0, 4] = 1
    seg, segment_id = mrml_bridge.mask_to_segmentation_node(mask, ref, scene, show_3d=False)

    path = tmp_path / "la.seg.nrrd"
    writer = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    writer.SetFileName(str(path))
    assert writer.WriteData(seg)

    other = slicer.vtkMRMLScene()
    ref2 = mrml_bridge.volume_to_node(vol, other, "input")
    loaded = other.AddNewNodeByClass("vtkMRMLSegmentationNode", "loaded")
    reader = other.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    reader.SetFileName(str(path))
    assert reader.ReadData(loaded)
    segmentation = loaded.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 1
    loaded_id = segmentation.GetSegmentIdBySegmentName("Left atrium")
    assert loaded_id
    np.testing.assert_allclose(segmentation.GetSegment(loaded_id).GetColor(),
                               mrml_bridge.LEFT_ATRIUM_COLOR, atol=1e-6)
    np.testing.assert_array_equal(mrml_bridge.segment_to_mask(loaded, loaded_id, ref2), mask)

    # The file itself is on the input's grid, as the engine reads it.
    on_disk = read_image(path)
    assert on_disk.same_geometry(vol, tol=1e-5)
    np.testing.assert_array_equal(on_disk.array > 0, mask > 0)


def test_roi_crop_and_paste_back(scene):
    vol = _volume(GEOMETRIES["oblique"], shape=(12, 10, 8))
    node = mrml_bridge.volume_to_node(vol, scene, "input")
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "roi")
    # An ROI around voxels (3..6, 2..5, 1..4): centre and size taken in the volume's own frame.
    lo, hi = np.array([3, 2, 1]), np.array([6, 5, 4])
    corners = np.array([_node_world_ras(node, (x, y, z)) for x in (lo[0], hi[0])
                        for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    roi.SetXYZ(*corners.mean(axis=0))
    roi.SetRadiusXYZ(*((corners.max(axis=0) - corners.min(axis=0)) / 2))
    start, stop = mrml_bridge.roi_index_bounds(roi, node)
    # The axis-aligned RAS box of an oblique voxel box encloses it.
    assert all(s <= a for s, a in zip(start, lo)) and all(e >= b + 1 for e, b in zip(stop, hi))
    assert all(0 <= s < e <= n for s, e, n in zip(start, stop, vol.shape))

    cropped = mrml_bridge.crop_volume(vol, start, stop)
    np.testing.assert_array_equal(cropped.array, vol.array[tuple(slice(a, b) for a, b in zip(start, stop))])
    np.testing.assert_allclose(_world_lps(cropped, (0, 0, 0)), _world_lps(vol, start), atol=1e-9)

    sub_mask = (cropped.array > 0).astype(np.uint8)
    full = mrml_bridge.paste_mask(sub_mask, vol.shape, start)
    assert full.shape == vol.shape and full.sum() == sub_mask.sum()
    np.testing.assert_array_equal(full[tuple(slice(a, b) for a, b in zip(start, stop))], sub_mask)


def test_roi_outside_the_volume_is_an_error(scene):
    node = mrml_bridge.volume_to_node(_volume(np.eye(3)), scene, "input")
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "roi")
    roi.SetXYZ(5000.0, 5000.0, 5000.0)
    roi.SetRadiusXYZ(1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="overlap"):
        mrml_bridge.roi_index_bounds(roi, node)


def test_left_atrium_terminology_is_the_dicom_master_list_entry(scene, tmp_path):
    """One definition of the segment: Slicer parses it to SCT 82471001 in the DICOM master list, and the
    CLI's .seg.nrrd, read by Slicer's own reader, carries the same name, colour and terminology."""
    from CAMLSegmentationLib.io import volume as volume_io

    entry = slicer.vtkSlicerTerminologyEntry()
    assert slicer.vtkSlicerTerminologiesModuleLogic.DeserializeTerminologyEntry(
        mrml_bridge.LEFT_ATRIUM_TERMINOLOGY, entry)
    assert entry.GetTerminologyContextName() == "Segmentation category and type - DICOM master list"
    category, kind = entry.GetCategoryObject(), entry.GetTypeObject()
    assert (category.GetCodingSchemeDesignator(), category.GetCodeValue()) == ("SCT", "123037004")
    assert (kind.GetCodingSchemeDesignator(), kind.GetCodeValue(), kind.GetCodeMeaning()) == (
        "SCT", "82471001", "Left atrium")
    assert entry.GetAnatomicContextName() == "Anatomic codes - DICOM master list"
    # The master list's recommendedDisplayRGBValue for 82471001.
    np.testing.assert_allclose(np.array(mrml_bridge.LEFT_ATRIUM_COLOR) * 255, (203, 108, 81), atol=0.02)
    assert (mrml_bridge.LEFT_ATRIUM_NAME, mrml_bridge.LEFT_ATRIUM_COLOR, mrml_bridge.LEFT_ATRIUM_TERMINOLOGY) == (
        volume_io.SEGMENT_NAME, volume_io.SEGMENT_COLOR, volume_io.SEGMENT_TERMINOLOGY)

    vol = _volume(np.eye(3))
    mask = np.zeros(vol.shape, dtype=np.uint8)
    mask[2:5, 2:5, 1:3] = 1
    path = volume_io.write_mask(mask, vol, tmp_path / "la.seg.nrrd")
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(node)
    from_file = node.GetSegmentation().GetNthSegment(0)
    ref = mrml_bridge.volume_to_node(vol, scene, "input")
    made, segment_id = mrml_bridge.mask_to_segmentation_node(mask, ref, scene, show_3d=False)
    from_module = made.GetSegmentation().GetSegment(segment_id)
    assert from_file.GetName() == from_module.GetName() == "Left atrium"
    np.testing.assert_allclose(from_file.GetColor(), from_module.GetColor(), atol=1e-4)
    assert from_file.GetTerminology() == from_module.GetTerminology() == mrml_bridge.LEFT_ATRIUM_TERMINOLOGY
