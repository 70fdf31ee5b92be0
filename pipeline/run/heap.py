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
  the system only when the top of a heap is free; :func:`trim_heap` after each batch gives
  them back (``malloc_trim``; a no-op where libc is not glibc).

With both, the same benchmark peaks at 1,053 MB after 30 minutes and 1,083 MB after 120.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from typing import Callable, Optional

ONEDNN_CACHE = "8"


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
