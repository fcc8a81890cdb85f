"""Omni-correlation consistency (OCC): the labeled memory bank and the correlation loss.

For each labeled case the memory bank keeps the projected features of the
voxels that *both* sub-models classify correctly (the mean of V's and A's
projections), replaced whenever the case is seen again. Each iteration draws
``per_class`` entries per class from the union over cases. Unlabeled voxels
where V and A agree are ranked per class by V's confidence; the top
``num_filtered`` are compared with the memory by a temperature softmax (the
omni-correlation matrix), and A's matrix is the target of V's (cross-entropy).

Unlike the official code, the bank lives on the training device as tensors
(no numpy round trip, no concatenation of every case each iteration), and
model A's labeled features are moved to channels-last before flattening; the
official code flattens A's ``[B, C, i, j, k]`` features directly, which pairs
each voxel with features of other voxels and channels.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist


def sample_without_replacement(population: int, count: int,
                                generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """``count`` distinct integers drawn uniformly from ``range(population)``, as a CPU long tensor.

    A small population is permuted (that is O(count) anyway). A large one is
    sampled by drawing with replacement and keeping each value's first
    occurrence in draw order, which is exactly sampling without replacement;
    with ``population >= 4 * count`` fewer than one draw in eight repeats,
    so this costs O(count) instead of the O(population) of a full permutation.
    """
    if not 0 <= count <= population:
        raise ValueError(f"cannot draw {count} distinct values from {population}")
    if population <= 4 * count:
        return torch.randperm(population, generator=generator)[:count]
    picked: Dict[int, None] = {}
    while len(picked) < count:
        need = count - len(picked)
        draws = torch.randint(population, (need + need // 4 + 8,), generator=generator)
        for value in draws.tolist():
            picked.setdefault(value)
            if len(picked) == count:
                break
    return torch.tensor(list(picked), dtype=torch.long)


class MemoryBank:
    """Per-labeled-case store of (feature, class) pairs on one device."""

    def __init__(self, num_cases: int, num_classes: int, feat_dim: int,
                 device: Optional[torch.device] = None) -> None:
        self.num_cases = num_cases
        self.num_classes = num_classes
        self.feat_dim = feat_dim
        self.device = device if device is not None else torch.device("cpu")
        # slots[case][cls] -> [n, feat_dim] features of that class, or None before the case is seen
        self.slots: List[Optional[List[torch.Tensor]]] = [None] * num_cases

    def update(self, case_index: int, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Replace case ``case_index``'s entries with ``features [n, D]`` of classes ``labels [n]``."""
        if not 0 <= case_index < self.num_cases:
            raise IndexError(f"labeled case index {case_index} out of range 0..{self.num_cases - 1}")
        features = features.detach().to(self.device, torch.float32)
        labels = labels.to(self.device)
        self.slots[case_index] = [features[labels == c].contiguous() for c in range(self.num_classes)]

    def count(self, cls: int) -> int:
        return sum(int(s[cls].shape[0]) for s in self.slots if s is not None)

    def sample(self, per_class: int, generator: Optional[torch.Generator] = None,
               draw: Callable[..., torch.Tensor] = sample_without_replacement) -> List[Optional[torch.Tensor]]:
        """Draw ``per_class`` distinct entries per class, uniformly over all stored voxels.

        Returns one ``[per_class, D]`` tensor per class, or None for a class
        with fewer stored entries than asked (as the official code does).
        The work is O(per_class + cases), not O(stored voxels): a full bank
        of paper-size cases holds millions of entries per class. ``draw(population,
        count, generator)`` picks the indices (the benchmark passes the old full permutation).
        """
        out: List[Optional[torch.Tensor]] = []
        for c in range(self.num_classes):
            parts = [s[c] for s in self.slots if s is not None and s[c].shape[0] > 0]
            total = sum(int(p.shape[0]) for p in parts)
            if total < per_class or per_class <= 0:
                out.append(None)
                continue
            idx = draw(total, per_class, generator).to(self.device)
            # Map global indices to (case, row) through the cumulative counts: no concatenation.
            sizes = torch.tensor([p.shape[0] for p in parts], device=self.device)
            ends = torch.cumsum(sizes, 0)
            which = torch.searchsorted(ends, idx, right=True)
            starts = ends - sizes
            rows = idx - starts[which]
            picked = torch.empty(per_class, self.feat_dim, device=self.device)
            for k, part in enumerate(parts):
                sel = which == k
                if bool(sel.any()):
                    picked[sel] = part[rows[sel]]
            out.append(picked)
        return out

    def state_dict(self) -> Dict[str, Any]:
        return {"num_cases": self.num_cases, "num_classes": self.num_classes, "feat_dim": self.feat_dim,
                "slots": [None if s is None else [t.cpu() for t in s] for s in self.slots]}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if (state["num_cases"], state["num_classes"], state["feat_dim"]) != (
                self.num_cases, self.num_classes, self.feat_dim):
            raise ValueError("memory bank in the checkpoint was made for another number of labeled cases, "
                             f"classes or feature width: {state['num_cases']}/{state['num_classes']}/"
                             f"{state['feat_dim']} vs {self.num_cases}/{self.num_classes}/{self.feat_dim}")
        self.slots = [None if s is None else [t.to(self.device) for t in s] for s in state["slots"]]


