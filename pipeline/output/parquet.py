"""Writing and inspecting Parquet parts (local paths or ``s3://``).

Each shard becomes one part written atomically (local temp + rename; one S3
PUT of the finished object), with the shard's fingerprint in the file's
key-value metadata. Resume reads only that metadata.

Every file of every table says its schema version (:data:`SCHEMA_VERSION_KEY`), and none holds
the partition key (:data:`PARTITION_KEY`): the run id is in the path only.
"""

from __future__ import annotations

import io
import json
from typing import Any, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.io import storage

from .records import SCHEMA_VERSION, SCHEMA_VERSION_KEY

FINGERPRINT_KEY = b"zipscribe.fingerprint"
SUMMARY_KEY = b"zipscribe.shard_summary"
#: the hive partition key of every table: a directory ``run_id=<id>``, never a column of the files
PARTITION_KEY = "run_id"


def table_to_bytes(table: pa.Table, metadata: Optional[dict[bytes, bytes]] = None,
                   row_group_size: Optional[int] = None) -> bytes:
    """Serialise ``table`` as Parquet (zstd) with the schema version and ``metadata`` in the
    schema's key-value metadata. A table holding the partition key is refused: engines would see
    it twice (:data:`PARTITION_KEY`)."""
    if PARTITION_KEY in table.column_names:
        raise ValueError(f"a table file must not hold the partition column {PARTITION_KEY!r}: it is the folder's name")
    merged = dict(table.schema.metadata or {})
    merged[SCHEMA_VERSION_KEY] = str(SCHEMA_VERSION).encode()
    merged.update(metadata or {})
    table = table.replace_schema_metadata(merged)
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd", row_group_size=row_group_size)
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


def partition_value(uri: str, key: str = PARTITION_KEY) -> Optional[str]:
    """The value of the hive partition ``key`` in a file's path (``.../run_id=<id>/part-0.parquet``),
    or ``None`` when the path has none."""
    for segment in reversed(uri.split("/")[:-1]):
        name, sep, value = segment.partition("=")
        if sep and name == key:
            return value
    return None
