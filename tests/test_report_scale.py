"""WER reports as DuckDB queries: the same numbers, errors and worst utterances as the old
row-by-row report (``tests/reference_report.py``, every utterance aligned again with jiwer),
from rows in memory and from Parquet parts (including parts written before rows stored their
alignment), and a bounded memory at 200,000 rows."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.output.records import TranscriptRow, rows_to_table
from pipeline.report.files import build_run_report
from pipeline.report.tables import build_report
from pipeline.report.wer import score_row
from reference_report import reference_report
from services import REPO

T0 = datetime(2026, 12, 1, 3, 0, tzinfo=timezone.utc)
VOCAB = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "to", "house", "blue", "green", "red", "fish", "and",
         "it's", "Colour", "two", "3", "éclair", "naïve"]


def random_rows(n: int, seed: int = 0) -> list[TranscriptRow]:
    """Rows as actors write them (scored by the actors' own ``score_row``): several datasets,
    decodings and speakers, failed rows, rows without reference, empty references, punctuation
    and case the normaliser removes, and hypotheses with every kind of error."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        ref = " ".join(rng.choice(VOCAB) for _ in range(rng.randint(0, 12)))
        hyp_words = [w for w in ref.split() if rng.random() > 0.15]
        for _ in range(rng.randint(0, 2)):
            hyp_words.insert(rng.randint(0, len(hyp_words)), rng.choice(VOCAB))
        hyp_words = [rng.choice(VOCAB) if rng.random() < 0.1 else w for w in hyp_words]
        status = "error" if rng.random() < 0.05 else "ok"
        reference = None if rng.random() < 0.05 else (ref + rng.choice(["", ".", "!", " ..."])).capitalize()
        r = TranscriptRow(
            run_id="r", cut_id=f"cut-{i:04d}", status=status, reference=reference,
            text=" ".join(hyp_words) if status == "ok" else None, speaker=rng.choice(["s1", "s2", "s3", None]),
            duration=rng.choice([None, 0.5, 1.99, 2.0, 4.0, 7.5, 12.0, 19.99, 20.0, 33.0]),
            dataset=rng.choice(["clean", "other", None]), decoding=rng.choice(["ctc-greedy", "attention-rescoring"]),
            model_id=rng.choice(["m1", "m2"]), model_sha256="ab" * 32,
            error=None if status == "ok" else "unreadable audio")
        score_row(r, "english")
        rows.append(r)
    return rows


def assert_same_report(report, rows: pa.Table, worst_n: int = 20) -> None:
    table, errors, worst = reference_report(rows, report.run_id, report.normalizer, report.created_at, worst_n)
    new, old = report.table.to_pylist(), table.to_pylist()
    assert len(new) == len(old)
    for a, b in zip(new, old):
        assert math.isclose(a.pop("audio_seconds"), b.pop("audio_seconds"), abs_tol=1e-6)
        assert a == b
    assert report.errors.to_pylist() == errors.to_pylist()
    assert [(w.cut_id, w.decoding, w.errors, w.ref_words, w.alignment) for w in report.worst] == \
        [(w.cut_id, w.decoding, w.errors, w.ref_words, w.alignment) for w in worst]


def test_duckdb_report_equals_the_row_by_row_report():
    rows = rows_to_table(random_rows(600))
    report = build_report(rows, run_id="r", created_at=T0, worst_n=25)
    assert_same_report(report, rows, worst_n=25)
    kinds = {e["kind"] for e in report.errors.to_pylist()}
    assert kinds == {"substitution", "deletion", "insertion", "word"}
    assert {g["decoding"] for g in report.overall()} == {"ctc-greedy", "attention-rescoring"}


def test_report_from_parts_equals_report_from_rows_and_scores_old_parts(tmp_path):
    """Parts on disk, some written without ``word_edits`` / counts (older runs): scored once at
    report time, the report is the same."""
    rows = random_rows(300, seed=1)
    directory = tmp_path / "transcripts" / "run_id=r"
    directory.mkdir(parents=True)
    for k in range(3):
        table = rows_to_table(rows[k * 100:(k + 1) * 100])
        if k == 1:  # an old part: no alignment stored, no counts
            table = table.drop_columns(["word_edits", "token_confidences"])
            for name in ("ref_words", "substitutions", "deletions", "insertions", "errors", "ref_norm", "hyp_norm"):
                table = table.set_column(table.schema.get_field_index(name), name,
                                         pa.nulls(table.num_rows, table.schema.field(name).type))
        pq.write_table(table, directory / f"part-{k}.parquet")
    report = build_run_report([str(directory)], run_id="r", normalizer="english", created_at=T0)
    assert_same_report(report, rows_to_table(rows))
    assert report.table.num_rows == build_report(rows_to_table(rows), run_id="r", created_at=T0).table.num_rows


def test_no_parts_or_no_references(tmp_path):
    assert build_run_report([str(tmp_path / "nothing")], run_id="r", normalizer="english") is None
    rows = [TranscriptRow(run_id="r", cut_id="a", status="ok", text="hello")]
    (tmp_path / "p").mkdir()
    pq.write_table(rows_to_table(rows), tmp_path / "p" / "part-0.parquet")
    assert build_run_report([str(tmp_path / "p")], run_id="r", normalizer="english") is None
    report = build_run_report([str(tmp_path / "p")], run_id="r", normalizer="english", require_references=False)
    assert report.overall()[0]["no_reference"] == 1 and report.overall()[0]["wer"] is None


def test_report_over_200k_rows_stays_under_a_memory_bound():
    """bench/report_scale.py writes 200,000 synthetic rows as 200 parts, then builds the report in
    a fresh process and prints that process's peak RSS. The old report held every row as a Python
    object and needed ~770 MB for 50,000 rows here; the bound below is for four times as many."""
    out = subprocess.run([sys.executable, "bench/report_scale.py", "--rows", "200000", "--memory-limit", "512MB"],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    result = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")][-1]
    assert result["how"] == "new" and result["counts_match"], result
    assert result["overall"]["utterances"] == 200000
    assert result["peak_rss_mb"] < 700, result
