"""The machine a benchmark ran on, and its allocator, for the one line each benchmark prints."""

from __future__ import annotations

import os
import platform

import torch

from comfyui_cyclevos.runtime.allocator import keep_freed_memory

ALLOCATOR_HELP = (
    "leave glibc's allocator as it is, as in a host process such as ComfyUI (by default freed memory "
    "is kept, as the cyclevos command does for itself)"
)
_allocator = "host allocator"


def set_allocator(host: bool) -> None:
    """Run as the cyclevos command runs (``allocator.keep_freed_memory``), or with the host's defaults."""
    global _allocator
    if not host and keep_freed_memory():
        _allocator = "freed memory kept"


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads{gpu}, {_allocator}"
