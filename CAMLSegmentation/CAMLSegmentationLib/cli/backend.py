"""``caml segment --backend``: which engine runs the network, PyTorch or ONNX Runtime.

``auto`` runs ONNX Runtime on the CPU when it is installed and the model has
an ONNX export (of A too when ``--uncertainty`` or ``--ensemble`` needs it),
and torch otherwise or for a GPU. On the ONNX path nothing imports torch, so
a Python with only the engine's light packages and ``onnxruntime`` segments.
Both backends go through the same ``predictor.segment_volume``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import UserError

BACKEND_CHOICES = ("auto", "torch", "onnx")


def add_backend_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=BACKEND_CHOICES, default="auto",
                        help="what runs the network: onnx (ONNX Runtime on the CPU, no PyTorch needed; the "
                             "model must have an ONNX export), torch, or auto (default: onnx when onnxruntime "
                             "is installed, the model has an export and no GPU is used, else torch)")


def load_segment_model(args: argparse.Namespace, with_a: bool = False) -> Any:
    """The model ``--weights`` or ``--model`` names (else the catalog default), loaded for the backend
    ``--backend`` chooses: a torch ``InferenceModel`` or an ``OnnxModel``; UserError when there is none.

    ``--weights`` may name a checkpoint (torch) or an export ``x.v.onnx`` (ONNX Runtime; ``x.a.onnx``
    beside it is sub-model A). Catalog exports are checked against their SHA-256 like the weights.
    """
    from ..inference.onnx_runtime import choose_backend, load_onnx_model, sibling_exports
    from ..model.catalog import default_model, find_model, verify, verify_onnx

    requested = getattr(args, "backend", "auto") or "auto"
    device = getattr(args, "device", "auto")
    if args.weights:
        if Path(args.weights).name.lower().endswith(".onnx"):
            if requested == "torch":
                raise UserError(f"{args.weights}: an ONNX file runs with --backend onnx (or auto), not torch")
            exports = sibling_exports(args.weights)
            choose_backend("onnx", True, device, with_a_export=not with_a or "a" in exports)
            return load_onnx_model(exports, with_a=with_a)
        choose_backend(requested, False, device)  # --backend onnx with a checkpoint: one-line error
        return _torch_model(args.weights, device, with_a, None)
    entry = find_model(args.model) if args.model else default_model()
    if entry is None:
        from ..model.catalog import bundled_catalog_path, user_catalog_path

        raise UserError(f"no trained model in the catalog ({bundled_catalog_path()} and {user_catalog_path()} "
                        f"list none): pass --weights FILE, or register one with `caml models register`")
    name = f"{entry.id} (version {entry.version})"
    backend = choose_backend(requested, "v" in entry.onnx, device, with_a_export=not with_a or "a" in entry.onnx)
    weights = verify(entry)  # checked on either path: a damaged release is reported, whatever runs it
    if backend == "onnx":
        return load_onnx_model(verify_onnx(entry, ("v", "a") if with_a else ("v",)), with_a=with_a, name=name)
    return _torch_model(weights, device, with_a, name)


def _torch_model(weights: Any, device: str, with_a: bool, name: Any) -> Any:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise UserError(f"{name or weights}: this model runs with PyTorch here (it has no ONNX export, or "
                        f"--backend torch asked for it), and PyTorch is not installed: install torch, or use "
                        f"a model with an ONNX export (`caml models`) with --backend auto or onnx") from None
    from ..inference.predictor import load_inference_model

    return load_inference_model(weights, device, with_a=with_a, name=name)
