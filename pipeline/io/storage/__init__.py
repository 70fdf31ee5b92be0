"""One small storage interface over ``s3://bucket/key`` URIs and local paths.

Every function takes a URI that is either

* ``s3://bucket/key`` -- an object in S3 or an S3-compatible store (MinIO, moto, ...),
  reached through boto3 (:mod:`.s3`); or
* a local path, written plainly (``/data/a.wav``, ``rel/a.wav``) or as ``file:///data/a.wav``
  (``file://`` URIs are percent-decoded, plain paths are taken literally; :mod:`.local`).

Any other scheme (``http://``, ``gs://``, ...) raises :class:`StorageError`. The functions here
pick the backend of a URI (:func:`store`) and call it; each backend holds its own code, as
lhotse's IO backends do.

S3 configuration comes from :class:`S3Options`; when a function is not given ``options`` it
uses the process default (:func:`set_default_s3_options`, else :meth:`S3Options.from_env`), so
Ray workers pick up ``AWS_ENDPOINT_URL`` / ``AWS_REGION`` / the standard credential chain
from their environment.

Reliability:

* every S3 request goes through botocore's *standard* retry mode (exponential backoff with
  jitter on SlowDown / 500 / 503 / RequestTimeout / connection errors), with
  ``S3Options.max_attempts`` attempts in total;
* reading a response body is retried: a body that breaks off mid-stream is resumed from the
  last byte received with a ranged GET pinned to the object's ETag (``If-Match``), with its own
  exponential backoff and jitter;
* a missing object or bucket raises :class:`MissingObjectError` (also a
  :class:`FileNotFoundError`) at once, without retries; any other final failure raises
  :class:`StorageError` naming the URI.

Writes are atomic: locally a temporary file in the target directory is written, fsync'ed and
renamed over the target; on S3 the finished bytes go up in a single ``PutObject``, so readers
never see a partial object.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import io
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator, TextIO, Union

from .errors import ChecksumMismatchError, MissingObjectError, StorageError, os_error
from .local import LocalStore, fsync_dir
from .ranged import RangeFile
from .uris import is_s3_uri, join
from .s3 import (S3_ENV_VARS, S3Options, S3Store, get_default_s3_options, s3_client, s3_environment,
                 set_default_s3_options)

__all__ = [
    "ChecksumMismatchError",
    "MissingObjectError",
    "RangeFile",
    "S3Options",
    "S3_ENV_VARS",
    "StorageError",
    "delete",
    "delete_if",
    "download_to_cache",
    "exists",
    "get_default_s3_options",
    "glob",
    "has_glob",
    "is_s3_uri",
    "join",
    "list_files",
    "open_binary",
    "open_range",
    "open_text",
    "put_if",
    "read_bytes",
    "read_head",
    "read_range",
    "read_versioned",
    "s3_client",
    "s3_environment",
    "set_default_s3_options",
    "sha256_file",
    "size",
    "store",
    "version",
    "write_bytes_atomic",
    "write_text_atomic",
]

_CHUNK = 1 << 20  # 1 MiB: read/copy granularity for streams
_LOCAL = LocalStore()

Store = Union[LocalStore, S3Store]


# --------------------------------------------------------------------------------------
# URIs and backends
# --------------------------------------------------------------------------------------


def store(uri: str, options: S3Options | None = None) -> Store:
    """The backend that holds ``uri``: S3 (with ``options``, else the process default) or local."""
    if is_s3_uri(uri):
        return S3Store(options if options is not None else get_default_s3_options())
    return _LOCAL


# --------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------


def open_binary(uri: str, *, options: S3Options | None = None) -> BinaryIO:
    """A buffered binary stream of the object; S3 bodies are streamed (and resumed on errors),
    never held in memory whole. Use as a context manager."""
    return store(uri, options).open_binary(uri)


def read_bytes(uri: str, *, options: S3Options | None = None) -> bytes:
    """The whole object's bytes."""
    return store(uri, options).read_bytes(uri)


def read_range(uri: str, start: int, end: int | None, *, options: S3Options | None = None) -> bytes:
    """Bytes ``[start, end)`` of the object (``end=None``: to the end of the object).

    A range running past the end is clipped; a start at or after the end gives ``b""``.
    S3 uses an HTTP ``Range`` request; local files seek.
    """
    if start < 0 or (end is not None and end < start):
        raise ValueError(f"invalid byte range [{start}, {end})")
    if end is not None and end == start:
        if not exists(uri, options=options):
            raise MissingObjectError(uri)
        return b""
    return store(uri, options).read_range(uri, start, end)


