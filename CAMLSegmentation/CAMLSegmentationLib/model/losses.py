"""The supervised and mutual-consistency losses of CAML and their ramp-up schedule.

Everything runs on the tensors' own device (the official code builds the
consistency targets in CPU tensors, which costs a device round trip per step).
"""

from __future__ import annotations

import math

import torch


def dice_loss(prob: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Binary soft Dice loss over the whole batch: ``1 - (2|P.T| + eps) / (|P| + |T| + eps)``.

    ``prob``: foreground probabilities ``[B, i, j, k]``; ``target``: {0, 1} of the same shape.
    """
    target = target.to(prob.dtype)
    inter = 2.0 * torch.sum(prob * target) + eps
    union = torch.sum(prob) + torch.sum(target) + eps
    return 1.0 - inter / union


def sharpen(prob: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Entropy-minimising sharpening ``p^(1/T) / (p^(1/T) + (1-p)^(1/T))``, element-wise.

    Written as ``sigmoid(logit(p) / T)``, the same function without the
    underflow of ``p ** 10`` for small probabilities in half precision.
    """
    p = prob.clamp(1e-7, 1.0 - 1e-7)
    return torch.sigmoid((torch.log(p) - torch.log1p(-p)) / temperature)


def mutual_consistency_loss(prob_v: torch.Tensor, prob_a: torch.Tensor,
                            temperature: float = 0.1) -> torch.Tensor:
    """``MSE(p_V, sharpen(p_A)) + MSE(p_A, sharpen(p_V))`` over every voxel, class and sample.

    As in the official code, gradients flow into both the prediction and the
    sharpened target of each term.
    """
    loss_va = torch.mean((prob_v - sharpen(prob_a, temperature)) ** 2)
    loss_av = torch.mean((prob_a - sharpen(prob_v, temperature)) ** 2)
    return loss_va + loss_av


def shift_consistency_loss(prob: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of two crops' predictions where the crops overlap.

    ``prob`` is ``[2n, C, i, j, k]``: crops ``2m`` and ``2m + 1`` come from one image, the
    second starting ``shifts[m]`` voxels after the first (``data.random_shifted_pair``).
    A voxel's prediction should not depend on where it sits in the window or on what the
    window holds beyond it: that is what changes when a user crops the image (ROI) or when
    the sliding window's tiling moves.
    """
    total = prob.new_zeros(())
    p = prob.shape[2:]
    for m, d in enumerate(shifts.tolist()):
        a = tuple(slice(max(0, x), n + min(0, x)) for x, n in zip(d, p))
        b = tuple(slice(max(0, -x), n - max(0, x)) for x, n in zip(d, p))
        total = total + torch.mean((prob[2 * m][(slice(None),) + a] - prob[2 * m + 1][(slice(None),) + b]) ** 2)
    return total / max(1, shifts.shape[0])


def sigmoid_rampup(current: float, rampup_length: float) -> float:
    """``exp(-5 (1 - t/R)^2)`` for t in [0, R], 1 afterwards (Laine & Aila, 2017)."""
    if rampup_length <= 0:
        return 1.0
    t = min(max(float(current), 0.0), float(rampup_length))
    phase = 1.0 - t / rampup_length
    return float(math.exp(-5.0 * phase * phase))
