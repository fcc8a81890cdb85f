""""Next uncertain region" on a real MRML scene (slicer-core): the slice views go to each region of the
disagreement map in turn, largest first, at the region's world position (oblique grid, parent transform)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheels (pip install '.[test]')")

MODULE_DIR = Path(__file__).resolve().parents[2] / "CAMLSegmentation"
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))

from CAMLSegmentationLib.io.volume import Volume  # noqa: E402
from CAMLSegmentationLib.slicer import mrml_bridge  # noqa: E402
from CAMLSegmentationLib.slicer.logic import CAMLSegmentationLogic  # noqa: E402


def _scene_with_views():
    scene = slicer.vtkMRMLScene()
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene)
    logics = []
    for name, orientation in (("Red", "Axial"), ("Yellow", "Sagittal"), ("Green", "Coronal")):
        logic = slicer.vtkMRMLSliceLogic()
        logic.SetMRMLScene(scene)
        node = logic.AddSliceNode(name)
        node.SetOrientation(orientation)
        node.SetDimensions(256, 256, 1)
        logics.append(logic)
    return scene, logics


def _map_volume():
    angle = np.radians(30.0)
    direction = np.array([[np.cos(angle), 0.0, -np.sin(angle)], [0.0, 1.0, 0.0], [np.sin(angle), 0.0, np.cos(angle)]])
    array = np.zeros((40, 32, 24), dtype=np.float32)
    array[25:35, 4:12, 3:9] = 0.8     # 480 voxels: first
    array[3:8, 20:26, 14:20] = 0.95   # 180 voxels: second
    return Volume(array=array, spacing=(0.7, 0.8, 1.25), origin=(-12.0, 30.0, 5.0), direction=direction)


def _world_ras(volume: Volume, ijk) -> np.ndarray:
    """Independent of the bridge: the engine's LPS geometry, then LPS -> RAS."""
    lps = np.asarray(volume.origin) + np.asarray(volume.direction) @ (np.asarray(ijk) * np.asarray(volume.spacing))
    return lps * np.array([-1.0, -1.0, 1.0])


def _centres(logics):
    out = []
    for logic in logics:
        m = logic.GetSliceNode().GetSliceToRAS()
        out.append(np.array([m.GetElement(r, 3) for r in range(3)]))
    return out


def test_next_uncertain_region_moves_every_view_to_each_region_in_turn():
    scene, logics = _scene_with_views()
    volume = _map_volume()
    node = mrml_bridge.volume_to_node(volume, scene, "disagreement")
    logic = CAMLSegmentationLogic(scene)

    first = logic.nextUncertainRegion(node)
    assert (first["index"], first["count"], first["region"].voxels) == (1, 2, 480)
    assert volume.array[first["region"].center] == pytest.approx(0.8)
    expected = _world_ras(volume, first["region"].center)
    np.testing.assert_allclose(first["ras"], expected, atol=1e-4)
    for centre in _centres(logics):  # every view is centred on it
        np.testing.assert_allclose(centre, expected, atol=1e-3)
    assert first["millilitres"] == pytest.approx(480 * 0.7 * 0.8 * 1.25 / 1000)

    second = logic.nextUncertainRegion(node)
    assert (second["index"], second["region"].voxels) == (2, 180)
    np.testing.assert_allclose(_centres(logics)[0], _world_ras(volume, second["region"].center), atol=1e-3)
    assert logic.nextUncertainRegion(node)["index"] == 1  # after the last, the largest again

    # The map changes (a new Next case, a new segmentation): start again from its largest region.
    logic.nextUncertainRegion(node)
    changed = volume.array.copy()
    changed[25:35, 4:12, 3:9] = 0.0
    mrml_bridge.volume_to_node(Volume(array=changed, spacing=volume.spacing, origin=volume.origin,
                                      direction=volume.direction), scene, node=node)
    again = logic.nextUncertainRegion(node)
    assert (again["index"], again["count"], again["region"].voxels) == (1, 1, 180)


def test_a_transformed_map_and_a_map_without_disagreement():
    scene, logics = _scene_with_views()
    volume = _map_volume()
    node = mrml_bridge.volume_to_node(volume, scene, "disagreement")
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    import vtk

    shift = vtk.vtkMatrix4x4()
    shift.SetElement(0, 3, 15.0)
    shift.SetElement(2, 3, -4.0)
    transform.SetMatrixTransformToParent(shift)
    node.SetAndObserveTransformNodeID(transform.GetID())
    logic = CAMLSegmentationLogic(scene)
    shown = logic.nextUncertainRegion(node)
    np.testing.assert_allclose(shown["ras"], _world_ras(volume, shown["region"].center) + [15.0, 0.0, -4.0],
                               atol=1e-4)
    np.testing.assert_allclose(_centres(logics)[1], shown["ras"], atol=1e-3)

    calm = mrml_bridge.volume_to_node(Volume(array=np.full((10, 10, 10), 0.2, np.float32)), scene, "calm")
    before = _centres(logics)
    nothing = logic.nextUncertainRegion(calm)
    assert nothing["count"] == 0 and nothing["region"] is None
    for a, b in zip(before, _centres(logics)):
        np.testing.assert_allclose(a, b)  # the views stay where they were
    with pytest.raises(ValueError, match="no disagreement map"):
        logic.nextUncertainRegion(None)
