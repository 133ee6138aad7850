"""glibc's allocator, set for a process that cyclevos owns (the CLI and the benchmarks; never ComfyUI's).

By default glibc gives large freed blocks back to the kernel: blocks above a threshold that moves up to
32 MiB are unmapped on free, and the heap's free top is trimmed once it passes twice that. The engine frees
and allocates tensors of several MB on every frame, and each gradient correction step builds and frees a
graph of them (Eq. 5), so their pages fault in again and again, a kernel entry and a zeroed page each
time. Keeping freed memory in the process removes those faults without raising the peak: the memory kept
is memory the process had just used and will use again on the next frame. The faults, times and peaks
measured with and without it are in docs/performance.md ("Linux: freed memory kept").
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
