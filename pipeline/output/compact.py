"""Compacting a finished run: its many small parts rewritten as few large files.

A run writes one part per shard (about 0.7 MB per 1,000 cuts), which is what resume needs, but
Spark and Athena pay per file. Compaction (:func:`pipeline.run.compact.compact_run`,
``jobs/compact.py``; :func:`compact_table` per table) rewrites each table's partition of a run
(``transcripts``, ``words``, ``windows``) into files of about ``target_bytes`` (default 256 MB)
with row groups of about ``row_group_bytes`` (128 MB), keeping every row exactly once:

1. under the run's lock (no run writes meanwhile), the partition's parts are listed;
2. their rows are streamed, in part order, into ``part-compact-<digest>-<n>.parquet`` files (the
   digest names the set of parts compacted, so a rerun after a crash writes the same names), each
   written atomically;
3. the row counts are checked; ``runs/<id>/compacted.json`` records what was replaced (the commit
   point); then the old parts are removed.

A compaction that stopped before its record is redone from the start (its files are overwritten);
one that stopped after it only finishes the removal. A compacted run is sealed: the transcription
job refuses to resume it (its shard parts are gone); a report reads it as before. Readers that
list the partition while step 3 runs may see rows twice: compact a run nobody is reading.
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass, field
from typing import Optional

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.io import storage

from .parquet import table_to_bytes
from .paths import RunPaths

__all__ = ["COMPACTED_TABLES", "CompactResult", "compact_table", "compacted_record"]

log = logging.getLogger("zipscribe.compact")

#: the tables of a run that compaction rewrites (the WER tables are one file per run already)
COMPACTED_TABLES = ("transcripts", "words", "windows")
COMPACT_PREFIX = "part-compact-"
COMPACTED_KEY = b"zipscribe.compacted"


@dataclass
class CompactResult:
    """What compacting one table's partition did."""

    table: str
    parts_before: int = 0
    files_after: int = 0
    rows: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    replaced: list[str] = field(default_factory=list)
    written: list[str] = field(default_factory=list)


def compacted_record(paths: RunPaths) -> str:
    """``<output>/runs/<id>/compacted.json``: written once a run's tables are compacted."""
    return storage.join(storage.join(paths.output, "runs", paths.run_id), "compacted.json")


def _parts(directory: str) -> list[str]:
    try:
        return sorted(storage.list_files(directory, [".parquet"], follow_symlinks=False))
    except storage.MissingObjectError:
        return []


def compact_table(paths: RunPaths, table: str, target_bytes: int = 256 << 20,
                  row_group_bytes: int = 128 << 20) -> CompactResult:
    """Rewrite one table's partition of the run as few large files (steps 1-2 of the module
    docstring; the caller holds the run's lock, records the result and removes what it
    :attr:`~CompactResult.replaced`)."""
    result = CompactResult(table)
    directory = paths.table(table)
    parts = _parts(directory)
    sources = [p for p in parts if not p.rsplit("/", 1)[-1].startswith(COMPACT_PREFIX)]
    for stale in (p for p in parts if p not in sources):  # an unfinished compaction's files: redone below
        storage.delete(stale)
    if len(sources) <= 1:
        return result
    digest = hashlib.sha256("\n".join(p.rsplit("/", 1)[-1] for p in sources).encode()).hexdigest()[:12]
    result.parts_before = len(sources)
    pending: list[pa.Table] = []
    pending_bytes = 0
    schema: Optional[pa.Schema] = None

    def flush() -> None:
        nonlocal pending, pending_bytes
        if not pending:
            return
        merged = pa.concat_tables(pending, promote_options="default").replace_schema_metadata(None)
        rows_per_group = max(1, int(merged.num_rows * row_group_bytes / max(1, merged.nbytes)))
        data = table_to_bytes(merged, {COMPACTED_KEY: digest.encode()}, row_group_size=rows_per_group)
        uri = storage.join(directory, f"{COMPACT_PREFIX}{digest}-{len(result.written):05d}.parquet")
        storage.write_bytes_atomic(uri, data)
        result.written.append(uri)
        result.bytes_after += len(data)
        pending, pending_bytes = [], 0

    for uri in sources:
        data = storage.read_bytes(uri)
        result.bytes_before += len(data)
        part = pq.read_table(io.BytesIO(data))
        schema = part.schema if schema is None else schema
        result.rows += part.num_rows
        pending.append(part)
        pending_bytes += len(data)
        if pending_bytes >= target_bytes:
            flush()
    flush()
    written_rows = sum(pq.read_metadata(io.BytesIO(storage.read_bytes(u))).num_rows for u in result.written)
    if written_rows != result.rows:  # never remove a part whose rows are not all in the new files
        raise RuntimeError(f"compacting {directory}: {written_rows} rows written for {result.rows} read")
    result.files_after = len(result.written)
    result.replaced = sources
    return result

