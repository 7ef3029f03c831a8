"""The process's memory: kept to what the work needs, so a burst of large documents leaves no lasting peak.

Two of glibc's malloc defaults work against a service that reads messages of many megabytes now and then:
every thread that allocates gets an arena of its own (up to eight per core), and memory freed in one arena is
not reused by another; and after a large block is freed, the threshold above which blocks are mapped apart
rises to that block's size, so the next large messages are carved out of the heap and their memory stays
with the process. Two arenas and a fixed 1 MiB threshold keep the peak near one message's worth (measured
with the hostile corpus, see README "Security")."""

from __future__ import annotations

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3  # from glibc's malloc.h
M_ARENA_MAX = -8
ARENAS = 2
MAPPED_APART = 1 << 20


def tune_malloc() -> bool:
    """Set both before the threads start; False where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    libc = ctypes.CDLL(name)
    if not hasattr(libc, "mallopt"):
        return False
    return bool(libc.mallopt(M_ARENA_MAX, ARENAS)) and bool(libc.mallopt(M_MMAP_THRESHOLD, MAPPED_APART))
