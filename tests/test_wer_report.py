"""WER reports, error details, the history and its regression gate, and the HTML page in a
real headless Chromium. Rows are scored with the same code the transcriber actor uses
(``pipeline.report.wer.score_row``); numbers are checked by hand and against an independent edit
distance written here."""

from __future__ import annotations

import json
import random
import re
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Optional

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from browser import CHECK_ID, pixels, render_check, screenshot
from helpers import edit_distance
from pipeline.report import history as hist
from pipeline.output.records import TRANSCRIPT_SCHEMA, TranscriptRow, rows_to_table
from pipeline.report.tables import DURATION_BUCKETS, ERRORS_SCHEMA, REPORT_SCHEMA, build_report, duration_bucket
from pipeline.report.files import read_rows, write_report
from pipeline.report.html import render_html
from pipeline.report.markdown import render_markdown
from pipeline.report.wer import score_row

T0 = datetime(2026, 11, 20, 2, 0, tzinfo=timezone.utc)


def row(cut_id: str, ref: Optional[str], hyp: Optional[str], *, speaker: Optional[str] = "spk1", duration: Optional[float] = 1.0,
        dataset: Optional[str] = "clean", status: str = "ok", decoding: str = "ctc-greedy", normalizer: str = "english") -> TranscriptRow:
    """A transcript row as the actor builds it (WER columns from score_row)."""
    r = TranscriptRow(run_id="r1", cut_id=cut_id, status=status, reference=ref, text=hyp if status == "ok" else None,
                      speaker=speaker, duration=duration, dataset=dataset, decoding=decoding, model_id="tiny",
                      model_sha256="ab" * 32, error=None if status == "ok" else "unreadable audio")
    score_row(r, normalizer)
    return r


def mixed_rows() -> list[TranscriptRow]:
    return [
        row("a", "The cat sat.", "the bat sat", speaker="s1", duration=1.0),
        row("b", "Hello World", "hello", speaker="s2", duration=2.0),  # 2.0 s: bucket 2-5s (edges are [lo, hi))
        row("c", "x y", "x y z <b>", speaker="s1", duration=25.0, dataset="other"),
        row("d", "never heard", None, speaker="s2", duration=None, dataset="other", status="error"),
        row("e", None, "foo", speaker=None, duration=4.5, dataset="other"),
        row("f", "...", "uh", speaker=None, duration=6.0, dataset="other"),  # empty after normalisation
    ]


def groups(report, group_by):
    return {(g["dataset"], g["group_value"]): g for g in report.table.to_pylist() if g["group_by"] == group_by}


# -- report tables -----------------------------------------------------------------------


@pytest.mark.parametrize("seconds, bucket", [(0.0, "0-2s"), (1.999, "0-2s"), (2.0, "2-5s"), (4.99, "2-5s"),
                                             (5.0, "5-10s"), (10.0, "10-20s"), (19.9, "10-20s"), (20.0, "20s+"),
                                             (3600.0, "20s+"), (None, "unknown")])
def test_duration_buckets(seconds, bucket):
    assert duration_bucket(seconds) == bucket
    assert DURATION_BUCKETS == ("0-2s", "2-5s", "5-10s", "10-20s", "20s+")


