"""A seekable, read-only file over an object's bytes, fetched lazily by range.

Decoders that seek (libsndfile for WAV and FLAC, :mod:`tarfile` over a Shar tar) read through a
:class:`RangeFile` as they would through a local file, and only the byte ranges they touch are
fetched. A read outside what is buffered fetches a new range starting there: small after a jump
(:attr:`RangeFile.MIN_READAHEAD`), doubling while the reads go on sequentially (up to
:attr:`RangeFile.MAX_READAHEAD`), so a long sequential read is a few large requests and a seek
costs one small one. The last few ranges stay buffered: decoders step back a little now and then
(libFLAC does, after each large read), and that must not fetch the bytes again. :attr:`RangeFile.prefetch_limit` keeps the read-ahead from running past
where the caller knows it will stop. Every byte fetched is counted (:attr:`RangeFile.bytes_fetched`).

A file may be a window of its object (``base``, ``length``): a member of a tar archive is read
as a file of its own.
"""

from __future__ import annotations

import io
from typing import Any, Callable, Optional

from .errors import StorageError

__all__ = ["RangeFile"]

Fetch = Callable[[int, int], bytes]


class RangeFile(io.RawIOBase):
    """Bytes ``[base, base + length)`` of an object of ``size`` bytes, read through ``fetch(start,
    end)`` (absolute offsets; it may return fewer bytes only at the end of the object).

    With :attr:`quiet_errors` set, a failed fetch is kept in :attr:`error` and the read returns
    no bytes instead of raising: for readers called back from C (libsndfile), where an exception
    would be printed and lost; the caller raises :attr:`error` afterwards."""

    MIN_READAHEAD = 64 * 1024
    MAX_READAHEAD = 8 * 1024 * 1024
    KEEP_CHUNKS = 3

    def __init__(self, uri: str, fetch: Fetch, size: int, *, base: int = 0, length: Optional[int] = None,
                 head: bytes = b"", on_close: Optional[Callable[[], None]] = None) -> None:
        super().__init__()
        if base < 0 or base > size:
            raise ValueError(f"base {base} outside an object of {size} bytes")
        self.uri = uri
        self._fetch = fetch
        self._base = base
        self._size = size - base if length is None else max(0, min(length, size - base))
        self._pos = 0
        self._chunks: list[tuple[int, bytes]] = [(0, head[: self._size])] if head else []  # oldest first
        self._ahead = self.MIN_READAHEAD
        self.bytes_fetched = len(head)
        self.requests = 1 if head else 0
        #: bytes (relative to ``base``) the read-ahead does not fetch past (reads still may)
        self.prefetch_limit: Optional[int] = None
        self.quiet_errors = False
        self.error: Optional[StorageError] = None
        self._on_close = on_close

    def close(self) -> None:
        if not self.closed and self._on_close is not None:
            self._on_close()
        self._chunks = []
        super().close()

    # -- io.RawIOBase ------------------------------------------------------------
    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self._size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if pos < 0:
            raise OSError(f"negative seek position {pos}")
        self._pos = pos
        return pos

    def readinto(self, buffer: Any) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        filled = 0
        while filled < len(view) and self._pos < self._size:
            chunk = self._chunk_at(self._pos)
            if chunk is None:
                try:
                    chunk = self._fill(len(view) - filled)
                except StorageError as exc:
                    if not self.quiet_errors:
                        raise
                    self.error = self.error or exc
                    return filled
                if not chunk[1]:
                    break
            start, data = chunk
            offset = self._pos - start
            n = min(len(view) - filled, len(data) - offset)
            view[filled:filled + n] = data[offset:offset + n]
            filled += n
            self._pos += n
        return filled

    @property
    def size(self) -> int:
        """The file's length (the window's, for a window of an object)."""
        return self._size

    # -- fetching ------------------------------------------------------------------
    def _chunk_at(self, pos: int) -> Optional[tuple[int, bytes]]:
        for start, data in reversed(self._chunks):
            if start <= pos < start + len(data):
                return start, data
        return None

    def _fill(self, wanted: int) -> tuple[int, bytes]:
        last = self._chunks[-1] if self._chunks else None
        sequential = last is not None and self._pos == last[0] + len(last[1])
        self._ahead = min(2 * self._ahead, self.MAX_READAHEAD) if sequential else self.MIN_READAHEAD
        want = max(wanted, self._ahead)
        if self.prefetch_limit is not None and self._pos < self.prefetch_limit:
            want = max(wanted, min(want, self.prefetch_limit - self._pos))
        end = min(self._size, self._pos + want)
        data = self._fetch(self._base + self._pos, self._base + end)
        self.requests += 1
        self.bytes_fetched += len(data)
        self._chunks = self._chunks[-(self.KEEP_CHUNKS - 1):] + [(self._pos, data)]
        return self._chunks[-1]
