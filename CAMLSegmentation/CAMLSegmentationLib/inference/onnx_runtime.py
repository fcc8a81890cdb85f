"""The ONNX Runtime backend: sub-models V and A run on the CPU without PyTorch.

``OnnxModel`` answers the same ``run_windows`` call as the torch
``predictor.InferenceModel``, so ``predictor.segment_volume`` (windows,
flips, blending, resampling, threshold, largest component) is one code path
for both; only the forward pass differs. Nothing here imports torch: a Slicer
without PyTorch segments through this module with ``onnxruntime`` alone.

The exports (``model/onnx_export.py``) output the foreground probability of a
batch of windows and carry the model's ``InferenceSettings`` in their
metadata.

Session options, measured on the 2-core build machine (see
``benchmarks/bench_inference.py --ort-options``): the full graph optimisation
level (it folds the float16 weights' Casts and BatchNorm into the
convolutions once, at load), sequential execution, and as many intra-op
threads as the job may use (``OMP_NUM_THREADS`` when set, else ONNX Runtime's
own choice of the physical cores).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import CAMLError
from ..model.settings import InferenceSettings
from .predictor import sliding_window

PathLike = Union[str, Path]
#: The names ``onnx_export`` gives the graph's input and output, and its metadata keys.
INPUT_NAME = "image"
SETTINGS_KEY = "caml.inference"
SUB_MODEL_KEY = "caml.sub_model"
SUB_MODELS = ("v", "a")
BACKENDS = ("auto", "torch", "onnx")


class OnnxModelError(CAMLError, ValueError):
    """An ONNX export that cannot be used (missing, unreadable, not this project's, or for another model)."""


def onnxruntime_available() -> bool:
    """Whether ``import onnxruntime`` would find the package (without importing it)."""
    try:
        return importlib.util.find_spec("onnxruntime") is not None
    except (ImportError, ValueError):
        return False


@dataclass(frozen=True)
class CpuDevice:
    """What ``segment_volume`` reads of a model's device (``.type``, ``str()``) for the ONNX CPU backend."""

    type: str = "cpu"

    def __str__(self) -> str:
        return "cpu (onnxruntime)"


def session_options(threads: Optional[int] = None) -> Any:
    """ONNX Runtime session options: full graph optimisation, sequential execution, ``threads`` intra-op
    threads (None: ``OMP_NUM_THREADS`` when set, else ONNX Runtime's default of one per physical core)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if threads is None:
        env = os.environ.get("OMP_NUM_THREADS", "")
        threads = int(env) if env.isdigit() and int(env) > 0 else 0
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    # One process segments one image: no thread pool spinning after the work is done.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


@dataclass
class OnnxModel:
    """Sub-model V (and A when loaded) as ONNX Runtime sessions, with the settings stored in the export."""

    networks: Dict[str, Any]  # sub-model name -> onnxruntime.InferenceSession
    settings: InferenceSettings
    name: str = "model"
    device: CpuDevice = field(default_factory=CpuDevice)
    backend = "onnx"

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


def flip_averaged(sessions: Sequence[Any], flips: Sequence[Tuple[int, ...]] = ((),)) -> Any:
    """A numpy predictor: ``[B, C, i, j, k]`` -> ``[B, len(sessions), i, j, k]`` foreground probability,
    averaged over the image-axis ``flips``; as in the torch predictor, every mirror image of the
    batch goes through the network in one call."""

    def predict(batch: np.ndarray) -> np.ndarray:
        count = batch.shape[0]
        stacked = np.concatenate([np.flip(batch, [a + 2 for a in axes]) if axes else batch for axes in flips])
        stacked = np.ascontiguousarray(stacked, dtype=np.float32)
        outputs = []
        for session in sessions:
            p = session.run(None, {INPUT_NAME: stacked})[0]  # [F * B, i, j, k]
            total = None
            for n, axes in enumerate(flips):
                chunk = p[n * count:(n + 1) * count]
                one = np.flip(chunk, [a + 1 for a in axes]) if axes else chunk  # back to the image's orientation
                total = one.astype(np.float32) if total is None else total + one
            outputs.append(total / len(flips))
        return np.stack(outputs, axis=1)

    return predict


def read_export_metadata(path: PathLike) -> Dict[str, str]:
    """The ``caml.*`` metadata of an export, read with ONNX Runtime (no ``onnx`` package needed)."""
    session = _session(path, threads=1)
    return dict(session.get_modelmeta().custom_metadata_map)


def _session(path: PathLike, threads: Optional[int] = None) -> Any:
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise OnnxModelError(f"{path}: ONNX export not found")
    try:
        return ort.InferenceSession(str(path), sess_options=session_options(threads),
                                    providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for a damaged file
        raise OnnxModelError(f"{path}: not a usable ONNX model ({str(exc).splitlines()[0][:200]})") from exc


def load_onnx_model(exports: Mapping[str, PathLike], with_a: bool = False, name: Optional[str] = None,
                    threads: Optional[int] = None) -> OnnxModel:
    """ONNX Runtime sessions for sub-model V (and A if ``with_a``) from their export files.

    ``exports`` maps ``"v"``/``"a"`` to files (``caml models`` checks their
    SHA-256 first). The settings come from V's metadata; A must carry the
    same ones, and each file must say it holds the sub-model it is loaded as.
    """
    wanted = ("v", "a") if with_a else ("v",)
    missing = [w for w in wanted if w not in exports]
    if missing:
        raise OnnxModelError(f"no ONNX export of sub-model {', '.join(m.upper() for m in missing)}")
    sessions: Dict[str, Any] = {}
    settings: Optional[InferenceSettings] = None
    for which in wanted:
        session = _session(exports[which], threads)
        meta = session.get_modelmeta().custom_metadata_map
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
        sessions[which] = session
    assert settings is not None
    return OnnxModel(networks=sessions, settings=settings,
                     name=name or Path(exports["v"]).name.replace(".v.onnx", ""))


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
    """``torch`` or ``onnx`` for ``caml segment --backend``.

    ``auto``: ONNX Runtime when it is installed, the model has an export (of A
    too when A is needed) and the device is not a GPU (``cuda``, or ``auto``
    with a usable CUDA torch); torch otherwise. ``onnx`` asked for explicitly
    runs on the CPU with device ``auto``, and is an error where it cannot run
    (no export, no onnxruntime, ``cuda``), rather than a silent switch.
    """
    if requested not in BACKENDS:
        raise OnnxModelError(f"backend must be one of {', '.join(BACKENDS)}, not {requested!r}")
    device = (device or "auto").strip().lower()
    if requested == "torch":
        return "torch"
    problem = None
    if not has_export:
        problem = "the model has no ONNX export"
    elif not with_a_export:
        problem = "the model has no ONNX export of sub-model A (needed for --uncertainty and --ensemble)"
    elif not onnxruntime_available():
        problem = "onnxruntime is not installed (pip install onnxruntime)"
    elif device.startswith("cuda"):
        problem = "the ONNX backend runs on the CPU only; use --backend torch for a GPU"
    elif requested == "auto" and device == "auto" and _cuda_torch_usable():
        problem = "a GPU is available to torch"
    if problem is None:
        return "onnx"
    if requested == "onnx":
        raise OnnxModelError(f"--backend onnx: {problem}")
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