def test_report_groups_hand_computed():
    report = build_report(rows_to_table(mixed_rows()), run_id="r1", created_at=T0)
    assert report.table.schema.equals(REPORT_SCHEMA)
    t = report.table.to_pylist()
    assert report.run_id == "r1" and "run_id" not in report.table.column_names
    assert all(g["normalizer"] == "english" and g["decoding"] == "ctc-greedy" for g in t)
    (overall,) = [g for g in t if g["group_by"] == "all"]
    # scored: a (1 sub), b (1 del), c (2 ins), f (1 ins, 0 ref words); d failed; e has no reference
    assert {k: overall[k] for k in ("utterances", "scored", "failed", "no_reference", "empty_reference", "ref_words",
                                    "substitutions", "deletions", "insertions", "errors")} == dict(
        utterances=6, scored=4, failed=1, no_reference=1, empty_reference=1, ref_words=7, substitutions=1, deletions=1,
        insertions=3, errors=5)
    assert overall["wer"] == pytest.approx(5 / 7)
    assert overall["audio_seconds"] == pytest.approx(1 + 2 + 25 + 4.5 + 6)  # ok rows only
    assert overall["dataset"] is None and overall["model_id"] == "tiny"

    ds = groups(report, "dataset")
    assert ds[("clean", "clean")]["wer"] == pytest.approx(2 / 5)
    assert (ds[("other", "other")]["failed"], ds[("other", "other")]["ref_words"], ds[("other", "other")]["errors"]) == (1, 2, 3)

    buckets = groups(report, "duration_bucket")
    assert set(buckets) == {("clean", "0-2s"), ("clean", "2-5s"), ("other", "20s+"), ("other", "2-5s"),
                            ("other", "5-10s"), ("other", "unknown")}
    assert buckets[("clean", "2-5s")]["deletions"] == 1
    assert buckets[("other", "5-10s")]["wer"] is None and buckets[("other", "5-10s")]["insertions"] == 1  # no ref words
    assert buckets[("other", "unknown")]["failed"] == 1

    speakers = groups(report, "speaker")
    assert speakers[("other", "(none)")]["utterances"] == 2 and speakers[("other", "(none)")]["no_reference"] == 1
    assert speakers[("clean", "s1")]["wer"] == pytest.approx(1 / 3)
    order = [g["group_by"] for g in t]
    assert order == sorted(order, key=["all", "dataset", "duration_bucket", "speaker"].index)


def test_report_agrees_with_independent_edit_distance():
    rng = random.Random(11)
    vocab = ["a", "b", "c", "ünï", "日本", "don't", "x"]
    rows, truth = [], {}
    for i in range(300):
        ref = [rng.choice(vocab) for _ in range(rng.randint(0, 8))]
        hyp = [rng.choice(vocab) for _ in range(rng.randint(0, 8))]
        ds, spk, dur = rng.choice(["d1", "d2"]), rng.choice(["s1", "s2", "s3"]), rng.uniform(0, 30)
        rows.append(row(f"u{i}", " ".join(ref), " ".join(hyp), dataset=ds, speaker=spk, duration=dur))
        for key in (("all", None, "all"), ("dataset", ds, ds), ("speaker", ds, spk), ("duration_bucket", ds, duration_bucket(dur))):
            n, e = truth.get(key, (0, 0))
            truth[key] = (n + len(ref), e + edit_distance(ref, hyp))
    report = build_report(rows_to_table(rows), run_id="r", created_at=T0)
    seen = set()
    for g in report.table.to_pylist():
        key = (g["group_by"], g["dataset"], g["group_value"])
        seen.add(key)
        n, e = truth[key]
        assert (g["ref_words"], g["errors"]) == (n, e), key
        assert g["wer"] == pytest.approx(e / n)
    assert seen == set(truth)


def test_error_details_hand_computed():
    rows = [row("1", "the cat sat", "the bat sat"), row("2", "the cat ran", "the bat ran"),
            row("3", "a dog", "dog"), row("4", "hi", "hi there"), row("5", "ok", "ok", dataset="other")]
    report = build_report(rows_to_table(rows), run_id="r", created_at=T0)
    assert report.errors.schema.equals(ERRORS_SCHEMA)
    e = [x for x in report.errors.to_pylist() if x["dataset"] == "clean"]
    subs = [(x["ref_word"], x["hyp_word"], x["count"]) for x in e if x["kind"] == "substitution"]
    assert subs == [("cat", "bat", 2)]
    assert [(x["ref_word"], x["count"]) for x in e if x["kind"] == "deletion"] == [("a", 1)]
    assert [(x["hyp_word"], x["count"]) for x in e if x["kind"] == "insertion"] == [("there", 1)]
    words = {x["ref_word"]: x for x in e if x["kind"] == "word"}
    assert {k: words["cat"][k] for k in ("count", "correct", "ref_count", "hyp_count", "substituted", "substituted_in")} == dict(
        count=2, correct=0, ref_count=2, hyp_count=0, substituted=2, substituted_in=0)
    assert (words["bat"]["substituted_in"], words["bat"]["hyp_count"]) == (2, 2)
    assert (words["the"]["correct"], words["the"]["count"]) == (2, 0)
    assert words["a"]["deleted"] == 1 and words["there"]["inserted"] == 1
    assert [x["kind"] for x in report.errors.to_pylist() if x["dataset"] == "other"] == ["word"]  # no errors, stats only

    worst = [(w.cut_id, w.errors) for w in report.worst]
    assert worst == [("4", 1), ("3", 1), ("1", 1), ("2", 1)]  # ties: higher WER first (1/1, 1/2, 1/3), then cut id
    md = render_markdown(report)
    assert "| 2 | cat | bat |" in md and "`the (cat->bat) sat`" in md and "`(a->*) dog`" in md and "`hi (*->there)`" in md
    assert "**WER 40.00%** over 5 scored utterances (10 reference words)" in md  # 4 errors / (3+3+2+1+1) words


