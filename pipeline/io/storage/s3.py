"""The S3 backend of :mod:`pipeline.io.storage`: ``s3://bucket/key`` objects in S3 or an
S3-compatible store (MinIO, moto, ...), reached through boto3.

Configuration comes from :class:`S3Options`; without explicit options the process default is used
(:func:`set_default_s3_options`, else :meth:`S3Options.from_env`), so Ray workers pick up
``AWS_ENDPOINT_URL`` / ``AWS_REGION`` / the standard credential chain from their environment.
boto3 clients are built once per process and options (clients are thread-safe; sessions are not,
so a session is only used while building a client under a lock).

Reliability: every request goes through botocore's *standard* retry mode (exponential backoff
with jitter on SlowDown / 500 / 503 / RequestTimeout / connection errors, ``max_attempts`` in
total); a response body that breaks off mid-stream is resumed from the last byte received with a
ranged GET pinned to the object's ETag (``If-Match``), with its own backoff (:class:`S3Reader`); a
missing object or bucket is a :class:`MissingObjectError` at once, without retries.
"""

from __future__ import annotations

import io
import os
import random
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Iterator

import boto3
import botocore.config
import botocore.exceptions
import urllib3.exceptions

from .errors import MissingObjectError, StorageError, os_error
from .ranged import RangeFile

__all__ = ["S3Options", "S3Reader", "S3Store", "S3_ENV_VARS", "get_default_s3_options", "s3_client",
           "s3_environment", "set_default_s3_options", "split_s3"]

_CHUNK = 1 << 20  # 1 MiB: read granularity of streams




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



def split_s3(uri: str) -> tuple[str, str]:
    """``(bucket, key)`` of an ``s3://`` URI."""
    rest = uri[5:]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise StorageError(uri, "S3 URI has no bucket")
    return bucket, key


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


def map_error(uri: str, exc: BaseException) -> StorageError:
    """An exception of a boto3 call (or of reading its body) as a :class:`StorageError`."""
    if isinstance(exc, botocore.exceptions.ClientError):
        code, status = _error_code(exc)
        if code in _MISSING_CODES or status == 404:
            what = "no such bucket" if code == "NoSuchBucket" else "no such object"
            return MissingObjectError(uri, what)
        message = exc.response.get("Error", {}).get("Message", "")
        return StorageError(uri, f"S3 error {code or '?'} (HTTP {status}){': ' + message if message else ''}")
    if isinstance(exc, botocore.exceptions.BotoCoreError):
        return StorageError(uri, f"S3 request failed: {type(exc).__name__}: {exc}")
    return os_error(uri, exc)


def _backoff_sleep(opts: S3Options, failures: int) -> None:
    ceiling = min(opts.backoff_max, opts.backoff_base * (2 ** (failures - 1)))
    time.sleep(random.uniform(0.0, ceiling))


class S3Reader(io.RawIOBase):
    """Raw stream over an S3 object's bytes ``[start, end)`` that resumes broken bodies.

    A body that fails mid-stream is re-requested from the next byte (``Range``, ``If-Match``
    the first response's ETag). ``max_attempts`` consecutive failures without progress, or
    ``10 * max_attempts`` failures over the stream's life, end in :class:`StorageError`.
    """

    def __init__(self, uri: str, opts: S3Options, start: int = 0, end: int | None = None,
                 etag: str | None = None) -> None:
        super().__init__()
        self._uri = uri
        self._opts = opts
        self._bucket, self._key = split_s3(uri)
        self._client = s3_client(opts)
        self._pos = start
        self._stop = start if (end is not None and end <= start) else None
        self._end = end
        self._etag: str | None = etag  # pinned: the object must not change while it is read
        self._body: Any = None
        #: the whole object's size, from the first response (``None`` before it, or for an empty range)
        self.total_size: int | None = None
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
            raise map_error(self._uri, exc) from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise map_error(self._uri, exc) from exc
        self._etag = response.get("ETag") or self._etag
        self._body = response["Body"]
        self._stop = self._pos + int(response["ContentLength"])
        if self.total_size is None:
            content_range = str(response.get("ContentRange") or "")  # "bytes 0-99/1234"
            total = content_range.rpartition("/")[2]
            self.total_size = int(total) if total.isdigit() else self._stop

    @property
    def etag(self) -> str | None:
        """The ETag of the object as first read (later requests are pinned to it)."""
        return self._etag

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




