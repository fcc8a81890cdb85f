"""Slicer MRML nodes <-> engine objects: volume node -> ``Volume``, mask -> segment -> mask.

The engine speaks LPS (the ITK/DICOM convention of ``volume.read_image``);
Slicer's nodes speak RAS. Both index voxels ``[i, j, k]`` the same way, so
going across only flips the sign of the first two world axes, and the one
KJI <-> IJK transpose of VTK-owned arrays happens here.

Only MRML-level API is used (scene, volume and segmentation nodes,
``vtkSlicerSegmentationsModuleLogic``), so this module runs in the Slicer
application and against the ``slicer-core`` wheels alike. ``slicer`` and
``vtk`` are imported inside the functions: the engine package stays
importable without them.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import numpy as np

from ..io.volume import SEGMENT_COLOR, SEGMENT_NAME, SEGMENT_TERMINOLOGY, Volume

#: Name, colour and terminology of the segment the module creates: the same definition
#: the CLI's ``.seg.nrrd`` writer uses (``volume.SEGMENT_*``), so both look alike in Slicer.
LEFT_ATRIUM_NAME = SEGMENT_NAME
LEFT_ATRIUM_COLOR = SEGMENT_COLOR
LEFT_ATRIUM_TERMINOLOGY = SEGMENT_TERMINOLOGY

# RAS <-> LPS: flip the first two world axes (the matrix is its own inverse).
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def _vtk_matrix(m: np.ndarray) -> Any:
    import vtk

    vm = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            vm.SetElement(r, c, float(m[r, c]))
    return vm


def _numpy_matrix(vm: Any) -> np.ndarray:
    return np.array([[vm.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=float)


def node_ijk_to_ras(node: Any) -> np.ndarray:
    """The 4x4 IJK -> RAS matrix of a volume node, as numpy."""
    import vtk

    vm = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(vm)
    return _numpy_matrix(vm)


def _image_data_from_array(array_ijk: np.ndarray, vtk_type: Optional[int] = None) -> Any:
    """A deep-copied ``vtkImageData`` of an ``[i, j, k]`` array (VTK stores i fastest)."""
    import vtk
    from vtk.util import numpy_support

    image = vtk.vtkImageData()
    image.SetDimensions(*array_ijk.shape)
    flat = np.ascontiguousarray(array_ijk.transpose(2, 1, 0)).ravel()
    scalars = numpy_support.numpy_to_vtk(flat, deep=True, array_type=vtk_type)
    image.GetPointData().SetScalars(scalars)
    return image


def _array_from_image_data(image: Any) -> np.ndarray:
    """A copy of a single-component ``vtkImageData``'s voxels as an ``[i, j, k]`` array."""
    from vtk.util import numpy_support

    scalars = image.GetPointData().GetScalars()
    if scalars is None:
        raise ValueError("the image holds no voxels")
    if scalars.GetNumberOfComponents() != 1:
        raise ValueError(f"expected one component per voxel, found {scalars.GetNumberOfComponents()}")
    dims = image.GetDimensions()
    kji = numpy_support.vtk_to_numpy(scalars).reshape(dims[2], dims[1], dims[0])
    return np.ascontiguousarray(kji.transpose(2, 1, 0))


def volume_from_node(node: Any) -> Volume:
    """The ``Volume`` (float32 ``[i, j, k]``, LPS geometry) of a scalar volume node.

    The node's own IJK -> RAS geometry is used; a parent transform, if any, is
    not applied (the result is put back under the same transform).
    """
    image = node.GetImageData() if node is not None else None
    if image is None:
        raise ValueError("the volume node holds no image")
    array = _array_from_image_data(image).astype(np.float32, copy=False)
    m = node_ijk_to_ras(node)
    spacing = tuple(float(s) for s in node.GetSpacing())
    direction = _RAS_TO_LPS @ (m[:3, :3] / np.asarray(spacing))
    origin = _RAS_TO_LPS @ m[:3, 3]
    return Volume(array=array, spacing=spacing, origin=tuple(float(o) for o in origin), direction=direction)


def _set_node_geometry(node: Any, volume: Volume) -> None:
    ras_direction = _RAS_TO_LPS @ np.asarray(volume.direction, dtype=float)
    node.SetIJKToRASDirections(*[float(x) for x in ras_direction.ravel()])
    node.SetSpacing(*[float(s) for s in volume.spacing])
    node.SetOrigin(*[float(o) for o in _RAS_TO_LPS @ np.asarray(volume.origin, dtype=float)])


