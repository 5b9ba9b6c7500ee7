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

from hydrapicker.defaults import MALLOC_MMAP_THRESHOLD, MALLOC_TRIM_THRESHOLD

__all__ = ["keep_large_blocks", "OPT_OUT"]

#: Set this environment variable (to anything) to leave glibc's allocator as it is.
OPT_OUT = "HYDRAPICKER_DEFAULT_MALLOC"

_M_TRIM_THRESHOLD = -1  # glibc's <malloc.h>
_M_MMAP_THRESHOLD = -3


def keep_large_blocks() -> bool:
    """Tune glibc's allocator for repeated large allocations (see the module docstring).

    Returns whether it was done: False off glibc, or when ``$HYDRAPICKER_DEFAULT_MALLOC`` is set.
    Safe to call more than once.
    """
    if os.environ.get(OPT_OUT) or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD)
    )
