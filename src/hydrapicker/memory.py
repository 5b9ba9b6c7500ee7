"""How training and picking get their memory: keep large freed blocks for the next step.

A training step, or a micrograph being picked, allocates and frees buffers of tens to hundreds
of MB. glibc serves blocks above its mmap threshold (128 KiB, adapting up to at most 32 MiB)
with fresh mappings and unmaps them when freed, so every step faults its buffers in again page
by page, in the kernel (benchmarks/allocator.py measures how much). Raising
the mmap threshold to ``MALLOC_MMAP_THRESHOLD`` and the trim threshold to
``MALLOC_TRIM_THRESHOLD`` keeps those blocks in the heap, where the next step reuses them. The
cost: memory the process frees is kept until it exits (a higher peak RSS). Off
glibc (musl, macOS, Windows) this does nothing.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from hydrapicker.defaults import MALLOC_MMAP_RETURNED, MALLOC_MMAP_THRESHOLD, MALLOC_TRIM_THRESHOLD

__all__ = ["OPT_OUT", "keep_large_blocks", "large_blocks_returned"]

#: Set this environment variable (to anything) to leave glibc's allocator as it is.
OPT_OUT = "HYDRAPICKER_DEFAULT_MALLOC"

_M_TRIM_THRESHOLD = -1  # glibc's <malloc.h>
_M_MMAP_THRESHOLD = -3


#: Whether :func:`keep_large_blocks` has tuned this process's allocator.
_kept = False


def _libc() -> ctypes.CDLL | None:
    if os.environ.get(OPT_OUT) or not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt.argtypes, libc.mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
        libc.malloc_trim.argtypes, libc.malloc_trim.restype = (ctypes.c_size_t,), ctypes.c_int
    except (OSError, AttributeError):  # not glibc
        return None
    return libc


def keep_large_blocks() -> bool:
    """Tune glibc's allocator for repeated large allocations (see the module docstring).

    Returns whether it was done: False off glibc, or when ``$HYDRAPICKER_DEFAULT_MALLOC`` is set.
    Safe to call more than once.
    """
    global _kept
    libc = _libc()
    if libc is None:
        return False
    _kept = bool(libc.mallopt(_M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD)
    )
    return _kept


@contextmanager
def large_blocks_returned() -> Iterator[None]:
    """Within: glibc's own handling of large blocks (each mapped on its own, unmapped when freed).

    For work whose large buffers change size as it goes, such as a tiled pass over a large
    micrograph (a statistics window, then tiles of other sizes): kept blocks the next sizes do
    not fit would pile up in the heap, to about twice what is alive (benchmarks/pick_speed.py
    memory measures the peaks). The heap's free pages are released on entry and on exit,
    and the setting of :func:`keep_large_blocks` comes back on exit. Does nothing when that setting is off.
    """
    libc = _libc() if _kept else None
    if libc is None:
        yield
        return
    libc.malloc_trim(0)
    libc.mallopt(_M_MMAP_THRESHOLD, MALLOC_MMAP_RETURNED)
    try:
        yield
    finally:
        libc.mallopt(_M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD)
        libc.malloc_trim(0)
