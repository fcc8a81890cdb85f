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
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch

from .files import atomic_output
from .network import CAMLNet, NetworkConfig, SubModel
from .settings import InferenceSettings

FORMAT = "camlsegmentation-checkpoint"
FORMAT_VERSION = 1

PathLike = Union[str, Path]


class CheckpointError(ValueError):
    """A weights file that cannot be read or does not fit the model."""


def save_checkpoint(path: PathLike, payload: Dict[str, Any]) -> None:
    """Write a checkpoint atomically: a crash mid-write leaves the previous file intact."""
    payload = dict(payload)
    payload.setdefault("format", FORMAT)
    payload.setdefault("format_version", FORMAT_VERSION)
    with atomic_output(path) as tmp:
        torch.save(payload, tmp)


def read_checkpoint(path: PathLike) -> Dict[str, Any]:
    """Load a weights file into the project's checkpoint dict form (``model`` + ``network`` at least)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for a truncated or foreign file
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(exc).__name__}: {exc})") from exc
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        if obj.get("format_version", 0) > FORMAT_VERSION:
            raise CheckpointError(f"{path}: checkpoint format version {obj['format_version']} is newer "
                                  f"than this software understands ({FORMAT_VERSION})")
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


def load_dual_model(path: PathLike, config: Optional[NetworkConfig] = None) -> Tuple[CAMLNet, Dict[str, Any]]:
    """Build the dual model from a checkpoint (strict: every parameter must be present)."""
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
                       sub_models: Tuple[str, ...] = ("v", "a")) -> Dict[str, Any]:
    """Write the compact file a catalog ships: sub-models V and A, the network and preset, nothing else.

    A training checkpoint also carries the projection heads, optimizer
    moments, memory bank and RNG states: four times the size and useless for
    inference. ``half`` stores floating tensors as fp16 (half the size again);
    loading casts them back to float32, so only rounding changes, which the
    release procedure checks on the validation cases. Each kept sub-model is
    test-loaded before anything is written. Returns the payload written.
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
    provenance = {key: ckpt[key] for key in ("iteration", "val", "split", "seed", "supervised_only", "world_size")
                  if key in ckpt}
    payload = {"network": cfg.to_dict(), "preset": ckpt.get("preset"),
               "inference": InferenceSettings.from_checkpoint(ckpt).to_dict(), "model": state,
               "sub_models": list(sub_models), "dtype": "float16" if half else "float32",
               "trained": provenance, "released_from": Path(source).name}
    save_checkpoint(target, payload)
    return payload
