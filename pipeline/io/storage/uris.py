"""URIs of the storage layer: which backend a URI names, and joining path components."""

from __future__ import annotations

__all__ = ["is_s3_uri", "join"]


def is_s3_uri(uri: str) -> bool:
    """True for ``s3://`` URIs."""
    return uri[:5].lower() == "s3://"


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
