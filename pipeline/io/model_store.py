"""Model directories on local disk or object storage.

An ``s3://`` model directory is fetched once per node into a local cache
(``$ZIPSCRIBE_CACHE`` or ``~/.cache/zipscribe``), one sub-directory per URI,
and its checkpoint verified against the SHA-256 the driver computed before
anything loads it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Optional

from model.checkpoint import file_sha256, find_checkpoint, pick_checkpoint

from . import storage

MODEL_FILES = ("pretrained.pt", "bpe.model", "tokens.txt", "config.json")


def default_cache_dir() -> Path:
    return Path(os.environ.get("ZIPSCRIBE_CACHE", Path.home() / ".cache" / "zipscribe"))


def is_remote(uri: str) -> bool:
    return uri.startswith("s3://")


def local_model_dir(uri: str, cache_dir: Optional[Path] = None, expected_sha256: Optional[str] = None) -> Path:
    """A local directory holding the model at ``uri`` (downloaded and verified if remote)."""
    if not is_remote(uri):
        path = Path(uri.removeprefix("file://"))
        if not path.is_dir():
            raise FileNotFoundError(f"model directory not found: {uri}")
        checkpoint = find_checkpoint(path)
        if expected_sha256 and file_sha256(checkpoint) != expected_sha256:
            raise ValueError(f"{checkpoint}: checksum changed since the run started")
        return path
    target = (cache_dir or default_cache_dir()) / "models" / hashlib.sha256(uri.encode()).hexdigest()[:16]
    target.mkdir(parents=True, exist_ok=True)
    prefix = uri.rstrip("/") + "/"
    names = [u[len(prefix):] for u in storage.list_files(prefix)]
    wanted = [n for n in names if "/" not in n and (n in MODEL_FILES or n.endswith(".pt"))]
    if not any(n.endswith(".pt") for n in wanted):
        raise FileNotFoundError(f"no checkpoint (*.pt) under {uri}")
    checkpoint_name = pick_checkpoint(wanted)
    for name in wanted:
        if name.endswith(".pt") and name != checkpoint_name:
            continue
        sha = expected_sha256 if name == checkpoint_name else None
        blob = storage.download_to_cache(prefix + name, target.parent / "blobs", expected_sha256=sha)
        _link(blob, target / name)
    return target


def _link(blob: Path, dest: Path) -> None:
    """Point ``dest`` at the cached blob (atomic symlink replace)."""
    if dest.is_symlink() and os.readlink(dest) == str(blob):
        return
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(blob, tmp)
    os.replace(tmp, dest)
