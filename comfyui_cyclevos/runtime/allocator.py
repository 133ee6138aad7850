"""glibc's allocator, set for a process that cyclevos owns (the CLI and the benchmarks; never ComfyUI's).

By default glibc gives large freed blocks back to the kernel: blocks above a threshold that moves up to
32 MiB are unmapped on free, and the heap's free top is trimmed once it passes twice that. The engine frees
and allocates tensors of several MB on every frame, and each gradient correction step builds and frees a
graph of them, so their pages fault in again and again (35,000 minor faults per 5-object correction at
240x432, 11 % of its time). Keeping freed memory in the process removes those faults: on the 2-core AVX2
VM, ``benchmarks/memory.py`` (1350 frames, 2 objects, correction on) spent 24.6 s of its 4 min 58 s CPU
time in the kernel, and 1.2 s with these settings (wall 2 min 44 s -> 2 min 18 s), at the same peaks
(382 / 391 MB at 150 / 1200 frames, against 396 / 391): the memory kept is memory the process had just used.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1  # mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20  # blocks below this come from the heap: glibc's own ceiling on 64-bit
TRIM_THRESHOLD = 2**30  # the heap's free top is handed back only beyond this


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed blocks in this process instead of handing them back to the kernel. Only
    for a process cyclevos owns: it changes the allocator of the whole process. Returns whether it was
    applied (Linux with glibc; elsewhere nothing changes)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return False
        mallopt = ctypes.CDLL(None).mallopt
    except (ValueError, OSError, AttributeError):  # not glibc (musl has no such name)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) & bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
