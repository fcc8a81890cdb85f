"""The module's Logic on a real MRML scene, running a real child process that speaks the caml protocol.

The engine's ``caml segment`` is written elsewhere; here a small stand-in
engine (a Python script reading the input file, thresholding it and writing
the mask with the same I/O the engine uses) proves the Logic's part: input
written on the right grid, JSON progress followed, output brought back as an
aligned "Left atrium" segment, cancel and failure leaving the scene alone.
"""

from __future__ import annotations

import json
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheels (pip install '.[test]')")
pytest.importorskip("SimpleITK")

# The module file sits beside its engine package, as Slicer loads it.
MODULE_DIR = Path(__file__).resolve().parents[2] / "CAMLSegmentation"
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))

from CAMLSegmentationLib import mrml_bridge  # noqa: E402

import CAMLSegmentation as module  # noqa: E402

STAND_IN_ENGINE = """
    import argparse, json, sys, time
    import numpy as np
    import SimpleITK as sitk
    from CAMLSegmentationLib.files import atomic_output

    p = argparse.ArgumentParser()
    p.add_argument("command"); p.add_argument("input"); p.add_argument("output")
    p.add_argument("--model"); p.add_argument("--device"); p.add_argument("--overlap", type=float)
    p.add_argument("--tta", action="store_true"); p.add_argument("--lcc", action="store_true")
    p.add_argument("--uncertainty"); p.add_argument("--progress")
    a = p.parse_args()
    with open(a.output + ".argv.json", "w") as f:
        json.dump(sys.argv[1:], f)
    if a.model == "broken":
        print(json.dumps({"event": "error", "message": "model 'broken' has no weights"}), flush=True)
        sys.exit(1)
    img = sitk.ReadImage(a.input)
    for i in range(4):
        print(json.dumps({"event": "progress", "stage": "sliding_window", "done": i + 1, "total": 4,
                          "message": "", "values": {}}), flush=True)
        if a.model == "slow":
            time.sleep(600)
    arr = sitk.GetArrayFromImage(img)
    def write(array, path):
        out = sitk.GetImageFromArray(array)
        out.CopyInformation(img)
        with atomic_output(path) as tmp:
            sitk.WriteImage(out, str(tmp))
    write((arr > 250).astype(np.uint8), a.output)
    outputs = {"segmentation": a.output}
    if a.uncertainty:
        write(np.full(arr.shape, 0.25, np.float32), a.uncertainty)
        outputs["uncertainty"] = a.uncertainty
    print(json.dumps({"event": "done", "outputs": outputs}), flush=True)
"""


@pytest.fixture()
def scene():
    return slicer.vtkMRMLScene()


@pytest.fixture()
def logic(scene, tmp_path):
    engine = tmp_path / "engine.py"
    engine.write_text(textwrap.dedent(STAND_IN_ENGINE))
    lg = module.CAMLSegmentationLogic(scene)
    lg.engineCommand = [sys.executable, str(engine)]
    return lg


@pytest.fixture()
def params(logic, scene):
    p = logic.getParameterNode()
    p.inputVolume = module.makeTestVolume(scene, shape=(24, 20, 16))
    p.model = "bundled-la"
    return p


def _expected_mask(node) -> np.ndarray:
    return (mrml_bridge.volume_from_node(node).array > 250).astype(np.uint8)


def test_parameter_node_is_a_scene_singleton_with_defaults(logic, scene):
    p = logic.getParameterNode()
    assert (p.device, p.quality, p.overlap, p.tta, p.uncertainty) == ("auto", "balanced", 0.5, False, False)
    p.device = "cuda"
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "mri")
    p.inputVolume = volume
    again = logic.getParameterNode()
    assert again.node is p.node and again.device == "cuda" and again.inputVolume is volume
    with pytest.raises(ValueError):
        p.device = "tpu"
    with pytest.raises(ValueError):
        p.overlap = 1.0
    with pytest.raises(AttributeError):
        p.colour = "red"


@pytest.mark.parametrize("quality", sorted(module.QUALITY_PRESETS))
def test_quality_preset_sets_overlap_and_tta(logic, quality):
    p = logic.getParameterNode()
    logic.applyQualityPreset(p, quality)
    assert p.quality == quality
    assert p.overlap == module.QUALITY_PRESETS[quality]["overlap"]
    assert p.tta == module.QUALITY_PRESETS[quality]["tta"]


