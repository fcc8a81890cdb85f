"""Sliding-window CAML inference: from a ``Volume`` to a mask on the same grid.

Two layers:

* ``sliding_window``: one function in the style of MONAI's
  ``sliding_window_inference`` - explicit window size, overlap or strides,
  blending mode and number of windows per forward pass, no hidden state;
* ``segment_volume``: the whole job - normalise, resample to the model's voxel
  size when it has one, sliding window over model V (optionally A too), map
  the probabilities back onto the input grid, threshold, optionally keep the
  largest connected component.

Three settings (``InferenceOptions``):

* the default: dense windows (three quarters shared in-plane, seven eighths
  along the slice axis), plainly averaged, and the test-time flips. A
  network's output depends on where a voxel sits in its window; averaging
  every voxel over many window positions (and mirror images) makes the mask
  nearly independent of where the image starts and ends, so an ROI crop gets
  the mask of the whole image (``benchmarks/bench_roi_crop.py``);
* ``InferenceOptions.fast()``: the fewest windows that cover the image with a
  25 % overlap, Gaussian-blended, no flips - a preview 6 (LA crop) to 20
  (whole chest) times faster on a CPU, whose mask moves with the field of view;
* ``InferenceOptions.official()`` reproduces the evaluation of the CAML paper
  (strides 18/18/4, averaged softmax, argmax, no post-processing), so scores
  compare with published numbers.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

# torch is imported where a torch model is built or run, never at module import: the ONNX Runtime
# backend (``onnx_runtime``) runs this same predictor in a Python without torch.
if TYPE_CHECKING:
    import torch
    from torch import nn

    from ..model.network import SubModel

from ..io.volume import Volume, check_size, validate_volume
from ..model.settings import (
    DEFAULT_OVERLAP,
    FAST_OVERLAP,
    OFFICIAL_WINDOW,
    PERCENTILE,
    PROTOCOLS,
    InferenceSettings,
)
from ..progress import CancelToken, ProgressCallback, ProgressEvent, check_cancel, no_progress
from .backends import FLOAT32
from .preprocess import axis_starts, model_grid, normalized_content

PathLike = Union[str, Path]
#: Window strides of the official CAML evaluation (``test_3d.py``: stride_xy=18, stride_z=4).
OFFICIAL_STRIDES = (18, 18, 4)

#: Maps a batch of windows to outputs: torch tensors for a torch model, numpy arrays for ONNX Runtime.
Predictor = Callable[[Any], Any]
#: A window overlap: one fraction for every axis, or one per image axis.
Overlap = Union[float, Tuple[float, float, float]]


# --------------------------------------------------------------------------- sliding window


WINDOW_LAYOUTS = ("even", "flush")


def window_starts(size: int, window: int, stride: int, layout: str = "even") -> List[int]:
    """Window start positions along one axis.

    Both layouts use ``n = ceil((size - window) / stride) + 1`` windows, the
    first at 0 and the last flush with the end:

    * ``"even"``: starts spread evenly over ``[0, size - window]``
      (``linspace`` rounded, as nnU-Net places its windows), so no stride
      exceeds ``stride`` and neighbouring overlaps differ by at most a voxel;
    * ``"flush"``: every ``stride`` voxels, ``min(i * stride, size - window)``,
      the formula of the official CAML test code; the last two windows
      crowd together at the far end. Used by ``--protocol official`` so the
      paper's evaluation is reproduced exactly.
    """
    if layout not in WINDOW_LAYOUTS:
        raise ValueError(f"window layout must be one of {', '.join(WINDOW_LAYOUTS)}, not {layout!r}")
    if size <= window:
        return [0]
    span = size - window
    count = math.ceil(span / stride) + 1
    if layout == "flush":
        return [min(n * stride, span) for n in range(count)]
    return [int(round(n * span / (count - 1))) for n in range(count)]


def overlap_per_axis(overlap: Overlap) -> Tuple[float, float, float]:
    """``overlap`` as one fraction per image axis, each checked to be in [0, 1)."""
    values = (float(overlap),) * 3 if isinstance(overlap, (int, float)) else tuple(float(v) for v in overlap)
    if len(values) != 3:
        raise ValueError(f"overlap must be one fraction or three (one per axis), got {overlap!r}")
    for value in values:
        if not 0.0 <= value < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {overlap!r}")
    return values  # type: ignore[return-value]


def strides_for_overlap(window: Sequence[int], overlap: Overlap) -> Tuple[int, int, int]:
    """Stride per axis so that neighbouring windows share ``overlap`` of their width (per axis or for all)."""
    return tuple(max(1, int(round(w * (1.0 - o))))  # type: ignore[return-value]
                 for w, o in zip(window, overlap_per_axis(overlap)))


def gaussian_importance(window: Sequence[int], sigma_scale: float = 0.125) -> torch.Tensor:
    """A separable Gaussian over the window (sigma = ``sigma_scale`` x size), peak 1.

    Predictions near a window's border see less context and are less
    reliable; weighting them down hides the seams between windows. The floor
    keeps every voxel's total weight positive where only window borders reach.
    """
    import torch

    return torch.from_numpy(gaussian_weights(window, sigma_scale))


def gaussian_weights(window: Sequence[int], sigma_scale: float = 0.125) -> np.ndarray:
    """``gaussian_importance`` as a float32 numpy array (what the torch-free path blends with)."""
    weights = np.ones(())
    for n in window:
        x = np.arange(n, dtype=np.float64) - (n - 1) / 2.0
        sigma = max(sigma_scale * n, 1e-6)
        g = np.exp(-0.5 * (x / sigma) ** 2)
        weights = weights[..., None] * g
    weights = weights / weights.max()
    return np.maximum(weights, 1e-3).astype(np.float32)


def choose_stitch_device(device: torch.device, needed_bytes: int,
                         free_bytes: Optional[int] = None) -> torch.device:
    """Where window outputs are accumulated: the compute device when they fit there, else the CPU.

    On a GPU, adding every window into a CPU array costs a device-to-host
    copy per window and a slow CPU loop; accumulating on the GPU needs the
    whole output (and weight map) in GPU memory, which a large image may not
    have. ``free_bytes`` defaults to what CUDA reports free; half of it must
    hold ``needed_bytes``, leaving the rest to the network's activations.
    """
    import torch

    if device.type != "cuda":
        return torch.device("cpu")
    if free_bytes is None:
        free_bytes, _ = torch.cuda.mem_get_info(device)
    return device if needed_bytes <= free_bytes // 2 else torch.device("cpu")


def sliding_window(image: Union[torch.Tensor, np.ndarray], window: Sequence[int], predictor: Predictor, *,
                   overlap: Overlap = 0.25, strides: Optional[Sequence[int]] = None, layout: str = "even",
                   blend: str = "gaussian", batch_size: int = 2, pad_value: float = 0.0,
                   device: Union[str, torch.device] = "cpu",
                   stitch_device: Union[None, str, torch.device] = None, amp: bool = False,
                   progress: Optional[ProgressCallback] = None,
                   cancel: Optional[CancelToken] = None) -> Union[torch.Tensor, np.ndarray]:
    """Run ``predictor`` over overlapping windows of ``image`` and blend the outputs.

    Args:
        image: ``[C, I, J, K]`` float tensor on the CPU (the whole volume stays there), or a
            float32 numpy array: then ``predictor`` gets and returns numpy batches, stitching
            happens in numpy and torch is never imported (``device``, ``stitch_device`` and
            ``amp`` are for torch); the ONNX Runtime backend runs this way.
        window: window size ``(wi, wj, wk)``; an image smaller than it is padded
            with ``pad_value`` (symmetrically) and the output cropped back.
        predictor: maps ``[B, C, wi, wj, wk]`` on ``device`` to ``[B, C_out, wi, wj, wk]``.
        overlap: fraction of a window shared with its neighbour (one, or one per axis);
            ignored when ``strides`` is given.
        strides: explicit window steps per axis (the official protocol uses 18/18/4).
        layout: window starts ``"even"`` (spread evenly) or ``"flush"`` (the official
            code's: every stride, the last flush with the end); see ``window_starts``.
        blend: ``"gaussian"`` (weighted towards window centres) or ``"constant"`` (plain average).
        batch_size: windows per forward pass.
        stitch_device: where outputs and weights are accumulated. None: on ``device``
            when the output and weight map fit in half its free memory, else on the CPU
            (``choose_stitch_device``); the CPU always stitches on the CPU.
        amp: float16 autocast, used only when ``device`` is CUDA.
        progress, cancel: called / checked once per forward pass (a cancel signal too,
            ``progress.check_cancel``), so a cancel takes effect within one batch of windows.

    Returns:
        ``[C_out, I, J, K]`` float32 tensor on the CPU (a numpy array for a numpy ``image``).
    """
    if image.ndim != 4:
        raise ValueError(f"image must be [C, I, J, K], got shape {tuple(image.shape)}")
    if blend not in ("gaussian", "constant"):
        raise ValueError(f"blend must be 'gaussian' or 'constant', not {blend!r}")
    in_numpy = isinstance(image, np.ndarray)
    if not in_numpy:
        import torch
        import torch.nn.functional as F

        device = torch.device(device)
    progress = progress or no_progress
    window = tuple(int(w) for w in window)
    spatial = tuple(image.shape[1:])
    pad = [max(0, w - n) for w, n in zip(window, spatial)]
    if any(pad):
        if in_numpy:
            image = np.pad(image, [(0, 0)] + [(p // 2, p - p // 2) for p in pad], constant_values=pad_value)
        else:
            # F.pad lists the last axis first.
            image = F.pad(image, [v for p in reversed(pad) for v in (p // 2, p - p // 2)], value=pad_value)
    padded = tuple(image.shape[1:])
    steps = tuple(strides) if strides is not None else strides_for_overlap(window, overlap)
    starts = [(a, b, c) for a in window_starts(padded[0], window[0], steps[0], layout)
              for b in window_starts(padded[1], window[1], steps[1], layout)
              for c in window_starts(padded[2], window[2], steps[2], layout)]
    importance: Any = gaussian_weights(window) if blend == "gaussian" else np.ones(window, dtype=np.float32)
    if not in_numpy:
        importance = torch.from_numpy(importance)
    total: Any = None
    weight: Any = None
    progress(ProgressEvent("inference", 0, len(starts), "windows"))
    for first in range(0, len(starts), batch_size):
        check_cancel(cancel)
        batch_starts = starts[first:first + batch_size]
        crops = [image[:, a:a + window[0], b:b + window[1], c:c + window[2]] for a, b, c in batch_starts]
        if in_numpy:
            out = np.asarray(predictor(np.stack(crops)), dtype=np.float32)
            if total is None:
                total = np.zeros((out.shape[1],) + padded, dtype=np.float32)
                weight = np.zeros(padded, dtype=np.float32)
        else:
            batch = torch.stack(crops).to(device, non_blocking=True)
            batch = batch.contiguous(memory_format=torch.channels_last_3d)
            with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=amp and device.type == "cuda"):
                out = predictor(batch)
            if total is None:
                # The number of output channels is known only now.
                total, weight = _stitch_buffers(out.shape[1], padded, device, stitch_device)
                importance = importance.to(total.device)
            out = out.float().to(total.device)
        for n, (a, b, c) in enumerate(batch_starts):
            region = (slice(None), slice(a, a + window[0]), slice(b, b + window[1]), slice(c, c + window[2]))
            total[region] += out[n] * importance
            weight[region[1:]] += importance
        progress(ProgressEvent("inference", min(first + batch_size, len(starts)), len(starts), "windows"))
    assert total is not None
    total /= weight
    del weight
    if any(pad):
        lo = [p // 2 for p in pad]
        total = total[:, lo[0]:lo[0] + spatial[0], lo[1]:lo[1] + spatial[1], lo[2]:lo[2] + spatial[2]]
    return np.ascontiguousarray(total) if in_numpy else total.contiguous().cpu()


def _stitch_buffers(channels: int, shape: Tuple[int, ...], device: torch.device,
                    stitch_device: Union[None, str, torch.device]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Zeroed ``[channels, *shape]`` output and ``shape`` weight accumulators where stitching happens."""
    import torch

    voxels = int(np.prod(shape))
    if stitch_device is not None:
        where = torch.device(stitch_device)
    else:
        # Output, weights, and the cropped copy made at the end.
        where = choose_stitch_device(device, 4 * voxels * (2 * channels + 1))
    if where.type == "cuda":
        try:
            return (torch.zeros((channels,) + shape, dtype=torch.float32, device=where),
                    torch.zeros(shape, dtype=torch.float32, device=where))
        except torch.cuda.OutOfMemoryError:
            if stitch_device is not None:
                raise
            torch.cuda.empty_cache()  # another process took the memory meanwhile: fall back
    return torch.zeros((channels,) + shape, dtype=torch.float32), torch.zeros(shape, dtype=torch.float32)


def count_windows(shape: Sequence[int], window: Sequence[int], strides: Sequence[int]) -> int:
    """How many windows ``sliding_window`` runs for an image of ``shape`` (after padding), in either layout."""
    return int(np.prod([len(window_starts(max(n, w), w, s)) for n, w, s in zip(shape, window, strides)]))


# --------------------------------------------------------------------------- models


def optimize_for_inference(net: nn.Module) -> nn.Module:
    """Fold each BatchNorm into the convolution before it and use channels-last memory, in place.

    In eval mode BatchNorm is a fixed per-channel affine map, so folding it
    changes results only by rounding (~1e-6) and saves a pass over every
    activation; channels-last 3D lets oneDNN pick its fast convolution
    kernels. Together about 1.5-2x on a CPU. The module's state_dict no
    longer matches a checkpoint afterwards: use it for inference only.
    """
    import torch
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    net.eval()
    for module in list(net.modules()):
        if not isinstance(module, nn.Sequential):
            continue
        for n in range(len(module) - 1):
            conv, bn = module[n], module[n + 1]
            if isinstance(conv, (nn.Conv3d, nn.ConvTranspose3d)) and isinstance(bn, nn.BatchNorm3d):
                module[n] = fuse_conv_bn_eval(conv, bn, transpose=isinstance(conv, nn.ConvTranspose3d))
                module[n + 1] = nn.Identity()
    return net.to(memory_format=torch.channels_last_3d)


@dataclass
class InferenceModel:
    """Sub-model V (and A when needed) in eval mode, with the settings stored beside their weights."""

    networks: Dict[str, SubModel]
    settings: InferenceSettings = field(default_factory=InferenceSettings)
    name: str = "model"
    device: torch.device = field(default_factory=lambda: _cpu())
    backend = "torch"
    #: What the weights compute in; ``segment_volume`` reports float16 where CUDA autocast runs.
    precision = FLOAT32

    @property
    def window(self) -> Tuple[int, int, int]:
        return self.settings.window

    @property
    def spacing(self) -> Optional[Tuple[float, float, float]]:
        return self.settings.spacing

    def run_windows(self, image: np.ndarray, order: Sequence[str], flips: Sequence[Tuple[int, ...]],
                    **window_options: Any) -> np.ndarray:
        """``sliding_window`` over ``image`` ``[C, I, J, K]`` with the networks named in ``order``:
        ``[len(order), I, J, K]`` foreground probabilities (the ONNX model answers the same call)."""
        import torch

        with torch.inference_mode():
            probs = sliding_window(torch.from_numpy(image), self.window,
                                   make_predictor([self.networks[w] for w in order], flips),
                                   device=self.device, **window_options)
        return probs.numpy()


def _cpu() -> torch.device:
    import torch

    return torch.device("cpu")


def load_inference_model(weights: PathLike, device: Union[str, torch.device] = "auto",
                         with_a: bool = False, name: Optional[str] = None) -> InferenceModel:
    """Load model V (and A if ``with_a``) from a project or official CAML checkpoint.

    Window, voxel size, normalisation, test-time flips and threshold come
    from the file (``settings.InferenceSettings.from_checkpoint``): the
    weights carry how they must be run, nothing else overrides it.
    """
    import torch

    from ..devices import resolve_device
    from ..model.checkpoint import CheckpointError, load_sub_model, read_checkpoint

    dev = device if isinstance(device, torch.device) else resolve_device(device)
    try:
        settings = InferenceSettings.from_checkpoint(read_checkpoint(weights))
    except ValueError as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f"{weights}: {exc}") from exc
    networks = {}
    for which in ("v", "a") if with_a else ("v",):
        net, _ = load_sub_model(weights, which)
        networks[which] = optimize_for_inference(net).to(dev)
    return InferenceModel(networks=networks, settings=settings, name=name or Path(weights).name, device=dev)


