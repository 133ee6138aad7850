"""Pick the compute device once; everything else receives it."""
from __future__ import annotations

import torch

from .errors import InputError


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but no CUDA GPU is available: use --device cpu or auto")
    if name not in ("cpu", "cuda"):
        raise InputError(f"unknown device {name!r}: use auto, cpu or cuda")
    return torch.device(name)


def free_memory(device: torch.device) -> int | None:
    """Bytes free for new tensors on ``device`` (None when the system cannot tell)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    from .video_io import available_memory

    return available_memory()
