"""Parquet parts: atomic writes carry the fingerprint that resume trusts."""

from __future__ import annotations

import pyarrow.parquet as pq

from pipeline.output import parquet
from pipeline.output.records import STATUS_ERROR, STATUS_OK, TRANSCRIPT_SCHEMA, TranscriptRow, rows_to_table


def rows():
    return [
        TranscriptRow(run_id="r", cut_id="a", status=STATUS_OK, text="héllo wörld", token_ids=[5, 6], token_times=[0.0, 0.04]),
        TranscriptRow(run_id="r", cut_id="b", status=STATUS_ERROR, error="empty file (0 bytes)"),
    ]


def test_part_round_trip_and_resume_decision(tmp_path):
    uri = str(tmp_path / "run_id=r" / "part-shard-000000.parquet")
    parquet.write_part(uri, rows_to_table(rows()), "fp-1", summary={"cuts_ok": 1, "cuts_error": 1})
    table = pq.read_table(uri)
    assert table.schema.remove_metadata().equals(TRANSCRIPT_SCHEMA)
    assert table.column("text").to_pylist() == ["héllo wörld", None]
    assert table.column("token_ids").to_pylist() == [[5, 6], []]
    assert parquet.finished_shard(uri, "fp-1") == {"cuts_ok": 1, "cuts_error": 1}
    assert parquet.finished_shard(uri, "fp-2") is None  # other model / settings: redo
    assert parquet.finished_shard(str(tmp_path / "missing.parquet"), "fp-1") is None
    assert [p.name for p in (tmp_path / "run_id=r").iterdir()] == ["part-shard-000000.parquet"]  # no temp files left


def test_corrupt_part_counts_as_absent(tmp_path):
    uri = tmp_path / "part-shard-000001.parquet"
    uri.write_bytes(b"PAR1 this is not a parquet file")
    assert parquet.finished_shard(str(uri), "fp") is None


def test_part_without_summary_is_redone(tmp_path):
    uri = str(tmp_path / "part.parquet")
    parquet.write_part(uri, rows_to_table(rows()), "fp")  # no summary stored
    assert parquet.finished_shard(uri, "fp") is None