def model_from_network(net: nn.Module, settings: InferenceSettings, device: torch.device,
                       name: str = "training model") -> InferenceModel:
    """An inference copy of sub-model V of a live dual network (the trainer validates with it).

    The copy is folded for inference like a loaded model, so validation runs
    exactly the predictor ``caml segment`` runs; the training network is not touched.
    """
    from ..model.network import SubModel

    sub = SubModel(net.config, "v")
    own = sub.state_dict()
    sub.load_state_dict({k: v.detach().clone() for k, v in net.state_dict().items() if k in own}, strict=True)
    return InferenceModel(networks={"v": optimize_for_inference(sub).to(device)}, settings=settings,
                          name=name, device=device)


def random_model(base_filters: int = 16, window: Sequence[int] = OFFICIAL_WINDOW,
                 device: Union[str, torch.device] = "cpu", with_a: bool = False,
                 seed: int = 0, normalization: str = PERCENTILE,
                 spacing: Optional[Sequence[float]] = None) -> InferenceModel:
    """Randomly initialised sub-models: timings and the pipeline, not meaningful masks."""
    import torch

    from ..devices import resolve_device
    from ..model.network import NetworkConfig, SubModel

    dev = device if isinstance(device, torch.device) else resolve_device(device)
    torch.manual_seed(seed)
    cfg = NetworkConfig(base_filters=base_filters)
    networks = {w: optimize_for_inference(SubModel(cfg, w)).to(dev) for w in (("v", "a") if with_a else ("v",))}
    settings = InferenceSettings(window=tuple(int(w) for w in window),  # type: ignore[arg-type]
                                 spacing=None if spacing is None else tuple(spacing),  # type: ignore[arg-type]
                                 normalization=normalization)
    return InferenceModel(networks=networks, settings=settings,
                          name=f"random (untrained, {base_filters} filters)", device=dev)


