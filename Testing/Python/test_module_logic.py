"""The module's Logic on a real MRML scene, running a real child process that speaks the caml protocol.

The child is the real ``caml segment`` with small seeded untrained models from
a user catalog: the Logic's mask must equal what the engine gives when run
directly on the same volume, so input written on the right grid, JSON
progress followed, output brought back as an aligned "Left atrium" segment,
and cancel and failure leaving the scene alone are all checked end to end.
"""

from __future__ import annotations

import json
import sys
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

from CAMLSegmentationLib.slicer import logic as slicer_logic  # noqa: E402
from CAMLSegmentationLib.slicer import mrml_bridge, parameters, runs  # noqa: E402

ENGINE = [sys.executable, "-m", "CAMLSegmentationLib.cli"]


def _save_random_model(path: Path, base_filters: int, window, seed: int, calibrate=None) -> Path:
    """An untrained (seeded) dual model in the trainer's checkpoint form: the real engine runs it.

    With ``calibrate`` (an image), model V's foreground bias is shifted so that
    about half of that image's voxels come out foreground: a mask with
    structure, which an untrained network would not give by itself.
    """
    import torch
    import torch.nn.functional as F
    from CAMLSegmentationLib.inference.preprocess import normalize_intensity
    from CAMLSegmentationLib.model.checkpoint import save_checkpoint
    from CAMLSegmentationLib.model.network import CAMLNet, NetworkConfig

    torch.manual_seed(seed)
    net = CAMLNet(NetworkConfig(base_filters=base_filters))
    if calibrate is not None:
        net.eval()
        with torch.no_grad():
            x = torch.from_numpy(normalize_intensity(calibrate, "zscore"))[None, None]  # the legacy preset below
            x = F.pad(x, [0, (-x.shape[-1]) % 16, 0, (-x.shape[-2]) % 16, 0, (-x.shape[-3]) % 16])
            logits = net.decoder1(net.encoder1(x))[0]
            margin = (logits[0, 1] - logits[0, 0]).median()
            net.decoder1.out_conv.bias[1] -= margin
    save_checkpoint(path, {"model": net.state_dict(), "network": net.config.to_dict(),
                           "preset": {"name": "test", "patch_size": list(window), "spacing": None}})
    return path


@pytest.fixture(scope="module")
def caml_home(tmp_path_factory):
    """A user catalog with three models: a tiny one, a full-size one (slow on a CPU) and a corrupted one."""
    from CAMLSegmentationLib.model.catalog import register_model

    home = tmp_path_factory.mktemp("caml_home")
    catalog = home / "models" / "models.json"
    reference = mrml_bridge.volume_from_node(slicer_logic.makeTestVolume(slicer.vtkMRMLScene(), shape=(24, 20, 16)))
    register_model(_save_random_model(home / "tiny.pt", 4, (16, 16, 16), seed=2, calibrate=reference.array),
                   "tiny-random", catalog_path=catalog)
    register_model(_save_random_model(home / "full.pt", 16, (112, 112, 80), seed=0), "slow",
                   catalog_path=catalog)
    entry = register_model(_save_random_model(home / "broken.pt", 4, (16, 16, 16), seed=1), "broken",
                           catalog_path=catalog)
    with open(Path(entry.path), "ab") as f:  # the file no longer matches its catalog checksum
        f.write(b"x")
    return home


@pytest.fixture()
def scene():
    return slicer.vtkMRMLScene()


@pytest.fixture()
def logic(scene, caml_home, monkeypatch):
    monkeypatch.setenv("CAML_HOME", str(caml_home))
    lg = slicer_logic.CAMLSegmentationLogic(scene)
    lg.engineCommand = list(ENGINE)
    yield lg
    lg.stopEngineWorker()


@pytest.fixture()
def params(logic, scene):
    p = logic.getParameterNode()
    p.inputVolume = slicer_logic.makeTestVolume(scene, shape=(24, 20, 16))
    p.model = "tiny-random"
    return p


