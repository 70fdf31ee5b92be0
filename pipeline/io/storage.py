"""One small storage interface over ``s3://bucket/key`` URIs and local paths.

Every function takes a URI that is either

* ``s3://bucket/key`` -- an object in S3 or an S3-compatible store (MinIO, moto, ...),
  reached through boto3; or
* a local path, written plainly (``/data/a.wav``, ``rel/a.wav``) or as ``file:///data/a.wav``
  (``file://`` URIs are percent-decoded, plain paths are taken literally).

Any other scheme (``http://``, ``gs://``, ...) raises :class:`StorageError`.

S3 configuration comes from :class:`S3Options`; when a function is not given ``options`` it
uses the process default (:func:`set_default_s3_options`, else :meth:`S3Options.from_env`), so
Ray workers pick up ``AWS_ENDPOINT_URL`` / ``AWS_REGION`` / the standard credential chain
from their environment. boto3 clients are built once per process and options (clients are
thread-safe; sessions are not, so a session is only used while building a client under a lock).

Reliability:

* every S3 request goes through botocore's *standard* retry mode (exponential backoff with
  jitter on SlowDown / 500 / 503 / RequestTimeout / connection errors), with
  ``S3Options.max_attempts`` attempts in total;
* reading a response body is retried by this module: a body that breaks off mid-stream is
  resumed from the last byte received with a ranged GET pinned to the object's ETag
  (``If-Match``), with its own exponential backoff and jitter;
* a missing object or bucket raises :class:`MissingObjectError` (also a
  :class:`FileNotFoundError`) at once, without retries; any other final failure raises
  :class:`StorageError` naming the URI.

Writes are atomic: locally a temporary file in the target directory is written, fsync'ed and
renamed over the target; on S3 the finished bytes go up in a single ``PutObject``, so readers
never see a partial object.
"""

from __future__ import annotations

import errno
import fcntl
import gzip
import hashlib
import io
import os
import random
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator, TextIO
from urllib.parse import unquote

import boto3
import botocore.config
import botocore.exceptions
import urllib3.exceptions

__all__ = [
    "ChecksumMismatchError",
    "MissingObjectError",
    "S3Options",
    "S3_ENV_VARS",
    "StorageError",
    "delete",
    "download_to_cache",
    "exists",
    "get_default_s3_options",
    "is_s3_uri",
    "join",
    "list_files",
    "open_binary",
    "open_text",
    "read_bytes",
    "read_range",
    "s3_client",
    "s3_environment",
    "set_default_s3_options",
    "sha256_file",
    "size",
    "version",
    "write_bytes_atomic",
    "write_text_atomic",
]

_CHUNK = 1 << 20  # 1 MiB: read/copy granularity for streams


# --------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------


class StorageError(Exception):
    """A storage operation failed for good (after retries). ``uri`` names the object."""

    def __init__(self, uri: str, reason: str) -> None:
        super().__init__(uri, reason)
        self.uri = uri
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.reason}: {self.uri}"


class MissingObjectError(StorageError, FileNotFoundError):
    """The object, file or bucket does not exist (HTTP 404 / NoSuchKey / ENOENT). Never retried."""

    def __init__(self, uri: str, reason: str = "no such object") -> None:
        super().__init__(uri, reason)
        self.errno = errno.ENOENT
        self.strerror = reason
        self.filename = uri

    def __str__(self) -> str:
        return f"{self.reason}: {self.uri}"

    def __reduce__(self) -> tuple[Any, ...]:  # OSError's own reduce would pass errno first
        return (type(self), (self.uri, self.reason))


class ChecksumMismatchError(StorageError):
    """A downloaded object's SHA-256 differs from the expected one."""

    def __init__(self, uri: str, expected: str, actual: str) -> None:
        super().__init__(uri, f"SHA-256 mismatch (expected {expected}, got {actual})")
        self.args = (uri, expected, actual)
        self.expected = expected
        self.actual = actual


