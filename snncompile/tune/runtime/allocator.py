"""glibc's allocator set to keep the memory of a tandem training step for the next one.

A training step at PTL's first stages allocates and frees the same few-MiB tensors every
step (feature maps, their gradients, the integer simulation's window). glibc maps blocks
above its mmap threshold afresh and returns the top of its heap to the system above its trim
threshold, so each step then touches new pages, a page fault every 4 KiB, before it computes
anything. Its dynamic rule raises both thresholds only as far as the blocks freed so far.
:func:`keep_step_memory` sets them where that rule ends (mmap threshold 32 MiB, its maximum
on 64-bit systems, trim threshold twice that), a state glibc reaches on its own after a 32
MiB block is freed, so nothing needs restoring; blocks above 32 MiB (the kept spike trains)
are still mapped and unmapped as before; the steps then reuse pages already touched
(docs/log/ has the measurement). Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2 ** 20
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD


def _libc():
    """The C library if it is glibc (mallopt and its parameters as above), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # glibc only
    except (OSError, AttributeError):
        return None
    return libc


def keep_step_memory(libc=None) -> bool:
    """Set glibc's mmap and trim thresholds as the module says; whether they were set."""
    libc = libc if libc is not None else _libc()
    if libc is None:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