def _engine_outputs(logic, params, volume, tmp_path: Path, name: str = "direct"):
    """What ``caml segment`` gives when run directly on ``volume`` with the Logic's own arguments."""
    from CAMLSegmentationLib.cli import main as caml_main
    from CAMLSegmentationLib.io.volume import read_image

    inp, out, unc = (tmp_path / f"{name}_{k}.nrrd" for k in ("in", "out", "unc"))
    slicer_logic.writeVolume(volume, inp)
    argv = logic.segmentCommand(inp, out, params, "cpu", unc if params.uncertainty else None)[len(ENGINE):]
    argv[argv.index("--progress") + 1] = "none"
    assert caml_main(argv) == 0
    mask = read_image(out).array.astype(np.uint8)
    return mask, (read_image(unc).array if params.uncertainty else None)


def test_parameter_node_is_a_scene_singleton_with_defaults(logic, scene):
    p = logic.getParameterNode()
    # The model card's settings (caml segment's defaults): dense windows with flips, the largest
    # component as the model chose (None: neither --lcc nor --no-lcc).
    assert (p.device, p.quality, p.tta, p.uncertainty, p.largestComponent) == (
        "auto", "standard", True, False, None)
    assert p.node.GetSingletonTag() == "CAMLSegmentation" and p.node.GetAttribute("ModuleName") == "CAMLSegmentation"
    assert scene.GetSingletonNode("CAMLSegmentation", "vtkMRMLScriptedModuleNode") is p.node
    p.node.RemoveAttribute("ModuleName")  # what a scene close may do
    assert logic.getParameterNode().node.GetAttribute("ModuleName") == "CAMLSegmentation"
    p.device = "cuda"
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "mri")
    p.inputVolume = volume
    again = logic.getParameterNode()
    assert again.node is p.node and again.device == "cuda" and again.inputVolume is volume
    with pytest.raises(ValueError):
        p.device = "tpu"
    with pytest.raises(ValueError):
        p.quality = "best"
    p.node.SetParameter("quality", "balanced")  # a preset of an older version, from a saved scene
    assert p.quality == "standard"
    with pytest.raises(AttributeError):
        p.colour = "red"


@pytest.mark.parametrize("quality", sorted(parameters.QUALITY_PRESETS))
def test_quality_preset_sets_protocol_and_tta(logic, quality):
    """Each quality runs an engine protocol with the flips that protocol uses by itself."""
    from CAMLSegmentationLib.inference.predictor import InferenceOptions

    p = logic.getParameterNode()
    logic.applyQualityPreset(p, quality)
    assert p.quality == quality
    preset = parameters.QUALITY_PRESETS[quality]
    assert p.tta == preset["tta"] == InferenceOptions.for_protocol(preset["protocol"]).tta
    args = logic.segmentCommand(Path("in.nrrd"), Path("out.nrrd"), p, "cpu")
    assert args[args.index("--protocol") + 1] == preset["protocol"]


def test_standard_quality_is_the_engines_default_path():
    """The panel's default ("standard") runs what `caml segment` runs with no flags: the card's settings."""
    assert parameters.CAMLSegmentationParameters._DEFAULTS["quality"] == "standard"
    assert parameters.QUALITY_PRESETS["standard"]["protocol"] == "default"


def test_engine_requirements_match_the_package_metadata():
    """The panel installs the engine's packages itself (pyproject is not shipped with the extension):
    both lists must name the same packages and lower bounds, torch aside (installed separately)."""
    import re

    try:
        import tomllib
    except ImportError:  # Python < 3.11
        tomllib = pytest.importorskip("tomli")
    root = Path(__file__).resolve().parents[2]
    declared = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[<>=!~ ]", req, maxsplit=1)[0].lower(): req.replace(" ", "") for req in declared}
    names.pop("torch")
    panel = {req.split(">")[0].lower(): req for req in slicer_logic.CAMLSegmentationLogic.ENGINE_REQUIREMENTS.values()}
    assert panel == names



def test_the_onnx_runtime_offer_matches_the_engine_and_the_package_extras():
    """What the panel offers for Segment without torch: the engine's export runtimes, in the engine's order
    (the first is what is offered), at the lower bounds of pyproject's ``openvino`` and ``onnx`` extras."""
    from CAMLSegmentationLib.inference.backends import EXPORT_RUNTIMES

    try:
        import tomllib
    except ImportError:  # Python < 3.11
        tomllib = pytest.importorskip("tomli")
    root = Path(__file__).resolve().parents[2]
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    offer = slicer_logic.CAMLSegmentationLogic.EXPORT_RUNTIME_REQUIREMENTS
    assert list(offer) == list(EXPORT_RUNTIMES.values())
    assert [offer[EXPORT_RUNTIMES[name]] for name in ("openvino", "onnx")] == extras["openvino"] + extras["onnx"]