def test_models_come_from_bundled_then_user_catalogs(logic, tmp_path):
    bundled = tmp_path / "bundled.json"
    bundled.write_text(json.dumps({"models": [{"id": "caml-la-8", "version": 1}, {"id": "caml-la-cpu"}]}))
    user = tmp_path / "user.json"
    user.write_text(json.dumps({"models": [{"id": "my-cohort-v3", "version": 3}, {"id": "caml-la-8"}]}))
    models = logic.availableModels([bundled, user, tmp_path / "absent.json"])
    assert [(m["id"], m["source"]) for m in models] == [
        ("caml-la-8", "bundled"), ("caml-la-cpu", "bundled"), ("my-cohort-v3", "user")]
    assert "v3" in models[2]["label"]
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    assert logic.availableModels([broken]) == []


@pytest.mark.parametrize("requested, cuda, device, says", [
    ("auto", True, "cuda", "GPU"),
    ("auto", False, "cpu", "No CUDA GPU"),
    ("cuda", False, "cpu", "falling back to the CPU"),
    ("cuda", True, "cuda", "GPU"),
    ("cpu", True, "cpu", "CPU"),
])
def test_device_falls_back_to_cpu_and_says_so(logic, requested, cuda, device, says):
    got, message = logic.resolveDevice(requested, cudaAvailable=cuda)
    assert got == device and says in message


def test_missing_packages_and_one_confirmation(logic, monkeypatch):
    assert logic.missingPackages({"numpy": "numpy>=1", "no_such_pkg_caml": "no-such-pkg-caml>=1"}) == [
        "no-such-pkg-caml>=1"]
    requirements = {"numpy": "numpy", "no_such_pkg_caml": "no-such-pkg-caml"}
    monkeypatch.setattr(logic, "ENGINE_REQUIREMENTS", requirements)
    monkeypatch.setattr(logic, "torchAvailable", lambda: False)
    asked, installed = [], []
    ok = logic.ensureDependencies(lambda text: asked.append(text) or False,
                                  installTorch=lambda: installed.append("torch"),
                                  pipInstall=installed.append)
    assert not ok and installed == [] and len(asked) == 1
    assert "PyTorch" in asked[0] and "no-such-pkg-caml" in asked[0]
    logic.ensureDependencies(lambda text: True, installTorch=lambda: installed.append("torch"),
                             pipInstall=installed.append)
    assert installed == ["torch", ["no-such-pkg-caml"]]


def test_nothing_to_install_asks_nothing(logic, monkeypatch):
    monkeypatch.setattr(logic, "ENGINE_REQUIREMENTS", {"numpy": "numpy"})
    monkeypatch.setattr(logic, "torchAvailable", lambda: True)
    assert logic.ensureDependencies(lambda text: pytest.fail("asked for nothing to install"))


def test_segment_command_reflects_the_parameters(logic, params, tmp_path):
    logic.applyQualityPreset(params, "best")
    params.uncertainty = True
    argv = logic.segmentCommand(Path("in.nrrd"), Path("out.nrrd"), params, "cpu", Path("u.nrrd"))
    assert argv[:2] == logic.engineCommand
    args = argv[2:]
    assert args[:3] == ["segment", "in.nrrd", "out.nrrd"]
    assert args[args.index("--model") + 1] == "bundled-la"
    assert args[args.index("--device") + 1] == "cpu"
    assert float(args[args.index("--overlap") + 1]) == 0.5
    assert "--tta" in args and "--lcc" in args
    assert args[args.index("--uncertainty") + 1] == "u.nrrd"
    assert args[args.index("--progress") + 1] == "json"
    logic.engineCommand = None
    default = logic.segmentCommand(Path("in.nrrd"), Path("out.nrrd"), params, "cpu")
    assert default[1:3] == ["-m", "CAMLSegmentationLib.cli"] and "--uncertainty" not in default


def test_segment_creates_an_aligned_left_atrium_segment(logic, params, scene):
    seen = []
    seg = logic.segment(params, progress=lambda run: seen.append(run.fraction), timeout=60,
                        cudaAvailable=False)
    assert params.outputSegmentation is seg
    segment_id = seg.GetSegmentation().GetSegmentIdBySegmentName("Left atrium")
    assert segment_id
    assert seg.GetNodeReference(seg.GetReferenceImageGeometryReferenceRole()) is params.inputVolume
    mask = mrml_bridge.segment_to_mask(seg, segment_id, params.inputVolume)
    expected = _expected_mask(params.inputVolume)
    assert expected.sum() > 0
    np.testing.assert_array_equal(mask, expected)
    assert seen and max(seen) <= 1.0
    assert seg.GetDisplayNode().GetVisibility3D()


