"""The active-learning loop on an MRML scene: load a case with its prediction, accept a segment, plot versions.

MRML-level API only (scene, volume, segmentation, table and plot nodes), like
``mrml_bridge``: it runs in the Slicer application and on the ``slicer-core``
wheels. ``slicer`` and ``vtk`` are imported inside the functions.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np

from ..activelearning.cohort import Cohort
from ..io.volume import Volume, read_image
from . import mrml_bridge

PathLike = Union[str, Path]

PLOT_TABLE_NAME = "CAML versions"
PLOT_SERIES_NAME = "Validation Dice"
PLOT_CHART_NAME = "CAML validation Dice per version"


def load_case(scene: Any, cohort_root: PathLike, case_id: str, prediction: Optional[PathLike] = None,
              uncertainty: Optional[PathLike] = None, show_3d: bool = True) -> Dict[str, Any]:
    """Put a cohort case into ``scene``: its image, its prediction as the "Left atrium" segment
    (empty when there is no model yet, ready to paint) and optionally the uncertainty map.

    Returns ``{"volume": node, "segmentation": node, "segment_id": str, "uncertainty": node or None}``.
    """
    with Cohort.open(cohort_root) as cohort:
        image = cohort.read_image(case_id)
    volume_node = mrml_bridge.volume_to_node(image, scene, scene.GenerateUniqueName(case_id))
    if prediction is not None:
        predicted = read_image(prediction)
        if not predicted.same_geometry(image, tol=1e-3):
            raise ValueError(f"{prediction}: the prediction is not on the grid of case {case_id!r}")
        mask = (predicted.array > 0.5).astype(np.uint8)
    else:
        mask = np.zeros(image.shape, dtype=np.uint8)
    seg_node, segment_id = mrml_bridge.mask_to_segmentation_node(mask, volume_node, scene, show_3d=show_3d)
    seg_node.SetName(scene.GenerateUniqueName(f"{case_id} left atrium"))
    unc_node = None
    if uncertainty is not None:
        unc = read_image(uncertainty)
        unc_node = mrml_bridge.volume_to_node(unc, scene, scene.GenerateUniqueName(f"{case_id} uncertainty"))
    return {"volume": volume_node, "segmentation": seg_node, "segment_id": segment_id, "uncertainty": unc_node}


def accept_segment(cohort_root: PathLike, case_id: str, segmentation_node: Any, volume_node: Any,
                   role: str = "auto") -> Dict[str, Any]:
    """Store the "Left atrium" segment of ``segmentation_node`` as the case's label, on the image's grid.

    The segment is exported onto ``volume_node``'s grid (which must be the case's image:
    the cohort refuses a label whose geometry differs from the image file's).
    """
    segmentation = segmentation_node.GetSegmentation()
    segment_id = segmentation.GetSegmentIdBySegmentName(mrml_bridge.LEFT_ATRIUM_NAME)
    if not segment_id:
        if segmentation.GetNumberOfSegments() != 1:
            raise ValueError(f"no segment named {mrml_bridge.LEFT_ATRIUM_NAME!r} in {segmentation_node.GetName()!r}")
        segment_id = segmentation.GetNthSegmentID(0)
    mask = mrml_bridge.segment_to_mask(segmentation_node, segment_id, volume_node)
    grid = mrml_bridge.volume_from_node(volume_node)
    label = Volume(array=mask, spacing=grid.spacing, origin=grid.origin, direction=grid.direction)
    with Cohort.open(cohort_root) as cohort:
        return cohort.accept(case_id, label, role=role)


def version_points(versions: Sequence[Dict[str, Any]]) -> Tuple[np.ndarray, np.ndarray]:
    """(version numbers, validation Dice) with one point per version.

    The Dice on the current validation set when known (comparable across versions), else
    the Dice recorded when the version was made, else NaN (no validation case yet).
    """
    xs, ys = [], []
    for v in versions:
        value = v.get("current_val_dice")
        if value is None:
            value = v.get("val_dice")
        xs.append(float(v["id"]))
        ys.append(float("nan") if value is None else float(value))
    return np.array(xs), np.array(ys)


def update_version_plot(scene: Any, versions: Sequence[Dict[str, Any]], chart_node: Any = None) -> Any:
    """A plot chart node showing validation Dice per version (one table row and one point per version).

    Reuses ``chart_node`` (and its series and table) when given, so refreshing does not pile up nodes.
    """
    import vtk

    series = chart_node.GetNthPlotSeriesNode(0) if chart_node is not None else None
    table_node = series.GetTableNode() if series is not None else None
    if table_node is None:
        table_node = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(PLOT_TABLE_NAME))
    xs, ys = version_points(versions)
    table = vtk.vtkTable()
    x_col, y_col = vtk.vtkDoubleArray(), vtk.vtkDoubleArray()
    x_col.SetName("version")
    y_col.SetName("validation Dice")
    for x, y in zip(xs, ys):
        x_col.InsertNextValue(float(x))
        y_col.InsertNextValue(float(y) if not math.isnan(y) else float("nan"))
    table.AddColumn(x_col)
    table.AddColumn(y_col)
    table_node.SetAndObserveTable(table)
    if series is None:
        series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", scene.GenerateUniqueName(PLOT_SERIES_NAME))
    series.SetAndObserveTableNodeID(table_node.GetID())
    series.SetXColumnName("version")
    series.SetYColumnName("validation Dice")
    series.SetPlotType(series.PlotTypeScatter)
    series.SetMarkerStyle(series.MarkerStyleCircle)
    if chart_node is None:
        chart_node = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", scene.GenerateUniqueName(PLOT_CHART_NAME))
        chart_node.AddAndObservePlotSeriesNodeID(series.GetID())
    chart_node.SetTitle("Validation Dice per model version")
    chart_node.SetXAxisTitle("version")
    chart_node.SetYAxisTitle("Dice")
    return chart_node


def plot_values(chart_node: Any) -> Tuple[np.ndarray, np.ndarray]:
    """The (x, y) points a chart's first series shows, read back from its table."""
    series = chart_node.GetNthPlotSeriesNode(0)
    table = series.GetTableNode().GetTable()
    x = table.GetColumnByName(series.GetXColumnName())
    y = table.GetColumnByName(series.GetYColumnName())
    return (np.array([x.GetValue(i) for i in range(x.GetNumberOfTuples())]),
            np.array([y.GetValue(i) for i in range(y.GetNumberOfTuples())]))