def _catalog(path: Path, *entries) -> Path:
    models = [dict({"file": f"{e['id']}.pt", "sha256": "0" * 64, "version": 1}, **e) for e in entries]
    path.write_text(json.dumps({"models": models}))
    return path


def test_models_come_from_the_engine_catalog_functions(logic, tmp_path, monkeypatch):
    from CAMLSegmentationLib.model import catalog

    bundled = _catalog(tmp_path / "bundled.json", {"id": "caml-la-8", "default": True},
                       {"id": "caml-la-cpu", "title": "paper setting, 8 labels"})
    user = _catalog(tmp_path / "user.json", {"id": "my-cohort-v3", "version": 3}, {"id": "caml-la-8"})
    models = logic.availableModels([(bundled, "bundled"), (user, "user"), (tmp_path / "absent.json", "user")])
    assert [(m["id"], m["source"]) for m in models] == [
        ("caml-la-8", "bundled"), ("caml-la-cpu", "bundled"), ("my-cohort-v3", "user")]
    assert "v3" in models[2]["label"]
    assert models[1]["label"] == "paper setting, 8 labels (caml-la-cpu v1, bundled)"  # the catalog's title
    assert models[0]["label"] == "caml-la-8 (v1, bundled)"  # no title: the id
    assert logic.defaultModelId(models) == "caml-la-8"
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    assert logic.availableModels([(broken, "user")]) == []
    # With no argument the Logic reads the engine's own bundled and user catalogs ($CAML_HOME, "" included).
    monkeypatch.setattr(catalog, "bundled_catalog_path", lambda: bundled)
    for home in ("", str(tmp_path / "home")):
        monkeypatch.setenv("CAML_HOME", home)
        (catalog.caml_home() / "models").mkdir(parents=True, exist_ok=True)
        _catalog(catalog.user_catalog_path(), {"id": f"mine{len(home)}", "default": True})
        ids = [m["id"] for m in logic.availableModels()]
        assert ids == ["caml-la-8", "caml-la-cpu", f"mine{len(home)}"]
        assert logic.defaultModelId(logic.availableModels()) == catalog.default_model().id == f"mine{len(home)}"
        catalog.user_catalog_path().unlink()


def test_a_cohort_version_in_use_is_offered_in_the_model_list(logic, tmp_path, monkeypatch):
    """#22 item 1: the version ``caml al use`` (or a promotion) made current is in the panel's Model list,
    under the cohort's id, and a rollback changes the version the list offers."""
    from CAMLSegmentationLib.cli import main as caml
    from test_active_learning import make_cohort
    from test_al_closing_loop import init, two_versions

    monkeypatch.setenv("CAML_HOME", str(tmp_path / "home"))
    root = init(make_cohort(tmp_path / "atrium study", n=3), tmp_path, "--model", "none")
    two_versions(root, tmp_path)
    assert "atrium-study" not in [m["id"] for m in logic.availableModels()]
    for version in ("2", "1"):
        assert caml(["al", "use", str(root), version]) == 0
        offered = {m["id"]: m for m in logic.availableModels()}
        assert offered["atrium-study"]["source"] == "user"
        assert offered["atrium-study"]["entry"].version == version
        assert f"atrium-study v{version}, user" in offered["atrium-study"]["label"]


def test_torch_version_is_checked_without_importing_it(logic, monkeypatch):
    assert logic.versionSatisfies("2.13.0+cpu") and logic.versionSatisfies("2.0") and logic.versionSatisfies("10.1")
    assert not logic.versionSatisfies("1.13.1+cu117") and not logic.versionSatisfies("1.9")
    monkeypatch.setattr(logic, "ENGINE_REQUIREMENTS", {"numpy": "numpy"})
    monkeypatch.setattr(logic, "installedTorchVersion", lambda: "1.13.1")
    asked, installed = [], []
    assert not logic.ensureDependencies(lambda text: asked.append(text) or False,
                                        installTorch=lambda: installed.append("torch"))
    assert installed == [] and ">=2.0" in asked[0] and "1.13.1" in asked[0]
    logic.ensureDependencies(lambda text: True, installTorch=lambda: installed.append("torch"))
    assert installed == ["torch"]