def volume_to_node(volume: Volume, scene: Any, name: str = "Volume", node: Any = None,
                   class_name: str = "vtkMRMLScalarVolumeNode") -> Any:
    """Put a ``Volume`` into a (new or given) volume node of ``scene``; returns the node."""
    if node is None:
        node = scene.AddNewNodeByClass(class_name, name)
    _set_node_geometry(node, volume)
    node.SetAndObserveImageData(_image_data_from_array(np.asarray(volume.array)))
    return node


def ensure_segmentation_conversion_rules() -> None:
    """Register the labelmap -> closed-surface rule if nothing has (the Slicer app does, the wheels don't)."""
    import slicer

    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    rule_names = {rule.GetClassName() for rule in factory.GetConverterRules()}
    if "vtkBinaryLabelmapToClosedSurfaceConversionRule" not in rule_names:
        factory.RegisterConverterRule(slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule())
    if "vtkClosedSurfaceToBinaryLabelmapConversionRule" not in rule_names:
        factory.RegisterConverterRule(slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule())


def mask_to_segmentation_node(mask: np.ndarray, reference_node: Any, scene: Any,
                              name: str = LEFT_ATRIUM_NAME,
                              color: Sequence[float] = LEFT_ATRIUM_COLOR,
                              segmentation_node: Any = None,
                              terminology: Optional[str] = LEFT_ATRIUM_TERMINOLOGY,
                              show_3d: bool = True) -> Tuple[Any, str]:
    """Store ``mask`` (``[i, j, k]``, nonzero = inside, on ``reference_node``'s grid) as segment ``name``.

    Creates a segmentation node (or reuses ``segmentation_node``, replacing a
    segment of the same name) that references ``reference_node``'s geometry,
    sits under the same parent transform and shows the segment in slice views
    and, with ``show_3d``, in 3D. Returns ``(segmentation_node, segment_id)``.
    """
    import slicer

    image = reference_node.GetImageData() if reference_node is not None else None
    if image is None:
        raise ValueError("the reference volume node holds no image")
    if tuple(mask.shape) != tuple(image.GetDimensions()):
        raise ValueError(f"mask shape {tuple(mask.shape)} differs from the reference volume's "
                         f"{tuple(image.GetDimensions())}")
    binary = (np.asarray(mask) > 0).astype(np.uint8)

    labelmap = slicer.vtkOrientedImageData()
    labelmap.ShallowCopy(_image_data_from_array(binary))
    labelmap.SetImageToWorldMatrix(_vtk_matrix(node_ijk_to_ras(reference_node)))

    if segmentation_node is None:
        segmentation_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{name} segmentation")
    if segmentation_node.GetDisplayNode() is None:
        segmentation_node.CreateDefaultDisplayNodes()
    segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(reference_node)
    segmentation_node.SetAndObserveTransformNodeID(reference_node.GetTransformNodeID())

    segmentation = segmentation_node.GetSegmentation()
    old_id = segmentation.GetSegmentIdBySegmentName(name)
    if old_id:
        segmentation.RemoveSegment(old_id)
    segment_id = segmentation_node.AddSegmentFromBinaryLabelmapRepresentation(labelmap, name, list(color))
    if terminology:
        tag = slicer.vtkSegment.GetTerminologyEntryTagName()
        segmentation.GetSegment(segment_id).SetTag(tag, terminology)

    display = segmentation_node.GetDisplayNode()
    display.SetVisibility(True)
    display.SetVisibility2DFill(True)
    display.SetVisibility2DOutline(True)
    display.SetSegmentVisibility(segment_id, True)
    if show_3d:
        ensure_segmentation_conversion_rules()
        segmentation_node.CreateClosedSurfaceRepresentation()
        display.SetVisibility3D(True)
    return segmentation_node, segment_id


