"""ONNX exports of sub-models V and A, so a CPU can segment with ONNX Runtime and no PyTorch.

One file per sub-model, ``<weights stem>.<v|a>.onnx`` beside the weights. Each
graph maps a batch of windows ``image [B, 1, wi, wj, wk]`` (float32, already
normalised) to the foreground probability ``foreground [B, wi, wj, wk]``
(softmax over the two classes, class 1), exactly what the torch predictor
takes from the network; the batch axis is free, the window is the model's.
How to run the model (``InferenceSettings``: window, voxel size,
normalisation, flips, threshold, post-processing) travels in the file's
metadata as it travels in the checkpoint, so ONNX Runtime needs nothing else,
and the SHA-256 of the weights it was made from is recorded too.

The released weights are float16; every float32 initializer that float16
holds exactly is stored as float16 with a Cast back to float32, which ONNX
Runtime folds when it loads the graph: half the file, the same numbers.
Exporting needs torch and ``onnx``; running the export needs neither.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Dict, Tuple, Union

import numpy as np

from .settings import InferenceSettings

PathLike = Union[str, Path]
#: ONNX opset of the exports (ONNX Runtime 1.14 and later run it).
OPSET = 17
INPUT_NAME = "image"
OUTPUT_NAME = "foreground"
#: Metadata keys in each exported file.
SETTINGS_KEY = "caml.inference"
SUB_MODEL_KEY = "caml.sub_model"
NETWORK_KEY = "caml.network"
WEIGHTS_SHA256_KEY = "caml.weights_sha256"
SUB_MODELS = ("v", "a")


def export_path(weights: PathLike, which: str) -> Path:
    """Where the export of sub-model ``which`` of ``weights`` goes: ``<stem>.<which>.onnx`` beside it."""
    weights = Path(weights)
    return weights.with_name(f"{weights.stem}.{which}.onnx")


def export_sub_model(weights: PathLike, which: str, target: PathLike) -> Path:
    """Write sub-model ``which`` (``v`` or ``a``) of ``weights`` as an ONNX graph to ``target``."""
    import onnx
    import torch

    from .catalog import sha256_file
    from .checkpoint import load_sub_model

    if which not in SUB_MODELS:
        raise ValueError(f"sub-model must be 'v' or 'a', not {which!r}")
    net, ckpt = load_sub_model(weights, which)
    net.eval()
    settings = InferenceSettings.from_checkpoint(ckpt)

    class Foreground(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.net(x), dim=1)[:, 1]

    example = torch.zeros((2, net.config.in_channels) + tuple(settings.window))
    buffer = io.BytesIO()
    # PRESERVE (the network is in eval mode) keeps BatchNorm as its own node: folding it into the
    # convolution here would give weights float16 cannot hold; ONNX Runtime folds it at load time.
    # The TorchScript exporter (dynamo=False) needs no onnxscript; torch warns that it is the legacy one.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(Foreground().eval(), (example,), buffer, input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], opset_version=OPSET, dynamo=False,
                          training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False,
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    model = onnx.load_model_from_string(buffer.getvalue())
    _store_exact_float16(model)
    for key, value in ((SETTINGS_KEY, json.dumps(settings.to_dict())), (SUB_MODEL_KEY, which),
                       (NETWORK_KEY, json.dumps(net.config.to_dict())),
                       (WEIGHTS_SHA256_KEY, sha256_file(weights))):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.producer_name = "CAMLSegmentation"
    onnx.checker.check_model(model)
    target = Path(target)
    target.write_bytes(model.SerializeToString())
    return target


def export_release(weights: PathLike, sub_models: Tuple[str, ...] = SUB_MODELS) -> Dict[str, Path]:
    """Export each of ``sub_models`` beside ``weights`` (``export_path``); the paths written, by sub-model.

    Written through a temporary name and renamed, so a failed export leaves no file behind.
    """
    from ..io.files import atomic_output

    written: Dict[str, Path] = {}
    try:
        for which in sub_models:
            target = export_path(weights, which)
            with atomic_output(target) as tmp:
                export_sub_model(weights, which, tmp)
            written[which] = target
    except BaseException:
        for path in written.values():
            path.unlink()
        raise
    return written


def _store_exact_float16(model: object) -> None:
    """Store float32 initializers that float16 holds exactly as float16 plus a Cast to float32."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph  # type: ignore[attr-defined]
    casts = []
    for init in graph.initializer:
        if init.data_type != TensorProto.FLOAT:
            continue
        values = numpy_helper.to_array(init)
        half = values.astype(np.float16)
        if values.size < 16 or not np.array_equal(half.astype(np.float32), values):
            continue  # small or not exact: keep float32
        name = init.name
        init.CopyFrom(numpy_helper.from_array(half, name=f"{name}__float16"))
        casts.append(helper.make_node("Cast", [f"{name}__float16"], [name], to=TensorProto.FLOAT,
                                      name=f"{name}__to_float32"))
    for n, node in enumerate(casts):
        graph.node.insert(n, node)
