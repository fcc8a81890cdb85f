"""The ONNX backends: sub-models V and A run on the CPU without PyTorch, through OpenVINO or ONNX Runtime.

``OnnxModel`` answers the same ``run_windows`` call as the torch
``predictor.InferenceModel``, so ``predictor.segment_volume`` (windows,
flips, blending, resampling, threshold, largest component) is one code path
for every backend; only the forward pass differs, and it is the only thing
the two runtimes give: per sub-model, a callable from a batch of windows to
their foreground probability (``OpenVinoNetwork``, ``OrtNetwork``). Nothing
here imports torch: a Slicer without PyTorch segments through this module
with ``openvino`` or ``onnxruntime`` alone.

The exports (``model/onnx_export.py``) output the foreground probability of a
batch of windows and carry the model's ``InferenceSettings`` in their
metadata, which ``onnx_metadata`` reads for both runtimes.

ONNX Runtime's session options, measured on the 2-core build machine (see
``benchmarks/bench_inference.py --ort-options``): the full graph optimisation
level (it folds the float16 weights' Casts and BatchNorm into the
convolutions once, at load), sequential execution, and as many intra-op
threads as the job may use (``OMP_NUM_THREADS`` when set, else ONNX Runtime's
own choice of the physical cores). OpenVINO: the LATENCY hint (one request
at a time uses every thread), the same thread count, and its own default
precision unless float32 is asked for (bfloat16 on CPUs with bfloat16
matrix units: on the build machine 2.6 times faster than its float32, the
probabilities within 0.014 of it).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ..model.settings import InferenceSettings
from .backends import BACKENDS, EXPORT_RUNTIMES, FLOAT32, PRECISIONS, installed_runtimes, runtime_installed
from .onnx_metadata import OnnxModelError, read_export_metadata
from .predictor import sliding_window

PathLike = Union[str, Path]
#: The names ``onnx_export`` gives the graph's input and output, and its metadata keys.
INPUT_NAME = "image"
SETTINGS_KEY = "caml.inference"
SUB_MODEL_KEY = "caml.sub_model"
SUB_MODELS = ("v", "a")
#: OpenVINO's names of the element types it may compute in, as ``--precision`` and ``info`` spell them.
OPENVINO_PRECISIONS = {"f32": "float32", "bf16": "bfloat16", "f16": "float16"}
#: A forward pass of one sub-model: ``[N, C, i, j, k]`` float32 -> ``[N, i, j, k]`` foreground probability.
Network = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class CpuDevice:
    """What ``segment_volume`` reads of a model's device (``.type``, ``str()``) for the export runtimes:
    ``str()`` names the runtime and the precision it computes in, e.g. ``cpu (openvino, bfloat16)``."""

    runtime: str = "onnx"
    precision: str = FLOAT32
    type: str = "cpu"

    def __str__(self) -> str:
        return f"cpu ({EXPORT_RUNTIMES[self.runtime]}, {self.precision})"


def _threads(threads: Optional[int]) -> Optional[int]:
    """``threads``, else ``OMP_NUM_THREADS`` when set (a job's share of the cores), else None (the
    runtime's own default)."""
    if threads is None:
        env = os.environ.get("OMP_NUM_THREADS", "")
        threads = int(env) if env.isdigit() and int(env) > 0 else None
    return threads


def session_options(threads: Optional[int] = None) -> Any:
    """ONNX Runtime session options: full graph optimisation, sequential execution, ``threads`` intra-op
    threads (None: ``OMP_NUM_THREADS`` when set, else ONNX Runtime's default of one per physical core)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = _threads(threads) or 0
    options.inter_op_num_threads = 1
    # One process segments one image: no thread pool spinning after the work is done.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class OrtNetwork:
    """One sub-model's export as an ONNX Runtime session on the CPU (always float32)."""

    precision = FLOAT32

    def __init__(self, path: Path, threads: Optional[int] = None) -> None:
        import onnxruntime as ort

        try:
            self.session = ort.InferenceSession(str(path), sess_options=session_options(threads),
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for a damaged file
            raise OnnxModelError(f"{path}: not a usable ONNX model ({_first_line(exc)})") from exc

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {INPUT_NAME: batch})[0]


#: Under ``caml_home()``: OpenVINO's compiled models, so a new process loads an export it compiled before
#: in about half the time (0.12 s instead of 0.2 s for ``caml-la-cpu64``'s V on the 2-core machine).
OPENVINO_CACHE = ("cache", "openvino")


def _openvino_core() -> Any:
    """The process's OpenVINO ``Core`` for the current ``caml_home()``, with its model cache there.

    OpenVINO names each cached blob by a hash of the model's content and the compile options, so a
    changed export or option compiles anew; a cache folder that cannot be made only means no cache.
    """
    from ..model.catalog import caml_home

    return _core_with_cache(str(caml_home().joinpath(*OPENVINO_CACHE)))


@functools.cache
def _core_with_cache(cache: str) -> Any:
    """One ``Core`` per cache folder (it loads the CPU plugin once)."""
    import openvino

    core = openvino.Core()
    try:
        Path(cache).mkdir(parents=True, exist_ok=True)
    except OSError:
        return core
    if os.access(cache, os.W_OK):
        core.set_property({"CACHE_DIR": cache})
    return core


class OpenVinoNetwork:
    """One sub-model's export compiled by OpenVINO for the CPU, with the LATENCY hint.

    ``precision``: ``auto`` leaves the choice to OpenVINO (its fastest native
    precision: bfloat16 on CPUs with bfloat16 matrix units, else float32);
    ``float32`` asks for full precision. ``self.precision`` is what the
    compiled model reports it computes in, not what was asked for.
    """

    def __init__(self, path: Path, threads: Optional[int] = None, precision: str = "auto") -> None:
        config: Dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
        threads = _threads(threads)
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        if precision == FLOAT32:
            config["INFERENCE_PRECISION_HINT"] = "f32"
        try:
            core = _openvino_core()
            # Compiled from the read model, not from the path: OpenVINO's cache then keys on the model's
            # content, where a path key would run an old compiled model after a new export at that path.
            self.compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        except Exception as exc:  # OpenVINO raises RuntimeError with a multi-line report for a damaged file
            raise OnnxModelError(f"{path}: not a usable ONNX model ({_first_line(exc)})") from exc
        reported = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        self.precision = OPENVINO_PRECISIONS.get(reported, reported)
        self.request = self.compiled.create_infer_request()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.request.infer({0: batch})
        return self.request.get_output_tensor(0).data.copy()  # the request reuses its output buffer


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:200]


