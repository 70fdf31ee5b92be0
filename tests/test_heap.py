"""The actor's memory upkeep (pipeline.run.heap): the oneDNN kernel-cache cap is in place before the
model runs, a capacity set by the operator wins, the heap trim reaches glibc and gives freed memory
back, and the actor's trimmer trims at most once per interval."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

PROBE = "import os, pipeline.run.transcriber; print(os.environ.get('ONEDNN_PRIMITIVE_CACHE_CAPACITY'))"


def _capacity_after_import(**env: str) -> str:
    base = {k: v for k, v in os.environ.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"}
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env={**base, **env}, capture_output=True,
                         text=True, check=True)
    return out.stdout.strip()


def test_importing_the_actor_caps_the_kernel_cache_unless_set():
    from pipeline.run.heap import ONEDNN_CACHE

    assert _capacity_after_import() == ONEDNN_CACHE
    assert _capacity_after_import(ONEDNN_PRIMITIVE_CACHE_CAPACITY="512") == "512"


def test_trim_reaches_glibc():
    import platform

    from pipeline.run.heap import trim_heap

    libc, _ = platform.libc_ver()
    assert trim_heap() is (libc == "glibc")


# A child process with the model actors' allocator settings (one arena, no automatic trim below
# 1 GiB): it frees 300 MiB of 1 MiB blocks while keeping the block above them, so glibc keeps the
# pages until asked; prints its RSS (MiB) before and after each HeapTrimmer call.
TRIM_PROBE = """
import os
from pipeline.run.heap import HeapTrimmer

def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") >> 20

def churn():
    blocks = [bytearray(1 << 20) for _ in range(300)]  # zero-filled: every page touched
    keep = bytearray(1 << 20)
    del blocks
    return keep

trimmer = HeapTrimmer(interval=3600.0)
out = []
for _ in range(2):  # the second call comes well inside the interval: no trim
    keep = churn()
    before = rss()
    trimmed = trimmer.maybe_trim()
    out.append((before, rss(), trimmed))
print(out)
"""


def test_trimmer_gives_freed_memory_back_then_waits_for_its_interval():
    import ast

    from pipeline.run.driver import ALLOCATOR_ENV

    out = subprocess.run([sys.executable, "-c", TRIM_PROBE], cwd=REPO, env={**os.environ, **ALLOCATOR_ENV},
                         capture_output=True, text=True, check=True)
    (before1, after1, trimmed1), (before2, after2, trimmed2) = ast.literal_eval(out.stdout.strip())
    assert trimmed1 and before1 - after1 >= 250, (before1, after1)  # the 300 freed MiB went back
    assert not trimmed2 and before2 - after2 < 50, (before2, after2)  # kept: reused by the next batch


def test_trimmer_interval_follows_its_clock():
    from pipeline.run.heap import HeapTrimmer

    now = [100.0]
    trimmer = HeapTrimmer(interval=10.0, clock=lambda: now[0])
    calls = []
    for t in (100.0, 105.0, 109.9, 110.0, 110.5, 125.0):
        now[0] = t
        calls.append(trimmer.maybe_trim())
    assert calls == [True, False, False, True, False, True]
    assert trimmer.trims == 3
