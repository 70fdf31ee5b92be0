"""A report's storage: the transcript parts of runs as DuckDB reads them, and the report's files.

:func:`build_run_report` builds a report straight from the runs' Parquet parts with DuckDB
(:func:`pipeline.report.tables.build_report_sql`): local parts are read where they are; parts
on S3 are copied one at a time into a temporary directory first (DuckDB's own S3 reader is an
extension that cannot be installed offline). Parts written before rows stored their alignment
(``word_edits``) are scored once into such a local copy. Python never holds the rows.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Optional, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.io import storage
from pipeline.output.parquet import partition_value, table_to_bytes
from pipeline.output.paths import RunPaths

from .history import Verdict
from .html import render_html
from .markdown import render_markdown
from .tables import DEFAULT_MEMORY_LIMIT, ROW_COLUMNS, Report, build_report_sql, complete_rows, connect

__all__ = ["build_run_report", "has_references", "local_parts", "read_rows", "write_report", "write_run_report"]

log = logging.getLogger("zipscribe.report")


def _part_uris(transcript_dirs: Sequence[str]) -> list[str]:
    uris: list[str] = []
    for directory in transcript_dirs:
        try:
            uris += list(storage.list_files(directory, suffixes=[".parquet"]))
        except storage.MissingObjectError:
            pass
    return uris


def local_parts(transcript_dirs: Sequence[str], normalizer: str, workdir: str) -> list[str]:
    """Local paths of every transcripts part under ``transcript_dirs`` that DuckDB can read as a
    report needs them: local parts in place; S3 parts copied into ``workdir``; parts without
    ``word_edits`` (older runs) scored into a copy in ``workdir`` (:func:`complete_rows`)."""
    paths = []
    for n, uri in enumerate(_part_uris(transcript_dirs)):
        local = None if storage.is_s3_uri(uri) else uri
        if local is None:
            local = os.path.join(workdir, f"part-{n:06d}.parquet")
            Path(local).write_bytes(storage.read_bytes(uri))
        names = pq.read_schema(local).names
        if "word_edits" not in names:
            table = complete_rows(pq.read_table(local, columns=[c for c in ROW_COLUMNS if c in names]), normalizer)
            local = os.path.join(workdir, f"scored-{n:06d}.parquet")
            pq.write_table(table, local)
        paths.append(local)
    return paths


def _sql_list(paths: Sequence[str]) -> str:
    return "[" + ", ".join("'" + p.replace("'", "''") + "'" for p in paths) + "]"


def build_run_report(transcript_dirs: Sequence[str], *, run_id: str, normalizer: str,
                     created_at: Optional[datetime] = None, history: Optional[pa.Table] = None,
                     verdicts: Sequence[Verdict] = (), worst_n: int = 20,
                     memory_limit: str = DEFAULT_MEMORY_LIMIT, threads: Optional[int] = None,
                     require_references: bool = True) -> Optional[Report]:
    """The report of every row in the transcripts parts under ``transcript_dirs`` (local or
    ``s3://``; ``transcripts/run_id=<id>`` directories), built by DuckDB queries over the parts
    with at most ``memory_limit`` of memory (it spills to a temporary directory beyond it).
    None when there is no part, or (``require_references``) no row has a reference."""
    with tempfile.TemporaryDirectory(prefix="zipscribe-report-") as workdir:
        paths = local_parts(transcript_dirs, normalizer, workdir)
        if not paths:
            return None
        con = connect(memory_limit, threads=threads, temp_directory=os.path.join(workdir, "spill"))
        try:
            source = f"read_parquet({_sql_list(paths)}, union_by_name = true)"
            if require_references and not con.sql(f"SELECT count(reference) FROM {source}").fetchall()[0][0]:
                return None
            return build_report_sql(con, source, run_id=run_id, normalizer=normalizer, created_at=created_at,
                                    history=history, verdicts=verdicts, worst_n=worst_n)
        finally:
            con.close()


def read_rows(transcript_dirs: Sequence[str]) -> pa.Table:
    """The :data:`ROW_COLUMNS` of every Parquet part under the given
    ``transcripts/run_id=<id>`` directories (local or ``s3://``), as one table in memory (for
    small runs and tests; reports use :func:`build_run_report`, which never loads the rows);
    ``run_id`` from each part's partition directory."""
    tables = []
    for uri in _part_uris(transcript_dirs):
        pf = pq.ParquetFile(io.BytesIO(storage.read_bytes(uri)))
        names = [c for c in ROW_COLUMNS if c in pf.schema_arrow.names]
        table = pf.read(columns=names)
        if "run_id" not in table.column_names:
            table = table.append_column("run_id", pa.array([partition_value(uri)] * table.num_rows, pa.string()))
        tables.append(table)
    if not tables:
        return pa.table({name: pa.array([], pa.string()) for name in ("cut_id", "status")})
    return pa.concat_tables(tables, promote_options="default")


def write_report(report: Report, output: str) -> dict[str, str]:
    """Write the report's tables (the run's partitions of ``wer_groups`` and ``wer_errors``) and
    documents (``summary.md``, ``report.html`` under ``reports/run_id=<id>/``), each atomically;
    returns ``{name: URI}`` of those written (``wer_groups``, ``wer_errors``, ``summary.md``,
    ``report.html``). A document that cannot be rendered is logged with its reason and left out:
    the tables and the other document are still written (a report never fails a run)."""
    paths = RunPaths(output, report.run_id)
    uris = {"wer_groups": paths.wer_groups_part, "wer_errors": paths.wer_errors_part}
    storage.write_bytes_atomic(uris["wer_groups"], table_to_bytes(report.table))
    storage.write_bytes_atomic(uris["wer_errors"], table_to_bytes(report.errors))
    for name, render, kind in (("summary.md", render_markdown, "text/markdown"), ("report.html", render_html, "text/html")):
        try:
            data = render(report).encode()
        except Exception as exc:  # noqa: BLE001 - a document of the report, never the run's outcome
            log.error("%s of run %s could not be rendered, so it is not written: %s: %s", name, report.run_id,
                      type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
            continue
        uris[name] = paths.report_document(name)
        storage.write_bytes_atomic(uris[name], data, content_type=f"{kind}; charset=utf-8")
    return uris


def has_references(rows: pa.Table) -> bool:
    """True when any row carries a reference text."""
    return "reference" in rows.column_names and rows.column("reference").null_count < rows.num_rows


def write_run_report(transcripts_uri: str, output: str, run_id: str, normalizer: str,
                     worst_n: int = 20) -> Optional[tuple[Report, dict[str, str]]]:
    """The WER report of one transcription run (``jobs/transcribe.py``): built from the run's
    parts under ``transcripts_uri`` (:func:`build_run_report`) when any row has a reference, and
    written under :attr:`pipeline.output.paths.RunPaths.report`. Returns the report and its file
    URIs, or None (no references)."""
    report = build_run_report([transcripts_uri], run_id=run_id, normalizer=normalizer, worst_n=worst_n)
    if report is None:
        return None
    return report, write_report(report, output)
