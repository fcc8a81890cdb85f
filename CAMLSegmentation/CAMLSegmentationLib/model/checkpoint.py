"""Reading and writing model weights.

Three kinds of file load:

* the project's own checkpoint: a dict with ``"format": FORMAT`` holding the
  network config, the dual-model state_dict and, for resumable training
  checkpoints, optimizer, memory bank, RNG states and iteration;
* a plain state_dict of the dual model (what the official code saves, e.g.
  ``iter_15000.pth``), possibly with DistributedDataParallel's ``module.`` prefix;
* either of the above holding only sub-model keys: a release written by
  ``release_checkpoint`` (models V and A, no training state, optionally fp16).

Weights stored as fp16 are cast back to float32 on load.

Loading never runs code from the file: ``torch.load(weights_only=True)``
accepts only tensors and plain containers (dict, list, tuple, str, int,
float, bool, None), so a pickle that would call a function on load is
refused. Everything a checkpoint holds is therefore kept in those types
(numpy values are converted on save).
"""

from __future__ import annotations

import pickle
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np
import torch

from ..errors import CAMLError, MissingFileError
from ..io.files import atomic_output
from .network import CAMLNet, NetworkConfig, SubModel
from .settings import InferenceSettings

FORMAT = "camlsegmentation-checkpoint"
FORMAT_VERSION = 1

PathLike = Union[str, Path]


class CheckpointError(CAMLError, ValueError):
    """A weights file that cannot be read or does not fit the model."""


def save_checkpoint(path: PathLike, payload: Dict[str, Any]) -> None:
    """Write a checkpoint atomically: a crash mid-write leaves the previous file intact."""
    payload = plain_types(dict(payload))
    payload.setdefault("format", FORMAT)
    payload.setdefault("format_version", FORMAT_VERSION)
    with atomic_output(path) as tmp:
        torch.save(payload, tmp)