def test_segmentation_needs_no_h5py(logic):
    assert "h5py" not in logic.ENGINE_REQUIREMENTS


def test_panel_process_never_imports_torch(tmp_path, caml_home):
    """Listing models, checking dependencies and building the command happen without torch in Slicer."""
    probe = (
        "import sys, json\n"
        f"sys.path.insert(0, {str(MODULE_DIR)!r})\n"
        "import slicer, CAMLSegmentation as m\n"
        "from pathlib import Path\n"
        "logic = m.CAMLSegmentationLogic(slicer.vtkMRMLScene())\n"
        "p = logic.getParameterNode()\n"
        "ok = logic.ensureDependencies(lambda text: False)\n"
        "argv = logic.segmentCommand(Path('i.nrrd'), Path('o.nrrd'), p, p.device)\n"
        "print(json.dumps({'torch': 'torch' in sys.modules, 'ok': ok, 'argv': argv, 'model': p.model}))\n"
    )
    import os
    import subprocess

    env = dict(os.environ, CAML_HOME=str(caml_home))
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["torch"] is False and found["ok"] is True
    assert found["argv"][found["argv"].index("--device") + 1] == "auto"


def test_the_device_shown_is_the_one_the_engine_reports(logic, params):
    assert params.device == "auto"
    run = logic.startSegmentation(params)
    assert "auto" in run.status
    logic.finishSegmentation(run, params)
    # The test model was registered with its ONNX export (the test extras install onnx, openvino and
    # onnxruntime), so the engine's auto backend ran OpenVINO on the CPU, and says so with its precision.
    assert run.device.startswith("cpu (openvino, ") and run.deviceMessage == f"Ran on {run.device}."


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
    logic.applyQualityPreset(params, "fast")
    params.tta = True
    params.uncertainty = True
    params.largestComponent = True
    argv = logic.segmentCommand(Path("in.nrrd"), Path("out.nrrd"), params, "cpu", Path("u.nrrd"))
    assert argv[:len(ENGINE)] == logic.engineCommand
    args = argv[len(ENGINE):]
    assert args[:3] == ["segment", "in.nrrd", "out.nrrd"]
    assert args[args.index("--model") + 1] == "tiny-random"
    assert args[args.index("--device") + 1] == "cpu"
    assert args[args.index("--protocol") + 1] == "fast"
    assert "--tta" in args and "--lcc" in args
    assert args[args.index("--uncertainty") + 1] == "u.nrrd"
    assert args[args.index("--progress") + 1] == "json"
    params.largestComponent = False
    assert "--no-lcc" in logic.segmentCommand(Path("in.nrrd"), Path("out.nrrd"), params, "cpu")
    params.largestComponent = None
    logic.engineCommand = None
    default = logic.segmentCommand(Path("in.nrrd"), Path("out.nrrd"), params, "cpu")
    assert default[1:3] == ["-m", "CAMLSegmentationLib.cli"] and "--uncertainty" not in default
    assert "--lcc" not in default and "--no-lcc" not in default
    params.tta = False
    assert "--no-tta" in logic.segmentCommand(Path("in.nrrd"), Path("out.nrrd"), params, "cpu")
    with pytest.raises(ValueError, match="largestComponent"):
        params.largestComponent = "sometimes"


def test_segment_creates_an_aligned_left_atrium_segment(logic, params, scene, tmp_path):
    seen = []
    seg = logic.segment(params, progress=lambda run: seen.append(run.fraction), timeout=60)
    assert params.outputSegmentation is seg
    segment_id = seg.GetSegmentation().GetSegmentIdBySegmentName("Left atrium")
    assert segment_id
    assert seg.GetNodeReference(seg.GetReferenceImageGeometryReferenceRole()) is params.inputVolume
    mask = mrml_bridge.segment_to_mask(seg, segment_id, params.inputVolume)
    expected, _ = _engine_outputs(logic, params, mrml_bridge.volume_from_node(params.inputVolume), tmp_path)
    assert 0 < expected.sum() < expected.size  # a mask with structure, so alignment is really tested
    np.testing.assert_array_equal(mask, expected)
    assert seen and max(seen) <= 1.0
    assert seg.GetDisplayNode().GetVisibility3D()


