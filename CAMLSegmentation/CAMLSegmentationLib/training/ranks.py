"""Rank plumbing: the process group under torchrun, each rank's RNG and sampler state (gathered
for the checkpoint, restored on resume), and the decisions every rank takes together (a
non-finite loss, a cancel)."""

from __future__ import annotations

import logging
import os
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist

from ..model.checkpoint import plain_types
from ..progress import Cancelled, cancel_requested, check_cancel
from .objective import CAMLObjective
from .sampler import TwoStreamSampler

LOG = logging.getLogger("caml.train")


def distributed_rank_world() -> Tuple[int, int]:
    """(rank, world size); initialises the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def rng_state(rng: np.random.Generator, objective: CAMLObjective) -> Dict[str, Any]:
    state: Dict[str, Any] = {"numpy": plain_types(rng.bit_generator.state), "torch": torch.get_rng_state(),
                             "memory": objective.memory_generator.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any], rng: np.random.Generator, objective: CAMLObjective) -> None:
    rng.bit_generator.state = state["numpy"]
    torch.set_rng_state(state["torch"])
    objective.memory_generator.set_state(state["memory"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def rank_state(rng: np.random.Generator, objective: CAMLObjective, sampler: TwoStreamSampler) -> Dict[str, Any]:
    """What decides this rank's batches and memory draws: its RNG states and sampler queues."""
    return {"rng": rng_state(rng, objective), "sampler": [list(q) for q in sampler.queues]}


def gather_rank_states(local: Dict[str, Any], rank: int, world: int) -> Optional[List[Dict[str, Any]]]:
    """Every rank's ``rank_state``, in rank order, on rank 0 (None elsewhere).

    A collective: every rank must call it at the same iteration.
    """
    if world == 1:
        return [local]
    gathered: Optional[List[Any]] = [None] * world if rank == 0 else None
    dist.gather_object(local, gathered, dst=0)
    return gathered


def restore_rank_state(checkpoint: Dict[str, Any], rank: int, world: int, seed: int,
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
        set_rng_state(saved[rank]["rng"], rng, objective)
        sampler.queues = [list(q) for q in saved[rank]["sampler"]]
        return
    set_rng_state(saved[0]["rng"], rng, objective)
    iteration = int(checkpoint["iteration"])
    rng.bit_generator.state = np.random.default_rng([seed, rank, iteration]).bit_generator.state
    objective.memory_generator.manual_seed(seed + 7919 * rank + 104729 * iteration)
    sampler.queues = [[], []]


def all_ranks_finite(finite: bool, world: int, device: torch.device) -> bool:
    """``finite`` on every rank (a collective under DDP: all ranks call it at the same step)."""
    if world > 1:
        flag = torch.tensor([1.0 if finite else 0.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return float(flag) > 0
    return finite


def stop_if_cancelled(world: int, device: torch.device) -> None:
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