def read_head(uri: str, length: int, *, options: S3Options | None = None) -> tuple[bytes, int]:
    """The first ``length`` bytes of the object (fewer when it is shorter) and its size, in one
    request."""
    return store(uri, options).read_head(uri, length)


def open_range(uri: str, *, base: int = 0, length: int | None = None, options: S3Options | None = None) -> RangeFile:
    """A seekable read-only file over bytes ``[base, base + length)`` of the object (all of it by
    default) that fetches only the ranges read (:class:`~pipeline.io.storage.ranged.RangeFile`).
    Use as a context manager."""
    return store(uri, options).open_range(uri, base, length)


def size(uri: str, *, options: S3Options | None = None) -> int:
    """Size of the object in bytes; :class:`MissingObjectError` when absent."""
    return store(uri, options).size(uri)


def version(uri: str, *, options: S3Options | None = None) -> str:
    """A string that changes when the object changes: ``<size>:<ETag>`` on S3,
    ``<size>:<mtime in ns>`` locally; :class:`MissingObjectError` when absent."""
    return store(uri, options).version(uri)


def exists(uri: str, *, options: S3Options | None = None) -> bool:
    """True when the object (S3) or regular file (local) exists. Directories/prefixes: False."""
    return store(uri, options).exists(uri)


class _OwningGzipFile(gzip.GzipFile):
    """GzipFile that also closes the stream it decompresses."""

    def __init__(self, raw: BinaryIO) -> None:
        super().__init__(fileobj=raw, mode="rb")
        self._owned = raw

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._owned.close()


def open_text(uri: str, *, encoding: str = "utf-8", options: S3Options | None = None) -> TextIO:
    """A text stream yielding lines lazily; gzip (``.gz`` suffix or gzip magic bytes) is
    decompressed on the fly. S3 bodies are streamed, never read whole. Use as a context
    manager: closing it releases the connection / file."""
    raw = open_binary(uri, options=options)
    try:
        head = raw.peek(2)[:2] if hasattr(raw, "peek") else b""  # type: ignore[attr-defined]
        if uri.lower().endswith(".gz") or head == b"\x1f\x8b":
            stream: BinaryIO = _OwningGzipFile(raw)  # type: ignore[assignment]
        else:
            stream = raw
        return io.TextIOWrapper(stream, encoding=encoding)  # type: ignore[arg-type]
    except BaseException:
        raw.close()
        raise



# --------------------------------------------------------------------------------------
# Listing
# --------------------------------------------------------------------------------------


def _normalise_suffixes(suffixes: Iterable[str] | None) -> tuple[str, ...] | None:
    if suffixes is None:
        return None
    return tuple(s.lower() if s.startswith(".") else "." + s.lower() for s in suffixes)


def list_files(
    uri_prefix: str,
    suffixes: Iterable[str] | None = None,
    *,
    page_size: int | None = None,
    options: S3Options | None = None,
    follow_symlinks: bool = True,
) -> Iterator[str]:
    """Lazily yield the URIs of all files/objects under a directory or S3 prefix, recursively.

    The prefix is taken as a directory: ``s3://b/audio`` lists keys under ``audio/`` (not
    ``audio2/...``). Order is deterministic and the same for S3 and local trees: lexicographic
    by key / relative path. ``suffixes`` (e.g. ``[".wav", ".flac"]``) filters case-insensitively.
    S3 listing is paginated (``list_objects_v2``; ``page_size`` sets ``MaxKeys``); folder-marker
    keys ending in ``/`` are skipped. A local path that is a file yields itself; a missing local
    directory raises :class:`MissingObjectError`. ``follow_symlinks=False`` (what listing for
    deletion uses): local symbolic links, to files or folders, are left out.
    """
    wanted = _normalise_suffixes(suffixes)

    def keep(name: str) -> bool:
        return wanted is None or name.lower().endswith(wanted)

    return store(uri_prefix, options).list_files(uri_prefix, keep, page_size, follow_symlinks)


def has_glob(uri: str) -> bool:
    """True when ``uri`` holds a glob wildcard (``*``, ``?`` or ``[``) after its bucket."""
    path = uri[5:].partition("/")[2] if is_s3_uri(uri) else uri
    return any(c in path for c in "*?[")


def glob(pattern: str, suffixes: Iterable[str] | None = None, *, options: S3Options | None = None) -> list[str]:
    """The files or objects matching a glob ``pattern``, sorted (the order :func:`list_files`
    gives). ``*``, ``?`` and ``[...]`` match within one path segment, ``**`` across segments:
    ``s3://bucket/cuts/cuts.*.jsonl.gz``, ``/data/**/*.jsonl.gz``. On S3 only the pattern's
    literal prefix is listed, one level at a time while the pattern has no ``**``."""
    wanted = _normalise_suffixes(suffixes)
    return store(pattern, options).glob(pattern, lambda name: wanted is None or name.lower().endswith(wanted))


