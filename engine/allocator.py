"""Keep large freed memory in the process instead of handing it back to the system after every frame.

glibc serves each large temporary (gathered features, products, full-frame masks) with a fresh
mmap and unmaps it on free, so every frame faults in and zeroes its working set again: at 8K
that was 44% of the CPU time (docs/PERFORMANCE.md, "Allocator"). Serving large blocks from the
heap and never trimming it makes an 8K CPU frame 1.9x faster; the price is that the resident
size stays at its high-water mark between frames. Called by the processes that matte many
frames (``sparsemat matte``, the engine); a library user decides for their own process.
"""
from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8


def keep_freed_memory() -> bool:
    """glibc only (elsewhere a no-op returning False): large blocks from the heap, no trimming.

    Call it before starting threads. Every thread then allocates from the one main heap: a
    thread's own arena cannot hold a block over 64 MiB and maps each one afresh (the engine's
    worker and read-ahead threads did, and kept paying the page faults)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return all(mallopt(option, value) for option, value in
               ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1)))


def give_back_freed_memory() -> bool:
    """Return the heap's free memory to the system (glibc's malloc_trim), for a process whose
    work has paused: the next frame pays the page faults ``keep_freed_memory`` saves, so call it
    only after a while without work. A no-op returning False elsewhere."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.malloc_trim(0))
    except (OSError, AttributeError):
        return False
