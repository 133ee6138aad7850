"""The fused memory encoder: a frame's mask(s) encoded on top of its query features (no second backbone)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import ResBlock, SplitConv2d


class FusedMaskEncoder(nn.Module):
    """Memory value from the frame's own encoder features plus its two mask channels.

    The masks go through two stride-2 convolutions to 1/4 and are fused with the encoder's features at
    1/4, 1/8 and 1/16. Each fusion is a convolution over [mask features, image features]; by linearity
    it splits into a mask term plus an image term, and the image term (``image_part``) is computed once
    per frame. The gradient with respect to the mask (correction, cycle-ERF) never enters the backbone.
    A single object's second channel (the union of the other objects) is empty, so its masks come as one
    channel and the first convolution takes the mask's half alone: gradient correction of one object
    then does not build, convolve and differentiate a channel of zeros on every step of Eq. 5.
    """

    def __init__(self, feat_dims: tuple[int, int, int], value_dim: int):
        super().__init__()
        c4, c8, c16 = feat_dims
        self.stem = nn.Sequential(  # [mask, other objects] -> 1/4
            SplitConv2d(1, 2, 16, stride=2), nn.ReLU(inplace=True), nn.Conv2d(16, 16, 3, 2, 1), nn.ReLU(inplace=True)
        )
        self.fuse4 = SplitConv2d(16, 16 + c4, 32)  # [mask features, image features]
        self.down8 = nn.Conv2d(32, 48, 3, 2, 1)
        self.fuse8 = SplitConv2d(48, 48 + c8, 64)
        self.down16 = nn.Conv2d(64, 96, 3, 2, 1)
        self.fuse16 = SplitConv2d(96, 96 + c16, value_dim)
        self.res = ResBlock(value_dim)

    def image_part(self, f4: torch.Tensor, f8: torch.Tensor, f16: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Image terms of the three fusions (with their biases): (B, 32, H/4, W/4), (B, 64, H/8, W/8),
        (B, Cv, h, w)."""
        return self.fuse4.second(f4), self.fuse8.second(f8), self.fuse16.second(f16)

    def forward(self, masks2: torch.Tensor, image_part: tuple[torch.Tensor, ...]) -> torch.Tensor:
        # masks2: (N, 2, H, W), or (N, 1, H, W) where the second channel is empty; image_part of the N rows'
        # frames, or of one frame shared by all. The ReLUs work in place on tensors nothing else reads (a
        # convolution's backward needs its input, not its output)
        g4, g8, g16 = image_part
        first = self.stem[0]
        x = first.alone(masks2) if masks2.shape[1] == 1 else first(masks2)
        x = self.stem[1:](x)  # (N, 16, H/4, W/4)
        x = F.relu_(self.fuse4.first(x) + g4)  # (N, 32, H/4, W/4)
        x = F.relu_(self.down8(x))  # (N, 48, H/8, W/8)
        x = F.relu_(self.fuse8.first(x) + g8)  # (N, 64, H/8, W/8)
        x = F.relu_(self.down16(x))  # (N, 96, h, w)
        x = self.fuse16.first(x) + g16  # (N, Cv, h, w)
        return self.res(x)


def second_mask_channel(masks: torch.Tensor, mode: str) -> torch.Tensor:
    """(B, O, H, W) -> (B, O, H, W): the union of the other objects (STM) or the background (STM-cycle).
    Both are clamped to [0, 1] as the originals do: corrected masks may leave that range."""
    if mode == "background":
        return (1.0 - masks).clamp(0.0, 1.0)
    if mode == "others":
        return (masks.sum(1, keepdim=True) - masks).clamp(0.0, 1.0)
    raise ValueError(f"unknown second_mask {mode!r}: choose 'others' or 'background'")
