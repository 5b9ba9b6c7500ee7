"""Tests of the allocator setting that training uses (hydrapicker.memory)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from hydrapicker.memory import OPT_OUT, keep_large_blocks, large_blocks_returned

# Allocates and frees a 64 MiB array, then prints how many bytes glibc holds free in its heap
# (mallinfo2's fordblks) for the next allocation; without the setting the block was unmapped.
_FREE_IN_HEAP = """
import ctypes, numpy as np
from hydrapicker.memory import keep_large_blocks
tuned = keep_large_blocks()
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
mallinfo2.restype = MallInfo2
def freed_in_heap():
    a = np.ones(8 << 20); del a
    return mallinfo2().fordblks
import sys
from hydrapicker.memory import large_blocks_returned
if "returned" in sys.argv:
    with large_blocks_returned():
        inside = freed_in_heap()
    print(int(tuned), inside, freed_in_heap())
else:
    print(int(tuned), freed_in_heap())
"""


def _free_in_heap_after_a_large_free(env: dict[str, str]) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", _FREE_IN_HEAP], env=env, capture_output=True, text=True, check=True)
    tuned, free = out.stdout.split()
    return bool(int(tuned)), int(free)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_a_large_freed_block_stays_in_the_heap_for_the_next_step():
    env = {k: v for k, v in os.environ.items() if k != OPT_OUT}
    tuned, kept = _free_in_heap_after_a_large_free(env)
    untouched, left = _free_in_heap_after_a_large_free(env | {OPT_OUT: "1"})
    assert tuned and not untouched
    assert kept >= 64 << 20  # reused by the next allocation, no page faults
    assert left < 64 << 20  # glibc unmapped it: the next one faults every page in again


def test_opt_out_leaves_the_allocator_alone(monkeypatch):
    monkeypatch.setenv(OPT_OUT, "1")
    assert keep_large_blocks() is False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_large_blocks_are_returned_within_a_tiled_pass_and_kept_again_after_it():
    env = {k: v for k, v in os.environ.items() if k != OPT_OUT}
    out = subprocess.run(
        [sys.executable, "-c", _FREE_IN_HEAP, "returned"], env=env, capture_output=True, text=True, check=True
    )
    tuned, inside, after = map(int, out.stdout.split())
    assert tuned
    assert inside < 64 << 20  # unmapped when freed, as glibc's default does
    assert after >= 64 << 20  # the setting is back: kept in the heap for the next step


def test_large_blocks_returned_does_nothing_when_the_allocator_was_left_alone(monkeypatch):
    monkeypatch.setenv(OPT_OUT, "1")
    with large_blocks_returned():
        pass