def plain_types(value: Any) -> Any:
    """``value`` with numpy scalars as Python numbers and numpy arrays as tensors: the types
    ``torch.load(weights_only=True)`` accepts (the one converter for what goes into a checkpoint)."""
    if isinstance(value, dict):
        return {k: plain_types(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain_types(v) for v in value]
    if isinstance(value, tuple):
        return tuple(plain_types(v) for v in value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    return value


def _unsafe_load_message(exc: Exception) -> str:
    """The first line of torch's refusal, without its advice to load untrusted files unsafely."""
    text = str(exc)
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("WeightsUnpickler error:"):
            return line[len("WeightsUnpickler error:"):].strip().replace("\x1b[1m", "").replace("\x1b[0m", "")
    return text.splitlines()[0] if text else type(exc).__name__


def read_checkpoint(path: PathLike) -> Dict[str, Any]:
    """Load a weights file into the project's checkpoint dict form (``model`` + ``network`` at least).

    Only data is loaded, never code (see the module docstring); a file that
    holds anything else is refused with ``CheckpointError``, as is one whose
    parts have the wrong types.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: no such checkpoint file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # what weights_only raises for a pickle that calls anything
        detail = _unsafe_load_message(exc)
        if "Unsupported" not in detail:  # a damaged file rather than a foreign object
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({detail})") from exc
        raise CheckpointError(f"{path}: refused: the file holds Python objects other than weights "
                              f"({detail.split(' was not an allowed global')[0]}); loading it could run "
                              f"code, so it is not loaded. Only tensors and plain values are accepted") from exc
    except Exception as exc:  # torch raises many types for a truncated or foreign file
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(exc).__name__}: "
                              f"{_unsafe_load_message(exc)})") from exc
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        version = obj.get("format_version", 0)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise CheckpointError(f"{path}: checkpoint format version {version!r} is newer "
                                  f"than this software understands ({FORMAT_VERSION})")
        _check_parts(obj, path)
        return obj
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state = _strip_prefix(obj)
        try:
            network = infer_network_config(state).to_dict()
        except CheckpointError as exc:
            raise CheckpointError(f"{path}: {exc}") from exc  # name the file, as every other error here does
        return {"format": FORMAT, "model": state, "network": network, "source": "plain state_dict"}
    raise CheckpointError(f"{path}: not a CAML checkpoint (expected a state_dict or a "
                          f"{FORMAT} file, found {type(obj).__name__})")


def _check_parts(obj: Dict[str, Any], path: Path) -> None:
    """Refuse a project checkpoint whose parts have the wrong types (one line, not a traceback later)."""
    model = obj.get("model")
    if not isinstance(model, dict) or not model:
        raise CheckpointError(f"{path}: a {FORMAT} file without weights (no 'model' state_dict)")
    bad = [k for k, v in model.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: 'model' entry {bad[0]!r} is not a tensor")
    for key in ("network", "preset"):
        if obj.get(key) is not None and not isinstance(obj[key], dict):
            raise CheckpointError(f"{path}: {key!r} must be a dictionary, not {type(obj[key]).__name__}")
    defaults = NetworkConfig().to_dict()
    for key, value in (obj.get("network") or {}).items():
        if key in defaults and not _same_kind(value, defaults[key]):
            raise CheckpointError(f"{path}: network setting {key!r} is {value!r}, not a "
                                  f"{type(defaults[key]).__name__}")
    preset = obj.get("preset") or {}
    for key, count in (("patch_size", 3), ("spacing", 3)):
        value = preset.get(key)
        if value is not None and not (isinstance(value, (list, tuple)) and len(value) == count and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in value)):
            raise CheckpointError(f"{path}: preset {key!r} must be {count} positive numbers, not {value!r}")


def _same_kind(value: Any, default: Any) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool) and value > 0
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return True


def _strip_prefix(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    if all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return state


def infer_network_config(state: Dict[str, torch.Tensor]) -> NetworkConfig:
    """Recover base filters, classes, head width and CMA presence from a state_dict."""
    for enc in ("encoder1", "encoder2"):
        key = f"{enc}.block_one.conv.0.weight"
        if key in state:
            w = state[key]
            break
    else:
        raise CheckpointError("weights of another architecture: no CAML encoder "
                              "('encoder1.block_one.conv.0.weight') in the file")
    if w.ndim != 5:
        raise CheckpointError(f"weights of another architecture: {key} has shape {tuple(w.shape)}, "
                              f"a 3D convolution's has 5 dimensions")
    cfg = {"base_filters": int(w.shape[0]), "in_channels": int(w.shape[1])}
    for dec in ("decoder1", "decoder2"):
        if f"{dec}.out_conv.weight" in state:
            cfg["num_classes"] = int(state[f"{dec}.out_conv.weight"].shape[0])
    if "projection_head1.0.weight" in state:
        cfg["feat_dim"] = int(state["projection_head1.0.weight"].shape[0])
    cfg["cma"] = any(k.startswith("encoder2.intra_attention") for k in state) or not any(
        k.startswith("encoder2.") for k in state)
    return NetworkConfig.from_dict(cfg)


def _load(module: torch.nn.Module, state: Dict[str, torch.Tensor], source: str) -> None:
    wanted = module.state_dict()
    if not isinstance(state, dict):
        raise CheckpointError(f"{source}: the weights are not a state_dict")
    sub = {k: v.float() if v.is_floating_point() else v for k, v in state.items() if k in wanted}
    missing = sorted(set(wanted) - set(sub))
    if missing:
        raise CheckpointError(f"{source}: weights of another architecture: {len(missing)} parameters "
                              f"missing (first: {missing[0]})")
    bad = [k for k in sub if sub[k].shape != wanted[k].shape]
    if bad:
        raise CheckpointError(f"{source}: weights of another architecture: shape of {bad[0]} is "
                              f"{tuple(sub[bad[0]].shape)}, the model expects {tuple(wanted[bad[0]].shape)}")
    module.load_state_dict(sub, strict=True)


def load_caml_network(path: PathLike, config: Optional[NetworkConfig] = None) -> Tuple[CAMLNet, Dict[str, Any]]:
    """The whole training network (``CAMLNet``: sub-models V and A and the OCC heads) and the checkpoint
    dict, from a full checkpoint (strict: every parameter present). For inference with V (and A),
    ``inference.predictor.load_inference_model`` builds the predictor's model instead."""
    ckpt = read_checkpoint(path)
    cfg = config or NetworkConfig.from_dict(ckpt.get("network", {}))
    model = CAMLNet(cfg)
    state = ckpt["model"]
    extra = set(state) - set(model.state_dict())
    if extra:
        raise CheckpointError(f"{path}: weights of another architecture: unexpected parameter "
                              f"{sorted(extra)[0]}")
    _load(model, state, str(path))
    return model, ckpt


def load_sub_model(path: PathLike, which: str = "v") -> Tuple[SubModel, Dict[str, Any]]:
    """Build sub-model V (or A) alone from a full or compact checkpoint, for inference."""
    ckpt = read_checkpoint(path)
    cfg = NetworkConfig.from_dict(ckpt.get("network", {}))
    model = SubModel(cfg, which)
    _load(model, ckpt["model"], str(path))
    return model, ckpt


def release_checkpoint(source: PathLike, target: PathLike, half: bool = False,
                       sub_models: Tuple[str, ...] = ("v", "a"),
                       largest_component: Optional[bool] = None) -> Dict[str, Any]:
    """Write the compact file a catalog ships: sub-models V and A, the network and preset, nothing else.

    A training checkpoint also carries the projection heads, optimizer
    moments, memory bank and RNG states: four times the size and useless for
    inference. ``half`` stores floating tensors as fp16 (half the size again);
    loading casts them back to float32, so only rounding changes, which the
    release procedure checks on the validation cases. Each kept sub-model is
    test-loaded before anything is written. ``largest_component`` replaces the
    post-processing the checkpoint records (for checkpoints written before the
    trainer chose it on validation); None keeps it. Returns the payload written.
    """
    ckpt = read_checkpoint(source)
    cfg = NetworkConfig.from_dict(ckpt.get("network", {}))
    state: Dict[str, torch.Tensor] = {}
    for which in sub_models:
        sub = SubModel(cfg, which)
        _load(sub, ckpt["model"], str(source))  # every parameter present, with the right shape
        for key in sub.state_dict():
            value = ckpt["model"][key]
            if value.is_floating_point():
                value = value.half() if half else value.float()
            state[key] = value
    settings = InferenceSettings.from_checkpoint(ckpt)
    if largest_component is not None:
        settings = replace(settings, largest_component=largest_component)
    provenance = {key: ckpt[key] for key in ("iteration", "val", "split", "seed", "supervised_only", "world_size")
                  if key in ckpt}
    payload = {"network": cfg.to_dict(), "preset": ckpt.get("preset"),
               "inference": settings.to_dict(), "model": state,
               "sub_models": list(sub_models), "dtype": "float16" if half else "float32",
               "trained": provenance, "released_from": Path(source).name}
    save_checkpoint(target, payload)
    return payload
