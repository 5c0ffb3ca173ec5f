"""Make a process give memory back to the system after a burst (glibc's malloc; a no-op elsewhere).

glibc serves a request above its mmap threshold with its own mapping, which ``free`` unmaps at
once; below it, from an arena heap that is trimmed only from its top. By default the threshold
rises to the size of any large block that is freed, so after one burst of big decodes (an upload's
pixels, Pillow's buffers) the next ones land in the heaps and stay there. Setting the threshold
fixes it (glibc then stops moving it). Every thread that allocates at once may get an arena of its
own, each holding its own free memory: a few arenas keep a process of many threads small.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

# mallopt's parameter numbers (glibc's malloc.h).
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD_BYTES = 128 * 1024
ARENA_MAX = 2

_applied: dict[str, bool] = {}


def glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (it has ``gnu_get_libc_version``), else None (musl, macOS)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
    except (OSError, TypeError):
        return None
    return libc if hasattr(libc, "gnu_get_libc_version") else None


def return_memory_after_bursts(mmap_threshold: int = MMAP_THRESHOLD_BYTES, arena_max: int = ARENA_MAX) -> bool:
    """Fix malloc's mmap threshold and cap its arenas in this process; True when glibc took both.

    Call it early in the process that serves, before its threads allocate; calling it again does nothing."""
    if "done" in _applied:
        return _applied["done"]
    libc = glibc()
    applied = False
    if libc is not None:
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.mallopt.restype = ctypes.c_int
        applied = bool(libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(libc.mallopt(M_ARENA_MAX, arena_max))
        if not applied:
            log.warning("glibc refused mallopt; memory freed after a burst may stay with the process")
    _applied["done"] = applied
    return applied
