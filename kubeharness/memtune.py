"""Allocator tuning for kubeharness processes that move multi-megabyte messages (List* with 10,000 pods).

glibc serves allocations above its mmap threshold with fresh ``mmap`` pages and returns them on free,
so every 8 MiB list answer (the join, then gRPC's copy) page-faults its way through fresh memory, and
on these virtual machines that fault cost doubled the time of a ListContainers call. Raising the mmap
threshold and the trim threshold keeps such buffers in the heap, where the next call reuses them. It
only changes where glibc takes memory from; peak use is the same. Elsewhere (no glibc) it is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1  # mallopt parameters from glibc's <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 64 * 1024 * 1024
TRIM_THRESHOLD_BYTES = 256 * 1024 * 1024


def keep_large_buffers() -> bool:
    """Ask glibc to serve large allocations from the heap and keep freed memory; True if it agreed."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )
