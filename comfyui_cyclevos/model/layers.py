"""The building blocks of the decoder and the fused memory encoder: STM's residual block, a convolution
split over two inputs, the refine module and a x4 bilinear upsampling with a fast backward."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn


class ResBlock(nn.Module):
    """STM's pre-activation residual block (no normalisation)."""

    def __init__(self, cin: int, cout: int | None = None):
        super().__init__()
        cout = cout or cin
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 3, padding=1) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.conv2(F.relu_(self.conv1(F.relu(x))))  # in place where nothing else reads the tensor
        return (x if self.skip is None else self.skip(x)) + r


class SplitConv2d(nn.Conv2d):
    """A 3x3 convolution over the channels of [a, b] (``split`` of them from a), applied by linearity as
    ``first(a) + second(b)`` so that a term depending on one input alone is computed once and reused, or
    as ``alone(a)`` where b is known to be zero.

    With frozen weights (``CycleVOSNet.for_inference``) each half is kept as its own contiguous tensor,
    refreshed when the weight changes (moved, reloaded): oneDNN repacks a sliced weight on every call, and
    gradient correction (Eq. 5) runs ``first`` forward and backward on every step (cost measured in
    docs/performance.md). Trainable weights are sliced on every call, so that their gradient flows."""

    def __init__(self, split: int, cin: int, cout: int, stride: int = 1):
        super().__init__(cin, cout, 3, stride=stride, padding=1)
        self.split = split
        self._frozen = None  # (weight's identity, first half, second half), made on first use when frozen

    def halves(self) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.weight
        if w.requires_grad:
            return w[:, : self.split], w[:, self.split :]
        key = (w.data_ptr(), w._version, w.dtype, w.device, w.stride())
        if self._frozen is None or self._frozen[0] != key:
            fmt = torch.channels_last if w.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
            with torch.inference_mode(False), torch.no_grad():  # ordinary tensors: correction's graph saves them
                self._frozen = (
                    key,
                    *(h.contiguous(memory_format=fmt) for h in (w[:, : self.split], w[:, self.split :])),
                )
        return self._frozen[1], self._frozen[2]

    def first(self, a: torch.Tensor) -> torch.Tensor:
        """The term of the first ``split`` input channels, without the bias."""
        return F.conv2d(a, self.halves()[0], None, self.stride, 1)

    def second(self, b: torch.Tensor) -> torch.Tensor:
        """The term of the other input channels, with the bias."""
        return F.conv2d(b, self.halves()[1], self.bias, self.stride, 1)

    def alone(self, a: torch.Tensor) -> torch.Tensor:
        """The convolution of [a, 0]: the first term with the bias."""
        return F.conv2d(a, self.halves()[0], self.bias, self.stride, 1)


class Refine(nn.Module):
    """STM's refinement: skip features to ``dim`` channels, plus the upsampled coarser map."""

    def __init__(self, skip_dim: int, coarse_dim: int, dim: int):
        super().__init__()
        self.conv_skip = nn.Conv2d(skip_dim, dim, 3, padding=1)
        self.res_skip = ResBlock(dim)
        self.proj = nn.Conv2d(coarse_dim, dim, 1) if coarse_dim != dim else None
        self.res_out = ResBlock(dim)

    def skip_branch(self, skip: torch.Tensor) -> torch.Tensor:
        return self.res_skip(self.conv_skip(skip))

    def forward(self, s: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        """``s`` is ``skip_branch(skip)``, computed once per frame."""
        if self.proj is not None:
            coarse = self.proj(coarse)
        m = s + F.interpolate(coarse, size=s.shape[-2:], mode="bilinear", align_corners=False)
        return self.res_out(m)


@functools.lru_cache(maxsize=16)  # built once per size: Upsample4's backward asks on every correction step
def bilinear_weights(n: int, scale: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(n*scale, n): the weights with which ``F.interpolate(mode="bilinear", align_corners=False)``
    upsamples one axis of length n by an integer ``scale`` (each output a mix of its two nearest inputs,
    clamped at the borders)."""
    src = ((torch.arange(n * scale, dtype=torch.float64) + 0.5) / scale - 0.5).clamp(min=0)  # built on the CPU:
    i0 = src.floor().long().clamp(max=n - 1)  # float64 is not on every device (MPS)
    i1 = (i0 + 1).clamp(max=n - 1)
    frac = src - i0
    rows = torch.arange(n * scale)
    a = torch.zeros(n * scale, n, dtype=torch.float64)
    a.index_put_((rows, i0), 1 - frac, accumulate=True)
    a.index_put_((rows, i1), frac, accumulate=True)
    return a.to(device=device, dtype=dtype)


class Upsample4(torch.autograd.Function):
    """x4 bilinear upsampling of (N, C, h, w), as ``F.interpolate``, with a faster backward: the upsampling
    is separable, out = A_h x A_w^T, so its gradient is A_h^T g A_w, two small matrix products, where the
    CPU's own backward scatters pixel by pixel; gradient correction (Eq. 5) and cycle-ERF (Eq. 6) run it on
    every step (timings: docs/performance.md)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.in_shape, ctx.in_dtype = x.shape, x.dtype
        return F.interpolate(x, scale_factor=4, mode="bilinear", align_corners=False)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:
        h, w = ctx.in_shape[-2:]
        a_h = bilinear_weights(h, 4, g.device, g.dtype)  # (4h, h)
        a_w = bilinear_weights(w, 4, g.device, g.dtype)  # (4w, w)
        return (a_h.T @ g @ a_w).to(ctx.in_dtype)  # (N, C, 4h, 4w) -> (N, C, h, w)
