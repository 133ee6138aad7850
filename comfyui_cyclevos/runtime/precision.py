"""Pick the compute precision once, with the device, and pass it to everything that runs the network.

The forward passes of inference, gradient correction (Eq. 5), cycle-ERF (Eq. 6) and training all run
under the same autocast; only what must stay exact leaves it (the soft aggregation and the Eq. 4 loss run
in float32 on the autocast outputs). A frozen network runs as ``Precision.network`` makes it: its
convolution weights stored in the compute dtype, as autocast would cast them.

``auto``: float16 on CUDA, bfloat16 on CPUs with native bf16 instructions (AVX-512 BF16 / AMX), float32
elsewhere. Training's ``auto`` takes bfloat16 wherever it is native (no loss scaling needed) and float32
elsewhere.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import InputError

CHOICES = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
_AUTOCAST_LAYERS = (nn.Conv2d, nn.Linear)  # layers whose weights autocast casts to its dtype


def cpu_has_bf16() -> bool:
    """True when oneDNN runs bfloat16 natively on this CPU (else it emulates it, slower than float32)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - older or unusual builds
        return False


@dataclass(frozen=True)
class Precision:
    """A device and the autocast dtype used there (``None``: plain float32)."""

    device: torch.device
    dtype: torch.dtype | None = None

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def network(self, net: nn.Module) -> nn.Module:
        """``net`` as it runs under this precision's autocast. Autocast keeps its cast of a trainable weight
        for the whole region but casts a frozen one (``CycleVOSNet.for_inference``) again on every call:
        every convolution's weight on every frame, and again on every step of a correction (Eq. 5), each
        cast a kernel on a GPU (counts and times: docs/performance.md). So a frozen network runs as a copy
        whose convolution weights are already in the compute dtype: autocast passes them through and
        computes exactly what it computed before (the same rounding, once). ``net`` itself is left as it
        is, and returned for float32, for a trainable network and when already cast."""
        layers = [m for m in net.modules() if isinstance(m, _AUTOCAST_LAYERS)]
        weights = [p for m in layers for p in m.parameters(recurse=False)]
        if (
            self.dtype is None
            or any(p.requires_grad for p in net.parameters())
            or all(p.dtype == self.dtype for p in weights)
        ):
            return net
        with torch.inference_mode(False), torch.no_grad():  # ordinary tensors: correction's graph saves them
            net = copy.deepcopy(net)
            for m in net.modules():
                if isinstance(m, _AUTOCAST_LAYERS):
                    m.to(self.dtype)
        return net


def pick_precision(device: torch.device, name: str = "auto", training: bool = False) -> Precision:
    """Resolve ``auto|fp32|bf16|fp16`` for ``device``; a precision the device cannot run is an error."""
    if name not in CHOICES:
        raise InputError(f"unknown precision {name!r}: use {', '.join(CHOICES)}")
    cuda = device.type == "cuda"
    bf16_native = torch.cuda.is_bf16_supported() if cuda else cpu_has_bf16()
    if name == "auto":
        if training:
            name = "bf16" if bf16_native else "fp32"
        else:
            name = "fp16" if cuda else ("bf16" if bf16_native else "fp32")
    if name == "fp16" and not cuda:
        raise InputError("fp16 needs a CUDA GPU: use --precision bf16 or fp32 on the CPU")
    if name == "bf16" and not bf16_native:
        raise InputError(f"this {device.type.upper()} has no native bfloat16: use --precision fp32 (or fp16 on a GPU)")
    return Precision(device, _DTYPES[name])
