"""Keeping a long-running transcriber's memory flat.

Two things grew an actor's resident memory with the length of a job rather than with the
size of a batch (measured with ``bench/longform_memory.py``: peak RSS 1,385 MB after 30
minutes of audio, 1,970 MB after 120), both caused by batches of many different shapes:

* oneDNN (PyTorch's CPU kernels) keeps the last 1,024 kernels it built, each for one input
  shape; a job of variable-length pieces keeps building new ones. :data:`ONEDNN_CACHE` caps
  the cache (``ONEDNN_PRIMITIVE_CACHE_CAPACITY``, read when oneDNN builds its first kernel,
  so :func:`limit_kernel_cache` must run before the model does). Building a kernel is cheap
  next to running it: the benchmark's speed did not change.
* glibc's allocator keeps freed blocks of a batch's tensors in its heaps and returns them to
  the system only when the top of a heap is free; :func:`trim_heap` gives them back
  (``malloc_trim``; a no-op where libc is not glibc).

With both, the same benchmark peaked at 1,053 MB after 30 minutes and 1,083 MB after 120
(the first demo model, 8-best, no LM; the README has today's figures).

Trimming has a price: the next batch touches its memory afresh, one page fault per 4 KiB
page. Trimmed after every batch, a single-thread CPU actor took ~63,500 page faults a second,
and the model alone on ``bench/pipeline_overhead.py``'s batches ran 6-12 % slower (2 x 2
passes alternated, with the actors' allocator settings).
:class:`HeapTrimmer` therefore trims at most once every :data:`TRIM_INTERVAL_S` seconds: the
memory a batch frees is reused by the next one, and what piles up in between is given back.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import time
from typing import Callable, Optional

__all__ = ["HeapTrimmer", "ONEDNN_CACHE", "TRIM_INTERVAL_S", "limit_kernel_cache", "trim_heap"]

ONEDNN_CACHE = "8"
#: seconds between two heap trims of a :class:`HeapTrimmer`: one trim costs about one batch's
#: memory in page faults (~15 ms on a CPU actor here), so 10 s keeps it under 0.2 % of the time
TRIM_INTERVAL_S = 10.0


def limit_kernel_cache() -> None:
    """Cap oneDNN's kernel cache unless the environment already sets it."""
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", ONEDNN_CACHE)


@functools.cache
def _malloc_trim() -> Optional[Callable[[int], int]]:
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), "malloc_trim", None)
    except OSError:
        return None


def trim_heap() -> bool:
    """Return free heap memory to the system; False where glibc's ``malloc_trim`` is missing."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


class HeapTrimmer:
    """Calls :func:`trim_heap` when asked, at most once every ``interval`` seconds (of ``clock``).

    ``maybe_trim()`` after each batch: the first call trims; later calls trim only once the
    interval has passed since the last trim. Returns whether it trimmed."""

    def __init__(self, interval: float = TRIM_INTERVAL_S, clock: Callable[[], float] = time.monotonic) -> None:
        if interval < 0:
            raise ValueError(f"interval must be >= 0, got {interval}")
        self.interval = interval
        self._clock = clock
        self._last: Optional[float] = None
        self.trims = 0

    def maybe_trim(self) -> bool:
        now = self._clock()
        if self._last is not None and now - self._last < self.interval:
            return False
        self._last = now
        if trim_heap():
            self.trims += 1
            return True
        return False