def segment_to_mask(segmentation_node: Any, segment_id: str, reference_node: Any) -> np.ndarray:
    """The segment as a uint8 ``[i, j, k]`` array (1 inside) resampled onto ``reference_node``'s grid."""
    import slicer
    import vtk

    if segmentation_node.GetSegmentation().GetSegment(segment_id) is None:
        raise KeyError(f"no segment {segment_id!r} in {segmentation_node.GetName()!r}")
    scene = segmentation_node.GetScene()
    labelmap_node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__caml_export__")
    try:
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(segment_id)
        ok = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
            segmentation_node, ids, labelmap_node, reference_node)
        if not ok:
            raise RuntimeError(f"could not export segment {segment_id!r} to a labelmap")
        mask = _array_from_image_data(labelmap_node.GetImageData())
    finally:
        scene.RemoveNode(labelmap_node)
    return (mask > 0).astype(np.uint8)


def roi_index_bounds(roi_node: Any, volume_node: Any, margin_voxels: int = 0
                     ) -> Tuple[Tuple[int, int, int], Tuple[int, int, int]]:
    """Voxel box ``(start, stop)`` of ``volume_node`` covering a markups ROI node (stop exclusive).

    The ROI's eight corners are mapped into the volume's IJK space, so oblique
    volumes and rotated ROIs get the enclosing box. Raises ``ValueError`` when
    the ROI does not overlap the volume.
    """
    bounds = [0.0] * 6
    roi_node.GetRASBounds(bounds)
    ras_to_ijk = np.linalg.inv(node_ijk_to_ras(volume_node))
    corners = np.array([[x, y, z, 1.0] for x in bounds[0:2] for y in bounds[2:4] for z in bounds[4:6]])
    ijk = (ras_to_ijk @ corners.T).T[:, :3]
    shape = np.array(volume_node.GetImageData().GetDimensions())
    start = np.maximum(np.floor(ijk.min(axis=0) + 0.5).astype(int) - margin_voxels, 0)
    stop = np.minimum(np.floor(ijk.max(axis=0) + 0.5).astype(int) + 1 + margin_voxels, shape)
    if np.any(stop <= start):
        raise ValueError("the ROI does not overlap the input volume")
    return tuple(int(s) for s in start), tuple(int(s) for s in stop)  # type: ignore[return-value]


def crop_volume(volume: Volume, start: Sequence[int], stop: Sequence[int]) -> Volume:
    """The sub-volume ``[start:stop]`` with its origin moved so every voxel keeps its world position."""
    start_a = np.asarray(start, dtype=int)
    sl = tuple(slice(int(a), int(b)) for a, b in zip(start, stop))
    origin = (np.asarray(volume.origin, dtype=float)
              + np.asarray(volume.direction, dtype=float) @ (start_a * np.asarray(volume.spacing)))
    return Volume(array=np.ascontiguousarray(volume.array[sl]), spacing=tuple(volume.spacing),
                  origin=tuple(float(o) for o in origin), direction=np.array(volume.direction, dtype=float))


def paste_mask(mask: np.ndarray, full_shape: Sequence[int], start: Sequence[int]) -> np.ndarray:
    """Zeros of ``full_shape`` with ``mask`` placed at voxel ``start`` (undoes ``crop_volume``)."""
    full = np.zeros(tuple(int(s) for s in full_shape), dtype=np.uint8)
    sl = tuple(slice(int(a), int(a) + n) for a, n in zip(start, mask.shape))
    full[sl] = mask
    return full


def voxel_to_world(node: Any, ijk: Sequence[float]) -> Tuple[float, float, float]:
    """The RAS position (world, through the node's parent transforms) of voxel ``ijk`` of a volume node."""
    import vtk

    ras = node_ijk_to_ras(node) @ np.array([float(v) for v in ijk] + [1.0])
    point = [float(v) for v in ras[:3]]
    transform_node = node.GetParentTransformNode()
    if transform_node is not None:
        to_world = vtk.vtkGeneralTransform()
        transform_node.GetTransformToWorld(to_world)
        point = list(to_world.TransformPoint(point))
    return point[0], point[1], point[2]


def jump_slices_to(scene: Any, ras: Sequence[float]) -> None:
    """Centre every slice view of ``scene`` on the RAS point (Slicer's Shift+move and markups jump do the same)."""
    import slicer

    slicer.vtkMRMLSliceNode.JumpAllSlices(scene, float(ras[0]), float(ras[1]), float(ras[2]),
                                          slicer.vtkMRMLSliceNode.CenteredJumpSlice)