@dataclass
class OnnxModel:
    """Sub-model V (and A when loaded) as compiled networks of one export runtime, with the settings
    stored in the export."""

    networks: Dict[str, Network]  # sub-model name -> OpenVinoNetwork or OrtNetwork
    settings: InferenceSettings
    name: str = "model"
    device: CpuDevice = field(default_factory=CpuDevice)

    @property
    def backend(self) -> str:
        """``openvino`` or ``onnx``, as ``--backend`` names it."""
        return self.device.runtime

    @property
    def precision(self) -> str:
        return self.device.precision

    @property
    def window(self) -> Tuple[int, int, int]:
        return self.settings.window

    @property
    def spacing(self) -> Optional[Tuple[float, float, float]]:
        return self.settings.spacing

    def run_windows(self, image: np.ndarray, order: Sequence[str], flips: Sequence[Tuple[int, ...]],
                    amp: bool = False, **window_options: Any) -> np.ndarray:
        """``sliding_window`` over ``image`` ``[C, I, J, K]`` (numpy) with the sub-models in ``order``:
        ``[len(order), I, J, K]`` foreground probabilities. ``amp`` is for CUDA and ignored here."""
        predict = flip_averaged([self.networks[w] for w in order], flips)
        return sliding_window(np.ascontiguousarray(image, dtype=np.float32), self.window, predict,
                              **window_options)


def flip_averaged(networks: Sequence[Network], flips: Sequence[Tuple[int, ...]] = ((),)) -> Any:
    """A numpy predictor: ``[B, C, i, j, k]`` -> ``[B, len(networks), i, j, k]`` foreground probability,
    averaged over the image-axis ``flips``; as in the torch predictor, every mirror image of the
    batch goes through the network in one call."""

    def predict(batch: np.ndarray) -> np.ndarray:
        count = batch.shape[0]
        stacked = np.concatenate([np.flip(batch, [a + 2 for a in axes]) if axes else batch for axes in flips])
        stacked = np.ascontiguousarray(stacked, dtype=np.float32)
        outputs = []
        for network in networks:
            p = network(stacked)  # [F * B, i, j, k]
            total = None
            for n, axes in enumerate(flips):
                chunk = p[n * count:(n + 1) * count]
                one = np.flip(chunk, [a + 1 for a in axes]) if axes else chunk  # back to the image's orientation
                total = one.astype(np.float32) if total is None else total + one
            outputs.append(total / len(flips))
        return np.stack(outputs, axis=1)

    return predict