# --------------------------------------------------------------------------- the whole job


@dataclass(frozen=True)
class InferenceOptions:
    """How ``segment_volume`` runs; the defaults are the setting the model card is scored with."""

    overlap: Overlap = DEFAULT_OVERLAP
    strides: Optional[Tuple[int, int, int]] = None  # overrides overlap
    window_layout: str = "even"  # window starts spread evenly; "flush" = the official code's
    blend: str = "constant"  # with dense windows a plain average; "gaussian" hides seams of sparse ones
    batch_size: Optional[int] = None  # windows per forward pass; None = 2 on CPU, 4 on CUDA
    amp: bool = True  # float16 autocast on CUDA only
    resample: bool = True  # to the model's voxel size, when it has one
    tta: bool = True  # average over the flips the model's training augmentation allowed
    ensemble: bool = False  # average V and A instead of V alone
    uncertainty: bool = False  # |p_V - p_A| per voxel (runs model A as well)
    lcc: Optional[bool] = None  # keep only the largest connected component; None = the model's choice
    threshold: Optional[float] = None  # None = the model's own (stored with its weights)
    content_box: bool = True  # segment only the box around voxels brighter than the image's minimum
    protocol: str = "default"

    @classmethod
    def fast(cls) -> InferenceOptions:
        """A quick preview: 25 % overlap, Gaussian blending, no flips (6x quicker on an LA crop, 20x on a chest).

        Its mask depends more on the field of view: a central 80 % crop of an LA case keeps
        the whole image's mask at Dice 0.944 on average, against 0.971 with the defaults.
        """
        return cls(overlap=FAST_OVERLAP, blend="gaussian", tta=False, protocol="fast")

    @classmethod
    def official(cls) -> InferenceOptions:
        """The CAML paper's evaluation: model V, strides 18/18/4, averaged softmax, argmax, nothing else.

        With two classes, argmax of the averaged softmax is "foreground probability > 0.5".
        The windows run over the whole image (no content box), as the official code's do.
        Resampling stays on: it is a no-op for models trained at the LA voxel size (the
        paper's), and a model trained at another voxel size must see that size.
        """
        return cls(strides=OFFICIAL_STRIDES, window_layout="flush", blend="constant", tta=False, lcc=False,
                   content_box=False, protocol="official")

    @classmethod
    def for_protocol(cls, protocol: str) -> InferenceOptions:
        """The options a protocol name stands for: ``default``, ``fast`` or ``official``."""
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, not {protocol!r}")
        return {"default": cls, "fast": cls.fast, "official": cls.official}[protocol]()

    def with_changes(self, **changes: Any) -> InferenceOptions:
        return replace(self, **changes)


