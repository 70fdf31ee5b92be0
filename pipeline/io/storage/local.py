"""The local backend of :mod:`pipeline.io.storage`: plain paths and ``file://`` URIs."""

from __future__ import annotations

import fcntl
import glob as globbing
import hashlib
import os
import tempfile
from contextlib import contextmanager
from typing import BinaryIO, Callable, Iterator
from urllib.parse import quote, unquote

from .errors import MissingObjectError, StorageError, os_error
from .ranged import RangeFile
from .uris import join

__all__ = ["LocalStore", "local_path"]


def local_path(uri: str) -> str:
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


@contextmanager
def _locked_dir(directory: str) -> Iterator[None]:
    """An exclusive ``flock`` of a directory, for compare-and-swap of the files in it."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def fsync_dir(directory: str) -> None:
    """fsync a directory (a rename in it is durable after this); errors are ignored."""
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


def _walk_sorted(root: str, rel: str, seen: set[tuple[int, int]], follow: bool = True) -> Iterator[str]:
    """Yield relative file paths under ``root/rel`` in full-path lexicographic order
    (the order S3 lists keys in): siblings sorted with directories keyed as ``name + '/'``.
    ``follow=False``: symbolic links (to files or folders) are not listed."""
    directory = os.path.join(root, rel) if rel else root
    entries = []
    with os.scandir(directory) as it:
        for entry in it:
            try:
                if not follow and entry.is_symlink():
                    continue
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
            yield from _walk_sorted(root, child, seen, follow)
            seen.discard(ident)
        else:
            try:
                if entry.is_file():
                    yield child
            except OSError:
                continue


class LocalStore:
    """Local files behind the storage interface (see :mod:`pipeline.io.storage`)."""

    def open_binary(self, uri: str) -> BinaryIO:
        path = local_path(uri)
        try:
            if os.path.isdir(path):
                raise StorageError(uri, "is a directory")
            return open(path, "rb")
        except OSError as exc:
            raise os_error(uri, exc) from exc

    def read_bytes(self, uri: str) -> bytes:
        with self.open_binary(uri) as f:
            try:
                return f.read()
            except OSError as exc:
                raise os_error(uri, exc) from exc

    def read_range(self, uri: str, start: int, end: int | None) -> bytes:
        with self.open_binary(uri) as f:
            try:
                f.seek(start)
                return f.read() if end is None else f.read(end - start)
            except OSError as exc:
                raise os_error(uri, exc) from exc

    def read_head(self, uri: str, length: int) -> tuple[bytes, int]:
        with self.open_binary(uri) as f:
            try:
                return f.read(length), os.fstat(f.fileno()).st_size
            except OSError as exc:
                raise os_error(uri, exc) from exc

    def open_range(self, uri: str, base: int = 0, length: int | None = None) -> RangeFile:
        """A seekable file over bytes ``[base, base + length)`` of the file, read with ``pread``
        and counted like a remote object's."""
        path = local_path(uri)
        try:
            if os.path.isdir(path):
                raise StorageError(uri, "is a directory")
            fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            raise os_error(uri, exc) from exc

        def fetch(start: int, end: int) -> bytes:
            try:
                return os.pread(fd, end - start, start)
            except OSError as exc:
                raise os_error(uri, exc) from exc

        return RangeFile(uri, fetch, os.fstat(fd).st_size, base=base, length=length, on_close=lambda: os.close(fd))

    def glob(self, pattern: str, keep: Callable[[str], bool]) -> list[str]:
        """The files matching ``pattern`` (``*``, ``?``, ``[...]`` within a path segment, ``**``
        across segments), sorted; a ``file://`` pattern gives ``file://`` URIs."""
        is_uri = pattern[:7].lower() == "file://"
        paths = sorted(p for p in globbing.glob(local_path(pattern), recursive=True) if os.path.isfile(p) and keep(p))
        return ["file://" + quote(p) for p in paths] if is_uri else paths

    def size(self, uri: str) -> int:
        path = local_path(uri)
        try:
            if os.path.isdir(path):
                raise StorageError(uri, "is a directory")
            return os.path.getsize(path)
        except OSError as exc:
            raise os_error(uri, exc) from exc

    def version(self, uri: str) -> str:
        try:
            st = os.stat(local_path(uri))
        except OSError as exc:
            raise os_error(uri, exc) from exc
        return f"{st.st_size}:{st.st_mtime_ns}"

    def exists(self, uri: str) -> bool:
        return os.path.isfile(local_path(uri))

    def list_files(self, uri_prefix: str, keep, page_size: int | None = None,  # noqa: ANN001
                   follow_symlinks: bool = True) -> Iterator[str]:
        root = local_path(uri_prefix)
        if not follow_symlinks and os.path.islink(root.rstrip("/")):
            return
        if os.path.isfile(root):
            if keep(root):
                yield uri_prefix
            return
        if not os.path.isdir(root):
            raise MissingObjectError(uri_prefix, "no such directory")
        st = os.stat(root)
        for rel in _walk_sorted(root, "", {(st.st_dev, st.st_ino)}, follow_symlinks):
            if keep(rel):
                yield join(uri_prefix, rel)

    def write_bytes_atomic(self, uri: str, data: bytes, content_type: str | None = None) -> None:
        path = local_path(uri)
        directory = os.path.dirname(os.path.abspath(path))
        try:
            os.makedirs(directory, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
        except OSError as exc:
            raise os_error(uri, exc) from exc
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
                raise os_error(uri, exc) from exc
            raise
        fsync_dir(directory)

    def read_versioned(self, uri: str) -> tuple[bytes, str]:
        """The file's bytes and their SHA-256 (its version for :meth:`put_if`)."""
        data = self.read_bytes(uri)
        return data, hashlib.sha256(data).hexdigest()

    def put_if(self, uri: str, data: bytes, version: str | None) -> str | None:
        """Write ``data`` only if no file is there (``version`` None) or only if the file's content
        still hashes to ``version``: under an exclusive ``flock`` of its directory (every writer
        here takes it), then a temporary file renamed over it. The new version, or ``None``."""
        path = local_path(uri)
        directory = os.path.dirname(os.path.abspath(path))
        try:
            os.makedirs(directory, exist_ok=True)
            with _locked_dir(directory):
                try:
                    current = self.read_versioned(uri)[1]
                except MissingObjectError:
                    current = None
                if current != version:
                    return None
                self.write_bytes_atomic(uri, data)
        except OSError as exc:
            raise os_error(uri, exc) from exc
        return hashlib.sha256(data).hexdigest()

    def delete_if(self, uri: str, version: str) -> bool:
        """Delete the file only if its content still hashes to ``version``."""
        directory = os.path.dirname(os.path.abspath(local_path(uri)))
        try:
            with _locked_dir(directory):
                try:
                    if self.read_versioned(uri)[1] != version:
                        return False
                except MissingObjectError:
                    return False
                self.delete(uri)
                return True
        except OSError as exc:
            raise os_error(uri, exc) from exc

    def delete(self, uri: str) -> None:
        try:
            os.unlink(local_path(uri))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise os_error(uri, exc) from exc