def test_rows_without_stored_counts_are_scored_at_report_time():
    """Parts written before the WER columns existed (only reference and text) still report."""
    old = pa.table({"cut_id": ["1", "2"], "status": ["ok", "ok"], "reference": ["The cat", "a b c"],
                    "text": ["the bat", "a b c d"], "dataset": ["x", "x"], "decoding": ["g", "g"]})
    report = build_report(old, run_id="r", created_at=T0)
    (overall,) = report.overall()
    assert (overall["ref_words"], overall["substitutions"], overall["insertions"], overall["scored"]) == (5, 1, 1, 2)


def test_write_report_and_read_rows_back(tmp_path):
    from pipeline.output import parquet

    table = rows_to_table(mixed_rows())
    assert table.schema.equals(TRANSCRIPT_SCHEMA)
    parts = tmp_path / "out" / "transcripts" / "run_id=r1"
    parquet.write_part(str(parts / "part-000000.parquet"), table.slice(0, 3), "fp")
    parquet.write_part(str(parts / "part-000001.parquet"), table.slice(3), "fp")
    rows = read_rows([str(parts)])
    assert sorted(rows.column("cut_id").to_pylist()) == list("abcdef")
    assert "token_ids" not in rows.column_names  # only what a report needs is read
    report = build_report(rows, run_id="r1", created_at=T0)
    uris = write_report(report, str(tmp_path / "out"))
    out = tmp_path / "out"
    assert {k: Path(u) for k, u in uris.items()} == {
        "wer_groups": out / "wer_groups" / "run_id=r1" / "part-00000.parquet",
        "wer_errors": out / "wer_errors" / "run_id=r1" / "part-00000.parquet",
        "summary.md": out / "reports" / "run_id=r1" / "summary.md",
        "report.html": out / "reports" / "run_id=r1" / "report.html"}
    written = pq.read_table(uris["wer_groups"])
    assert written.schema.remove_metadata().equals(REPORT_SCHEMA) and "run_id" not in written.column_names
    assert written.equals(report.table.replace_schema_metadata(written.schema.metadata))
    assert written.schema.metadata[b"zipscribe.schema_version"] == b"6"
    con = duckdb.connect()
    got = con.execute(f"SELECT run_id, typeof(run_id), round(wer, 4) FROM read_parquet('{out}/wer_groups/**/*.parquet', "
                      "hive_partitioning = 1, hive_types_autocast = 0) WHERE group_by = 'all'").fetchall()
    assert got == [("r1", "VARCHAR", round(5 / 7, 4))]
    assert (out / "reports" / "run_id=r1" / "summary.md").read_text().startswith("# WER report: run r1")
    assert sorted(p.name for p in (out / "wer_groups" / "run_id=r1").iterdir()) == ["part-00000.parquet"]


# -- history and the gate ----------------------------------------------------------------


def hrow(run_id: str, dataset: str, wer: Optional[float], when: datetime, gate: Optional[str] = "pass", *,
         decoding: str = "ctc-greedy", failed: int = 0, normalizer: str = "english", rtfx: Optional[float] = None,
         gpu_hours: Optional[float] = None, cost: Optional[float] = None) -> dict:
    return dict(day=when.date(), created_at=when, run_id=run_id, dataset=dataset, decoding=decoding,
                normalizer=normalizer, wer=wer, failed=failed, scored=10, ref_words=100 if wer is not None else 0,
                gate=gate, rtfx=rtfx, gpu_hours=gpu_hours, cost_per_audio_hour_usd=cost)


def htable(*rows: dict) -> pa.Table:
    full = [{name: r.get(name) for name in hist.HISTORY_SCHEMA.names} for r in rows]
    return pa.Table.from_pylist(full, schema=hist.HISTORY_SCHEMA)


