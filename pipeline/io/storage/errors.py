"""The errors of the storage layer, shared by its backends."""

from __future__ import annotations

import errno
from typing import Any

__all__ = ["ChecksumMismatchError", "MissingObjectError", "StorageError"]


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


def os_error(uri: str, exc: BaseException) -> StorageError:
    """A local file system error as a :class:`StorageError` (ENOENT as :class:`MissingObjectError`)."""
    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, FileNotFoundError):
        return MissingObjectError(uri, "no such file")
    if isinstance(exc, OSError):
        return StorageError(uri, f"{type(exc).__name__}: {exc.strerror or exc}")
    return StorageError(uri, f"{type(exc).__name__}: {exc}")