# --------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------


def write_bytes_atomic(
    uri: str, data: bytes, *, content_type: str | None = None, options: S3Options | None = None
) -> None:
    """Write ``data`` so that readers see either the old object or the complete new one.

    Local: parent directories are created; the bytes go to a temporary file in the same
    directory, which is fsync'ed and ``os.replace``'d onto the target (then the directory is
    fsync'ed). S3: one ``PutObject`` of the finished bytes.
    """
    store(uri, options).write_bytes_atomic(uri, data, content_type)


def write_text_atomic(
    uri: str, text: str, *, encoding: str = "utf-8", options: S3Options | None = None
) -> None:
    """:func:`write_bytes_atomic` of ``text`` encoded (UTF-8 by default)."""
    content_type = f"text/plain; charset={encoding}"
    write_bytes_atomic(uri, text.encode(encoding), content_type=content_type, options=options)


def read_versioned(uri: str, *, options: S3Options | None = None) -> tuple[bytes, str]:
    """The object's bytes and its version (S3: its ETag; locally: the content's SHA-256), for a
    later :func:`put_if` / :func:`delete_if`."""
    return store(uri, options).read_versioned(uri)


def put_if(uri: str, data: bytes, version: str | None, *, options: S3Options | None = None) -> str | None:
    """A compare-and-swap write: ``data`` goes to ``uri`` only if nothing is there (``version``
    ``None``) or only if the object is still at ``version``; its new version, or ``None`` when the
    condition failed. S3: one conditional ``PutObject`` (``If-None-Match: *`` / ``If-Match``);
    locally: under a ``flock`` of the directory."""
    return store(uri, options).put_if(uri, data, version)


def delete_if(uri: str, version: str, *, options: S3Options | None = None) -> bool:
    """Delete the object only if it is still at ``version``; whether it was deleted."""
    return store(uri, options).delete_if(uri, version)


def delete(uri: str, *, options: S3Options | None = None) -> None:
    """Remove an object or local file; a missing one is not an error."""
    store(uri, options).delete(uri)


# --------------------------------------------------------------------------------------
# Node-local cache
# --------------------------------------------------------------------------------------


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a local file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _cache_name(uri: str) -> str:
    tail = uri.rstrip("/").rsplit("/", 1)[-1] or "object"
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in tail)[:100]
    return f"{hashlib.sha256(uri.encode('utf-8')).hexdigest()[:16]}-{safe}"


def download_to_cache(
    uri: str,
    cache_dir: str | os.PathLike[str],
    expected_sha256: str | None = None,
    *,
    options: S3Options | None = None,
) -> Path:
    """Fetch ``uri`` once into ``cache_dir`` (node-local) and return the cached file's path.

    The cache file is named ``<sha256(uri)[:16]>-<basename>``. Under an exclusive ``flock`` on
    ``<name>.lock`` (so concurrent processes/threads on the node wait for one download):

    * a cached copy is reused as is when ``expected_sha256`` is ``None``, or when its SHA-256
      matches; a cached copy with another hash is fetched again;
    * otherwise the object is streamed into a temporary file in ``cache_dir`` while hashing,
      fsync'ed, checked against ``expected_sha256`` (:class:`ChecksumMismatchError`, and the
      temporary file removed, on mismatch), then renamed onto the cache name -- a reader never
      sees a partial file.

    ``expected_sha256`` is hex, optionally prefixed ``sha256:``. Local sources are copied too,
    so the returned path is always inside ``cache_dir``.
    """
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    expected = None
    if expected_sha256:
        expected = expected_sha256.lower().removeprefix("sha256:").strip()
    name = _cache_name(uri)
    target = cache / name
    with open(cache / f"{name}.lock", "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            if target.is_file() and (expected is None or sha256_file(target) == expected):
                return target
            fd, tmp = tempfile.mkstemp(dir=cache, prefix=f".{name}.", suffix=".part")
            try:
                digest = hashlib.sha256()
                with os.fdopen(fd, "wb") as out, open_binary(uri, options=options) as src:
                    try:
                        for chunk in iter(lambda: src.read(_CHUNK), b""):
                            digest.update(chunk)
                            out.write(chunk)
                    except OSError as exc:
                        raise os_error(uri, exc) from exc
                    out.flush()
                    os.fsync(out.fileno())
                actual = digest.hexdigest()
                if expected is not None and actual != expected:
                    raise ChecksumMismatchError(uri, expected, actual)
                os.chmod(tmp, 0o644)
                os.replace(tmp, target)
            except BaseException:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                raise
            fsync_dir(str(cache))
            return target
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