def verdict(current: dict, *history_rows: dict, **kw) -> hist.Verdict:
    (v,) = hist.compare(htable(current), htable(*history_rows), max_regression=kw.pop("max_regression", 0.5), **kw)
    return v


def test_gate_first_pass_and_regression():
    now = T0 + timedelta(days=3)
    first = verdict(hrow("n3", "clean", 0.10, now))
    assert first.status == "FIRST" and not first.failing and "first run" in first.line()
    base = hrow("n2", "clean", 0.10, T0)
    ok = verdict(hrow("n3", "clean", 0.104, now), base)
    assert ok.status == "PASS" and ok.delta_points == pytest.approx(0.4) and ok.baseline_run_id == "n2"
    assert verdict(hrow("n3", "clean", 0.105, now), base).status == "PASS"  # exactly at the threshold
    bad = verdict(hrow("n3", "clean", 0.106, now), base)
    assert bad.status == "REGRESSION" and bad.failing and bad.gate == "fail"
    assert "WER +0.60 points > 0.5 allowed" in bad.line() and "baseline 10.00% in run n2" in bad.line()
    better = verdict(hrow("n3", "clean", 0.02, now), base)
    assert better.status == "PASS" and better.delta_points == pytest.approx(-8.0)


def test_gate_baseline_is_latest_earlier_accepted_run_of_same_dataset_decoding_and_normaliser():
    now = T0 + timedelta(days=5)
    history = [
        hrow("n1", "clean", 0.10, T0, "first"),
        hrow("n2", "clean", 0.20, T0 + timedelta(days=1), "fail"),  # a red night is not a baseline
        hrow("n3", "clean", 0.30, T0 + timedelta(days=2), decoding="ctc-beam"),  # other decoding
        hrow("n4", "other", 0.01, T0 + timedelta(days=3)),  # other dataset
        hrow("n5", "clean", 0.01, T0 + timedelta(days=4), normalizer="none"),  # other normaliser
        hrow("n6", "clean", 0.00, now + timedelta(days=1)),  # this very run, re-run later: excluded below
    ]
    history[-1]["run_id"] = "n9"
    v = verdict(hrow("n9", "clean", 0.20, now), *history)
    assert v.baseline_run_id == "n1" and v.status == "REGRESSION" and v.delta_points == pytest.approx(10.0)
    accepted = verdict(hrow("n9", "clean", 0.20, now), *history, accept=True)
    assert accepted.status == "ACCEPTED" and not accepted.failing and accepted.gate == "accepted"
    # once accepted, the new level is the baseline
    later = verdict(hrow("n10", "clean", 0.201, now + timedelta(days=2)), *history[:-1],
                    hrow("n9", "clean", 0.20, now, "accepted"))
    assert later.status == "PASS" and later.baseline_run_id == "n9"


def test_gate_failures_and_unscorable_sets():
    base = hrow("n1", "clean", 0.10, T0, failed=1)
    now = T0 + timedelta(days=1)
    v = verdict(hrow("n2", "clean", 0.10, now, failed=3), base)
    assert v.status == "REGRESSION" and "3 failed cuts, 2 more than the baseline" in v.reason
    assert verdict(hrow("n2", "clean", 0.10, now, failed=3), base, max_new_failures=None).status == "PASS"
    assert verdict(hrow("n2", "clean", 0.10, now, failed=3), base, max_new_failures=2).status == "PASS"
    empty = verdict(hrow("n2", "clean", None, now), base)
    assert empty.status == "NO-REFERENCE" and empty.failing
    text = hist.format_verdicts([v, empty, verdict(hrow("n2", "other", 0.3, now))])
    lines = text.splitlines()
    assert len(lines) == 4 and lines[-1].startswith("evaluation FAILED: 2 of 3 checks failed")
    assert hist.format_verdicts([verdict(hrow("n2", "other", 0.3, now))]).splitlines()[-1] == \
        "evaluation passed: 1 of 1 checks passed"


