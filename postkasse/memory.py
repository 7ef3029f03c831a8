"""The process's memory: kept to what the work needs, so a burst of large documents leaves no lasting peak.

glibc gives every thread that allocates its own malloc arena (up to eight per core), and memory freed in
one arena is not reused by another: a few worker threads each parsing a 10 MiB document raise the resident
size by their sum and keep it. Two arenas cost a little contention and keep the peak near one document's
worth (measured with the hostile corpus, see README "Security")."""

from __future__ import annotations

import ctypes
import ctypes.util

M_ARENA_MAX = -8  # from glibc's malloc.h
ARENAS = 2


def limit_malloc_arenas(arenas: int = ARENAS) -> bool:
    """Cap glibc's malloc arenas before the threads start; False where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    libc = ctypes.CDLL(name)
    if not hasattr(libc, "mallopt"):
        return False
    return bool(libc.mallopt(M_ARENA_MAX, arenas))