# --------------------------------------------------------------------------------------
# Options and the per-process client cache
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class S3Options:
    """How to reach S3. ``None`` fields defer to boto3's own resolution (env vars, config
    files, instance/IRSA credentials).

    Attributes:
        endpoint_url: S3-compatible endpoint, e.g. ``http://127.0.0.1:9000``; ``None`` = AWS
            (boto3 still honours ``AWS_ENDPOINT_URL`` itself).
        region: region name; ``None`` = boto3 default chain.
        profile: named profile from ``~/.aws/config``.
        access_key_id, secret_access_key, session_token: explicit credentials; leave ``None``
            to use the standard credential chain.
        max_attempts: total attempts per request (botocore standard retry mode), and the
            number of consecutive failures tolerated while streaming one response body.
        connect_timeout, read_timeout: socket timeouts in seconds.
        max_pool_connections: urllib3 pool size of the client (parallel loaders share it).
        addressing_style: ``"path"``, ``"virtual"`` or ``None`` (botocore's auto choice).
        backoff_base, backoff_max: exponential backoff (full jitter) for body-stream retries:
            the k-th retry sleeps ``uniform(0, min(backoff_max, backoff_base * 2**k))``.
    """

    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    max_attempts: int = 8
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    max_pool_connections: int = 32
    addressing_style: str | None = None
    backoff_base: float = 0.2
    backoff_max: float = 20.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.addressing_style not in (None, "auto", "path", "virtual"):
            raise ValueError(f"addressing_style must be path/virtual/auto, got {self.addressing_style!r}")

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "S3Options":
        """Options from the environment.

        Reads ``ZIPSCRIBE_S3_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``
        (first one set), ``AWS_REGION`` / ``AWS_DEFAULT_REGION``, ``AWS_PROFILE``,
        ``AWS_MAX_ATTEMPTS`` and ``ZIPSCRIBE_S3_ADDRESSING_STYLE``. Credentials are left to
        boto3's standard chain (which itself reads ``AWS_ACCESS_KEY_ID`` etc.).
        """
        env = os.environ if environ is None else environ

        def first(*names: str) -> str | None:
            for name in names:
                value = env.get(name)
                if value:
                    return value
            return None

        attempts = first("AWS_MAX_ATTEMPTS")
        return cls(
            endpoint_url=first("ZIPSCRIBE_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
            region=first("AWS_REGION", "AWS_DEFAULT_REGION"),
            profile=first("AWS_PROFILE"),
            max_attempts=int(attempts) if attempts else cls.max_attempts,
            addressing_style=first("ZIPSCRIBE_S3_ADDRESSING_STYLE"),
        )


#: the environment variables :meth:`S3Options.from_env` reads (credentials excluded): a run passes
#: the driver's values on to its workers, so ``--s3-endpoint-url`` reaches every node
S3_ENV_VARS = ("ZIPSCRIBE_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_REGION",
               "AWS_DEFAULT_REGION", "AWS_MAX_ATTEMPTS", "ZIPSCRIBE_S3_ADDRESSING_STYLE")


def s3_environment(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The :data:`S3_ENV_VARS` set in ``environ`` (default: this process's environment)."""
    env = os.environ if environ is None else environ
    return {name: env[name] for name in S3_ENV_VARS if env.get(name)}


_default_options: S3Options | None = None
_clients: dict[tuple[int, S3Options], Any] = {}
_clients_lock = threading.Lock()


def _reset_after_fork() -> None:
    global _clients_lock
    _clients_lock = threading.Lock()
    _clients.clear()


os.register_at_fork(after_in_child=_reset_after_fork)


def set_default_s3_options(options: S3Options | None) -> None:
    """Set the options used when a function gets no ``options`` (``None`` = from the environment)."""
    global _default_options
    _default_options = options


def get_default_s3_options() -> S3Options:
    """The options used when a function gets no ``options``."""
    return _default_options if _default_options is not None else S3Options.from_env()


def s3_client(options: S3Options | None = None) -> Any:
    """The boto3 S3 client for ``options`` in this process (built once, then cached)."""
    opts = options if options is not None else get_default_s3_options()
    key = (os.getpid(), opts)
    client = _clients.get(key)
    if client is None:
        with _clients_lock:
            client = _clients.get(key)
            if client is None:
                client = _build_client(opts)
                _clients[key] = client
    return client


def _build_client(opts: S3Options) -> Any:
    session = boto3.session.Session(
        profile_name=opts.profile,
        region_name=opts.region,
        aws_access_key_id=opts.access_key_id,
        aws_secret_access_key=opts.secret_access_key,
        aws_session_token=opts.session_token,
    )
    s3_cfg = {"addressing_style": opts.addressing_style} if opts.addressing_style else None
    config = botocore.config.Config(
        retries={"total_max_attempts": opts.max_attempts, "mode": "standard"},
        connect_timeout=opts.connect_timeout,
        read_timeout=opts.read_timeout,
        max_pool_connections=opts.max_pool_connections,
        s3=s3_cfg,
    )
    return session.client("s3", endpoint_url=opts.endpoint_url, config=config)


# --------------------------------------------------------------------------------------
# URIs
# --------------------------------------------------------------------------------------


def is_s3_uri(uri: str) -> bool:
    """True for ``s3://`` URIs."""
    return uri[:5].lower() == "s3://"


def _split_s3(uri: str) -> tuple[str, str]:
    rest = uri[5:]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise StorageError(uri, "S3 URI has no bucket")
    return bucket, key


def _local_path(uri: str) -> str:
    """The filesystem path of a local URI; raises for unsupported schemes."""
    if uri[:7].lower() == "file://":
        rest = uri[7:]
        if rest.startswith("localhost/"):
            rest = rest[len("localhost"):]
        return unquote(rest)
    head, sep, _ = uri.partition("://")
    if sep and head.isascii() and head.replace("+", "").replace("-", "").replace(".", "").isalnum():
        raise StorageError(uri, f"unsupported URI scheme {head!r} (use s3://, file:// or a path)")
    return uri


def join(uri: str, *parts: str) -> str:
    """Append path components with ``/``; leading/trailing slashes of parts are ignored.

    ``join("s3://b/dir", "x", "y.wav") == "s3://b/dir/x/y.wav"``, ``join("/d", "a") == "/d/a"``,
    ``join("file:///d/", "a") == "file:///d/a"``.
    """
    cleaned = [p.strip("/") for p in parts if p and p.strip("/")]
    if not cleaned:
        return uri
    if not uri:
        return "/".join(cleaned)
    base = uri if uri.endswith("/") else uri + "/"
    return base + "/".join(cleaned)


# --------------------------------------------------------------------------------------
# Error mapping and the body-streaming reader
# --------------------------------------------------------------------------------------

_MISSING_CODES = {"NoSuchKey", "NoSuchBucket", "NotFound", "404"}
_STREAM_ERRORS: tuple[type[BaseException], ...] = (
    botocore.exceptions.ResponseStreamingError,
    botocore.exceptions.IncompleteReadError,
    botocore.exceptions.ReadTimeoutError,
    botocore.exceptions.ConnectionClosedError,
    urllib3.exceptions.HTTPError,
    ConnectionError,
    TimeoutError,
)


def _error_code(exc: botocore.exceptions.ClientError) -> tuple[str, int | None]:
    code = str(exc.response.get("Error", {}).get("Code", ""))
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code, status


def _map_error(uri: str, exc: BaseException) -> StorageError:
    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, botocore.exceptions.ClientError):
        code, status = _error_code(exc)
        if code in _MISSING_CODES or status == 404:
            what = "no such bucket" if code == "NoSuchBucket" else "no such object"
            return MissingObjectError(uri, what)
        message = exc.response.get("Error", {}).get("Message", "")
        return StorageError(uri, f"S3 error {code or '?'} (HTTP {status}){': ' + message if message else ''}")
    if isinstance(exc, botocore.exceptions.BotoCoreError):
        return StorageError(uri, f"S3 request failed: {type(exc).__name__}: {exc}")
    if isinstance(exc, FileNotFoundError):
        return MissingObjectError(uri, "no such file")
    if isinstance(exc, OSError):
        return StorageError(uri, f"{type(exc).__name__}: {exc.strerror or exc}")
    return StorageError(uri, f"{type(exc).__name__}: {exc}")


def _backoff_sleep(opts: S3Options, failures: int) -> None:
    ceiling = min(opts.backoff_max, opts.backoff_base * (2 ** (failures - 1)))
    time.sleep(random.uniform(0.0, ceiling))


class _S3Reader(io.RawIOBase):
    """Raw stream over an S3 object's bytes ``[start, end)`` that resumes broken bodies.

    A body that fails mid-stream is re-requested from the next byte (``Range``, ``If-Match``
    the first response's ETag). ``max_attempts`` consecutive failures without progress, or
    ``10 * max_attempts`` failures over the stream's life, end in :class:`StorageError`.
    """

    def __init__(self, uri: str, opts: S3Options, start: int = 0, end: int | None = None) -> None:
        super().__init__()
        self._uri = uri
        self._opts = opts
        self._bucket, self._key = _split_s3(uri)
        self._client = s3_client(opts)
        self._pos = start
        self._stop = start if (end is not None and end <= start) else None
        self._end = end
        self._etag: str | None = None
        self._body: Any = None
        self._resumes = 0  # body failures over the stream's life (bounded, see readinto)
        if self._stop is None:
            self._request()

    def _request(self) -> None:
        kwargs: dict[str, Any] = {"Bucket": self._bucket, "Key": self._key}
        if self._pos > 0 or self._end is not None:
            last = "" if self._end is None else str(self._end - 1)
            kwargs["Range"] = f"bytes={self._pos}-{last}"
        if self._etag:
            kwargs["IfMatch"] = self._etag
        try:
            response = self._client.get_object(**kwargs)
        except botocore.exceptions.ClientError as exc:
            code, status = _error_code(exc)
            if code == "InvalidRange" or status == 416:  # start at/after the end: nothing to read
                self._stop = self._pos
                return
            if code == "PreconditionFailed" or status == 412:
                raise StorageError(self._uri, "object changed while it was being read") from exc
            raise _map_error(self._uri, exc) from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise _map_error(self._uri, exc) from exc
        self._etag = response.get("ETag") or self._etag
        self._body = response["Body"]
        self._stop = self._pos + int(response["ContentLength"])

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        if not len(view) or self._stop is None or self._pos >= self._stop:
            return 0
        failures = 0
        while True:
            try:
                if self._body is None:
                    self._request()
                    if self._pos >= self._stop:
                        return 0
                want = min(len(view), self._stop - self._pos)
                data = self._body.read(want)
                if not data:
                    raise ConnectionError(
                        f"body ended at byte {self._pos}, expected {self._stop}"
                    )
                n = len(data)
                view[:n] = data
                self._pos += n
                return n
            except _STREAM_ERRORS as exc:
                failures += 1
                self._resumes += 1
                self._drop_body()
                if failures >= self._opts.max_attempts or self._resumes >= 10 * self._opts.max_attempts:
                    raise StorageError(
                        self._uri,
                        f"reading the object failed after {failures} attempts "
                        f"(at byte {self._pos}): {type(exc).__name__}: {exc}",
                    ) from exc
                _backoff_sleep(self._opts, failures)

    def readall(self) -> bytes:
        if self._stop is None or self._pos >= self._stop:
            return b""
        out = bytearray(self._stop - self._pos)
        view = memoryview(out)
        filled = 0
        while filled < len(out):
            n = self.readinto(view[filled : filled + _CHUNK])
            if n == 0:
                break
            filled += n
        return bytes(out[:filled])

    def _drop_body(self) -> None:
        body, self._body = self._body, None
        if body is not None:
            try:
                body.close()
            except Exception:  # noqa: BLE001 -- the connection is already broken
                pass

    def close(self) -> None:
        self._drop_body()
        super().close()


# --------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------


def _opts(options: S3Options | None) -> S3Options:
    return options if options is not None else get_default_s3_options()


def _open_local(uri: str) -> BinaryIO:
    path = _local_path(uri)
    try:
        if os.path.isdir(path):
            raise StorageError(uri, "is a directory")
        return open(path, "rb")
    except OSError as exc:
        raise _map_error(uri, exc) from exc


def open_binary(uri: str, *, options: S3Options | None = None) -> BinaryIO:
    """A buffered binary stream of the object; S3 bodies are streamed (and resumed on errors),
    never held in memory whole. Use as a context manager."""
    if is_s3_uri(uri):
        return io.BufferedReader(_S3Reader(uri, _opts(options)), buffer_size=_CHUNK)  # type: ignore[return-value]
    return _open_local(uri)


def read_bytes(uri: str, *, options: S3Options | None = None) -> bytes:
    """The whole object's bytes."""
    if is_s3_uri(uri):
        with _S3Reader(uri, _opts(options)) as reader:
            return reader.readall()
    with _open_local(uri) as f:
        try:
            return f.read()
        except OSError as exc:
            raise _map_error(uri, exc) from exc


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
    if is_s3_uri(uri):
        with _S3Reader(uri, _opts(options), start=start, end=end) as reader:
            return reader.readall()
    with _open_local(uri) as f:
        try:
            f.seek(start)
            return f.read() if end is None else f.read(end - start)
        except OSError as exc:
            raise _map_error(uri, exc) from exc


def _head(uri: str, options: S3Options | None) -> dict[str, Any]:
    bucket, key = _split_s3(uri)
    try:
        return s3_client(_opts(options)).head_object(Bucket=bucket, Key=key)
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
        raise _map_error(uri, exc) from exc


def size(uri: str, *, options: S3Options | None = None) -> int:
    """Size of the object in bytes; :class:`MissingObjectError` when absent."""
    if is_s3_uri(uri):
        return int(_head(uri, options)["ContentLength"])
    path = _local_path(uri)
    try:
        if os.path.isdir(path):
            raise StorageError(uri, "is a directory")
        return os.path.getsize(path)
    except OSError as exc:
        raise _map_error(uri, exc) from exc


def version(uri: str, *, options: S3Options | None = None) -> str:
    """A string that changes when the object changes: ``<size>:<ETag>`` on S3,
    ``<size>:<mtime in ns>`` locally; :class:`MissingObjectError` when absent."""
    if is_s3_uri(uri):
        head = _head(uri, options)
        return f"{int(head['ContentLength'])}:{str(head.get('ETag', '')).strip(chr(34))}"
    try:
        st = os.stat(_local_path(uri))
    except OSError as exc:
        raise _map_error(uri, exc) from exc
    return f"{st.st_size}:{st.st_mtime_ns}"


def exists(uri: str, *, options: S3Options | None = None) -> bool:
    """True when the object (S3) or regular file (local) exists. Directories/prefixes: False."""
    if is_s3_uri(uri):
        try:
            _head(uri, options)
            return True
        except MissingObjectError:
            return False
    return os.path.isfile(_local_path(uri))


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
    out = tuple(s.lower() if s.startswith(".") else "." + s.lower() for s in suffixes)
    return out


def _walk_sorted(root: str, rel: str, seen: set[tuple[int, int]]) -> Iterator[str]:
    """Yield relative file paths under ``root/rel`` in full-path lexicographic order
    (the order S3 lists keys in): siblings sorted with directories keyed as ``name + '/'``."""
    directory = os.path.join(root, rel) if rel else root
    entries = []
    with os.scandir(directory) as it:
        for entry in it:
            try:
                is_dir = entry.is_dir()
            except OSError:
                continue
            entries.append((entry.name + "/" if is_dir else entry.name, entry, is_dir))
    entries.sort(key=lambda e: e[0])
    for _, entry, is_dir in entries:
        child = f"{rel}/{entry.name}" if rel else entry.name
        if is_dir:
            st = entry.stat()
            ident = (st.st_dev, st.st_ino)
            if ident in seen:  # symlink loop
                continue
            seen.add(ident)
            yield from _walk_sorted(root, child, seen)
            seen.discard(ident)
        else:
            try:
                if entry.is_file():
                    yield child
            except OSError:
                continue


def list_files(
    uri_prefix: str,
    suffixes: Iterable[str] | None = None,
    *,
    page_size: int | None = None,
    options: S3Options | None = None,
) -> Iterator[str]:
    """Lazily yield the URIs of all files/objects under a directory or S3 prefix, recursively.

    The prefix is taken as a directory: ``s3://b/audio`` lists keys under ``audio/`` (not
    ``audio2/...``). Order is deterministic and the same for S3 and local trees: lexicographic
    by key / relative path. ``suffixes`` (e.g. ``[".wav", ".flac"]``) filters case-insensitively.
    S3 listing is paginated (``list_objects_v2``; ``page_size`` sets ``MaxKeys``); folder-marker
    keys ending in ``/`` are skipped. A local path that is a file yields itself; a missing local
    directory raises :class:`MissingObjectError`.
    """
    wanted = _normalise_suffixes(suffixes)

    def keep(name: str) -> bool:
        return wanted is None or name.lower().endswith(wanted)

    if is_s3_uri(uri_prefix):
        bucket, prefix = _split_s3(uri_prefix)
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        paginator = s3_client(_opts(options)).get_paginator("list_objects_v2")
        config: dict[str, Any] = {}
        if page_size:
            config["PageSize"] = page_size
        try:
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix, PaginationConfig=config):
                for obj in page.get("Contents", ()):
                    key = obj["Key"]
                    if not key.endswith("/") and keep(key):
                        yield f"s3://{bucket}/{key}"
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise _map_error(uri_prefix, exc) from exc
        return

    root = _local_path(uri_prefix)
    if os.path.isfile(root):
        if keep(root):
            yield uri_prefix
        return
    if not os.path.isdir(root):
        raise MissingObjectError(uri_prefix, "no such directory")
    st = os.stat(root)
    for rel in _walk_sorted(root, "", {(st.st_dev, st.st_ino)}):
        if keep(rel):
            yield join(uri_prefix, rel)


# --------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes_atomic(
    uri: str, data: bytes, *, content_type: str | None = None, options: S3Options | None = None
) -> None:
    """Write ``data`` so that readers see either the old object or the complete new one.

    Local: parent directories are created; the bytes go to a temporary file in the same
    directory, which is fsync'ed and ``os.replace``'d onto the target (then the directory is
    fsync'ed). S3: one ``PutObject`` of the finished bytes.
    """
    if is_s3_uri(uri):
        bucket, key = _split_s3(uri)
        if not key or key.endswith("/"):
            raise StorageError(uri, "S3 URI names no object key")
        kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key, "Body": bytes(data)}
        if content_type:
            kwargs["ContentType"] = content_type
        try:
            s3_client(_opts(options)).put_object(**kwargs)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise _map_error(uri, exc) from exc
        return

    path = _local_path(uri)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    except OSError as exc:
        raise _map_error(uri, exc) from exc
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise _map_error(uri, exc) from exc
        raise
    _fsync_dir(directory)


def write_text_atomic(
    uri: str, text: str, *, encoding: str = "utf-8", options: S3Options | None = None
) -> None:
    """:func:`write_bytes_atomic` of ``text`` encoded (UTF-8 by default)."""
    content_type = f"text/plain; charset={encoding}"
    write_bytes_atomic(uri, text.encode(encoding), content_type=content_type, options=options)


def delete(uri: str, *, options: S3Options | None = None) -> None:
    """Remove an object or local file; a missing one is not an error."""
    if is_s3_uri(uri):
        bucket, key = _split_s3(uri)
        try:
            s3_client(_opts(options)).delete_object(Bucket=bucket, Key=key)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            error = _map_error(uri, exc)
            if not isinstance(error, MissingObjectError):
                raise error from exc
        return
    try:
        os.unlink(_local_path(uri))
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise _map_error(uri, exc) from exc


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
                        raise _map_error(uri, exc) from exc
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
            _fsync_dir(str(cache))
            return target
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