def load_onnx_model(exports: Mapping[str, PathLike], with_a: bool = False, name: Optional[str] = None,
                    threads: Optional[int] = None, runtime: str = "onnx", precision: str = "auto") -> OnnxModel:
    """Sub-model V (and A if ``with_a``) from their export files, compiled by ``runtime`` (a key of
    ``backends.EXPORT_RUNTIMES``) at ``precision`` (``backends.PRECISIONS``; ONNX Runtime is float32).

    ``exports`` maps ``"v"``/``"a"`` to files (``caml models`` checks their
    SHA-256 first). The settings come from V's metadata; A must carry the
    same ones, and each file must say it holds the sub-model it is loaded as.
    The metadata is checked before a runtime compiles anything.
    """
    if runtime not in EXPORT_RUNTIMES:
        raise OnnxModelError(f"runtime must be one of {', '.join(EXPORT_RUNTIMES)}, not {runtime!r}")
    if precision not in PRECISIONS:
        raise OnnxModelError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    wanted = ("v", "a") if with_a else ("v",)
    missing = [w for w in wanted if w not in exports]
    if missing:
        raise OnnxModelError(f"no ONNX export of sub-model {', '.join(m.upper() for m in missing)}")
    settings: Optional[InferenceSettings] = None
    for which in wanted:
        meta = read_export_metadata(exports[which])
        if meta.get(SUB_MODEL_KEY) != which or SETTINGS_KEY not in meta:
            raise OnnxModelError(f"{exports[which]}: not this project's export of sub-model {which.upper()} "
                                 f"(metadata {SUB_MODEL_KEY}={meta.get(SUB_MODEL_KEY)!r})")
        try:
            these = InferenceSettings.from_dict(json.loads(meta[SETTINGS_KEY]))
        except ValueError as exc:
            raise OnnxModelError(f"{exports[which]}: {exc}") from exc
        if settings is not None and these != settings:
            raise OnnxModelError(f"{exports[which]}: settings differ from sub-model V's export")
        settings = these
    assert settings is not None
    networks: Dict[str, Any] = {}
    for which in wanted:
        path = Path(exports[which])
        networks[which] = (OpenVinoNetwork(path, threads, precision) if runtime == "openvino"
                           else OrtNetwork(path, threads))
    precisions = {n.precision for n in networks.values()}
    return OnnxModel(networks=networks, settings=settings,
                     name=name or Path(exports["v"]).name.replace(".v.onnx", ""),
                     device=CpuDevice(runtime, "/".join(sorted(precisions))))


def sibling_exports(v_path: PathLike) -> Dict[str, Path]:
    """``x.v.onnx`` and, when it exists, ``x.a.onnx`` beside it (``caml segment --weights x.v.onnx``)."""
    v_path = Path(v_path)
    exports = {"v": v_path}
    if v_path.name.endswith(".v.onnx"):
        a_path = v_path.with_name(v_path.name[: -len(".v.onnx")] + ".a.onnx")
        if a_path.is_file():
            exports["a"] = a_path
    return exports


def choose_backend(requested: str, has_export: bool, device: str = "auto", with_a_export: bool = True) -> str:
    """``torch``, ``openvino`` or ``onnx`` for ``caml segment --backend``.

    ``auto``: when the model has an export (of A too when A is needed) and
    the device is not a GPU (``cuda``, or ``auto`` with a usable CUDA torch),
    the first export runtime installed, in ``EXPORT_RUNTIMES``' order
    (OpenVINO, then ONNX Runtime); torch otherwise. A runtime asked for
    explicitly runs on the CPU with device ``auto``, and is an error where it
    cannot run (no export, not installed, ``cuda``), rather than a silent switch.
    """
    if requested not in BACKENDS:
        raise OnnxModelError(f"backend must be one of {', '.join(BACKENDS)}, not {requested!r}")
    device = (device or "auto").strip().lower()
    if requested == "torch":
        return "torch"
    runtimes = installed_runtimes() if requested == "auto" else (
        (requested,) if runtime_installed(requested) else ())
    problem = None
    if not has_export:
        problem = "the model has no ONNX export"
    elif not with_a_export:
        problem = "the model has no ONNX export of sub-model A (needed for --uncertainty and --ensemble)"
    elif not runtimes:
        problem = (f"{EXPORT_RUNTIMES[requested]} is not installed (pip install {EXPORT_RUNTIMES[requested]})"
                   if requested != "auto" else "no ONNX runtime is installed")
    elif device.startswith("cuda"):
        problem = "the ONNX runtimes run on the CPU only; use --backend torch for a GPU"
    elif requested == "auto" and device == "auto" and _cuda_torch_usable():
        problem = "a GPU is available to torch"
    if problem is None:
        return runtimes[0]
    if requested != "auto":
        raise OnnxModelError(f"--backend {requested}: {problem}")
    return "torch"


def _cuda_torch_usable() -> bool:
    """Whether torch is installed and sees a GPU. Imports torch (seconds) only for a CUDA build of it:
    a CPU-only build says so in ``torch/version.py``, which is read as text."""
    try:
        spec = importlib.util.find_spec("torch")
    except (ImportError, ValueError):
        return False
    if spec is None or not spec.origin:
        return False
    try:
        version = (Path(spec.origin).parent / "version.py").read_text(encoding="utf-8")
    except OSError:
        version = ""
    if all(re.search(rf"^{name}\s*(:[^=]*)?=\s*None\s*$", version, re.M) for name in ("cuda", "hip")):
        return False  # built for neither CUDA nor ROCm: no GPU for torch
    import torch

    return bool(torch.cuda.is_available())