def test_rerun_reuses_the_output_node(logic, params, scene):
    first = logic.segment(params, timeout=60)
    second = logic.segment(params, timeout=60)
    assert second is first
    assert first.GetSegmentation().GetNumberOfSegments() == 1
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 1


def test_roi_limits_the_segmentation_and_it_is_pasted_back(logic, params, scene, tmp_path):
    node = params.inputVolume
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "roi")
    m = mrml_bridge.node_ijk_to_ras(node)
    corners = np.array([(m @ np.array([i, j, k, 1.0]))[:3] for i in (4, 11) for j in (3, 10) for k in (2, 9)])
    roi.SetXYZ(*corners.mean(axis=0))
    roi.SetRadiusXYZ(*((corners.max(axis=0) - corners.min(axis=0)) / 2))
    params.roi = roi
    seg = logic.segment(params, timeout=60)
    segment_id = seg.GetSegmentation().GetSegmentIdBySegmentName("Left atrium")
    mask = mrml_bridge.segment_to_mask(seg, segment_id, node)
    start, stop = mrml_bridge.roi_index_bounds(roi, node)
    box = tuple(slice(a, b) for a, b in zip(start, stop))
    cropped = mrml_bridge.crop_volume(mrml_bridge.volume_from_node(node), start, stop)
    expected = np.zeros_like(mask)
    expected[box], _ = _engine_outputs(logic, params, cropped, tmp_path)
    np.testing.assert_array_equal(mask, expected)
    assert mask[box].any() and not mask[tuple(slice(0, a) for a in start)].any()


def test_uncertainty_overlay_on_the_input_grid(logic, params, scene, tmp_path):
    params.uncertainty = True
    logic.segment(params, timeout=60)
    unc = params.uncertaintyVolume
    assert unc is not None
    volume = mrml_bridge.volume_from_node(unc)
    assert volume.same_geometry(mrml_bridge.volume_from_node(params.inputVolume), tol=1e-6)
    _, expected = _engine_outputs(logic, params, mrml_bridge.volume_from_node(params.inputVolume), tmp_path)
    np.testing.assert_allclose(volume.array, expected, atol=1e-6)
    assert volume.array.max() > volume.array.min()
    assert unc.GetDisplayNode().GetWindowLevelMax() == pytest.approx(1.0)


def test_failure_reports_the_engine_error_and_adds_nothing(logic, params, scene):
    params.model = "broken"
    before = scene.GetNumberOfNodes()
    with pytest.raises(RuntimeError, match="(?i)checksum"):
        logic.segment(params, timeout=60)
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0
    assert scene.GetNumberOfNodes() == before


def test_cancel_stops_the_job_and_cleans_up(logic, params, scene):
    params.model = "slow"  # full-size network, 112x112x80 windows: seconds per window on a CPU
    params.inputVolume = slicer_logic.makeTestVolume(scene, shape=(200, 180, 120))
    run = logic.startSegmentation(params)
    deadline = time.time() + 120
    while run.fraction == 0 and time.time() < deadline:
        run.poll()
        time.sleep(0.02)
    assert 0 < run.fraction < 1 and "Inference" in run.status
    logic.cancel(run)
    assert run.job.state == "cancelled"
    assert not run.workDir.exists()
    with pytest.raises(RuntimeError, match="cancelled"):
        logic.finishSegmentation(run, params)
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0


def test_timer_tick_shows_progress_and_reports_the_end_once(logic, params):
    """The panel's timer handlers share runEndedAtTick; Qt widgets cannot run here, so plain
    attribute holders stand in for the progress bar, the status label and the timer."""
    from types import SimpleNamespace

    stopped = []
    timer = SimpleNamespace(stop=lambda: stopped.append(True))
    bar, label = SimpleNamespace(value=-1), SimpleNamespace(text="")
    assert runs.runEndedAtTick(None, timer, bar, label) is False and stopped == [True]
    stopped.clear()
    run = logic.startSegmentation(params)
    deadline = time.time() + 120
    while not runs.runEndedAtTick(run, timer, bar, label):
        assert not stopped and time.time() < deadline
        time.sleep(0.02)
    assert stopped == [True] and not run.running
    assert bar.value == int(round(100 * run.fraction)) and label.text == run.status
    logic.finishSegmentation(run, params)


