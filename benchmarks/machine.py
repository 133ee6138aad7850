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


def avx512() -> str:
    """Whether the CPU has AVX-512 (and which of its bf16 / AMX extensions), from /proc/cpuinfo."""
    try:
        flags = next((ln.split(":", 1)[1].split() for ln in open("/proc/cpuinfo") if ln.startswith("flags")), [])
    except OSError:
        return "unknown (no /proc/cpuinfo)"
    found = [f for f in ("avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"yes ({', '.join(found)})" if "avx512f" in found else "no" + (" (avx2)" if "avx2" in flags else "")