def test_gate_on_rtfx_drop():
    """--max-rtfx-drop: RTFx more than that many percent below the baseline's fails; without the
    option, or without RTFx on either side, speed is not gated (but the change is reported)."""
    base = hrow("n1", "clean", 0.10, T0, rtfx=100.0)
    now = T0 + timedelta(days=1)
    slow = verdict(hrow("n2", "clean", 0.10, now, rtfx=79.0), base, max_rtfx_drop=20)
    assert slow.status == "REGRESSION" and slow.rtfx_delta_pct == pytest.approx(-21.0)
    assert "RTFx 79.0 is 21.0% below the baseline's 100.0 > 20% allowed" in slow.reason
    assert verdict(hrow("n2", "clean", 0.10, now, rtfx=80.0), base, max_rtfx_drop=20).status == "PASS"  # at the limit
    ungated = verdict(hrow("n2", "clean", 0.10, now, rtfx=10.0), base)
    assert ungated.status == "PASS" and ungated.rtfx_delta_pct == pytest.approx(-90.0)
    unknown = verdict(hrow("n2", "clean", 0.10, now), base, max_rtfx_drop=20)
    assert unknown.status == "PASS" and unknown.rtfx_delta_pct is None
    rows = hist.history_rows(build_report(rows_to_table(mixed_rows()), run_id="n2", created_at=now).table,
                             {("clean", "ctc-greedy"): hist.RunFacts("n2.clean", "/m", 10.0, 79.0, gpu_hours=0.5,
                                                                     cost_usd=0.6, cost_per_audio_hour_usd=0.01)},
                             run_id="n2", created_at=now, git_rev=None, verdicts=[slow])
    clean = next(r for r in rows.to_pylist() if r["dataset"] == "clean")
    assert (clean["rtfx"], clean["gpu_hours"], clean["cost_per_audio_hour_usd"], clean["rtfx_delta_pct"],
            clean["gate"]) == (79.0, 0.5, 0.01, pytest.approx(-21.0), "fail")


def test_history_append_read_and_duckdb(tmp_path):
    root = str(tmp_path / "hist")
    assert hist.read_history(root).num_rows == 0  # no history yet
    report = build_report(rows_to_table(mixed_rows()), run_id="n1", created_at=T0)
    facts = {("clean", "ctc-greedy"): hist.RunFacts("n1.clean.ctc-greedy", "/models/m", 12.5, 40.0)}
    rows1 = hist.history_rows(report.table, facts, run_id="n1", created_at=T0, git_rev="abc123")
    assert rows1.num_rows == 2 and set(rows1.column("dataset").to_pylist()) == {"clean", "other"}
    uri1 = hist.append_history(root, rows1)
    assert uri1.endswith("wer_history/run_id=n1/part-00000.parquet")
    assert "run_id" not in pq.read_table(uri1).column_names
    later = T0 + timedelta(days=1, hours=1)
    report2 = build_report(rows_to_table(mixed_rows()), run_id="n2", created_at=later)
    verdicts = hist.compare(hist.history_rows(report2.table, {}, run_id="n2", created_at=later, git_rev=None),
                            hist.read_history(root), max_regression=0.5)
    assert [v.status for v in verdicts] == ["PASS", "PASS"]
    rows2 = hist.history_rows(report2.table, {}, run_id="n2", created_at=later, git_rev=None, verdicts=verdicts)
    hist.append_history(root, rows2)
    assert hist.append_history(root, rows2).endswith("run_id=n2/part-00000.parquet")  # a re-run replaces its own file
    got = hist.read_history(root)
    assert got.num_rows == 4 and sorted(set(got.column("run_id").to_pylist())) == ["n1", "n2"]
    con = duckdb.connect()
    res = con.execute(
        f"SELECT day, typeof(day), run_id, dataset, gate, git_revision, wall_seconds, rtfx, round(wer, 4) "
        f"FROM read_parquet('{root}/wer_history/**/*.parquet', hive_partitioning = 1, hive_types_autocast = 0) "
        "ORDER BY created_at, dataset").fetchall()
    assert res[0] == (date(2026, 11, 20), "DATE", "n1", "clean", None, "abc123", 12.5, 40.0, 0.4)
    assert [r[4] for r in res[2:]] == ["pass", "pass"]


# -- HTML ------------------------------------------------------------------------------------


