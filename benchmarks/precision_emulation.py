"""Half-precision convolutions emulated in float32, to estimate bf16 or fp16 quality on hardware without
them (a CPU without native bf16 falls back to reference kernels about 17x slower; fp16 needs a GPU).

Inside ``rounded_convolutions(dtype)`` every convolution's input, weights, bias and output, and backward
its incoming gradient, are rounded to ``dtype`` (values beyond its range become inf, as they would) while
the sums run in float32, as bf16/fp16 convolutions on oneDNN and cuDNN compute them. The other ops stay
float32 (the engine keeps affinities, masks and losses in float32 under autocast anyway; the memory
read's rounding is left out), so this approximates ``--precision bf16|fp16``: for bf16 on dev it gave 67.6
without correction and 69.9 at N = 5, where real bf16 on an AVX-512 BF16 CPU gave 67.6 and 70.0.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _round(dtype: torch.dtype):
    class Round(torch.autograd.Function):
        """Round to ``dtype`` and back; the gradient is rounded the same way."""

        @staticmethod
        def forward(ctx, x: torch.Tensor) -> torch.Tensor:
            return x.to(dtype).to(x.dtype)

        @staticmethod
        def backward(ctx, g: torch.Tensor) -> torch.Tensor:
            return g.to(dtype).to(g.dtype)

    return Round.apply


@contextlib.contextmanager
def rounded_convolutions(name: str):
    """Every ``F.conv2d`` (``nn.Conv2d`` calls it too) rounded to ``name`` (bf16 or fp16), for the duration."""
    conv, r = F.conv2d, _round(DTYPES[name])

    def rounded(x, weight, bias=None, *args, **kwargs):
        return r(conv(r(x), r(weight), None if bias is None else r(bias), *args, **kwargs))

    F.conv2d = rounded
    try:
        yield
    finally:
        F.conv2d = conv
