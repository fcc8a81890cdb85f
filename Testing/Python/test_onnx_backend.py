"""The ONNX backends (OpenVINO and ONNX Runtime): exports of V and A, parity with torch, `caml segment
--backend` and `--precision`, the exports' metadata, and no torch at all.

Tolerance stated and checked here: in float32, foreground probabilities
within 1e-4 of torch's on either runtime (measured: 3e-8 for V and 2e-6 for A
of the bundled model on random windows with ONNX Runtime), masks identical
on generated data and on LA cases except voxels whose torch probability lies
within 1e-4 of the threshold. OpenVINO's own precision (bfloat16 on CPUs with
bfloat16 matrix units) is held to masks at Dice >= 0.99 with its float32 ones.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import pytest
import torch
from CAMLSegmentationLib import cli
from CAMLSegmentationLib.inference.backends import BACKENDS, EXPORT_RUNTIMES, installed_runtimes
from CAMLSegmentationLib.inference.onnx_runtime import (
    OnnxModel,
    OnnxModelError,
    choose_backend,
    flip_averaged,
    load_onnx_model,
    read_export_metadata,
)
from CAMLSegmentationLib.inference.predictor import (
    InferenceOptions,
    flip_combinations,
    load_inference_model,
    make_predictor,
    segment_volume,
)
from CAMLSegmentationLib.io.volume import read_image, read_volume, write_image
from CAMLSegmentationLib.model.catalog import (
    CatalogError,
    bundled_catalog_path,
    default_model,
    read_catalog,
    register_model,
    sha256_file,
    verify_onnx,
)
from CAMLSegmentationLib.model.onnx_export import export_release
from inference_helpers import blob_volume, one_thread, tiny_checkpoint

pytest.importorskip("onnxruntime", reason="the ONNX backend needs onnxruntime (pip install onnxruntime)")
pytest.importorskip("openvino", reason="the OpenVINO backend needs openvino (pip install openvino)")
pytest.importorskip("onnx", reason="exporting needs the onnx package")

_threads = pytest.fixture(autouse=True)(one_thread)

PACKAGE_PARENT = Path(__file__).resolve().parents[2] / "CAMLSegmentation"
#: Largest difference allowed between ONNX Runtime's and torch's foreground probability.
PROBABILITY_TOLERANCE = 1e-4
#: Lowest Dice between the masks of OpenVINO's own precision and of float32 (the same runtime, data, model).
OWN_PRECISION_DICE = 0.99
WINDOW = (16, 16, 16)
#: The export runtimes, each in float32: what must match torch.
RUNTIMES = sorted(EXPORT_RUNTIMES)


@pytest.fixture(autouse=True)
def own_caml_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CAML_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture(scope="module")
def tiny_exports(tmp_path_factory: pytest.TempPathFactory) -> Tuple[Path, Dict[str, Path]]:
    """A small checkpoint with non-trivial BatchNorm statistics and its exports of V and A."""
    folder = tmp_path_factory.mktemp("tiny-onnx")
    weights = tiny_checkpoint(folder / "tiny.pt", window=WINDOW, spacing=(1.0, 1.0, 1.5))
    return weights, export_release(weights)


def _agree(torch_result, onnx_result) -> None:
    """Probabilities within the tolerance; masks equal except where torch sits on the threshold."""
    diff = np.abs(torch_result.probability - onnx_result.probability)
    assert float(diff.max()) <= PROBABILITY_TOLERANCE, float(diff.max())
    threshold = torch_result.info["threshold"]
    undecided = np.abs(torch_result.probability - threshold) <= PROBABILITY_TOLERANCE
    assert np.array_equal(torch_result.mask[~undecided], onnx_result.mask[~undecided])


def test_export_carries_the_settings_and_the_weights_checksum(tiny_exports) -> None:
    weights, exports = tiny_exports
    assert sorted(exports) == ["a", "v"]
    assert exports["v"].name == "tiny.v.onnx" and exports["a"].name == "tiny.a.onnx"
    meta = read_export_metadata(exports["a"])
    assert meta["caml.sub_model"] == "a" and meta["caml.weights_sha256"] == sha256_file(weights)
    torch_model = load_inference_model(weights, "cpu")
    onnx_model = load_onnx_model(exports, with_a=True)
    assert isinstance(onnx_model, OnnxModel) and onnx_model.settings == torch_model.settings
    with pytest.raises(OnnxModelError, match="not this project's export of sub-model V"):
        load_onnx_model({"v": exports["a"]})


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("flips", [((),), ((), (0,), (1,), (0, 1))])
def test_windows_through_either_runtime_match_torch(tiny_exports, flips, runtime: str) -> None:
    weights, exports = tiny_exports
    torch_model = load_inference_model(weights, "cpu", with_a=True)
    onnx_model = load_onnx_model(exports, with_a=True, runtime=runtime, precision="float32")
    assert onnx_model.backend == runtime and onnx_model.precision == "float32"
    batch = np.random.default_rng(1).normal(size=(3, 1) + WINDOW).astype(np.float32)
    with torch.inference_mode():
        expected = make_predictor([torch_model.networks["v"], torch_model.networks["a"]],
                                  list(flips))(torch.from_numpy(batch)).numpy()
    got = flip_averaged([onnx_model.networks["v"], onnx_model.networks["a"]], list(flips))(batch)
    assert got.shape == expected.shape == (3, 2) + WINDOW
    assert float(np.abs(got - expected).max()) <= PROBABILITY_TOLERANCE


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("protocol", ["default", "fast", "official"])
def test_segment_volume_is_the_same_with_every_backend(tiny_exports, protocol: str, runtime: str) -> None:
    weights, exports = tiny_exports
    options = InferenceOptions.for_protocol(protocol)
    if protocol != "official":
        options = options.with_changes(uncertainty=True)
    volume = blob_volume((40, 30, 22))
    by_torch = segment_volume(volume, load_inference_model(weights, "cpu", with_a=True), options)
    by_onnx = segment_volume(volume, load_onnx_model(exports, with_a=True, runtime=runtime, precision="float32"),
                             options)
    _agree(by_torch, by_onnx)
    if protocol != "official":
        assert float(np.abs(by_torch.uncertainty - by_onnx.uncertainty).max()) <= 2 * PROBABILITY_TOLERANCE
    assert by_onnx.info["windows"] == by_torch.info["windows"] and by_onnx.info["flips"] == by_torch.info["flips"]
    assert by_onnx.info["device"] == f"cpu ({EXPORT_RUNTIMES[runtime]}, float32)"
    assert (by_onnx.info["backend"], by_onnx.info["precision"]) == (runtime, "float32")
    assert (by_torch.info["backend"], by_torch.info["precision"]) == ("torch", "float32")


def test_openvino_keeps_compiled_models_in_caml_home(tmp_path: Path, tiny_exports, own_caml_home: Path) -> None:
    """A second load of an export reads OpenVINO's compiled model from ``$CAML_HOME/cache/openvino``
    and computes the same; another export written over the same path does not reuse it."""
    from CAMLSegmentationLib.inference import onnx_runtime

    _, exports = tiny_exports
    other = export_release(tiny_checkpoint(tmp_path / "other.pt", window=WINDOW, spacing=(1.0, 1.0, 1.5), seed=7))
    cache = own_caml_home.joinpath(*onnx_runtime.OPENVINO_CACHE)
    batch = np.random.default_rng(2).normal(size=(2, 1) + WINDOW).astype(np.float32)

    def v_output(path: Path) -> np.ndarray:
        onnx_runtime._core_with_cache.cache_clear()  # as a new process would start
        return load_onnx_model({"v": path}, runtime="openvino", precision="float32").networks["v"](batch)

    first = v_output(exports["v"])
    blobs = sorted(cache.glob("*.blob"))
    assert blobs, f"nothing cached in {cache}"
    np.testing.assert_array_equal(v_output(exports["v"]), first)
    assert sorted(cache.glob("*.blob")) == blobs  # read back, not compiled again
    shared = tmp_path / "release.v.onnx"
    shared.write_bytes(exports["v"].read_bytes())
    np.testing.assert_array_equal(v_output(shared), first)
    shared.write_bytes(other["v"].read_bytes())  # a re-exported release at the same path
    expected = load_onnx_model({"v": other["v"]}, runtime="onnx").networks["v"](batch)
    assert float(np.abs(expected - first).max()) > 1e-3  # the two models differ
    assert float(np.abs(v_output(shared) - expected).max()) <= PROBABILITY_TOLERANCE


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float(np.logical_and(a, b).sum()) / max(1.0, float(a.sum() + b.sum()))


def test_openvinos_own_precision_keeps_the_float32_mask() -> None:
    """``--precision auto`` on OpenVINO: its default precision (bfloat16 where the CPU has bfloat16 matrix
    units, float32 elsewhere), as the compiled model reports it; the bundled model's mask of a generated
    image agrees with float32's at Dice >= 0.99 (the tiny random test model's probabilities sit too close
    to the threshold to say anything)."""
    import openvino

    shipped = default_model()
    exports = verify_onnx(shipped, ("v", "a"))
    volume = blob_volume((72, 64, 36), seed=4)
    options = InferenceOptions().with_changes(uncertainty=True)
    own = load_onnx_model(exports, with_a=True, runtime="openvino", precision="auto")
    full = load_onnx_model(exports, with_a=True, runtime="openvino", precision="float32")
    # What OpenVINO itself says it computes in with no precision asked for, on this CPU.
    compiled = openvino.Core().compile_model(str(exports["v"]), "CPU", {"PERFORMANCE_HINT": "LATENCY"})
    native = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    assert own.precision == {"f32": "float32", "bf16": "bfloat16", "f16": "float16"}[native]
    by_own, by_full = segment_volume(volume, own, options), segment_volume(volume, full, options)
    assert by_own.info["precision"] == own.precision and by_own.info["device"] == f"cpu (openvino, {own.precision})"
    assert by_full.info["precision"] == "float32"
    assert by_full.mask.sum() > 500
    assert _dice(by_own.mask, by_full.mask) >= OWN_PRECISION_DICE, _dice(by_own.mask, by_full.mask)
    if own.precision == "float32":  # a CPU without bfloat16 units: the same computation
        assert np.array_equal(by_own.mask, by_full.mask)


def test_the_metadata_reader_reads_what_onnx_runtime_reads(tmp_path: Path, tiny_exports) -> None:
    """The pure-Python reader of ``metadata_props`` against ONNX Runtime's, on the exports and on a model
    the ``onnx`` package writes with metadata before the graph, an empty value and non-ASCII text."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    _, exports = tiny_exports
    shipped = [p for e in read_catalog(bundled_catalog_path(), "bundled") for p in e.onnx_paths().values()]
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, producer_name="test", doc_string="d" * 300)
    for key, value in [("caml.sub_model", "v"), ("empty", ""), ("note", "Vorhof \u00e9\u00e8 " + "x" * 200),
                       ("caml.sub_model", "a")]:  # a key twice: the later one wins
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    written = tmp_path / "written.onnx"
    written.write_bytes(model.SerializeToString())
    for path in [exports["v"], exports["a"], written] + shipped:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert read_export_metadata(path) == dict(session.get_modelmeta().custom_metadata_map), path
    assert read_export_metadata(written)["caml.sub_model"] == "a"

    # Damaged files: one-line errors, never a hang or a partial answer.
    data = exports["v"].read_bytes()
    for name, content in [("cut.onnx", data[: len(data) // 2]), ("noise.onnx", bytes([0x0F]) * 64),
                          ("zero-field.onnx", b"\x00\x01")]:
        bad = tmp_path / name
        bad.write_bytes(content)
        with pytest.raises(OnnxModelError, match="not a usable ONNX model"):
            read_export_metadata(bad)
    with pytest.raises(OnnxModelError, match="not found"):
        read_export_metadata(tmp_path / "missing.onnx")


def _one_pass_per_flip(net, flips):
    """The predictor before flips were batched: one forward pass per mirror image."""

    def predict(x):
        probs = None
        for axes in flips:
            xin = x.flip([a + 2 for a in axes]) if axes else x
            p = torch.softmax(net(xin).float(), dim=1)[:, 1]
            p = p.flip([a + 1 for a in axes]) if axes else p
            probs = p if probs is None else probs + p
        return (probs / len(flips))[:, None]

    return predict


def test_flips_in_one_batch_give_what_one_pass_per_flip_gave(tiny_exports) -> None:
    """Item 4 of #26: batching the test-time flips changes nothing but rounding, nor the mask."""
    weights, _ = tiny_exports
    model = load_inference_model(weights, "cpu")
    flips = flip_combinations(model.settings.flip_axes)
    assert len(flips) == 4
    batch = torch.from_numpy(np.random.default_rng(2).normal(size=(2, 1) + WINDOW).astype(np.float32))
    with torch.inference_mode():
        batched = make_predictor([model.networks["v"]], flips)(batch)
        separate = _one_pass_per_flip(model.networks["v"], flips)(batch)
    assert float((batched - separate).abs().max()) <= 1e-5
    volume = blob_volume((40, 30, 22), seed=3)
    result = segment_volume(volume, model)
    original = model.run_windows

    def unbatched(image, order, flips, **options):
        from CAMLSegmentationLib.inference.predictor import sliding_window

        with torch.inference_mode():
            return sliding_window(torch.from_numpy(image), model.window,
                                  _one_pass_per_flip(model.networks["v"], flips), **options).numpy()

    model.run_windows = unbatched  # the same job with the former predictor
    try:
        before = segment_volume(volume, model)
    finally:
        model.run_windows = original
    assert float(np.abs(result.probability - before.probability).max()) <= 1e-5
    undecided = np.abs(before.probability - 0.5) <= 1e-5
    assert np.array_equal(result.mask[~undecided], before.mask[~undecided])


def test_choose_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    assert BACKENDS == ("auto", "torch", "onnx", "openvino")
    assert choose_backend("torch", True, "cpu") == "torch"
    # auto on the CPU: OpenVINO, then ONNX Runtime, then torch, by what can be imported.
    assert installed_runtimes() == ("openvino", "onnx")
    assert choose_backend("auto", True, "cpu") == "openvino"
    assert choose_backend("openvino", True, "auto") == "openvino"
    assert choose_backend("auto", False, "cpu") == "torch"
    assert choose_backend("auto", True, "cpu", with_a_export=False) == "torch"
    assert choose_backend("auto", True, "cuda") == "torch"
    assert choose_backend("onnx", True, "auto") == "onnx"
    with pytest.raises(OnnxModelError, match="no ONNX export"):
        choose_backend("onnx", False, "cpu")
    with pytest.raises(OnnxModelError, match="CPU only"):
        choose_backend("onnx", True, "cuda")
    with pytest.raises(OnnxModelError, match="CPU only"):
        choose_backend("openvino", True, "cuda:0")
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "openvino", None)  # `import openvino` now fails
        assert installed_runtimes() == ("onnx",)
        assert choose_backend("auto", True, "cpu") == "onnx"
        with pytest.raises(OnnxModelError, match="--backend openvino: openvino is not installed"):
            choose_backend("openvino", True, "cpu")
        m.setitem(sys.modules, "onnxruntime", None)
        assert installed_runtimes() == ()
        assert choose_backend("auto", True, "cpu") == "torch"
        with pytest.raises(OnnxModelError, match="--backend onnx: onnxruntime is not installed"):
            choose_backend("onnx", True, "cpu")
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "onnxruntime", None)
        assert choose_backend("auto", True, "cpu") == "openvino"


