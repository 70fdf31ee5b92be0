"""Writing and inspecting Parquet parts (local paths or ``s3://``).

Each shard becomes one part written atomically (local temp + rename; one S3
PUT of the finished object), with the shard's fingerprint in the file's
key-value metadata. Resume reads only that metadata.
"""

from __future__ import annotations

import io
import json
from typing import Any, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.io import storage

FINGERPRINT_KEY = b"zipscribe.fingerprint"
SUMMARY_KEY = b"zipscribe.shard_summary"


def table_to_bytes(table: pa.Table, metadata: Optional[dict[bytes, bytes]] = None) -> bytes:
    """Serialise ``table`` as Parquet (zstd), adding ``metadata`` to the schema's key-value metadata."""
    if metadata:
        merged = dict(table.schema.metadata or {})
        merged.update(metadata)
        table = table.replace_schema_metadata(merged)
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def write_part(uri: str, table: pa.Table, fingerprint: str, summary: Optional[dict[str, Any]] = None) -> None:
    """Atomically write one part with its fingerprint (and an optional shard summary)."""
    meta = {FINGERPRINT_KEY: fingerprint.encode()}
    if summary is not None:
        meta[SUMMARY_KEY] = json.dumps(summary, sort_keys=True).encode()
    storage.write_bytes_atomic(uri, table_to_bytes(table, meta))


def read_part_metadata(uri: str) -> Optional[dict[bytes, bytes]]:
    """Key-value metadata of an existing part, or None when it is missing or unreadable
    (a corrupt part is treated as absent, so the shard is redone)."""
    if not storage.exists(uri):
        return None
    try:
        return dict(pq.read_schema(io.BytesIO(storage.read_bytes(uri))).metadata or {})
    except (pa.ArrowException, OSError):
        return None


def part_summary(uri: str) -> Optional[dict[str, Any]]:
    """The shard summary stored in a part, or None."""
    meta = read_part_metadata(uri)
    if not meta or SUMMARY_KEY not in meta:
        return None
    return json.loads(meta[SUMMARY_KEY])


def finished_shard(uri: str, fingerprint: str) -> Optional[dict[str, Any]]:
    """The stored shard summary if ``uri`` is a complete part written with ``fingerprint``
    (resume skips such shards); None when the part is missing, corrupt or stale."""
    meta = read_part_metadata(uri)
    if not meta or meta.get(FINGERPRINT_KEY, b"").decode() != fingerprint or SUMMARY_KEY not in meta:
        return None
    return json.loads(meta[SUMMARY_KEY])
