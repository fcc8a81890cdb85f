"""``caml segment --backend`` and ``--precision``: which engine runs the network, and at which precision.

``auto`` runs a model's ONNX export on the CPU when the model has one (of A
too when ``--uncertainty`` or ``--ensemble`` needs it), with OpenVINO when it
is installed, else ONNX Runtime, and torch otherwise or for a GPU. On the
export's path nothing imports torch, so a Python with only the engine's light
packages and ``openvino`` (or ``onnxruntime``) segments. Every backend goes
through the same ``predictor.segment_volume``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..inference.backends import BACKENDS, PRECISIONS


def add_backend_argument(parser: argparse.ArgumentParser) -> None:
    """``--backend`` and ``--precision`` (``caml segment``, ``caml evaluate``)."""
    parser.add_argument("--backend", choices=BACKENDS, default="auto",
                        help="what runs the network: openvino (OpenVINO) or onnx (ONNX Runtime), on the CPU "
                             "with no PyTorch needed (the model must have an ONNX export), torch, or auto "
                             "(default: when the model has an export and no GPU is used, openvino if "
                             "installed, else onnx if onnxruntime is installed; torch otherwise)")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="auto (default): the runtime's fastest native precision, for OpenVINO its "
                             "own default (bfloat16 on CPUs with bfloat16 matrix units such as AMX, float32 "
                             "elsewhere), float16 autocast for torch on CUDA, float32 otherwise; float32: "
                             "full precision everywhere. The precision that ran is reported with the device")


def load_segment_model(args: argparse.Namespace, with_a: bool = False) -> Any:
    """The model ``--weights`` or ``--model`` names (else the catalog default), loaded for the backend
    ``--backend`` chooses: a torch ``InferenceModel`` or an ``OnnxModel`` (OpenVINO or ONNX Runtime,
    at ``--precision``); UserError when there is none.

    ``--weights`` may name a checkpoint (torch) or an export ``x.v.onnx`` (an export runtime;
    ``x.a.onnx`` beside it is sub-model A). Catalog exports are checked against their SHA-256 like
    the weights.
    """
    from ..inference.backends import installed_runtimes
    from ..inference.onnx_runtime import choose_backend, load_onnx_model, sibling_exports
    from ..model.catalog import default_model, find_model, verify, verify_onnx

    requested = getattr(args, "backend", "auto") or "auto"
    precision = getattr(args, "precision", "auto") or "auto"
    device = getattr(args, "device", "auto")
    if args.weights:
        if Path(args.weights).name.lower().endswith(".onnx"):
            if requested == "torch":
                raise UserError(f"{args.weights}: an ONNX file runs with --backend openvino, onnx or auto, "
                                f"not torch")
            exports = sibling_exports(args.weights)
            # An export cannot fall back to torch: auto here means the first export runtime installed.
            if requested == "auto":
                installed = installed_runtimes()
                if not installed:
                    raise UserError(f"{args.weights}: an ONNX export runs with openvino or onnxruntime, and "
                                    f"neither is installed (pip install openvino)")
                requested = installed[0]
            runtime = choose_backend(requested, True, device, with_a_export=not with_a or "a" in exports)
            return load_onnx_model(exports, with_a=with_a, runtime=runtime, precision=precision)
        choose_backend(requested, False, device)  # --backend onnx/openvino with a checkpoint: one-line error
        return _torch_model(args.weights, device, with_a, None)
    entry = find_model(args.model) if args.model else default_model()
    if entry is None:
        from ..model.catalog import bundled_catalog_path, user_catalog_path

        raise UserError(f"no trained model in the catalog ({bundled_catalog_path()} and {user_catalog_path()} "
                        f"list none): pass --weights FILE, or register one with `caml models register`")
    name = f"{entry.id} (version {entry.version})"
    backend = choose_backend(requested, "v" in entry.onnx, device, with_a_export=not with_a or "a" in entry.onnx)
    weights = verify(entry)  # checked on either path: a damaged release is reported, whatever runs it
    if backend != "torch":
        return load_onnx_model(verify_onnx(entry, ("v", "a") if with_a else ("v",)), with_a=with_a, name=name,
                               runtime=backend, precision=precision)
    return _torch_model(weights, device, with_a, name)


def _torch_model(weights: Any, device: str, with_a: bool, name: Any) -> Any:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise UserError(f"{name or weights}: this model runs with PyTorch here (it has no ONNX export, or "
                        f"--backend torch asked for it), and PyTorch is not installed: install torch, or use "
                        f"a model with an ONNX export (`caml models`) with --backend auto, openvino or "
                        f"onnx") from None
    from ..inference.predictor import load_inference_model

    return load_inference_model(weights, device, with_a=with_a, name=name)