def test_rerun_reuses_the_output_node(logic, params, scene):
    first = logic.segment(params, timeout=60, cudaAvailable=False)
    second = logic.segment(params, timeout=60, cudaAvailable=False)
    assert second is first
    assert first.GetSegmentation().GetNumberOfSegments() == 1
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 1


def test_roi_limits_the_segmentation_and_it_is_pasted_back(logic, params, scene):
    node = params.inputVolume
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "roi")
    m = mrml_bridge.node_ijk_to_ras(node)
    corners = np.array([(m @ np.array([i, j, k, 1.0]))[:3] for i in (4, 11) for j in (3, 10) for k in (2, 9)])
    roi.SetXYZ(*corners.mean(axis=0))
    roi.SetRadiusXYZ(*((corners.max(axis=0) - corners.min(axis=0)) / 2))
    params.roi = roi
    seg = logic.segment(params, timeout=60, cudaAvailable=False)
    segment_id = seg.GetSegmentation().GetSegmentIdBySegmentName("Left atrium")
    mask = mrml_bridge.segment_to_mask(seg, segment_id, node)
    start, stop = mrml_bridge.roi_index_bounds(roi, node)
    box = tuple(slice(a, b) for a, b in zip(start, stop))
    expected = np.zeros_like(mask)
    expected[box] = _expected_mask(node)[box]
    np.testing.assert_array_equal(mask, expected)
    assert mask.sum() < _expected_mask(node).sum()


def test_uncertainty_overlay_on_the_input_grid(logic, params, scene):
    params.uncertainty = True
    logic.segment(params, timeout=60, cudaAvailable=False)
    unc = params.uncertaintyVolume
    assert unc is not None
    volume = mrml_bridge.volume_from_node(unc)
    assert volume.same_geometry(mrml_bridge.volume_from_node(params.inputVolume), tol=1e-6)
    np.testing.assert_allclose(volume.array, 0.25)
    assert unc.GetDisplayNode().GetWindowLevelMax() == pytest.approx(1.0)


def test_failure_reports_the_engine_error_and_adds_nothing(logic, params, scene):
    params.model = "broken"
    before = scene.GetNumberOfNodes()
    with pytest.raises(RuntimeError, match="has no weights"):
        logic.segment(params, timeout=60, cudaAvailable=False)
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0
    assert scene.GetNumberOfNodes() == before


def test_cancel_stops_the_job_and_cleans_up(logic, params, scene):
    params.model = "slow"
    run = logic.startSegmentation(params, cudaAvailable=False)
    deadline = time.time() + 30
    while run.fraction == 0 and time.time() < deadline:
        run.poll()
        time.sleep(0.02)
    assert 0 < run.fraction < 1 and "Sliding window" in run.status
    logic.cancel(run)
    assert run.job.state == "cancelled"
    assert not run.workDir.exists()
    with pytest.raises(RuntimeError, match="cancelled"):
        logic.finishSegmentation(run, params)
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0


def test_no_input_is_a_clear_error(logic):
    p = logic.getParameterNode()
    with pytest.raises(ValueError, match="input volume"):
        logic.startSegmentation(p, cudaAvailable=False)


def test_correct_sets_up_the_segment_editor(logic, params, scene):
    seg = logic.segment(params, timeout=60, cudaAvailable=False)
    editor = logic.prepareCorrection(seg, params.inputVolume)
    assert editor.GetSegmentationNode() is seg
    assert editor.GetSourceVolumeNode() is params.inputVolume
    assert editor.GetSelectedSegmentID() == seg.GetSegmentation().GetSegmentIdBySegmentName("Left atrium")
    assert logic.prepareCorrection(seg, params.inputVolume) is editor  # one editor node per scene
    with pytest.raises(ValueError, match="Segment first"):
        logic.prepareCorrection(None, params.inputVolume)


@pytest.mark.parametrize("event, fraction, text", [
    ({"event": "progress", "stage": "sliding_window", "done": 3, "total": 12, "message": "cuda"},
     0.25, "Sliding window: 3/12 cuda"),
    ({"event": "error", "message": "bad input"}, None, "Error: bad input"),
    ({"event": "finished", "state": "cancelled"}, None, "Cancelled."),
    ({"event": "log", "message": "x"}, None, ""),
])
def test_describe_event(event, fraction, text):
    assert module.describeEvent(event) == (fraction, text)


def test_widget_holds_no_computation():
    """Every Widget method only binds GUI state or forwards to the Logic (no numpy, engine or subprocess)."""
    import inspect

    source = inspect.getsource(module.CAMLSegmentationWidget)
    for forbidden in ("numpy", "np.", "subprocess", "CAMLSegmentationLib", "SimpleITK", "torch", "Job("):
        assert forbidden not in source, forbidden
