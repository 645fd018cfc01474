"""Keep a long process' resident set from creeping: big buffers are returned to the OS on free.

glibc serves allocations above its mmap threshold with their own mappings, which
``free`` unmaps; but the threshold is dynamic: each time such a buffer is freed it
rises to that buffer's size (up to 32 MB), so later activations of a codec's forward
pass (tens of MB on CPU, of varying sizes from utterance to utterance) are carved
from the heap instead, and a heap fragmented by them is never given back. Measured
on full-size EnCodec, encoding utterances of 3-24 s one after another: the resident
set crept 0.70 -> 0.94 GB between utterances (peak 1.31 GB) with glibc's default,
and stayed at 0.61-0.62 GB (peak 0.99 GB) with a fixed 1 MB threshold
(docs/study.md#memory-per-step). Setting the threshold also turns the dynamic rule off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys

_M_MMAP_THRESHOLD = -3  # malloc.h
#: Buffers of at least this many bytes get their own mapping (returned to the OS on free).
THRESHOLD = 1 << 20


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def mmap_large_buffers(threshold: int = THRESHOLD) -> bool:
    """Fix glibc's mmap threshold for this process; False where that is not possible (not glibc)."""
    libc = _libc()
    try:
        return bool(libc is not None and libc.mallopt(_M_MMAP_THRESHOLD, int(threshold)))
    except AttributeError:  # musl and others: no mallopt
        return False


def release_memory() -> None:
    """Collect garbage and give freed heap pages back to the OS (``malloc_trim``)."""
    gc.collect()
    libc = _libc()
    try:
        if libc is not None:
            libc.malloc_trim(0)
    except AttributeError:
        pass
