"""Compacting a finished run (``jobs/compact.py``): every table's partition of the run rewritten
as few large files under the run's lock, the replaced parts recorded, then removed
(:mod:`pipeline.output.compact`)."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict

from pipeline.io import storage
from pipeline.output.compact import COMPACTED_TABLES, CompactResult, compact_table, compacted_record
from pipeline.output.paths import RunPaths
from pipeline.plan.frozen import Plan, read_index

from .lock import RunLock

__all__ = ["compact_run"]

log = logging.getLogger("zipscribe.compact")


def _check_finished(paths: RunPaths) -> None:
    """A run is finished when every shard of its plan has its transcripts part (a run that stopped
    early must be resumed first: compacting seals it)."""
    try:
        plan = json.loads(storage.read_bytes(paths.plan_summary))
    except storage.MissingObjectError:
        raise ValueError(f"no run {paths.run_id!r} under {paths.output} (no {paths.plan_summary})") from None
    try:
        have = {u.rsplit("/", 1)[-1] for u in storage.list_files(paths.transcripts, [".parquet"])}
    except storage.MissingObjectError:
        have = set()
    missing = [r["shard_id"] for r in read_index(paths, Plan.from_dict(plan), ["shard_id"])
               if f"part-{r['shard_id']}.parquet" not in have]
    if missing:
        raise ValueError(f"run {paths.run_id!r} is not finished: {len(missing)} shard(s) of its plan have no part yet "
                         f"(e.g. {missing[0]}); rerun it with the same --run-id first")


def compact_run(paths: RunPaths, *, target_bytes: int = 256 << 20, row_group_bytes: int = 128 << 20,
                tables: tuple[str, ...] = COMPACTED_TABLES) -> list[CompactResult]:
    """Compact a finished run's tables (see the module docstring). Takes the run's lock; a run
    compacted before has its removal finished and is otherwise left as it is."""
    record = compacted_record(paths)
    with RunLock(paths):
        if not storage.exists(record):
            _check_finished(paths)
        if storage.exists(record):
            done = json.loads(storage.read_bytes(record))
            for uri in done.get("replaced", []):
                storage.delete(uri)
            log.info("run %s was compacted before (%s)", paths.run_id, record)
            return []
        results = [compact_table(paths, t, target_bytes, row_group_bytes) for t in tables]
        storage.write_text_atomic(record, json.dumps({
            "run_id": paths.run_id, "tables": [asdict(r) for r in results],
            "replaced": [u for r in results for u in r.replaced]}, indent=1))
        for r in results:
            for uri in r.replaced:
                storage.delete(uri)
    return results
