"""Semi-supervised CAML training: the job that ties the parts together and its resumable checkpoint.

The parts, one module each: :mod:`.objective` (the CAML loss), :mod:`.sampler` (the two case
streams), :mod:`.batches` (augmented crops), :mod:`.validation`, :mod:`.ranks` (torchrun plumbing).

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
from typing import Any, Dict, List, NamedTuple, Optional

import numpy as np
import torch
from torch import nn

from ..devices import resolve_device
from ..errors import MissingFileError, UserError
from ..model.checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from ..model.network import CAMLNet, NetworkConfig
from ..model.occ import MemoryBank
from ..model.settings import InferenceSettings
from ..progress import (
    CancelToken,
    ProgressCallback,
    ProgressEvent,
    deferred_cancel,
    no_progress,
)
from .batches import make_batch
from .loading import load_cases
from .objective import CAMLObjective, learning_rate, loss_weights
from .presets import TrainingPreset
from .ranks import (
    all_ranks_finite,
    distributed_rank_world,
    gather_rank_states,
    rank_state,
    restore_rank_state,
    rng_state,
    set_rng_state,
    stop_if_cancelled,
)
from .sampler import TwoStreamSampler
from .sources import Case, DataError, open_source
from .split import Split, make_split
from .validation import ValidationCase, validate

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
    #: On resume, accept an unlabeled stream that differs from the checkpoint's and start that stream's
    #: queue afresh (logged); otherwise a resume with other cases than the checkpoint's is refused.
    restart_unlabeled: bool = False


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


def restore_scaler(scaler: torch.amp.GradScaler, state: Optional[Dict[str, Any]]) -> None:
    """Load a GradScaler's saved state when there is one to load.

    A run started on a CPU (or with amp off) saves the empty state of a
    disabled scaler; resumed on a GPU, the enabled scaler starts from its
    default scale instead of refusing the empty state. A GPU run resumed on
    a CPU has a disabled scaler, which ignores the saved state.
    """
    if state and scaler.is_enabled():
        scaler.load_state_dict(state)


def finite_state(net: nn.Module, iteration: int) -> Dict[str, torch.Tensor]:
    """``net``'s state_dict, or ``FloatingPointError`` naming the first parameter or buffer
    (BatchNorm running statistics included) that holds a NaN or an infinity."""
    state = net.state_dict()
    for key, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise FloatingPointError(f"{key} is not finite at iteration {iteration}")
    return state


def _setup_logging(out_dir: Path) -> logging.Handler:
    """Append this run's log lines to ``out_dir/train.log`` (rank 0 only)."""
    handler = logging.FileHandler(out_dir / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    LOG.addHandler(handler)
    LOG.setLevel(logging.INFO)
    return handler


#: The roles whose case lists decide the batches: a resume must find them as the checkpoint saved them.
RESUMED_ROLES = ("labeled", "unlabeled", "holdout")


def _shown_ids(ids: List[str], most: int = 5) -> str:
    return ", ".join(ids[:most]) + (f" and {len(ids) - most} more" if len(ids) > most else "")


def split_changes(saved: Dict[str, Any], split: Split) -> Dict[str, str]:
    """``{role: what changed}`` for each of ``RESUMED_ROLES`` whose ids differ from the saved split
    (the sampler draws by position, so another order is a change too). Checkpoints written before
    the unlabeled and held-out lists were saved are taken to have today's unlabeled list and no
    held-out case."""
    now = split.to_dict()
    legacy = {"unlabeled": now["unlabeled"], "holdout": []}
    changes = {}
    for role in RESUMED_ROLES:
        saved_ids = saved.get(role, legacy.get(role))
        if saved_ids is None:
            changes[role] = "not recorded in the checkpoint"
            continue
        before, after = list(saved_ids), now[role]
        if before == after:
            continue
        removed = [i for i in before if i not in set(after)]
        added = [i for i in after if i not in set(before)]
        parts = [f"{verb} {_shown_ids(ids)}" for verb, ids in (("removed", removed), ("added", added)) if ids]
        changes[role] = "; ".join(parts) or "the same cases in another order"
    return changes


def check_resume_split(saved: Any, split: Split, last_path: Path, restart_unlabeled: bool = False) -> bool:
    """Refuse (one line naming the changed ids) a resume whose cases differ from the checkpoint's;
    True when only the unlabeled stream changed and ``restart_unlabeled`` allows starting it afresh."""
    if not isinstance(saved, dict):
        raise CheckpointError(f"{last_path}: incompatible checkpoint: it records no case split, so a resume "
                              "cannot be checked to draw the same batches")
    changes = split_changes(saved, split)
    if not changes:
        return False
    if restart_unlabeled and set(changes) == {"unlabeled"}:
        return True
    what = "; ".join(f"{role} cases: {change}" for role, change in changes.items())
    raise CheckpointError(f"{last_path}: incompatible checkpoint: the cases changed since it was saved ({what}); "
                          "a resume would draw other batches: restore those cases, or train anew in another --out")


def prepare_data(cfg: TrainConfig, progress: ProgressCallback = no_progress,
                 resume_state: Optional[Dict[str, Any]] = None):
    """Open the data, make the split, load and validate every case (before anything is written).

    With ``resume_state``, the split is checked against the checkpoint's before any case is loaded
    (``check_resume_split``); returns the split, the cases, and whether the unlabeled stream restarts."""
    preset = cfg.preset
    source = open_source(cfg.data_root)
    split = make_split(source, labeled=cfg.labeled, labeled_list=cfg.labeled_list,
                                val_list=cfg.val_list, val_last=cfg.val_last,
                                min_labeled=preset.labeled_batch, unlabeled_list=cfg.unlabeled_list,
                                holdout_list=cfg.holdout_list)
    restart = False
    if resume_state is not None:
        restart = check_resume_split(resume_state.get("split"), split, Path(cfg.out_dir) / "last.pt",
                                     cfg.restart_unlabeled)
    if not cfg.supervised_only and preset.unlabeled_batch > 0 and not split.unlabeled:
        raise DataError(f"{cfg.data_root}: no unlabeled cases left for the unlabeled stream "
                                 "(every case is labeled); use --supervised-only or fewer labeled cases")
    norm = preset.normalization
    labeled = load_cases(source, split.labeled, preset.spacing, with_label=True, progress=progress,
                                  normalization=norm)
    unlabeled = [] if cfg.supervised_only else load_cases(
        source, split.unlabeled, preset.spacing, with_label=False, progress=progress, normalization=norm)
    validation = []
    for case_id in split.validation if preset.validate else ():
        volume, label = source.read(case_id, with_label=True)
        validation.append(ValidationCase(case_id, volume, label))  # type: ignore[arg-type]
    return split, labeled, unlabeled, validation, restart


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


class StepUndo(NamedTuple):
    """The stream state before a step: restored when the step is cut short, so ``last.pt`` resumes exactly."""

    rng: Any
    queues: List[List[int]]
    bank_slots: List[Any]


class TrainingRun:
    """One training job, in four parts: set up (constructor), :meth:`restore`, :meth:`step`, :meth:`after_step`.

    :func:`train` drives it; the parts are separate so each reads as one idea
    and the resumable state (what :meth:`checkpoint` writes) is in one place.
    """

    def __init__(self, cfg: TrainConfig, split: Split, labeled: List[Case],
                 unlabeled: List[Case], validation: List[ValidationCase],
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
        # What a step cut by an error must roll back so the checkpoint stays exact ("snapshot" is
        # kept for the PNG picture of io/snapshot.py).
        self._undo: Optional[StepUndo] = None
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
            restore_rank_state(state, self.rank, self.world, self.cfg.seed, self.rng, self.objective,
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
        self._undo = StepUndo(rng_state(self.rng, self.objective), [list(q) for q in self.sampler.queues],
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
        if not all_ranks_finite(math.isfinite(parts["loss"]), self.world, device):
            # This forward pass already put non-finite statistics into BatchNorm's running
            # buffers: nothing of the live network may be saved any more.
            self.diverged = True
            raise FloatingPointError(f"loss became {parts['loss']} at iteration {self.iteration} "
                                     "(on this or another rank); the last good checkpoint is kept")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.completed, self._undo = self.iteration, None
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
            rank_states = gather_rank_states(rank_state(self.rng, self.objective, self.sampler),
                                              self.rank, self.world)
            if self.rank == 0:
                save_checkpoint(self.last_path, self.checkpoint(iteration, rank_states))
        self.progress(ProgressEvent("train", iteration, preset.iterations,
                                    values={k: round(v, 5) for k, v in record.items() if k != "iteration"}))

    def save_interrupted(self) -> None:
        """Keep what was learned: a resumable checkpoint at the last completed iteration."""
        if self._undo is not None:
            set_rng_state(self._undo.rng, self.rng, self.objective)
            self.sampler.queues = self._undo.queues
            self.bank.slots = self._undo.bank_slots
        # Under DDP the other ranks' states cannot be gathered from here (they may be
        # anywhere in their step), so the last periodic checkpoint stands.
        if self.diverged:
            if self.rank == 0:
                LOG.info("diverged after iteration %d; the last good checkpoint (last.pt) is kept",
                         self.completed)
            return
        if self.rank == 0 and self.world == 1 and self.completed > self.start_iter and self.out_dir.exists():
            try:
                payload = self.checkpoint(self.completed, [rank_state(self.rng, self.objective, self.sampler)])
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
    rank, world = distributed_rank_world()
    device = resolve_device(cfg.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    out_dir = Path(cfg.out_dir)
    resume_state = _read_resume_state(cfg, out_dir / "last.pt")

    split, labeled, unlabeled, validation, restart_unlabeled = prepare_data(cfg, progress, resume_state)

    run = TrainingRun(cfg, split, labeled, unlabeled, validation, device, rank, world, progress)
    restart_message = None
    if resume_state is not None:
        run.restore(resume_state)
        if restart_unlabeled:
            # The saved queue holds positions in the old list: draw the new list's cases afresh.
            run.sampler.queues[1] = []
            change = split_changes(resume_state["split"], split)["unlabeled"]
            restart_message = (f"the unlabeled cases changed since the checkpoint ({change}): the unlabeled "
                               "stream starts afresh, so batches differ from an uninterrupted run")
            progress(ProgressEvent("warning", 0, 0, restart_message))
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
        if restart_message:
            LOG.warning("%s", restart_message)
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
            stop_if_cancelled(world, device)
        seconds = time.time() - t0
        if rank == 0:  # while train.log's handler is still attached: the run's last line
            LOG.info("finished %d iterations in %.1f s", run.iteration - run.start_iter, seconds)
    except BaseException:
        run.save_interrupted()
        raise
    finally:
        LOG.removeHandler(handler)
        handler.close()
    return TrainResult(out_dir, run.iteration, run.best_dice, run.best_iter, seconds, run.history, run.net,
                       run.bank)
