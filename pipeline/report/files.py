"""A report's storage: reading the transcript rows of runs, writing the report's files."""

from __future__ import annotations

import io
from typing import Optional, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.io import storage
from pipeline.output.paths import REPORT_FILES, RunPaths

from .html import render_html
from .markdown import render_markdown
from .tables import ROW_COLUMNS, Report, build_report

__all__ = ["has_references", "read_rows", "write_report", "write_run_report"]


def read_rows(transcript_dirs: Sequence[str]) -> pa.Table:
    """The :data:`ROW_COLUMNS` of every Parquet part under the given
    ``transcripts/run_id=<id>`` directories (local or ``s3://``), as one table.

    Parts are read one at a time and only the needed columns are kept; rows of a million-cut
    run take a few hundred MB."""
    tables = []
    for directory in transcript_dirs:
        try:
            uris = list(storage.list_files(directory, suffixes=[".parquet"]))
        except storage.MissingObjectError:
            uris = []
        for uri in uris:
            pf = pq.ParquetFile(io.BytesIO(storage.read_bytes(uri)))
            names = [c for c in ROW_COLUMNS if c in pf.schema_arrow.names]
            tables.append(pf.read(columns=names))
    if not tables:
        return pa.table({name: pa.array([], pa.string()) for name in ("cut_id", "status")})
    return pa.concat_tables(tables, promote_options="default")


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def write_report(report: Report, output: str) -> dict[str, str]:
    """Write ``report.parquet``, ``errors.parquet``, ``summary.md`` and ``report.html``
    (each atomically) under :attr:`pipeline.output.paths.RunPaths.report`; returns ``{file name: URI}``."""
    paths = RunPaths(output, report.run_id)
    uris = {name: paths.report_file(name) for name in REPORT_FILES}
    storage.write_bytes_atomic(uris["report.parquet"], _parquet_bytes(report.table))
    storage.write_bytes_atomic(uris["errors.parquet"], _parquet_bytes(report.errors))
    storage.write_bytes_atomic(uris["summary.md"], render_markdown(report).encode(), content_type="text/markdown; charset=utf-8")
    storage.write_bytes_atomic(uris["report.html"], render_html(report).encode(), content_type="text/html; charset=utf-8")
    return uris


def has_references(rows: pa.Table) -> bool:
    """True when any row carries a reference text."""
    return "reference" in rows.column_names and rows.column("reference").null_count < rows.num_rows


def write_run_report(transcripts_uri: str, output: str, run_id: str, normalizer: str,
                     worst_n: int = 20) -> Optional[tuple[Report, dict[str, str]]]:
    """The WER report of one transcription run (``jobs/transcribe.py``): reads the run's parts
    under ``transcripts_uri``, and when any row has a reference builds the report and writes it
    under :attr:`pipeline.output.paths.RunPaths.report`. Returns the report and its file URIs, or None (no references)."""
    rows = read_rows([transcripts_uri])
    if not has_references(rows):
        return None
    report = build_report(rows, run_id=run_id, normalizer=normalizer, worst_n=worst_n)
    return report, write_report(report, output)