def html_report(tmp_path: Path) -> Path:
    rows = mixed_rows() + [row("<script>alert(1)</script>", "one two & three", "one too & three <i>", speaker="s3")]
    rng = random.Random(5)
    for i in range(40):
        ref = " ".join(rng.choice(["alpha", "beta", "gamma", "delta"]) for _ in range(rng.randint(3, 12)))
        hyp = " ".join(w if rng.random() > 0.3 else "uh" for w in ref.split())
        rows.append(row(f"r{i:02d}", ref, hyp, speaker=f"spk{i % 7}", duration=rng.uniform(0.5, 30),
                        dataset=rng.choice(["clean", "other"])))
    history = htable(*[hrow(f"n{d}", ds, 0.1 + 0.01 * d + (0.05 if ds == "other" else 0), T0 + timedelta(days=d),
                            "fail" if d == 3 else "pass", rtfx=200.0 - 10 * d + (50 if ds == "other" else 0),
                            gpu_hours=0.4 + 0.01 * d, cost=0.002 + 0.0001 * d) for d in range(4) for ds in ("clean", "other")])
    now = T0 + timedelta(days=4)
    current = htable(hrow("n4", "clean", 0.15, now), hrow("n4", "other", 0.16, now))
    verdicts = hist.compare(current, history, max_regression=0.5)
    report = build_report(rows_to_table(rows), run_id="n4", created_at=now, history=history, verdicts=verdicts)
    page = tmp_path / "report.html"
    page.write_text(render_html(report), encoding="utf-8")
    return page


def test_html_is_self_contained_and_escaped(tmp_path):
    text = html_report(tmp_path).read_text()
    assert text.startswith("<!DOCTYPE html>") and text.count("<svg") == 4
    assert not re.search(r"<(script|link|img|iframe)\b", text)  # nothing to run, nothing fetched
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)
    assert "<script>alert(1)</script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "REGRESSION" in text and "WER over time" in text and "WER by speaker" in text
    assert "Speed and cost over time" in text and "USD per audio hour" in text and "GPU-hours" in text


def check_geometry(check: dict) -> None:
    """In every plot, as the browser laid it out: no legend over a bar or a label, every label (the
    bars' n= counts included) inside its plot."""

    def overlap(a, b) -> bool:
        return a[0] < b[2] - 0.5 and b[0] < a[2] - 0.5 and a[1] < b[3] - 0.5 and b[1] < a[3] - 0.5

    for n, plot in enumerate(check["plots"]):
        for legend in plot["legends"]:
            covered = [r for r in plot["bars"] + plot["texts"] if overlap(legend, r) and not
                       (legend[0] <= r[0] and legend[1] <= r[1] and r[2] <= legend[2] and r[3] <= legend[3])]
            assert not covered, (n, legend, covered)  # the legend's own texts lie inside it: not covered
        box = plot["box"]
        clipped = [t for t in plot["texts"] if t[0] < box[0] - 1 or t[1] < box[1] - 1 or t[2] > box[2] + 1 or t[3] > box[3] + 1]
        assert not clipped, (n, clipped, box)


@pytest.mark.needs_tools("chromium")
def test_a_plot_full_of_bars_keeps_its_legend_and_labels_clear(tmp_path):
    """Two datasets at the same WER in every duration bucket (as a demo run has): no place inside
    the axes is free, so a legend there covers bars; the n= labels of the tallest bars sit at the
    top. No card repeats another: one dataset per decoding has no card of its own."""
    rows = []
    for ds in ("clean", "other"):
        for k, seconds in enumerate((1.0, 3.0, 7.0, 15.0, 25.0) * 4):
            rows.append(row(f"{ds}-{k}", "one two three four", "one two tree for", duration=seconds, dataset=ds))
    report = build_report(rows_to_table(rows), run_id="full", created_at=T0)
    page = tmp_path / "full.html"
    page.write_text(render_html(report), encoding="utf-8")
    proc, dom = render_check(page)
    assert proc.returncode == 0, proc.stderr[-3000:]
    check = json.loads(re.search(rf'<div id="{CHECK_ID}">(.*?)</div>', dom).group(1).replace("&quot;", '"'))
    assert len(check["plots"][0]["bars"]) == 10 and check["plots"][0]["legends"]
    check_geometry(check)
    one = build_report(rows_to_table(rows[:20]), run_id="one", created_at=T0)  # a single dataset
    cards = re.findall(r'<div class="card[^"]*"><div class="label">([^<]*)</div>', render_html(one))
    assert cards == ["all [ctc-greedy]"], cards


