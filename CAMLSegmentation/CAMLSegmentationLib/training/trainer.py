"""Semi-supervised CAML training: two-stream batches, the CAML objective, validation, checkpoints.

One iteration: a batch of ``labeled_batch`` labeled and ``unlabeled_batch``
unlabeled random crops (after random rot90/flip) goes through both
sub-models; the loss is

    lambda_s * (Dice_V + Dice_A)  +  lambda_c(t) * consistency  +  lambda_o(t) * OCC

with the sigmoid ramp-up ``exp(-5 (1 - t/R)^2)``, ``t = iteration // rampup_interval``.

Runs on CPU, one GPU (with mixed precision), or several GPUs under
``torchrun`` (DistributedDataParallel; every rank samples its own batches and
the memory-bank updates are all-gathered so the banks stay identical).
Everything needed to continue exactly (model, optimizer, memory bank, and
each rank's sampler queues and RNG states, gathered to rank 0) is in the
resumable checkpoint ``last.pt``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..devices import resolve_device
from ..errors import MissingFileError, UserError
from ..inference.metrics import dice
from ..inference.predictor import InferenceOptions, largest_component, model_from_network, segment_volume
from ..io.volume import Volume
from ..model.checkpoint import CheckpointError, plain_types, read_checkpoint, save_checkpoint
from ..model.losses import dice_loss, mutual_consistency_loss, shift_consistency_loss, sigmoid_rampup
from ..model.network import CAMLNet, NetworkConfig
from ..model.occ import MemoryBank, gather_across_ranks, omni_correlation, omni_correlation_loss, select_confident
from ..model.settings import InferenceSettings
from ..progress import (
    Cancelled,
    CancelToken,
    ProgressCallback,
    ProgressEvent,
    cancel_requested,
    check_cancel,
    deferred_cancel,
    no_progress,
)
from . import data as data_mod
from .presets import TrainingPreset

LOG = logging.getLogger("caml.train")


@dataclass
class TrainConfig:
    """What ``caml train`` asks for; the preset carries the hyper-parameters."""

    data_root: Path
    out_dir: Path
    preset: TrainingPreset
    labeled: Optional[int] = None
    labeled_list: Optional[Path] = None
    val_list: Optional[Path] = None
    val_last: Optional[int] = None
    device: str = "auto"
    seed: int = 1337
    resume: bool = False
    supervised_only: bool = False  # baseline: labeled data and Dice only, no unlabeled stream
    log_every: int = 10
    init_weights: Optional[Path] = None  # warm start: model weights to begin from (not a resume)
    unlabeled_list: Optional[Path] = None  # images of the unlabeled stream (default: every unlabeled case)
    holdout_list: Optional[Path] = None  # cases kept out of every stream and of model selection


@dataclass
class TrainResult:
    out_dir: Path
    iterations: int
    best_dice: Optional[float]
    best_iteration: Optional[int]
    seconds: float
    history: List[Dict[str, Any]] = field(default_factory=list)
    model: Optional[CAMLNet] = None
    memory_bank: Optional[MemoryBank] = None


def load_initial_weights(net: CAMLNet, path: Path) -> None:
    """Warm start: copy sub-models V and A (and the OCC heads when the file has them) into ``net``.

    A release file carries V and A only; the heads then keep their fresh
    initialisation. Only weights move: optimizer, memory bank and iteration start anew.
    """
    state = read_checkpoint(path)["model"]
    wanted = net.state_dict()
    heads = ("projection_head", "prediction_head")
    missing = [k for k in wanted if k not in state and not k.startswith(heads)]
    bad = [k for k in wanted if k in state and tuple(state[k].shape) != tuple(wanted[k].shape)]
    if missing or bad:
        what = f"no {missing[0]!r}" if missing else f"{bad[0]!r} has shape {tuple(state[bad[0]].shape)}"
        raise CheckpointError(f"{path}: cannot start from these weights: they do not fit the preset's "
                              f"network ({what})")
    net.load_state_dict({k: state[k].float() if state[k].is_floating_point() else state[k]
                         for k in wanted if k in state}, strict=False)


# --------------------------------------------------------------------------- objective


class CAMLObjective(nn.Module):
    """The full CAML training loss as one module, so DistributedDataParallel can wrap it.

    Holds the network; the memory bank is plain state updated inside forward.
    """

    def __init__(self, net: CAMLNet, bank: MemoryBank, preset: TrainingPreset,
                 supervised_only: bool = False) -> None:
        super().__init__()
        self.net = net
        self.bank = bank
        self.preset = preset
        self.supervised_only = supervised_only
        self.memory_generator = torch.Generator()

    def _heads(self) -> List[nn.Module]:
        n = self.net
        return [n.projection_head1, n.prediction_head1, n.projection_head2, n.prediction_head2]

    def _zero_through_heads(self) -> torch.Tensor:
        # DDP expects every parameter to get a gradient each step; when no OCC
        # term can be formed this keeps the heads in the graph with zero weight.
        return sum(p.sum() * 0.0 for h in self._heads() for p in h.parameters())  # type: ignore[return-value]

    def forward(self, image: torch.Tensor, label: torch.Tensor, case_index: torch.Tensor,
                lambda_c: float, lambda_o: float, shifts: Optional[torch.Tensor] = None,
                lambda_t: float = 0.0) -> Tuple[torch.Tensor, Dict[str, float]]:
        p = self.preset
        nl = label.shape[0]
        use_amp = p.amp and image.is_cuda
        with torch.autocast(device_type=image.device.type, dtype=torch.float16, enabled=use_amp):
            logits_v, logits_a, feat_v, feat_a = self.net(image)
        # Losses in float32 whatever the forward precision.
        prob_v = F.softmax(logits_v.float(), dim=1)
        prob_a = F.softmax(logits_a.float(), dim=1)
        fg = label == 1
        loss_s = dice_loss(prob_v[:nl, 1], fg) + dice_loss(prob_a[:nl, 1], fg)
        parts = {"loss_s": float(loss_s.detach())}
        if self.supervised_only:
            loss = p.lambda_s * loss_s
            parts["loss"] = float(loss.detach())
            return loss, parts

        loss_c = mutual_consistency_loss(prob_v, prob_a, p.sharpen_temperature)
        feat_v = feat_v.float()
        feat_a = feat_a.float()

        self._update_memory(prob_v[:nl], prob_a[:nl], feat_v[:nl], feat_a[:nl], label, case_index)
        memory = self.bank.sample(p.memory_per_class, self.memory_generator)
        loss_o = self._occ_loss(prob_v[nl:], prob_a[nl:], feat_v[nl:], feat_a[nl:], memory)

        loss = p.lambda_s * loss_s + lambda_c * loss_c + lambda_o * loss_o
        if shifts is not None:
            loss_t = (shift_consistency_loss(prob_v[nl:], shifts) + shift_consistency_loss(prob_a[nl:], shifts))
            loss = loss + lambda_t * loss_t
            parts["loss_t"] = float(loss_t.detach())
        parts.update(loss=float(loss.detach()), loss_c=float(loss_c.detach()), loss_o=float(loss_o.detach()))
        return loss, parts

    @torch.no_grad()
    def _update_memory(self, prob_v: torch.Tensor, prob_a: torch.Tensor, feat_v: torch.Tensor,
                       feat_a: torch.Tensor, label: torch.Tensor, case_index: torch.Tensor) -> None:
        net = self.net
        correct = (prob_v.argmax(1) == label) & (prob_a.argmax(1) == label)
        # Channels-last for BOTH models (the official code forgets it for model A).
        fv = feat_v.permute(0, 2, 3, 4, 1)
        fa = feat_a.permute(0, 2, 3, 4, 1)
        was_training = net.projection_head1.training
        net.projection_head1.eval()
        net.projection_head2.eval()
        updates = []
        for b in range(label.shape[0]):
            m = correct[b]
            proj = (net.projection_head1(fv[b][m]) + net.projection_head2(fa[b][m])) / 2
            updates.append((case_index[b:b + 1], proj, label[b][m]))
        net.projection_head1.train(was_training)
        net.projection_head2.train(was_training)
        for idx, proj, lab in updates:
            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                for r_idx, r_proj, r_lab in gather_across_ranks(proj, lab, idx):
                    self.bank.update(r_idx, r_proj, r_lab)
            else:
                self.bank.update(int(idx), proj, lab)

    def _occ_loss(self, prob_v: torch.Tensor, prob_a: torch.Tensor, feat_v: torch.Tensor,
                  feat_a: torch.Tensor, memory: List[Optional[torch.Tensor]]) -> torch.Tensor:
        p = self.preset
        net = self.net
        conf_v, pred_v = prob_v.max(1)
        pred_a = prob_a.argmax(1)
        agree = pred_v == pred_a
        if int(agree.sum()) < 2 or all(m is None for m in memory):
            return self._zero_through_heads()
        uv = feat_v.permute(0, 2, 3, 4, 1)[agree]
        ua = feat_a.permute(0, 2, 3, 4, 1)[agree]
        # V's label and confidence pick the same rows for both models.
        picks = select_confident(pred_v[agree], conf_v[agree], net.config.num_classes, p.num_filtered)
        if p.occ_heads_on == "selected":
            # Only the picked voxels go through the heads: the loss uses no
            # others, but the heads' BatchNorm statistics then come from the
            # picked voxels alone. Several times cheaper on a CPU.
            rows = torch.cat(picks)
            uv, ua = uv[rows], ua[rows]
            offsets = torch.cumsum(torch.tensor([0] + [int(q.numel()) for q in picks[:-1]]), 0)
            picks = [torch.arange(int(o), int(o) + int(q.numel()), device=rows.device)
                     for o, q in zip(offsets, picks)]
            if uv.shape[0] < 2:
                return self._zero_through_heads()
        # Otherwise every agreeing voxel goes through the heads, so their
        # BatchNorm statistics are taken over all of them (official code).
        pred_feat_v = net.prediction_head1(net.projection_head1(uv))
        pred_feat_a = net.prediction_head2(net.projection_head2(ua))
        corr_v = omni_correlation(pred_feat_v, picks, memory, p.occ_temperature)
        corr_a = omni_correlation(pred_feat_a, picks, memory, p.occ_temperature)
        if corr_v is None or corr_a is None:
            return self._zero_through_heads()
        return omni_correlation_loss(corr_a, corr_v)


def loss_weights(preset: TrainingPreset, iteration: int, num_labeled: int) -> Tuple[float, float, float]:
    """(lambda_c, lambda_o, lambda_t) at ``iteration`` (1-based, as in the official loop).

    All three unlabeled terms ramp up together; lambda_t weighs the shift consistency.
    """
    ramp = sigmoid_rampup(iteration // preset.rampup_interval, preset.rampup_for(num_labeled))
    return preset.lambda_c * ramp, preset.lambda_o * ramp, preset.shift_consistency * ramp


def learning_rate(preset: TrainingPreset, iteration: int) -> float:
    if preset.lr_schedule == "poly":
        return preset.lr * (1.0 - min(iteration, preset.iterations) / (preset.iterations + 1)) ** 0.9
    return preset.lr


# --------------------------------------------------------------------------- batches


class TwoStreamSampler:
    """Labeled indices come from successive random permutations (every case once per pass);
    unlabeled indices likewise from their own stream. State is plain lists, saved for resume."""

    def __init__(self, num_labeled: int, num_unlabeled: int, rng: np.random.Generator) -> None:
        self.sizes = (num_labeled, num_unlabeled)
        self.rng = rng
        self.queues: List[List[int]] = [[], []]

    def _take(self, stream: int, n: int) -> List[int]:
        out: List[int] = []
        while len(out) < n:
            if not self.queues[stream]:
                self.queues[stream] = [int(i) for i in self.rng.permutation(self.sizes[stream])]
            out.append(self.queues[stream].pop(0))
        return out

    def next(self, n_labeled: int, n_unlabeled: int) -> Tuple[List[int], List[int]]:
        return self._take(0, n_labeled), self._take(1, n_unlabeled)


def make_batch(labeled: Sequence[data_mod.Case], unlabeled: Sequence[data_mod.Case],
               li: Sequence[int], ui: Sequence[int], preset: TrainingPreset,
               rng: np.random.Generator) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """Augment and crop: returns images ``[nl+nu, 1, *patch]``, labels ``[nl, *patch]`` and shifts.

    With the preset's ``shift_consistency`` each unlabeled index gives two crops offset
    by a random shift (``data.random_shifted_pair``), the shifts being ``[len(ui), 3]``;
    otherwise one crop each and no shifts.

    Geometric augmentation (rot90/flip in the (i, j) plane, random crop) as the
    official code, the crop reaching past the image by the preset's
    ``crop_margin``, then the preset's intensity augmentation on each crop.
    With ``roi_probability`` set, a case is first cut to a random ROI box; no
    draw is spent on it otherwise, so presets without it keep their exact stream.
    """
    patch = preset.patch_size
    margin = tuple(int(round(preset.crop_margin * p)) for p in patch)

    def intensity(img: np.ndarray) -> np.ndarray:
        return data_mod.random_intensity(img, rng, preset.intensity_probability, preset.intensity_scale,
                                         preset.intensity_shift, preset.intensity_gamma, preset.intensity_noise)

    def roi(img: np.ndarray, lab: Optional[np.ndarray]) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        if preset.roi_probability <= 0:
            return img, lab
        return data_mod.random_roi(img, lab, rng, preset.roi_probability, preset.roi_min_fraction)

    images, labels = [], []
    for i in li:
        img, lab = roi(labeled[i].image, labeled[i].label)
        img, lab = data_mod.random_rot_flip(img, lab, rng)
        img, lab = data_mod.random_crop(img, lab, patch, rng, margin)
        images.append(intensity(img))
        labels.append(lab)
    shifts = []
    for i in ui:
        img, _ = roi(unlabeled[i].image, None)
        img, _ = data_mod.random_rot_flip(img, None, rng)
        if preset.shift_consistency > 0:
            first, second, shift = data_mod.random_shifted_pair(
                img, patch, rng, [int(round(preset.shift_max * p)) for p in patch])
            images += [intensity(first), intensity(second)]
            shifts.append(shift)
            continue
        img, _ = data_mod.random_crop(img, None, patch, rng, margin)
        images.append(intensity(img))
    x = torch.from_numpy(np.stack(images)[:, None].astype(np.float32))
    y = torch.from_numpy(np.stack(labels).astype(np.int64))
    return x, y, (torch.tensor(shifts, dtype=torch.int64) if shifts else None)


# --------------------------------------------------------------------------- validation


@dataclass
class ValidationCase:
    """A validation case as stored (its own grid and intensities) with its reference label."""

    case_id: str
    volume: Volume
    label: np.ndarray


def validate(net: CAMLNet, cases: Sequence[ValidationCase], settings: InferenceSettings,
             device: torch.device) -> Dict[str, Any]:
    """Mean and per-case Dice of sub-model V through the predictor ``caml segment`` runs.

    Each case is segmented from its stored voxels with the default
    ``InferenceOptions`` (normalisation, resampling, sliding window and
    threshold included) and scored on its own grid, so the number that
    selects a checkpoint is the number ``caml evaluate`` reports for it.
    Each mask is scored as predicted and with only its largest connected
    component; the post-processing with the higher mean Dice is the
    checkpoint's (``largest_component``, stored in best.pt's settings), as
    nnU-Net chooses its post-processing on validation.
    """
    model = model_from_network(net, settings, device)
    plain, kept = {}, {}
    for case in cases:
        mask = segment_volume(case.volume, model, InferenceOptions(lcc=False)).mask
        plain[case.case_id] = dice(mask > 0, case.label > 0)
        kept[case.case_id] = dice(largest_component(mask) > 0, case.label > 0)
    plain_mean, kept_mean = float(np.mean(list(plain.values()))), float(np.mean(list(kept.values())))
    use_lcc = kept_mean > plain_mean
    return {"dice": kept_mean if use_lcc else plain_mean, "per_case": kept if use_lcc else plain,
            "largest_component": use_lcc, "dice_as_predicted": plain_mean, "dice_largest_component": kept_mean}


# --------------------------------------------------------------------------- run


def _distributed() -> Tuple[int, int]:
    """(rank, world size); initialises the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _rng_state(rng: np.random.Generator, objective: CAMLObjective) -> Dict[str, Any]:
    state: Dict[str, Any] = {"numpy": plain_types(rng.bit_generator.state), "torch": torch.get_rng_state(),
                             "memory": objective.memory_generator.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Dict[str, Any], rng: np.random.Generator, objective: CAMLObjective) -> None:
    rng.bit_generator.state = state["numpy"]
    torch.set_rng_state(state["torch"])
    objective.memory_generator.set_state(state["memory"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _rank_state(rng: np.random.Generator, objective: CAMLObjective, sampler: TwoStreamSampler) -> Dict[str, Any]:
    """What decides this rank's batches and memory draws: its RNG states and sampler queues."""
    return {"rng": _rng_state(rng, objective), "sampler": [list(q) for q in sampler.queues]}


def _gather_rank_states(local: Dict[str, Any], rank: int, world: int) -> Optional[List[Dict[str, Any]]]:
    """Every rank's ``_rank_state``, in rank order, on rank 0 (None elsewhere).

    A collective: every rank must call it at the same iteration.
    """
    if world == 1:
        return [local]
    gathered: Optional[List[Any]] = [None] * world if rank == 0 else None
    dist.gather_object(local, gathered, dst=0)
    return gathered


def _restore_rank_state(checkpoint: Dict[str, Any], rank: int, world: int, seed: int,
                        rng: np.random.Generator, objective: CAMLObjective, sampler: TwoStreamSampler) -> None:
    """Put this rank's saved RNG states and sampler queues back.

    Each rank continues its own streams, so ranks keep drawing different
    batches and the run continues as if never interrupted. Checkpoints
    written before states were saved per rank hold rank 0's only. A rank
    with no saved state (more processes than the interrupted run had) takes
    rank 0's model-side torch state but fresh data streams of its own.
    """
    saved = checkpoint.get("rank_states")
    if saved is None:
        saved = [{"rng": checkpoint["rng"], "sampler": checkpoint["sampler"]}]
    if len(saved) != world and rank == 0:
        LOG.warning("resuming with %d process(es) a run saved with %d: batches will differ from an "
                    "uninterrupted run", world, len(saved))
    if rank < len(saved):
        _set_rng_state(saved[rank]["rng"], rng, objective)
        sampler.queues = [list(q) for q in saved[rank]["sampler"]]
        return
    _set_rng_state(saved[0]["rng"], rng, objective)
    iteration = int(checkpoint["iteration"])
    rng.bit_generator.state = np.random.default_rng([seed, rank, iteration]).bit_generator.state
    objective.memory_generator.manual_seed(seed + 7919 * rank + 104729 * iteration)
    sampler.queues = [[], []]
def restore_scaler(scaler: torch.amp.GradScaler, state: Optional[Dict[str, Any]]) -> None:
    """Load a GradScaler's saved state when there is one to load.

    A run started on a CPU (or with amp off) saves the empty state of a
    disabled scaler; resumed on a GPU, the enabled scaler starts from its
    default scale instead of refusing the empty state. A GPU run resumed on
    a CPU has a disabled scaler, which ignores the saved state.
    """
    if state and scaler.is_enabled():
        scaler.load_state_dict(state)


def _all_ranks_finite(finite: bool, world: int, device: torch.device) -> bool:
    """``finite`` on every rank (a collective under DDP: all ranks call it at the same step)."""
    if world > 1:
        flag = torch.tensor([1.0 if finite else 0.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return float(flag) > 0
    return finite


def finite_state(net: nn.Module, iteration: int) -> Dict[str, torch.Tensor]:
    """``net``'s state_dict, or ``FloatingPointError`` naming the first parameter or buffer
    (BatchNorm running statistics included) that holds a NaN or an infinity."""
    state = net.state_dict()
    for key, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise FloatingPointError(f"{key} is not finite at iteration {iteration}")
    return state


def _stop_if_cancelled(world: int, device: torch.device) -> None:
    """At an iteration boundary: raise ``Cancelled`` if a signal arrived during the iteration.

    With several ranks the decision is shared (any rank signalled stops all
    at the same iteration), or the others would wait forever in the next
    step's all-reduce.
    """
    if world > 1:
        flag = torch.tensor([1.0 if cancel_requested() else 0.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if float(flag) > 0:
            check_cancel()  # this rank's own signal, if it got one
            raise Cancelled("terminated by a signal")
        return
    check_cancel()


def _setup_logging(out_dir: Path) -> logging.Handler:
    """Append this run's log lines to ``out_dir/train.log`` (rank 0 only)."""
    handler = logging.FileHandler(out_dir / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    LOG.addHandler(handler)
    LOG.setLevel(logging.INFO)
    return handler


def prepare_data(cfg: TrainConfig, progress: ProgressCallback = no_progress):
    """Open the data, make the split, load and validate every case (before anything is written)."""
    preset = cfg.preset
    source = data_mod.open_source(cfg.data_root)
    split = data_mod.make_split(source, labeled=cfg.labeled, labeled_list=cfg.labeled_list,
                                val_list=cfg.val_list, val_last=cfg.val_last,
                                min_labeled=preset.labeled_batch, unlabeled_list=cfg.unlabeled_list,
                                holdout_list=cfg.holdout_list)
    if not cfg.supervised_only and preset.unlabeled_batch > 0 and not split.unlabeled:
        raise data_mod.DataError(f"{cfg.data_root}: no unlabeled cases left for the unlabeled stream "
                                 "(every case is labeled); use --supervised-only or fewer labeled cases")
    norm = preset.normalization
    labeled = data_mod.load_cases(source, split.labeled, preset.spacing, with_label=True, progress=progress,
                                  normalization=norm)
    unlabeled = [] if cfg.supervised_only else data_mod.load_cases(
        source, split.unlabeled, preset.spacing, with_label=False, progress=progress, normalization=norm)
    validation = []
    for case_id in split.validation if preset.validate else ():
        volume, label = source.read(case_id, with_label=True)
        validation.append(ValidationCase(case_id, volume, label))  # type: ignore[arg-type]
    return split, labeled, unlabeled, validation


def _read_resume_state(cfg: TrainConfig, last_path: Path) -> Optional[Dict[str, Any]]:
    """The checkpoint ``--resume`` continues (checked to be resumable), or None for a new run."""
    if last_path.exists() and not cfg.resume:
        raise UserError(f"{last_path.parent} already holds a training run (last.pt); pass --resume to "
                        "continue it or choose another --out")
    if not cfg.resume:
        return None
    if not last_path.exists():
        raise MissingFileError(f"{last_path}: nothing to resume (no last.pt in the output folder)")
    state = read_checkpoint(last_path)
    for key in ("optimizer", "iteration", "memory_bank", "split"):
        if key not in state:
            raise CheckpointError(f"{last_path}: not a resumable training checkpoint (no {key!r})")
    if "rank_states" not in state and "rng" not in state:
        raise CheckpointError(f"{last_path}: not a resumable training checkpoint (no 'rank_states')")
    return state


#: The keys of a resumable training checkpoint (``last.pt``) that only continuing the training needs;
#: a model file made from it (an active-learning version, a release) drops them. ``rng`` and
#: ``sampler`` are the single-rank names that checkpoints written before ``rank_states`` hold.
RESUME_ONLY_KEYS = ("optimizer", "scaler", "memory_bank", "rank_states", "best_dice", "best_iteration", "history",
                    "rng", "sampler")


class TrainingRun:
    """One training job, in four parts: set up (constructor), :meth:`restore`, :meth:`step`, :meth:`after_step`.

    :func:`train` drives it; the parts are separate so each reads as one idea
    and the resumable state (what :meth:`checkpoint` writes) is in one place.
    """

    def __init__(self, cfg: TrainConfig, split: data_mod.Split, labeled: List[data_mod.Case],
                 unlabeled: List[data_mod.Case], validation: List[ValidationCase],
                 device: torch.device, rank: int, world: int, progress: ProgressCallback) -> None:
        preset = self.preset = cfg.preset
        self.cfg, self.device, self.rank, self.world, self.progress = cfg, device, rank, world, progress
        self.labeled, self.unlabeled, self.validation = labeled, unlabeled, validation
        self.out_dir = Path(cfg.out_dir)
        self.last_path = self.out_dir / "last.pt"
        torch.manual_seed(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed + rank)
        net_cfg = NetworkConfig(base_filters=preset.base_filters, feat_dim=preset.feat_dim,
                                dropout=preset.dropout, cma=preset.cma)
        # Channels-last 3D lets oneDNN / cuDNN pick their fast convolution kernels (about 20 % per
        # iteration on a CPU core); parameters keep their names and values, checkpoints are unchanged.
        self.net = CAMLNet(net_cfg).to(device, memory_format=torch.channels_last_3d)
        self.bank = MemoryBank(len(labeled), net_cfg.num_classes, net_cfg.feat_dim, device)
        self.objective = CAMLObjective(self.net, self.bank, preset, cfg.supervised_only).to(device)
        self.objective.memory_generator.manual_seed(cfg.seed + 7919 * rank)
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=preset.lr, momentum=preset.momentum,
                                         weight_decay=preset.weight_decay)
        self.scaler = torch.amp.GradScaler("cuda", enabled=preset.amp and device.type == "cuda")
        self.n_unlabeled_batch = 0 if cfg.supervised_only else preset.unlabeled_batch
        # Shift consistency makes two crops of each unlabeled image: half as many images per batch.
        self.n_unlabeled_draws = self.n_unlabeled_batch // (2 if preset.shift_consistency > 0 else 1)
        self.sampler = TwoStreamSampler(len(labeled), max(len(unlabeled), 1), self.rng)
        self.start_iter = self.iteration = self.completed = 0
        self.best_dice: Optional[float] = None
        self.best_iter: Optional[int] = None
        self.history: List[Dict[str, Any]] = []
        self.settings = InferenceSettings.from_preset(preset)
        # Effective values, not rules: the ramp-up length actually used goes with the resolved preset.
        self.meta = {"network": net_cfg.to_dict(), "preset": preset.to_dict(),
                     "inference": self.settings.to_dict(), "rampup_length": preset.rampup_for(len(labeled)),
                     "split": split.to_dict(),
                     "data_root": str(cfg.data_root), "seed": cfg.seed,
                     "supervised_only": cfg.supervised_only, "world_size": world}
        self.model: nn.Module = self.objective
        # What a step cut by an error must roll back so the checkpoint stays exact.
        self._snapshot: Optional[Tuple[Any, ...]] = None
        # Set when a step produced a non-finite loss: the live weights are no recovery point.
        self.diverged = False

    # -- restore ---------------------------------------------------------------------------
    def restore(self, state: Dict[str, Any]) -> None:
        """Continue from a resumable checkpoint: weights, optimizer, bank, scaler and this rank's streams."""
        try:
            self.net.load_state_dict(state["model"], strict=True)
            self.optimizer.load_state_dict(state["optimizer"])
            self.bank.load_state_dict(state["memory_bank"])
            restore_scaler(self.scaler, state.get("scaler"))
            _restore_rank_state(state, self.rank, self.world, self.cfg.seed, self.rng, self.objective,
                                self.sampler)
            self.start_iter = self.iteration = self.completed = int(state["iteration"])
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
            raise CheckpointError(f"{self.last_path}: incompatible checkpoint "
                                  f"({type(exc).__name__}: {exc})") from exc
        self.best_dice, self.best_iter = state.get("best_dice"), state.get("best_iteration")
        self.history = list(state.get("history", []))

    def wrap_distributed(self) -> None:
        if self.world > 1:
            # Supervised-only runs never use the OCC heads: let DDP know some parameters get no gradient.
            self.model = nn.parallel.DistributedDataParallel(
                self.objective, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=self.cfg.supervised_only)

    def checkpoint(self, iteration: int, rank_states: Optional[List[Dict[str, Any]]]) -> Dict[str, Any]:
        """The resumable state at ``iteration`` (``last.pt``); ``FloatingPointError`` if a weight or
        BatchNorm buffer is not finite (such a file could only fail again on ``--resume``).

        What a model file (a version, a release) keeps is the metadata, the model and the
        iteration; the rest is in :data:`RESUME_ONLY_KEYS`."""
        resume_only = {"optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                       "memory_bank": self.bank.state_dict(), "rank_states": rank_states,
                       "best_dice": self.best_dice, "best_iteration": self.best_iter, "history": self.history}
        return dict(self.meta, model=finite_state(self.net, iteration), iteration=iteration, **resume_only)

    # -- step ------------------------------------------------------------------------------
    def step(self) -> Dict[str, Any]:
        """One optimisation step; returns its record (iteration and loss terms)."""
        preset, device = self.preset, self.device
        self._snapshot = (_rng_state(self.rng, self.objective), [list(q) for q in self.sampler.queues],
                          list(self.bank.slots))
        li, ui = self.sampler.next(preset.labeled_batch, self.n_unlabeled_draws)
        x, y, shifts = make_batch(self.labeled, self.unlabeled, li, ui, preset, self.rng)
        x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last_3d)
        y = y.to(device, non_blocking=True)
        self.iteration += 1
        lambda_c, lambda_o, lambda_t = loss_weights(preset, self.iteration, len(self.labeled))
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(preset, self.iteration - 1)
        loss, parts = self.model(x, y, torch.tensor(li, device=device), lambda_c, lambda_o,
                                 shifts, lambda_t)
        # Every rank decides together, before the backward pass's gradient all-reduce: a rank
        # that stopped alone would leave the others waiting there forever.
        if not _all_ranks_finite(math.isfinite(parts["loss"]), self.world, device):
            # This forward pass already put non-finite statistics into BatchNorm's running
            # buffers: nothing of the live network may be saved any more.
            self.diverged = True
            raise FloatingPointError(f"loss became {parts['loss']} at iteration {self.iteration} "
                                     "(on this or another rank); the last good checkpoint is kept")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.completed, self._snapshot = self.iteration, None
        return {"iteration": self.iteration, **parts}

    # -- after the step --------------------------------------------------------------------
    def after_step(self, record: Dict[str, Any]) -> None:
        """Validation (best.pt), the log line, the periodic last.pt and the progress event."""
        preset, iteration = self.preset, self.iteration
        parts = {k: v for k, v in record.items() if k != "iteration"}
        if self.validation and preset.validate and iteration >= preset.val_start and (
                iteration % preset.val_interval == 0 or iteration == preset.iterations):
            if self.rank == 0:
                val = validate(self.net, self.validation, self.settings, self.device)
                record["val_dice"] = val["dice"]
                if self.best_dice is None or val["dice"] > self.best_dice:
                    self.best_dice, self.best_iter = val["dice"], iteration
                    chosen = replace(self.settings, largest_component=val["largest_component"])
                    save_checkpoint(self.out_dir / "best.pt", dict(self.meta, inference=chosen.to_dict(),
                                                                   model=finite_state(self.net, iteration),
                                                                   iteration=iteration, val=val))
                LOG.info("iteration %d validation Dice %.4f%s (best %.4f at %d)", iteration, val["dice"],
                         " with the largest component kept" if val["largest_component"] else "",
                         self.best_dice, self.best_iter)
        if iteration % self.cfg.log_every == 0 or "val_dice" in record or iteration == preset.iterations:
            self.history.append(record)
            if self.rank == 0:
                LOG.info("iteration %d " + " ".join(f"{k} %.4f" for k in parts), iteration, *parts.values())
        if iteration % preset.checkpoint_interval == 0 or iteration == preset.iterations:
            # Every rank reaches this at the same iteration, so the gather cannot hang.
            rank_states = _gather_rank_states(_rank_state(self.rng, self.objective, self.sampler),
                                              self.rank, self.world)
            if self.rank == 0:
                save_checkpoint(self.last_path, self.checkpoint(iteration, rank_states))
        self.progress(ProgressEvent("train", iteration, preset.iterations,
                                    values={k: round(v, 5) for k, v in record.items() if k != "iteration"}))

    def save_interrupted(self) -> None:
        """Keep what was learned: a resumable checkpoint at the last completed iteration."""
        if self._snapshot is not None:
            _set_rng_state(self._snapshot[0], self.rng, self.objective)
            self.sampler.queues = self._snapshot[1]
            self.bank.slots = self._snapshot[2]
        # Under DDP the other ranks' states cannot be gathered from here (they may be
        # anywhere in their step), so the last periodic checkpoint stands.
        if self.diverged:
            if self.rank == 0:
                LOG.info("diverged after iteration %d; the last good checkpoint (last.pt) is kept",
                         self.completed)
            return
        if self.rank == 0 and self.world == 1 and self.completed > self.start_iter and self.out_dir.exists():
            try:
                payload = self.checkpoint(self.completed, [_rank_state(self.rng, self.objective, self.sampler)])
            except FloatingPointError as exc:
                LOG.info("not saving iteration %d: %s; the last good checkpoint is kept", self.completed, exc)
                return
            save_checkpoint(self.last_path, payload)
            LOG.info("stopped at iteration %d; resumable checkpoint written", self.completed)
        elif self.rank == 0 and self.world > 1:
            LOG.info("stopped at iteration %d; the last periodic checkpoint (last.pt) is kept", self.completed)


def train(cfg: TrainConfig, progress: ProgressCallback = no_progress,
          cancel: Optional[CancelToken] = None) -> TrainResult:
    """Run (or resume) a training job; see the module docstring and :class:`TrainingRun`."""
    preset = cfg.preset
    rank, world = _distributed()
    device = resolve_device(cfg.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    out_dir = Path(cfg.out_dir)
    resume_state = _read_resume_state(cfg, out_dir / "last.pt")

    split, labeled, unlabeled, validation = prepare_data(cfg, progress)
    saved_split = resume_state.get("split") if resume_state is not None else None
    if resume_state is not None and (not isinstance(saved_split, dict) or saved_split.get("labeled") != split.labeled
                                     or saved_split.get("unlabeled", split.unlabeled) != split.unlabeled
                                     or saved_split.get("holdout", []) != split.holdout):
        raise CheckpointError(f"{out_dir / 'last.pt'}: incompatible checkpoint: it was trained with other "
                              "labeled, unlabeled or held-out cases than this command selects")

    run = TrainingRun(cfg, split, labeled, unlabeled, validation, device, rank, world, progress)
    if resume_state is not None:
        run.restore(resume_state)
    elif cfg.init_weights is not None:
        load_initial_weights(run.net, cfg.init_weights)
    run.wrap_distributed()

    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
    handler = _setup_logging(out_dir) if rank == 0 else logging.NullHandler()
    if rank == 0:
        LOG.info("%s training, preset %s, %d labeled / %d unlabeled / %d validation cases, device %s x%d, "
                 "from iteration %d", "supervised-only" if cfg.supervised_only else "CAML", preset.name,
                 len(labeled), len(unlabeled), len(validation), device, world, run.start_iter)
        if run.start_iter == 0:
            (out_dir / "config.json").write_text(json.dumps(run.meta, indent=2))
    t0 = time.time()
    run.net.train()
    try:
        while run.iteration < preset.iterations:
            if cancel is not None:
                cancel.raise_if_cancelled()
            # A cancel signal is honoured between iterations only (never mid-step: BatchNorm statistics
            # and the optimizer would be half-updated and a resumed run would differ from an
            # uninterrupted one), by every rank at the same iteration.
            with deferred_cancel(raise_at_end=False):
                run.after_step(run.step())
            _stop_if_cancelled(world, device)
    except BaseException:
        run.save_interrupted()
        raise
    finally:
        LOG.removeHandler(handler)
        handler.close()
    seconds = time.time() - t0
    if rank == 0:
        LOG.info("finished %d iterations in %.1f s", run.iteration - run.start_iter, seconds)
    return TrainResult(out_dir, run.iteration, run.best_dice, run.best_iter, seconds, run.history, run.net,
                       run.bank)