def gather_across_ranks(features: torch.Tensor, labels: torch.Tensor,
                        case_index: torch.Tensor) -> List[Tuple[int, torch.Tensor, torch.Tensor]]:
    """All-gather one (case, features, labels) update per rank, so every rank's bank stays identical.

    Ranks hold different numbers of voxels, so tensors are padded to the
    largest count before ``all_gather`` and trimmed afterwards (works with
    both gloo and NCCL).
    """
    world = dist.get_world_size()
    device = features.device
    n = torch.tensor([features.shape[0]], device=device, dtype=torch.long)
    counts = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(counts, n)
    longest = int(max(int(c) for c in counts))
    pad_f = torch.zeros(longest, features.shape[1], device=device, dtype=features.dtype)
    pad_f[: features.shape[0]] = features
    pad_l = torch.zeros(longest, device=device, dtype=labels.dtype)
    pad_l[: labels.shape[0]] = labels
    all_f = [torch.empty_like(pad_f) for _ in range(world)]
    all_l = [torch.empty_like(pad_l) for _ in range(world)]
    all_i = [torch.empty_like(case_index) for _ in range(world)]
    dist.all_gather(all_f, pad_f)
    dist.all_gather(all_l, pad_l)
    dist.all_gather(all_i, case_index)
    return [(int(all_i[r]), all_f[r][: int(counts[r])], all_l[r][: int(counts[r])]) for r in range(world)]


def select_confident(labels: torch.Tensor, confidence: torch.Tensor, num_classes: int,
                     num_filtered: int) -> List[torch.Tensor]:
    """Per class, indices of the ``num_filtered`` voxels with the highest confidence among ``labels == c``."""
    picks = []
    for c in range(num_classes):
        members = torch.nonzero(labels == c, as_tuple=False).flatten()
        if members.numel() > num_filtered:
            top = torch.topk(confidence[members], num_filtered, sorted=False).indices
            members = members[top]
        picks.append(members)
    return picks


def omni_correlation(features: torch.Tensor, picks: List[torch.Tensor],
                     memory: List[Optional[torch.Tensor]], temperature: float = 0.1) -> Optional[torch.Tensor]:
    """Omni-correlation matrix: ``softmax(f . m^T / T)`` over all available memory entries.

    ``features``: ``[N, D]`` predicted features of unlabeled voxels; ``picks``:
    per-class row indices into them (from ``select_confident``); ``memory``:
    per-class ``[M_c, D]`` entries or None. Rows of classes with at most one
    pick, and memory classes with at most one entry, are left out as in the
    official code. Returns ``[rows, sum M_c]`` or None when nothing remains.
    """
    bank = [m for m in memory if m is not None and m.shape[0] > 1]
    if not bank:
        return None
    keys = torch.cat(bank, 0).to(features.dtype)
    rows = [features[p] for p in picks if p.numel() > 1]
    if not rows:
        return None
    logits = torch.cat(rows, 0) @ keys.t()
    return torch.softmax(logits / temperature, dim=1)


def omni_correlation_loss(target_corr: torch.Tensor, corr: torch.Tensor) -> torch.Tensor:
    """Cross-entropy ``-sum(target * log(corr + 1e-8)) / rows``: A's matrix as the target of V's."""
    return torch.sum(-target_corr * torch.log(corr + 1e-8)) / corr.shape[0]