class S3Store:
    """S3 objects behind the storage interface (see :mod:`pipeline.io.storage`), with ``opts``."""

    def __init__(self, opts: S3Options) -> None:
        self.opts = opts

    def open_binary(self, uri: str) -> BinaryIO:
        return io.BufferedReader(S3Reader(uri, self.opts), buffer_size=_CHUNK)  # type: ignore[return-value]

    def read_bytes(self, uri: str) -> bytes:
        with S3Reader(uri, self.opts) as reader:
            return reader.readall()

    def read_range(self, uri: str, start: int, end: int | None) -> bytes:
        with S3Reader(uri, self.opts, start=start, end=end) as reader:
            return reader.readall()

    def read_head(self, uri: str, length: int) -> tuple[bytes, int]:
        """The first ``length`` bytes and the object's size, in one request."""
        with S3Reader(uri, self.opts, 0, length) as reader:
            head = reader.readall()
            total = reader.total_size
        return head, total if total is not None else self.size(uri)

    def glob(self, pattern: str, keep: Callable[[str], bool]) -> list[str]:
        """The objects whose keys match ``pattern`` (``*``, ``?``, ``[...]`` within a path
        segment, ``**`` across segments), sorted. Lists only under the pattern's literal prefix,
        and one level at a time while the pattern has no ``**``."""
        bucket, key_pattern = split_s3(pattern)
        literal = _literal_prefix(key_pattern)
        regex = _glob_regex(key_pattern)
        base = f"s3://{bucket}/"
        if "**" in key_pattern:
            uris = self.list_files(base + literal.rpartition("/")[0], lambda key: regex.fullmatch(key) is not None)
            return sorted(u for u in uris if keep(u))
        # walk one level at a time, listing only under the literal prefix (a bucket of a million
        # audio files is not listed to find its cuts.*.jsonl.gz); a prefix is followed only while
        # it can still match
        found: list[str] = []
        depth = key_pattern.count("/")
        todo = [literal]
        while todo:
            prefix = todo.pop()
            for uri, is_prefix in self.list_level(base + prefix):
                key = uri[len(base):]
                if is_prefix:
                    if key.count("/") <= depth and _glob_regex(key_pattern, partial=key.count("/")).fullmatch(key[:-1]):
                        todo.append(key)
                elif regex.fullmatch(key) and keep(uri):
                    found.append(uri)
        return sorted(found)

    def open_range(self, uri: str, base: int = 0, length: int | None = None) -> RangeFile:
        """A seekable file over bytes ``[base, base + length)`` of the object, fetched lazily by
        range (:class:`pipeline.io.storage.ranged.RangeFile`), every request pinned to the ETag
        of the first."""
        first_end = base + (RangeFile.MIN_READAHEAD if length is None else min(length, RangeFile.MIN_READAHEAD))
        with S3Reader(uri, self.opts, base, first_end) as first:
            head = first.readall()
            total, etag = first.total_size, first.etag
        if total is None:  # the range starts at or after the end
            total = self.size(uri)

        def fetch(start: int, end: int) -> bytes:
            with S3Reader(uri, self.opts, start, end, etag=etag) as reader:
                return reader.readall()

        return RangeFile(uri, fetch, total, base=base, length=length, head=head)

    def list_level(self, uri_prefix: str) -> Iterator[tuple[str, bool]]:
        """``(uri, is_prefix)`` of the objects whose keys start with ``uri_prefix``'s key and have
        no further ``/``, and of the common prefixes up to the next ``/`` (S3's ``Delimiter``), in
        key order."""
        bucket, prefix = split_s3(uri_prefix)
        paginator = s3_client(self.opts).get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):
                entries = [(obj["Key"], False) for obj in page.get("Contents", ())]
                entries += [(p["Prefix"], True) for p in page.get("CommonPrefixes", ())]
                for key, is_prefix in sorted(entries):
                    yield f"s3://{bucket}/{key}", is_prefix
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise map_error(uri_prefix, exc) from exc

    def head(self, uri: str) -> dict[str, Any]:
        bucket, key = split_s3(uri)
        try:
            return s3_client(self.opts).head_object(Bucket=bucket, Key=key)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise map_error(uri, exc) from exc

    def size(self, uri: str) -> int:
        return int(self.head(uri)["ContentLength"])

    def version(self, uri: str) -> str:
        head = self.head(uri)
        return f"{int(head['ContentLength'])}:{str(head.get('ETag', '')).strip(chr(34))}"

    def exists(self, uri: str) -> bool:
        try:
            self.head(uri)
            return True
        except MissingObjectError:
            return False

    def list_files(self, uri_prefix: str, keep: Callable[[str], bool], page_size: int | None = None,
                   follow_symlinks: bool = True) -> Iterator[str]:
        bucket, prefix = split_s3(uri_prefix)
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        paginator = s3_client(self.opts).get_paginator("list_objects_v2")
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
            raise map_error(uri_prefix, exc) from exc

    def write_bytes_atomic(self, uri: str, data: bytes, content_type: str | None = None) -> None:
        bucket, key = split_s3(uri)
        if not key or key.endswith("/"):
            raise StorageError(uri, "S3 URI names no object key")
        kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key, "Body": bytes(data)}
        if content_type:
            kwargs["ContentType"] = content_type
        try:
            s3_client(self.opts).put_object(**kwargs)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise map_error(uri, exc) from exc

    def read_versioned(self, uri: str) -> tuple[bytes, str]:
        """The object's bytes and its ETag, read together."""
        with S3Reader(uri, self.opts) as reader:
            data = reader.readall()
            return data, str(reader.etag or "").strip('"')

    def put_if(self, uri: str, data: bytes, version: str | None) -> str | None:
        """One conditional PUT: only if no object is there (``version`` None: ``If-None-Match: *``),
        or only if the object still has ETag ``version`` (``If-Match``). The new ETag, or ``None``
        when the condition failed (412: someone else's object is there / it changed or is gone)."""
        bucket, key = split_s3(uri)
        condition = {"IfNoneMatch": "*"} if version is None else {"IfMatch": f'"{version}"'}
        try:
            response = s3_client(self.opts).put_object(Bucket=bucket, Key=key, Body=bytes(data), **condition)
        except botocore.exceptions.ClientError as exc:
            code, status = _error_code(exc)
            if status in (412, 404, 409) or code in ("PreconditionFailed", "NoSuchKey", "ConditionalRequestConflict"):
                return None
            raise map_error(uri, exc) from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise map_error(uri, exc) from exc
        return str(response.get("ETag", "")).strip('"')

    def delete_if(self, uri: str, version: str) -> bool:
        """Delete the object only if it still has ETag ``version``; whether it was deleted."""
        bucket, key = split_s3(uri)
        try:
            s3_client(self.opts).delete_object(Bucket=bucket, Key=key, IfMatch=f'"{version}"')
        except botocore.exceptions.ClientError as exc:
            code, status = _error_code(exc)
            if status in (412, 404) or code in ("PreconditionFailed", "NoSuchKey"):
                return False
            raise map_error(uri, exc) from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise map_error(uri, exc) from exc
        return True

    def delete(self, uri: str) -> None:
        bucket, key = split_s3(uri)
        try:
            s3_client(self.opts).delete_object(Bucket=bucket, Key=key)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            error = map_error(uri, exc)
            if not isinstance(error, MissingObjectError):
                raise error from exc


def _literal_prefix(pattern: str) -> str:
    """The part of a glob pattern before its first wildcard."""
    cut = min((i for i, c in enumerate(pattern) if c in "*?["), default=len(pattern))
    return pattern[:cut]


def _glob_regex(pattern: str, partial: int | None = None) -> "re.Pattern[str]":
    """A regular expression for a glob pattern over keys: ``*`` and ``?`` stay within a segment,
    ``**`` spans segments, ``[...]`` / ``[!...]`` are character classes. ``partial=k``: the
    pattern's first ``k`` segments only (does a prefix of that depth still match?)."""
    if partial is not None:
        pattern = "/".join(pattern.split("/")[:partial])
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[" and "]" in pattern[i + 2:]:
            end = pattern.index("]", i + 2)
            body = pattern[i + 1:end].replace("\\", "\\\\")
            body = "^" + body[1:] if body.startswith("!") else ("\\" + body if body.startswith("^") else body)
            out.append("[" + body + "]")
            i = end + 1
        else:
            out.append(re.escape(c))
            i += 1
    return re.compile("".join(out), re.DOTALL)