def test_no_input_is_a_clear_error(logic):
    p = logic.getParameterNode()
    with pytest.raises(ValueError, match="input volume"):
        logic.startSegmentation(p)


def test_correct_sets_up_the_segment_editor(logic, params, scene):
    seg = logic.segment(params, timeout=60)
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
    assert runs.describeEvent(event) == (fraction, text)


def test_closing_the_scene_cancels_the_run_and_leaves_the_new_scene_empty(logic, params, scene):
    params.model = "slow"  # seconds per window: still running when the scene closes
    params.inputVolume = slicer_logic.makeTestVolume(scene, shape=(200, 180, 120))
    run = logic.startSegmentation(params)
    deadline = time.time() + 60
    while not run.poll() and time.time() < deadline:  # the child is up and talking
        time.sleep(0.02)
    assert run.running
    scene.Clear(0)  # File > Close Scene
    assert run.job.state == "cancelled" and not run.running
    assert run.abandoned and not run.workDir.exists()
    with pytest.raises(RuntimeError, match="scene was closed"):
        logic.finishSegmentation(run, logic.getParameterNode())
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 0
    assert logic._activeRuns == [] and logic._sceneCloseObserver is None


def test_a_run_whose_input_left_the_scene_is_not_finished(logic, params, scene):
    run = logic.startSegmentation(params)
    scene.RemoveNode(params.inputVolume)
    assert run.job.wait(60) == "done"
    with pytest.raises(RuntimeError, match="no longer in the scene"):
        logic.finishSegmentation(run)
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0
    assert not run.workDir.exists()


def test_the_module_file_loads_without_the_application():
    """PythonSlicer without the GUI (or these wheels): the module file imports, its module object fills in
    its metadata without Qt, and its Logic is the engine package's."""
    import types

    import CAMLSegmentation as module

    parent = types.SimpleNamespace()
    module.CAMLSegmentation(parent)
    assert parent.title == "CAML Segmentation" and parent.categories == ["Segmentation"]
    assert "CONTRIBUTING" in parent.contributors[0] and "module documentation" in parent.helpText
    assert module.CAMLSegmentationLogic is slicer_logic.CAMLSegmentationLogic


def test_sample_phantom_loads(logic, scene):
    """The phantom in memory (the panel picture's input; the Sample Data entry loads the same voxels from a
    file, see test_panel.py): generated, no patient data, on the 0.625 mm grid of the LA data."""
    node = logic.loadSamplePhantom()
    assert node.GetName() == slicer_logic.SAMPLE_NAME and node.GetAttribute("CAMLSegmentation.Synthetic")
    volume = mrml_bridge.volume_from_node(node)
    assert volume.shape == (144, 128, 80) and np.allclose(volume.spacing, 0.625)


def test_pip_install_prefers_slicer_packaging_pip_ensure(monkeypatch):
    """slicer.packaging.pip_ensure where Slicer has it (no second dialog: the user already confirmed),
    slicer.util.pip_install otherwise."""
    import types

    calls = []
    monkeypatch.setattr(slicer.util, "pip_install", lambda reqs: calls.append(("pip_install", reqs)),
                        raising=False)
    monkeypatch.setitem(sys.modules, "slicer.packaging", None)  # an older Slicer: no slicer.packaging
    slicer_logic.CAMLSegmentationLogic._pipInstall(["scipy>=1.7"])
    assert calls == [("pip_install", ["scipy>=1.7"])]

    packaging = types.ModuleType("slicer.packaging")
    packaging.pip_ensure = lambda reqs, **kw: calls.append(("pip_ensure", reqs, kw))
    monkeypatch.setitem(sys.modules, "slicer.packaging", packaging)
    slicer_logic.CAMLSegmentationLogic._pipInstall(["scipy>=1.7"])
    assert calls[-1] == ("pip_ensure", ["scipy>=1.7"], {"prompt_install": False, "requester": "CAMLSegmentation"})