def _register_tiny(tmp_path: Path) -> str:
    weights = tiny_checkpoint(tmp_path / "best.pt", window=WINDOW, spacing=(1.0, 1.0, 1.5))
    entry = register_model(weights, "tiny-onnx", version="1", onnx=True)
    assert sorted(entry.onnx) == ["a", "v"]
    for which, path in entry.onnx_paths().items():
        assert path.name == f"tiny-onnx@1.{which}.onnx" and sha256_file(path) == entry.onnx[which]["sha256"]
    (listed,) = read_catalog(entry.catalog, "user")
    assert listed.onnx == entry.onnx
    return entry.id


def test_caml_segment_backend_onnx_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model_id = _register_tiny(tmp_path)
    volume = blob_volume((40, 30, 22))
    src = write_image(volume.array, volume, tmp_path / "mri.nrrd")
    masks, devices = {}, {}
    for backend, precision in [("onnx", "auto"), ("torch", "auto"), ("openvino", "float32"),
                               ("auto", "float32"), ("auto", "auto")]:
        out, u = tmp_path / f"{backend}-{precision}.seg.nrrd", tmp_path / f"{backend}-{precision}-u.nrrd"
        assert cli.main(["segment", str(src), str(out), "--model", model_id, "--backend", backend,
                         "--precision", precision, "--device", "cpu", "--uncertainty", str(u),
                         "--progress", "json"]) == 0
        done = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert done["event"] == "done"
        devices[backend, precision] = done["info"]["device"], done["info"]["precision"]
        masks[backend, precision] = read_image(out).array
        assert read_image(u).same_geometry(read_volume(src))
    assert devices["onnx", "auto"] == ("cpu (onnxruntime, float32)", "float32")  # ONNX Runtime: float32 always
    assert devices["torch", "auto"] == ("cpu", "float32")
    assert devices["openvino", "float32"] == devices["auto", "float32"] == ("cpu (openvino, float32)", "float32")
    own = devices["auto", "auto"][1]  # OpenVINO's own precision on this CPU, as it reports it
    assert devices["auto", "auto"][0] == f"cpu (openvino, {own})"
    assert masks["onnx", "auto"].any() or masks["torch", "auto"].any()
    for key in [("onnx", "auto"), ("openvino", "float32"), ("auto", "float32")]:
        assert np.array_equal(masks[key], masks["torch", "auto"]), key


