"""STM's decoder: readout at 1/16 refined with the skips at 1/8 and 1/4 into per-object logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import Refine, ResBlock, SplitConv2d, Upsample4


class Decoder(nn.Module):
    """1/16 -> 1/8 -> 1/4 -> one logit per pixel at 1/4 (``STRIDE``), bilinearly upsampled x4 to the input
    size. Its input is STM's [memory readout, query value]; the first convolution splits, by linearity, into
    a readout term (per object) and a value term (per frame, in ``frame_part``)."""

    STRIDE = 4  # the logits' resolution before the upsampling, relative to the input

    def __init__(self, cin: int, skip_dims: tuple[int, int], dims: tuple[int, int, int]):
        super().__init__()
        d16, d8, d4 = dims
        self.conv_in = SplitConv2d(cin // 2, cin, d16)  # [readout, query value], Cv channels each
        self.res_in = ResBlock(d16)
        self.rf8 = Refine(skip_dims[1], d16, d8)
        self.rf4 = Refine(skip_dims[0], d8, d4)
        self.pred = nn.Conv2d(d4, 1, 3, padding=1)

    def frame_part(self, value: torch.Tensor, f8: torch.Tensor, f4: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The frame-only terms: the query value's share of the first convolution, with its bias
        (B, d16, h, w), and the skip branches (B, d8, H/8, W/8), (B, d4, H/4, W/4)."""
        return self.conv_in.second(value), self.rf8.skip_branch(f8), self.rf4.skip_branch(f4)

    def forward(
        self, readout: torch.Tensor, frame_part: tuple[torch.Tensor, ...], upsample: bool = True
    ) -> torch.Tensor:
        """readout (N, Cv, h, w); ``frame_part`` of the N rows' frames, or of one frame shared by all.
        ``upsample`` False returns the logits as predicted, at 1/4 (N, H/4, W/4)."""
        g16, s8, s4 = frame_part
        x = self.conv_in.first(readout) + g16
        x = self.res_in(x)  # (N, d16, h, w)
        x = self.rf8(s8, x)  # (N, d8, H/8, W/8)
        x = self.rf4(s4, x)  # (N, d4, H/4, W/4)
        x = self.pred(F.relu_(x))  # (N, 1, H/4, W/4)
        return Upsample4.apply(x)[:, 0] if upsample else x[:, 0]  # (N, H, W) or (N, H/4, W/4)