@dataclass
class SegmentationResult:
    """A mask (uint8, 1 = left atrium) and the maps behind it, all ``[i, j, k]`` on the input grid."""

    mask: np.ndarray
    probability: np.ndarray
    uncertainty: Optional[np.ndarray]
    info: Dict[str, Any]
    #: Model A's own foreground probability, when A ran (ensemble or uncertainty): the windows
    #: computed it beside V's in the same pass, so a caller needing both (active-learning
    #: scoring) gets them from one call.
    probability_a: Optional[np.ndarray] = None


def flip_combinations(axes: Sequence[int]) -> List[Tuple[int, ...]]:
    """Every subset of ``axes`` (image axes 0..2), the empty one first: the test-time flips."""
    combos: List[Tuple[int, ...]] = [()]
    for axis in axes:
        combos += [c + (int(axis),) for c in combos]
    return combos


def make_predictor(networks: Sequence[torch.nn.Module], flips: Sequence[Tuple[int, ...]] = ((),)) -> Predictor:
    """A predictor returning each network's foreground probability: ``[B, len(networks), ...]``.

    ``flips``: image-axis combinations to average over (test-time augmentation);
    only axes the training augmentation flipped make sense, as a network never
    saw the others mirrored. All mirror images of a batch go through the
    network in one forward pass (``B * len(flips)`` windows), which keeps the
    convolutions busier than one small pass per flip.
    """
    import torch

    def foreground(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        # x is [B, C, i, j, k]; the flipped copies are stacked along the batch axis.
        xin = torch.cat([x.flip([a + 2 for a in axes]) if axes else x for axes in flips])
        xin = xin.contiguous(memory_format=torch.channels_last_3d)
        p = torch.softmax(net(xin).float(), dim=1)[:, 1]  # [F * B, i, j, k]
        probs = None
        for axes, chunk in zip(flips, p.split(x.shape[0])):
            one = chunk.flip([a + 1 for a in axes]) if axes else chunk  # back to the image's orientation
            probs = one if probs is None else probs + one
        return probs / len(flips)

    def predict(batch: torch.Tensor) -> torch.Tensor:
        return torch.stack([foreground(net, batch) for net in networks], dim=1)

    return predict


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep the largest 26-connected component (the atrium; specks elsewhere are false positives).

    SimpleITK labels the components (the image readers load it anyway; ``scipy.ndimage``
    would add about 0.13 s of imports to every ``caml segment``). Labels follow raster
    order as ``scipy.ndimage.label``'s do, so a tie goes to the component met first.
    """
    import SimpleITK as sitk

    labels = sitk.GetArrayFromImage(
        sitk.ConnectedComponent(sitk.GetImageFromArray(np.ascontiguousarray(mask, dtype=np.uint8)), True))
    sizes = np.bincount(labels[labels > 0])  # counted over the mask's voxels only: a tenth of the time
    if len(sizes) <= 2:
        return mask
    return (labels == int(sizes.argmax())).astype(mask.dtype)


def segment_volume(volume: Volume, model: InferenceModel, options: InferenceOptions = InferenceOptions(),
                   progress: Optional[ProgressCallback] = None,
                   cancel: Optional[CancelToken] = None) -> SegmentationResult:
    """Segment the left atrium in ``volume``; the mask lies on exactly the input's grid.

    Raises ``ImageError`` for an image that cannot be segmented (NaN/Inf,
    constant, empty axis) and ``Cancelled`` when ``cancel`` is set.
    """
    progress = progress or no_progress
    validate_volume(volume, "image")
    start = time.perf_counter()
    need_a = options.ensemble or options.uncertainty
    if need_a and "a" not in model.networks:
        raise ValueError("ensemble and uncertainty need model A: load the model with with_a=True")
    order = ["v", "a"] if need_a else ["v"]

    # One intensity path for every input, the one the model was trained with (its settings),
    # then only the box around everything brighter than the background (``normalized_content``).
    settings = model.settings
    box, image = normalized_content(volume.array, settings.normalization, crop=options.content_box)
    region_shape = image.shape
    grid = model_grid(region_shape, volume.spacing, model.spacing if options.resample else None,
                      axis_starts(volume, [b.start for b in box]))
    target_shape = grid.shape
    check_size(target_shape, "image", "resampled to the model's voxel size, a grid")
    image = grid.sample(image, "linear")
    strides = options.strides or strides_for_overlap(model.window, options.overlap)
    flips = flip_combinations(settings.flip_axes) if options.tta else [()]
    threshold = settings.threshold if options.threshold is None else options.threshold
    batch_size = options.batch_size or (4 if model.device.type == "cuda" else 2)
    # The network call is the backend's (torch here, ``onnx_runtime.OnnxModel`` without torch);
    # windows, flips, blending and everything after are the same for both.
    network_start = time.perf_counter()
    probs_np = model.run_windows(image[None], order, flips, strides=strides, layout=options.window_layout,
                                 blend=options.blend, batch_size=batch_size, amp=options.amp,
                                 progress=progress, cancel=cancel)
    network_seconds = time.perf_counter() - network_start  # the windows: forward passes, flips, stitching
    del image
    probs_np = grid.back(probs_np)
    if tuple(region_shape) != volume.shape:
        full = np.zeros((probs_np.shape[0],) + volume.shape, dtype=np.float32)
        full[(slice(None),) + box] = probs_np
        probs_np = full
    p_v = probs_np[0]
    probability = probs_np.mean(axis=0) if options.ensemble else p_v
    uncertainty = np.abs(probs_np[0] - probs_np[1]).astype(np.float32) if options.uncertainty else None
    mask = (probability > threshold).astype(np.uint8)
    lcc = settings.largest_component if options.lcc is None else options.lcc
    if lcc:
        mask = largest_component(mask)
    autocast = options.amp and model.backend == "torch" and model.device.type == "cuda"  # as sliding_window
    info = {"model": model.name, "protocol": options.protocol, "device": str(model.device),
            "backend": model.backend, "precision": "float16" if autocast else model.precision,
            "window": list(model.window), "strides": list(strides), "window_layout": options.window_layout,
            "windows": count_windows(target_shape, model.window, strides),
            "network_grid": list(target_shape), "input_grid": list(volume.shape),
            "content_box": [[b.start, b.stop] for b in box],
            "models": order, "tta": options.tta, "flips": [list(f) for f in flips], "lcc": lcc,
            "normalization": settings.normalization, "threshold": threshold,
            "seconds": round(time.perf_counter() - start, 3),
            "network_seconds": round(network_seconds, 3)}
    return SegmentationResult(mask=mask, probability=np.ascontiguousarray(probability, dtype=np.float32),
                              uncertainty=uncertainty, info=info,
                              probability_a=np.ascontiguousarray(probs_np[1], dtype=np.float32) if need_a else None)
