"""The CAML network: two VNet sub-models, cross-sample mutual attention and OCC heads.

Module and parameter names follow the official ``CAML3d_v1`` (Herschel555/CAML)
exactly, so that its released ``iter_15000.pth`` checkpoints load with
``strict=True``: for example ``encoder1.block_one.conv.0.weight`` or
``encoder2.intra_attention.encoder_layers.self_attn.in_proj_weight``.

Sub-model V = ``encoder1`` + ``decoder1`` (transposed-convolution upsampling);
sub-model A = ``encoder2`` (with CMA) + ``decoder2`` (trilinear upsampling).
All tensors are ``[batch, channel, i, j, k]``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, List, Tuple

import torch
from torch import nn


@dataclass(frozen=True)
class NetworkConfig:
    """Architecture hyper-parameters; stored in every checkpoint."""

    in_channels: int = 1
    num_classes: int = 2
    base_filters: int = 16
    dropout: float = 0.5
    feat_dim: int = 32  # width of the projection / prediction heads
    cma: bool = True  # cross-sample mutual attention in encoder A

    def to_dict(self) -> Dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Dict) -> NetworkConfig:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)


class ConvBlock(nn.Module):
    """``stages`` x (conv3 + BatchNorm + ReLU); stored as ``conv.<index>``."""

    def __init__(self, stages: int, in_ch: int, out_ch: int) -> None:
        super().__init__()
        ops: List[nn.Module] = []
        for s in range(stages):
            ops += [nn.Conv3d(in_ch if s == 0 else out_ch, out_ch, 3, padding=1),
                    nn.BatchNorm3d(out_ch), nn.ReLU(inplace=True)]
        self.conv = nn.Sequential(*ops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class DownsamplingBlock(nn.Module):
    """Strided conv k2 s2 + BatchNorm + ReLU: halves each spatial axis."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv3d(in_ch, out_ch, 2, stride=2),
                                  nn.BatchNorm3d(out_ch), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class UpsamplingBlock(nn.Module):
    """Doubles each spatial axis: transposed conv (model V) or trilinear + conv3 (model A)."""

    def __init__(self, in_ch: int, out_ch: int, trilinear: bool) -> None:
        super().__init__()
        if trilinear:
            ops: List[nn.Module] = [nn.Upsample(scale_factor=2, mode="trilinear", align_corners=True),
                                    nn.Conv3d(in_ch, out_ch, 3, padding=1)]
        else:
            ops = [nn.ConvTranspose3d(in_ch, out_ch, 2, stride=2)]
        ops += [nn.BatchNorm3d(out_ch), nn.ReLU(inplace=True)]
        self.conv = nn.Sequential(*ops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class SampleAttention(nn.Module):
    """One post-norm transformer layer applied only in training mode.

    ``across_batch=False``: intra-sample attention, each sample's voxels attend
    to each other (sequence = voxels). ``across_batch=True``: inter-sample
    attention, at every voxel position the samples of the batch attend to each
    other (sequence = batch), which is how labeled and unlabeled samples mix.
    In eval mode the layer is the identity, as in the official code, so a
    single-volume inference does not depend on what else is in the batch.
    """

    def __init__(self, dim: int, across_batch: bool, dropout: float = 0.5) -> None:
        super().__init__()
        self.across_batch = across_batch
        self.encoder_layers = nn.TransformerEncoderLayer(dim, 4, dim * 4, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        b, c, i, j, k = x.shape
        tokens = x.permute(0, 2, 3, 4, 1).reshape(b, i * j * k, c)  # [batch, voxels, c]
        if not self.across_batch:
            tokens = tokens.transpose(0, 1)  # [voxels, batch, c]: sequence = voxels
        tokens = self.encoder_layers(tokens)  # (seq, batch, c) layout, batch_first=False
        if not self.across_batch:
            tokens = tokens.transpose(0, 1)
        return tokens.reshape(b, i, j, k, c).permute(0, 4, 1, 2, 3).contiguous()


class Encoder(nn.Module):
    """VNet encoder, stages of 1/2/3/3/3 convs; optional CMA after stage four."""

    def __init__(self, cfg: NetworkConfig, with_cma: bool = False) -> None:
        super().__init__()
        n = cfg.base_filters
        self.block_one = ConvBlock(1, cfg.in_channels, n)
        self.block_one_dw = DownsamplingBlock(n, 2 * n)
        self.block_two = ConvBlock(2, 2 * n, 2 * n)
        self.block_two_dw = DownsamplingBlock(2 * n, 4 * n)
        self.block_three = ConvBlock(3, 4 * n, 4 * n)
        self.block_three_dw = DownsamplingBlock(4 * n, 8 * n)
        self.block_four = ConvBlock(3, 8 * n, 8 * n)
        self.block_four_dw = DownsamplingBlock(8 * n, 16 * n)
        self.block_five = ConvBlock(3, 16 * n, 16 * n)
        self.dropout = nn.Dropout3d(p=cfg.dropout)
        self.has_dropout = cfg.dropout > 0
        self.with_cma = with_cma
        if with_cma:
            self.intra_attention = SampleAttention(8 * n, across_batch=False, dropout=cfg.dropout)
            self.inter_attention = SampleAttention(8 * n, across_batch=True, dropout=cfg.dropout)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        x1 = self.block_one(x)
        x2 = self.block_two(self.block_one_dw(x1))
        x3 = self.block_three(self.block_two_dw(x2))
        x4 = self.block_four(self.block_three_dw(x3))
        if self.with_cma:
            x4 = self.inter_attention(self.intra_attention(x4))
        x5 = self.block_five(self.block_four_dw(x4))
        if self.has_dropout:
            x5 = self.dropout(x5)
        return [x1, x2, x3, x4, x5]


class Decoder(nn.Module):
    """VNet decoder with additive skips; returns logits and last 16-channel features."""

    def __init__(self, cfg: NetworkConfig, trilinear: bool) -> None:
        super().__init__()
        n = cfg.base_filters
        self.block_five_up = UpsamplingBlock(16 * n, 8 * n, trilinear)
        self.block_six = ConvBlock(3, 8 * n, 8 * n)
        self.block_six_up = UpsamplingBlock(8 * n, 4 * n, trilinear)
        self.block_seven = ConvBlock(3, 4 * n, 4 * n)
        self.block_seven_up = UpsamplingBlock(4 * n, 2 * n, trilinear)
        self.block_eight = ConvBlock(2, 2 * n, 2 * n)
        self.block_eight_up = UpsamplingBlock(2 * n, n, trilinear)
        self.block_nine = ConvBlock(1, n, n)
        self.out_conv = nn.Conv3d(n, cfg.num_classes, 1)
        self.dropout = nn.Dropout3d(p=cfg.dropout)
        self.has_dropout = cfg.dropout > 0

    def forward(self, features: List[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        x1, x2, x3, x4, x5 = features
        x = self.block_six(self.block_five_up(x5) + x4)
        x = self.block_seven(self.block_six_up(x) + x3)
        x = self.block_eight(self.block_seven_up(x) + x2)
        x = self.block_nine(self.block_eight_up(x) + x1)
        if self.has_dropout:
            x = self.dropout(x)
        return self.out_conv(x), x


def _head(in_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.BatchNorm1d(out_dim),
                         nn.ReLU(inplace=True), nn.Linear(out_dim, out_dim))


class CAMLNet(nn.Module):
    """The dual model of CAML3d_v1: returns (logits_v, logits_a, features_v, features_a)."""

    def __init__(self, cfg: NetworkConfig = NetworkConfig()) -> None:
        super().__init__()
        self.config = cfg
        self.encoder1 = Encoder(cfg)
        self.encoder2 = Encoder(cfg, with_cma=cfg.cma)
        self.decoder1 = Decoder(cfg, trilinear=False)
        self.decoder2 = Decoder(cfg, trilinear=True)
        n = cfg.base_filters
        self.projection_head1 = _head(n, cfg.feat_dim)
        self.prediction_head1 = _head(cfg.feat_dim, cfg.feat_dim)
        self.projection_head2 = _head(n, cfg.feat_dim)
        self.prediction_head2 = _head(cfg.feat_dim, cfg.feat_dim)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        logits_v, feat_v = self.decoder1(self.encoder1(x))
        logits_a, feat_a = self.decoder2(self.encoder2(x))
        return logits_v, logits_a, feat_v, feat_a


class SubModel(nn.Module):
    """One sub-model alone (V or A) for inference; returns logits.

    Its parameters are named as in the dual model (``encoder1.*``/``decoder1.*``
    for V, ``encoder2.*``/``decoder2.*`` for A) so a dual checkpoint loads into
    it by simply keeping the matching keys.
    """

    def __init__(self, cfg: NetworkConfig = NetworkConfig(), which: str = "v") -> None:
        super().__init__()
        if which not in ("v", "a"):
            raise ValueError(f"sub-model must be 'v' or 'a', not {which!r}")
        self.config = cfg
        self.which = which
        idx = "1" if which == "v" else "2"
        self.prefix = (f"encoder{idx}.", f"decoder{idx}.")
        setattr(self, f"encoder{idx}", Encoder(cfg, with_cma=(which == "a" and cfg.cma)))
        setattr(self, f"decoder{idx}", Decoder(cfg, trilinear=(which == "a")))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idx = "1" if self.which == "v" else "2"
        return getattr(self, f"decoder{idx}")(getattr(self, f"encoder{idx}")(x))[0]


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