@pytest.mark.needs_tools("chromium")
def test_html_renders_in_headless_chromium(tmp_path):
    page = html_report(tmp_path)
    proc, dom = render_check(page)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = re.search(rf'<div id="{CHECK_ID}">(.*?)</div>', dom)
    assert m, dom[-2000:]
    check = json.loads(m.group(1).replace("&quot;", '"'))
    assert check["errors"] == [] and check["title"] == "WER report n4"
    sizes = [tuple(int(x) for x in s.split("x")) for s in check["svgs"]]
    assert len(sizes) == 4 and all(w > 200 and h > 100 for w, h in sizes), sizes  # every plot laid out

    check_geometry(check)
    assert len(check["plots"][0]["bars"]) > 5 and check["plots"][0]["legends"]  # the duration plot: bars and a legend

    png = tmp_path / "report.png"
    shot = screenshot(page, png)
    assert shot.returncode == 0 and png.stat().st_size > 10_000, shot.stderr[-2000:]
    img = pixels(png)
    assert img.shape[:2] == (1600, 1200)
    non_white = (img < 0.95).any(axis=2).mean()
    assert non_white > 0.03, non_white  # text, tables and plots, not a blank page
    blue = (np.abs(img - np.array([0x1F, 0x77, 0xB4]) / 255).max(axis=2) < 0.05).sum()
    assert blue > 500, blue  # the first dataset's bars and lines (matplotlib C0) are visible


def test_history_and_report_on_s3(tmp_path, monkeypatch):
    """History append/read and report writing against a real S3 API (moto server over HTTP)."""
    import boto3

    from pipeline.io import storage
    from s3_testing import moto_server

    with moto_server() as url:
        for k, v in {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                     "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}.items():
            monkeypatch.setenv(k, v)
        monkeypatch.delenv("AWS_PROFILE", raising=False)
        storage.set_default_s3_options(None)
        try:
            boto3.client("s3").create_bucket(Bucket="eval")
            assert hist.read_history("s3://eval/nightly").num_rows == 0
            report = build_report(rows_to_table(mixed_rows()), run_id="n1", created_at=T0)
            rows = hist.history_rows(report.table, {}, run_id="n1", created_at=T0, git_rev=None,
                                     verdicts=hist.compare(hist.history_rows(report.table, {}, run_id="n1", created_at=T0,
                                                                             git_rev=None), hist.read_history("s3://eval/nightly"),
                                                           max_regression=0.5))
            uri = hist.append_history("s3://eval/nightly", rows)
            assert uri == "s3://eval/nightly/wer_history/run_id=n1/part-00000.parquet"
            back = hist.read_history("s3://eval/nightly")
            assert back.num_rows == 2 and back.column("gate").to_pylist() == ["first", "first"]
            uris = write_report(report, "s3://eval/out")
            assert uris["report.html"] == "s3://eval/out/reports/run_id=n1/report.html"
            assert storage.read_bytes(uris["report.html"]).startswith(b"<!DOCTYPE html>")
        finally:
            storage.set_default_s3_options(None)


def test_two_decodings_are_reported_and_gated_separately():
    rows = [row("1", "a b c d", "a b c d", decoding="ctc-greedy"), row("1", "a b c d", "a x c d", decoding="ctc-beam"),
            row("2", "e f", "e f", decoding="ctc-greedy", dataset="other"),
            row("2", "e f", "", decoding="ctc-beam", dataset="other")]
    report = build_report(rows_to_table(rows), run_id="n2", created_at=T0)
    overall = {g["decoding"]: g["wer"] for g in report.overall()}
    assert overall == {"ctc-greedy": 0.0, "ctc-beam": pytest.approx(3 / 6)}
    per_set = {(g["dataset"], g["decoding"]): g["wer"] for g in report.headline()}
    assert per_set == {("clean", "ctc-greedy"): 0.0, ("other", "ctc-greedy"): 0.0,
                       ("clean", "ctc-beam"): 0.25, ("other", "ctc-beam"): 1.0}
    current = hist.history_rows(report.table, {}, run_id="n2", created_at=T0 + timedelta(days=1), git_rev=None)
    history = htable(hrow("n1", "clean", 0.25, T0, decoding="ctc-greedy"), hrow("n1", "clean", 0.25, T0, decoding="ctc-beam"))
    verdicts = {(v.dataset, v.decoding): v.status for v in hist.compare(current, history, max_regression=0.5)}
    assert verdicts == {("clean", "ctc-greedy"): "PASS", ("clean", "ctc-beam"): "PASS",
                        ("other", "ctc-greedy"): "FIRST", ("other", "ctc-beam"): "FIRST"}
