"""The CAML training loss as one module (so DistributedDataParallel can wrap it), its ramped
weights and the learning-rate schedule."""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..model.losses import dice_loss, mutual_consistency_loss, shift_consistency_loss, sigmoid_rampup
from ..model.network import CAMLNet
from ..model.occ import MemoryBank, gather_across_ranks, omni_correlation, omni_correlation_loss, select_confident
from .presets import TrainingPreset


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
