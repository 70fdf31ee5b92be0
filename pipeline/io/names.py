"""Names from input on their way to becoming file and object names: kept under their root.

Recording ids, cut ids, run ids and S3 keys come from manifests, listings and the command line,
and some of them end up in paths (a model's files in the cache, export files, a run's folders).
Every such use goes through here:

* :func:`safe_name`: any text as one path component: characters other than letters, digits,
  ``.``, ``_`` and ``-`` become ``_``; a name that had to change, or is longer than
  :data:`MAX_NAME_BYTES`, keeps a readable prefix and gets ``-`` + 16 hex characters of the
  text's SHA-256, so different ids never share a file;
* :func:`relative_key`: a relative path from input (a key below a listed prefix, a tar member)
  that is used as one: ``/``-separated, no empty, ``.`` or ``..`` segment, no NUL, not absolute,
  else :class:`UnsafePathError`;
* :func:`within`: a local path under a root, checked after normalisation (no ``..`` or absolute
  part leads out).
"""

from __future__ import annotations

import hashlib
import os
import re

__all__ = ["MAX_NAME_BYTES", "UnsafePathError", "relative_key", "safe_name", "within"]

#: the longest file name made from input (file systems allow 255 bytes; room for an extension)
MAX_NAME_BYTES = 200
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


class UnsafePathError(ValueError):
    """A name or key from input would lead outside the folder it belongs in."""


def safe_name(text: str, max_bytes: int = MAX_NAME_BYTES) -> str:
    """``text`` as one file or object name (see the module docstring): the same text always gives
    the same name; two texts never give the same name unless they are equal."""
    name = _UNSAFE.sub("_", text).lstrip(".")
    if name == text and name and len(name.encode()) <= max_bytes:
        return name
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return (name[: max_bytes - 17] or "_") + "-" + digest


def relative_key(key: str, what: str = "key") -> str:
    """``key`` when it is a plain relative path (see the module docstring), else
    :class:`UnsafePathError` naming ``what`` it is."""
    if not key or "\x00" in key or key.startswith("/") or "\\" in key:
        raise UnsafePathError(f"unsafe {what} {key!r}: empty, absolute or with NUL / backslashes")
    parts = key.split("/")
    if any(p in ("", ".", "..") for p in parts[:-1]) or parts[-1] in (".", ".."):
        raise UnsafePathError(f"unsafe {what} {key!r}: it has an empty, '.' or '..' path segment")
    return key


def within(root: str, *parts: str) -> str:
    """``root`` joined with ``parts`` (local paths), refused with :class:`UnsafePathError` when the
    result, normalised, is not inside ``root``."""
    base = os.path.normpath(os.path.abspath(root))
    path = os.path.normpath(os.path.join(base, *parts))
    if path != base and not path.startswith(base + os.sep):
        raise UnsafePathError(f"{os.path.join(*parts) if parts else root!r} leads outside {root}")
    return path
