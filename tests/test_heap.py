"""The actor's memory upkeep (pipeline.run.heap): the oneDNN kernel-cache cap is in place before the
model runs, a capacity set by the operator wins, and the heap trim reaches glibc."""

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
