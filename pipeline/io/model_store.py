"""Model directories on local disk or object storage.

An ``s3://`` model directory is fetched once per node into a local cache
(``$ZIPSCRIBE_CACHE`` or ``~/.cache/zipscribe``), one sub-directory per URI.
Its layout (flat folder, icefall repo root, ``exp/`` folder: :mod:`model.layout`)
is planned from one listing, so only the files the model needs are fetched: the
checkpoints the weights selection reads (not a training run's every epoch), the
tokenizer candidates and ``config.json``. A single checkpoint is verified
against the SHA-256 the driver computed as it downloads; weights combined from
several files are verified when :meth:`model.recognizer.Recognizer.from_dir`
loads them.

Listed keys are input: a key with an empty, ``.`` or ``..`` segment below the model's prefix is
refused (:func:`pipeline.io.names.relative_key`), and every file placed in the cache is checked to
land inside the model's cache folder (:func:`pipeline.io.names.within`).
"""

from __future__ import annotations

import hashlib
import os
import posixpath
from pathlib import Path
from typing import Optional

from model.checkpoint import ModelLoadError
from model.layout import ANCESTORS, plan_layout
from model.weights import WeightsSelection

from . import storage
from .names import UnsafePathError, relative_key, within

# The cached copy of a remote model directory sits this deep in its cache folder, so that a
# tokenizer found above it (``../data/lang_*``, up to len(ANCESTORS) levels) stays inside; the
# folders are named after the URI's last ones.
_DEPTH = len(ANCESTORS)


def default_cache_dir() -> Path:
    return Path(os.environ.get("ZIPSCRIBE_CACHE", Path.home() / ".cache" / "zipscribe"))


def is_remote(uri: str) -> bool:
    return uri.startswith("s3://")


def local_model_dir(uri: str, cache_dir: Optional[Path] = None, expected_sha256: Optional[str] = None,
                    weights: Optional[WeightsSelection] = None) -> Path:
    """A local directory holding the model at ``uri`` (downloaded if remote; see the module
    docstring). Layout and checkpoint problems raise :class:`model.checkpoint.ModelLoadError`."""
    if not is_remote(uri):
        path = Path(uri.removeprefix("file://"))
        if not path.is_dir():
            raise ModelLoadError(f"model directory not found: {uri}")
        return path
    selection = weights or WeightsSelection()
    prefix = uri.rstrip("/") + "/"
    key = prefix[len("s3://"):].partition("/")[2].rstrip("/")
    if key:
        relative_key(key, "model directory")
    names = [_listed(u, prefix) for u in storage.list_files(prefix)]
    parent = prefix
    for up in ANCESTORS:
        if parent.count("/") <= 3:  # s3://bucket/ has no parent
            break
        parent = parent[: parent.rstrip("/").rfind("/") + 1]
        names += [f"{up}/{_listed(u, parent)}" for u in storage.list_files(parent + "data/")
                  if posixpath.basename(u) in ("bpe.model", "tokens.txt")]
    layout = plan_layout(names, selection, where=uri)
    target = (cache_dir or default_cache_dir()) / "models" / hashlib.sha256(uri.encode()).hexdigest()[:16]
    # the last folders of the URI, so the model is named after it (``.../icefall-repo/exp``)
    tail = [p for p in prefix[len("s3://"):].split("/")[1:] if p][-_DEPTH:]
    root = target.joinpath(*(["m"] * (_DEPTH - len(tail)) + tail))
    checkpoints = layout.checkpoint_files()
    for rel in layout.files(names):
        sha = expected_sha256 if len(checkpoints) == 1 and rel == checkpoints[0] else None
        source = _source(prefix, rel)
        blob = storage.download_to_cache(source, target.parent / "blobs", expected_sha256=sha)
        dest = Path(within(str(target), os.path.relpath(posixpath.join(str(root), rel), str(target))))
        dest.parent.mkdir(parents=True, exist_ok=True)
        _link(blob, dest)
    return root


def _listed(uri: str, prefix: str) -> str:
    """A listed object's key below ``prefix``, refused (:class:`ModelLoadError`) when it is not a
    plain relative path."""
    try:
        return relative_key(uri[len(prefix):], "S3 key")
    except UnsafePathError as exc:
        raise ModelLoadError(f"{exc} under {prefix}: not a model file") from None


def _source(prefix: str, rel: str) -> str:
    """The S3 URI of a model file ``rel`` (``../data/...`` for a tokenizer above the directory):
    the prefix's own parents only, never another bucket or a local path."""
    bucket, _, key = prefix[len("s3://"):].partition("/")
    joined = posixpath.normpath(posixpath.join("/" + key, rel))
    if joined.startswith("//") or not joined.startswith("/") or joined == "/":
        raise ModelLoadError(f"model file {rel!r} lies outside s3://{bucket}/")
    return f"s3://{bucket}{joined}"


def _link(blob: Path, dest: Path) -> None:
    """Point ``dest`` at the cached blob (atomic symlink replace)."""
    if dest.is_symlink() and os.readlink(dest) == str(blob):
        return
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(blob, tmp)
    os.replace(tmp, dest)