def test_caml_evaluate_scores_through_the_backend_asked_for(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`caml evaluate --backend/--precision`: the same Dice through OpenVINO in float32 as through torch, and
    metrics.json says what ran; by default (auto) a model with an export is scored as `caml segment` runs it."""
    from CAMLSegmentationLib.io.volume import write_mask

    model_id = _register_tiny(tmp_path)
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "labels").mkdir()
    for n in range(2):
        volume = blob_volume((40, 30, 22), seed=n)
        write_image(volume.array, volume, data / "images" / f"case{n}.nrrd")
        write_mask((volume.array > 130).astype(np.uint8), volume, data / "labels" / f"case{n}.nrrd")
    (tmp_path / "cases.list").write_text("case0\ncase1\n")
    reports = {}
    for args in (["--backend", "torch"], ["--backend", "openvino", "--precision", "float32"], []):
        out = tmp_path / ("eval" + "-".join(args))
        assert cli.main(["evaluate", "--data", str(data), "--list", str(tmp_path / "cases.list"), "--model", model_id,
                         "--out", str(out), "--device", "cpu", "--progress", "none", *args]) == 0
        capsys.readouterr()
        reports[tuple(args)] = json.loads((out / "metrics.json").read_text())
    by_torch, by_openvino = reports["--backend", "torch"], reports["--backend", "openvino", "--precision", "float32"]
    assert (by_torch["device"], by_torch["backend"], by_torch["precision"]) == ("cpu", "torch", "float32")
    assert (by_openvino["device"], by_openvino["backend"]) == ("cpu (openvino, float32)", "openvino")
    # The masks agree but for voxels on the threshold (see _agree): Dice within a voxel's worth.
    assert [r["dice"] for r in by_openvino["cases"]] == pytest.approx([r["dice"] for r in by_torch["cases"]], abs=2e-3)
    assert reports[()]["backend"] == "openvino"  # auto, as `caml segment` picks


def test_a_damaged_export_or_a_checkpoint_with_backend_onnx_is_a_one_line_error(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model_id = _register_tiny(tmp_path)
    volume = blob_volume((24, 20, 16))
    src = write_image(volume.array, volume, tmp_path / "mri.nrrd")
    from CAMLSegmentationLib.model.catalog import find_model

    entry = find_model(model_id)
    with entry.onnx_paths()["v"].open("ab") as f:
        f.write(b"x")
    with pytest.raises(CatalogError, match="checksum mismatch for the ONNX export"):
        verify_onnx(entry)
    assert cli.main(["segment", str(src), str(tmp_path / "a.seg.nrrd"), "--model", model_id,
                     "--backend", "onnx", "--progress", "none"]) != 0
    assert "checksum mismatch" in capsys.readouterr().err
    weights = tiny_checkpoint(tmp_path / "plain.pt", window=WINDOW)
    assert cli.main(["segment", str(src), str(tmp_path / "b.seg.nrrd"), "--weights", str(weights),
                     "--backend", "onnx", "--progress", "none"]) != 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "no ONNX export" in err[0]
    assert not (tmp_path / "a.seg.nrrd").exists() and not (tmp_path / "b.seg.nrrd").exists()


#: Runs `caml ARGS` in a Python where `import torch` fails, as in a Slicer without the PyTorch extension.
WITHOUT_TORCH = """
import json, sys
sys.modules["torch"] = None  # any `import torch` now raises ImportError
from CAMLSegmentationLib import cli
code = cli.main(sys.argv[1:])
print(json.dumps({"code": code, "torch_loaded": any(m == "torch" or m.startswith("torch.")
                                                    for m, v in sys.modules.items() if v is not None)}))
"""


def _caml_without_torch(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(PACKAGE_PARENT), OMP_NUM_THREADS="1", CAML_HOME=str(home))
    return subprocess.run([sys.executable, "-c", WITHOUT_TORCH, *args], capture_output=True, text=True,
                          env=env, timeout=600)


def test_caml_segment_runs_without_torch(tmp_path: Path, tiny_exports) -> None:
    """The bundled model (auto picks its export) and an export named with --weights, torch unimportable."""
    _, exports = tiny_exports
    volume = blob_volume((40, 30, 22))
    src = write_image(volume.array, volume, tmp_path / "mri.nrrd")
    home = tmp_path / "home"
    done = _caml_without_torch(home, "segment", str(src), str(tmp_path / "bundled.seg.nrrd"),
                               "--uncertainty", str(tmp_path / "u.nrrd"), "--progress", "none",
                               "--protocol", "fast")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"code": 0, "torch_loaded": False}
    assert "on cpu (openvino, " in done.stdout  # auto: OpenVINO is installed here
    assert (tmp_path / "bundled.seg.nrrd").is_file() and (tmp_path / "u.nrrd").is_file()
    done = _caml_without_torch(home, "segment", str(src), str(tmp_path / "tiny.seg.nrrd"),
                               "--weights", str(exports["v"]), "--backend", "onnx", "--progress", "none")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"code": 0, "torch_loaded": False}
    with_torch = segment_volume(volume, load_inference_model(tiny_exports[0], "cpu"))
    assert np.array_equal(read_image(tmp_path / "tiny.seg.nrrd").array, with_torch.mask)
    # A model without an export cannot run there: one line naming what is missing.
    done = _caml_without_torch(home, "segment", str(src), "--weights", str(tiny_exports[0]),
                               "--progress", "none")
    assert json.loads(done.stdout.strip().splitlines()[-1])["code"] != 0
    assert len([line for line in done.stderr.splitlines() if line.strip()]) == 1, done.stderr


def test_the_bundled_model_ships_checked_exports() -> None:
    (shipped,) = [e for e in read_catalog(bundled_catalog_path(), "bundled") if e.default]
    assert shipped == default_model()
    paths = verify_onnx(shipped, ("v", "a"))
    for which, path in paths.items():
        meta = read_export_metadata(path)
        assert meta["caml.sub_model"] == which and meta["caml.weights_sha256"] == shipped.sha256
        assert path.stat().st_size < 8 * 2**20  # float16 weights: the repository stays lean


def test_bundled_model_parity_on_la_cases(la_root: Path) -> None:
    """The shipped model through torch, ONNX Runtime and OpenVINO (float32) on two validation cases, the
    default protocol."""
    shipped = default_model()
    torch_model = load_inference_model(shipped.path, "cpu", with_a=False)
    runtimes = [load_onnx_model(verify_onnx(shipped), runtime=r, precision="float32") for r in RUNTIMES]
    for case in sorted(shipped.metrics["per_case_dice"])[:2]:
        volume = read_volume(la_root / "2018LA_Seg_Training Set" / case / "mri_norm2.h5")
        by_torch = segment_volume(volume, torch_model)
        for onnx_model in runtimes:
            _agree(by_torch, segment_volume(volume, onnx_model))
        assert by_torch.mask.sum() > 1000, case
