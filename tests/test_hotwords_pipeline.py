"""Hotwords in the pipeline (issue 35): the list formats, per-cut lists from manifests, the
recognizer's per-list automaton cache, and a run (in one process) with --hotwords and per-cut
lists: the new columns, error rows for malformed lists, and the run without lists unchanged."""

from __future__ import annotations

import gzip
import json
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.inputs.hotwords import (
    HotwordError,
    merge_hotwords,
    parse_hotword_entries,
    parse_hotword_line,
    read_hotwords_file,
)
from pipeline.report.normalize import get_normalizer

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "model" / "assets" / "demo"
NORM = get_normalizer("english")


def test_lines_scores_comments_and_normalisation():
    assert parse_hotword_line("Dr. Zyprexa :2.5", 1.5, NORM) == ("dr zyprexa", 2.5)
    assert parse_hotword_line("  new York  ", 1.5, NORM) == ("new york", 1.5)
    assert parse_hotword_line("", 1.5, NORM) is None and parse_hotword_line("# a comment", 1.5, NORM) is None
    for bad, why in (("word :x", "not a number"), ("word :-1", "positive finite"), ("word :nan", "positive finite"),
                     ("?! :2", "empty once normalised"), ("word :", "malformed"), ("x" * 300, "longer than")):
        with pytest.raises(HotwordError, match=why):
            parse_hotword_line(bad, 1.5, NORM, "f.txt:3")


def test_a_file_names_its_bad_line_and_merging_keeps_the_best_score(tmp_path):
    good = tmp_path / "hw.txt"
    good.write_text("# names\nZyprexa :3\nnew york\n\nzyprexa\n")
    assert read_hotwords_file(str(good), 1.5, NORM) == (("new york", 1.5), ("zyprexa", 3.0))
    bad = tmp_path / "bad.txt"
    bad.write_text("fine\nbroken :zz\n")
    with pytest.raises(HotwordError, match=r"bad.txt:2: the score"):
        read_hotwords_file(str(bad), 1.5, NORM)
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(HotwordError, match="holds no phrase"):
        read_hotwords_file(str(tmp_path / "empty.txt"), 1.5, NORM)
    with pytest.raises(HotwordError, match="does not exist"):
        read_hotwords_file(str(tmp_path / "missing.txt"), 1.5, NORM)
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(HotwordError, match="not UTF-8"):
        read_hotwords_file(str(tmp_path / "bin.txt"), 1.5, NORM)
    from pipeline.inputs.hotwords import MAX_FILE_BYTES

    huge = tmp_path / "huge.txt"  # sparse: its size is a claim the reader must not take in whole
    with huge.open("wb") as f:
        f.write(b"zyprexa\n")
        f.truncate(64 * MAX_FILE_BYTES)
    with pytest.raises(HotwordError, match=f"huge.txt is {64 * MAX_FILE_BYTES} bytes, more than"):
        read_hotwords_file(str(huge), 1.5, NORM)
    assert merge_hotwords((("a", 1.0),), None, (("a", 2.0), ("b", 1.0))) == (("a", 2.0), ("b", 1.0))
    assert merge_hotwords(None, ()) is None


def test_per_cut_entries_must_be_a_list_of_phrases():
    assert parse_hotword_entries(["Zyprexa :2", "Paris"], 1.5, NORM, "cut c") == (("paris", 1.5), ("zyprexa", 2.0))
    for bad in ("zyprexa", [1, 2], {"a": 1}, [""], ["ok", "  "]):
        with pytest.raises(HotwordError, match="cut c"):
            parse_hotword_entries(bad, 1.5, NORM, "cut c")
    from pipeline.inputs.hotwords import MAX_HOTWORDS

    huge = [f"word{i}" for i in range(MAX_HOTWORDS + 1)]
    with pytest.raises(HotwordError, match=f"more than the {MAX_HOTWORDS}"):
        parse_hotword_entries(huge, 1.5, NORM, "cut c")


def _cut(cut_id: str, source: str, duration: float, text: str, hotwords=None, sup_hotwords=None) -> dict:
    rec = {"id": f"rec-{cut_id}", "sources": [{"type": "file", "channels": [0], "source": source}],
           "sampling_rate": 16000, "num_samples": int(duration * 16000), "duration": duration, "channel_ids": [0]}
    sup = {"id": f"{cut_id}-sup", "recording_id": rec["id"], "start": 0.0, "duration": duration, "channel": 0,
           "text": text}
    if sup_hotwords is not None:
        sup["custom"] = {"hotwords": sup_hotwords}
    cut = {"id": cut_id, "start": 0.0, "duration": duration, "channel": 0, "type": "MonoCut",
           "supervisions": [sup], "recording": rec}
    if hotwords is not None:
        cut["custom"] = {"hotwords": hotwords}
    return cut


def _write_cuts(path: Path, cuts: list[dict]) -> Path:
    with gzip.open(path, "wt") as f:
        for c in cuts:
            f.write(json.dumps(c) + "\n")
    return path


def test_manifest_cuts_and_supervisions_carry_their_lists(tmp_path):
    from pipeline.inputs.manifests import iter_work_items

    wav = tmp_path / "a.wav"
    wav.write_bytes(b"")  # not read: no durations probed
    manifest = _write_cuts(tmp_path / "cuts.jsonl.gz", [
        _cut("a", str(wav), 2.0, "x", hotwords=["Zyprexa :2"], sup_hotwords=["paris", "Zyprexa :2"]),
        _cut("b", str(wav), 2.0, "x"),
        _cut("c", str(wav), 2.0, "x", hotwords="zyprexa"),
    ])
    items = {i.cut_id: i for i in iter_work_items(str(manifest), probe_durations=False)}
    assert items["a"].hotwords == ["Zyprexa :2", "paris"] and items["a"].error is None
    assert items["b"].hotwords is None
    assert items["c"].error and "custom['hotwords'] must be a list" in items["c"].error
    assert items["a"].to_dict()["hotwords"] == ["Zyprexa :2", "paris"]


def test_the_recognizer_builds_each_distinct_list_once_and_says_what_it_ignored():
    from model.recognizer import Recognizer

    rec = Recognizer.from_dir(DEMO)
    g, ignored = rec.hotword_graph([("zyprexa", 1.5), ("ZYPREXA", 2.0)])  # the demo's pieces are lower case
    assert g is not None and g.num_states == len(rec.tokenizer.encode("zyprexa")) + 1
    assert ignored == ("hotword 'ZYPREXA' ignored: the model's tokenizer cannot spell it",)
    assert rec.hotword_graph([("ZYPREXA", 2.0), ("zyprexa", 1.5)])[0] is g  # the same content, in any order
    assert rec.hotword_graph([("ZYPREXA", 2.0)]) == (None, ignored)
    assert rec.hotword_graph(None) == (None, ())


def _espeak(path: Path, text: str) -> Path:
    raw = path.with_suffix(".22k.wav")
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(raw), text], check=True)
    subprocess.run(["sox", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(path)], check=True)
    return path


def test_a_run_with_hotwords_writes_the_columns_and_error_rows(tmp_path):
    """In one process (pipeline.run.driver.run_in_process): --hotwords + per-cut lists; the rows
    carry hotword_score and hotwords_matched (exactly the listed phrases the normalised text
    holds); a malformed per-cut list is that cut's error row; a cut without any list has null
    columns."""
    import soundfile as sf

    from pipeline.run.config import TranscribeConfig
    from pipeline.run.driver import run_in_process

    texts = {"a": "the nurse gave him zyprexa today", "b": "we flew to paris in the morning",
             "c": "good morning to you"}
    cuts = []
    for cut_id, text in texts.items():
        wav = _espeak(tmp_path / f"{cut_id}.wav", text)
        duration = sf.info(str(wav)).duration
        own = {"a": ["Zyprexa :2"], "b": None, "c": ["bad :score"]}[cut_id]
        cuts.append(_cut(cut_id, str(wav), duration, text, hotwords=own))
    manifest = _write_cuts(tmp_path / "cuts.jsonl.gz", cuts)
    run_list = tmp_path / "hotwords.txt"
    run_list.write_text("Paris\nmorning :0.5\n")

    def run(run_id: str, **kw):
        from pipeline.run.summary import RunSummary

        cfg = TranscribeConfig(manifest=[str(manifest)], model=str(DEMO), output=str(tmp_path / "out"), **kw)
        done = run_in_process(cfg, run_id, num_threads=1)
        summary = RunSummary(run_id=run_id, manifest=[], output="", model_id="", model_sha256="", decoding="",
                             started_at="")
        for shard in done["shards"]:  # as the driver adds up the shards' results
            summary.add(shard.as_dict())
        table = pq.read_table(tmp_path / "out" / "transcripts" / f"run_id={run_id}")
        return summary, {r["cut_id"]: r for r in table.to_pylist()}

    plain_summary, plain = run("plain")  # no run list: only cut a has a list (its own)
    assert (plain_summary.hotword_cuts, plain_summary.hotword_phrases, plain_summary.hotword_max_phrases) == (1, 1, 1)
    assert plain["b"]["status"] == "ok" and plain["b"]["hotword_score"] is None and plain["b"]["hotwords_matched"] is None
    assert plain["a"]["hotword_score"] is not None
    assert plain["a"]["hotwords_matched"] == (["zyprexa"] if "zyprexa" in plain["a"]["hyp_norm"].split() else [])
    assert plain["c"]["status"] == "error" and "hotwords:" in plain["c"]["error"]
    biased_summary, biased = run("biased", hotwords=str(run_list), hotwords_score=1.5)
    # a: run list + its own (3 phrases), b: the run list (2); c's list is malformed: an error row, not counted
    assert (biased_summary.hotword_cuts, biased_summary.hotword_phrases, biased_summary.hotword_max_phrases) == (2, 5, 3)
    assert biased["c"]["status"] == "error" and "cut c" in biased["c"]["error"] and "score" in biased["c"]["error"]
    lists = {"a": ["morning", "paris", "zyprexa"], "b": ["morning", "paris"]}
    for cut_id, phrases in lists.items():
        row = biased[cut_id]
        assert row["status"] == "ok" and row["hotword_score"] is not None and row["hotword_score"] >= 0
        padded = f" {row['hyp_norm']} "
        assert row["hotwords_matched"] == [p for p in phrases if f" {p} " in padded]
    assert "paris" in biased["b"]["hotwords_matched"] or "paris" not in plain["b"]["hyp_norm"].split()


def test_bias_split_counts_as_le_et_al():
    """Reference "give him zyprexa and lithium now", list words {zyprexa, lithium, clozapine}:
    zyprexa substituted (B), lithium right (B), "and" deleted (U), clozapine inserted (B, by the
    inserted word), "now" -> "clozapine" substituted (U, by the reference word)."""
    from pipeline.output.records import TranscriptRow
    from pipeline.report.wer import bias_counts, score_row

    row = TranscriptRow(run_id="r", cut_id="c", status="ok", reference="Give him Zyprexa and lithium now.",
                        text="give him zyprexia lithium clozapine", hotword_words=["clozapine", "lithium", "zyprexa"])
    score_row(row, "english")
    assert row.errors == 3  # S zyprexa, D and, S now->clozapine (jiwer's alignment)
    assert (row.biased_ref_words, row.biased_errors, row.unbiased_ref_words, row.unbiased_errors) == (2, 1, 4, 2)
    edits = [{"op": "I", "ref": None, "hyp": "lithium"}, {"op": "S", "ref": "a", "hyp": "lithium"}]
    assert bias_counts("a b", edits, {"lithium"}) == (0, 1, 2, 1)
    plain = TranscriptRow(run_id="r", cut_id="d", status="ok", reference="a b", text="a")
    score_row(plain, "english")
    assert plain.biased_ref_words is None and plain.unbiased_errors is None


def test_reports_and_history_carry_b_wer_and_u_wer():
    from datetime import datetime, timezone

    from pipeline.output.records import TranscriptRow, rows_to_table
    from pipeline.report.history import history_rows
    from pipeline.report.html import render_html
    from pipeline.report.markdown import render_markdown
    from pipeline.report.tables import build_report
    from pipeline.report.wer import score_row

    rows = [
        TranscriptRow(run_id="r", cut_id="a", status="ok", dataset="med", reference="zyprexa today please",
                      text="zyprexia today please", hotword_words=["zyprexa"]),
        TranscriptRow(run_id="r", cut_id="b", status="ok", dataset="med", reference="lithium is fine",
                      text="lithium is fine fine", hotword_words=["lithium", "clozapine"]),
        TranscriptRow(run_id="r", cut_id="c", status="ok", dataset="plain", reference="good morning", text="good"),
    ]
    for r in rows:
        score_row(r, "english")
    report = build_report(rows_to_table(rows), run_id="r", created_at=datetime(2026, 12, 8, tzinfo=timezone.utc))
    by = {g["group_value"]: g for g in report.groups("dataset", any_dataset=True)}
    med, plain = by["med"], by["plain"]
    # biased words: zyprexa (substituted), lithium (right): 1 / 2; others: today, please, is, fine + "fine" inserted: 1 / 4
    assert (med["biased_ref_words"], med["biased_errors"], med["b_wer"]) == (2, 1, 0.5)
    assert (med["unbiased_ref_words"], med["unbiased_errors"], med["u_wer"]) == (4, 1, 0.25)
    assert plain["b_wer"] is None and plain["biased_ref_words"] is None
    md = render_markdown(report)
    section = md.split("## Hotwords: B-WER / U-WER")[1].split("##")[0]
    assert "50.00%" in section and "25.00%" in section and "plain" not in section
    assert "B-WER / U-WER" in render_html(report)
    hist = history_rows(report.table, {}, run_id="r", created_at=report.created_at, git_rev=None).to_pylist()
    assert {h["dataset"]: h["b_wer"] for h in hist} == {"med": 0.5, "plain": None}


def test_the_default_bonus_is_the_models_and_a_bad_list_stops_the_run_first(tmp_path):
    """--hotwords-score unset: the model's config.json decoding.hotwords_score (else 1.5) scores the
    run list's phrases; set: that value. A malformed run list fails validate_inputs, naming its line."""
    import soundfile as sf

    from pipeline.run.config import TranscribeConfig
    from pipeline.run.driver import fingerprint_parts, validate_inputs

    wav = tmp_path / "a.wav"
    sf.write(str(wav), [0.0] * 16000, 16000)
    listing = tmp_path / "in.txt"
    listing.write_text(f"{wav}\n")
    hw = tmp_path / "hw.txt"
    hw.write_text("Zyprexa\nParis :0.25\n")
    model_default = json.loads((DEMO / "config.json").read_text())["decoding"].get("hotwords_score", 1.5)
    cfg = TranscribeConfig(manifest=[str(listing)], model=str(DEMO), output=str(tmp_path / "out"), hotwords=str(hw))
    hw.write_text("Zyprexa\nParis :0.25\nUPPER\n")  # the demo's pieces are lower case: UPPER is never spelled
    facts = validate_inputs(cfg)
    assert "--hotwords: hotword 'upper' ignored" not in " ".join(facts.notes)  # normalised first: it is spelled
    assert facts.hotwords_score == model_default
    assert facts.hotwords == (("paris", 0.25), ("upper", model_default), ("zyprexa", model_default))
    cfg.hotwords_score = 0.7
    other = validate_inputs(cfg)
    assert other.hotwords == (("paris", 0.25), ("upper", 0.7), ("zyprexa", 0.7))
    cfg.normalizer = "none"  # kept as written: the demo's tokenizer cannot spell it, and the run says so
    assert "--hotwords: hotword 'UPPER' ignored: the model's tokenizer cannot spell it" in validate_inputs(cfg).notes
    cfg.normalizer = "english"
    assert fingerprint_parts(cfg, other) != fingerprint_parts(cfg, facts)  # a new list or bonus redoes the parts
    hw.write_text("fine\nbroken :x\n")
    with pytest.raises(HotwordError, match="hw.txt:2"):
        validate_inputs(cfg)


def test_the_transcribe_job_takes_hotwords_on_a_local_ray(tmp_path):
    """`python jobs/transcribe.py --hotwords FILE --hotwords-score B` on a private local Ray
    (RAY_ADDRESS=local, as tests/test_pipeline_e2e.py runs jobs): the summary states the list,
    its size and scores and which decodings bias; the rows carry the columns; a malformed list
    stops the job before it starts (exit 2, the file and line named)."""
    import os
    import sys

    import soundfile as sf

    cuts = []
    for cut_id, text, own in (("a", "we flew to paris in the morning", ["Lachesis :3"]),
                              ("b", "the package for tammie arrived yesterday", None)):
        wav = _espeak(tmp_path / f"{cut_id}.wav", text)
        cuts.append(_cut(cut_id, str(wav), sf.info(str(wav)).duration, text, hotwords=own))
    manifest = _write_cuts(tmp_path / "cuts.jsonl.gz", cuts)
    hw = tmp_path / "hw.txt"
    hw.write_text("Paris\nTammie :2.5\n")
    env = dict(os.environ, RAY_AUTH_MODE="disabled", ZIPSCRIBE_CACHE=str(tmp_path / "cache"), RAY_ADDRESS="local",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))

    def job(*extra):
        return subprocess.run([sys.executable, "jobs/transcribe.py", "--manifest", str(manifest), "--model", str(DEMO),
                               "--output", str(tmp_path / "out"), "--no-progress", "--summary-json", *extra],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)

    proc = job("--run-id", "hw", "--hotwords", str(hw), "--hotwords-score", "1.25", "--decoding", "attention-rescoring",
               "--decoding", "ctc-greedy")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert summary["hotwords"]["run_phrases"] == 2 and summary["hotwords"]["run_scores"] == [1.25, 2.5]
    assert summary["hotwords"]["default_score"] == 1.25
    assert [d.split()[0] for d in summary["hotwords"]["biased_decodings"]] == ["attention-rescoring"]
    assert [d.split()[0] for d in summary["hotwords"]["unbiased_decodings"]] == ["ctc-greedy"]
    rows = pq.read_table(tmp_path / "out" / "transcripts" / "run_id=hw").to_pylist()
    for r in rows:
        assert r["status"] == "ok"
        biased = r["decoding"].startswith("attention-rescoring")
        assert (r["hotword_score"] is not None) == biased  # greedy rows decode without the lists
        phrases = {"a": ["lachesis", "paris", "tammie"], "b": ["paris", "tammie"]}[r["cut_id"]]
        assert r["hotwords_matched"] == [p for p in phrases if f" {p} " in f" {r['hyp_norm']} "]
        assert r["biased_ref_words"] == sum(w in phrases for w in r["ref_norm"].split())
    hw.write_text("Paris :oops\n")
    bad = job("--run-id", "hw2", "--hotwords", str(hw))
    assert bad.returncode == 2 and "hw.txt:1" in bad.stderr


def test_a_stitched_long_cut_keeps_the_window_finds_its_text_holds():
    """Two windows (0-30 s, 20-50 s) of a 50 s cut, each with hotwords_matched and the words of the
    cut's list: the stitched row keeps the phrases its text still holds and is split into B-WER /
    U-WER by the list's words; hotword_score stays null (the windows' bonuses overlap)."""
    from dataclasses import asdict

    from model.tokenizer import Tokenizer
    from pipeline.longform.stitching import _stitch_one
    from pipeline.output.records import WindowRow

    tok = Tokenizer.from_file(DEMO / "bpe.model")

    def window(index: int, start: float, words: list[tuple[str, float]], matched: list[str]) -> dict:
        ids, times = [], []
        for word, t in words:
            pieces = tok.encode(word)
            ids += pieces
            times += [round(t - start + 0.05 * k, 3) for k in range(len(pieces))]
        row = WindowRow(run_id="r", cut_id="long", status="ok", recording_id="rec", source="x.wav", channel=None,
                        start_s=start, duration=30.0, text=tok.decode(ids), token_ids=ids, token_times=times,
                        confidence=0.9, window_index=index, window_count=2, cut_start=0.0, cut_duration=50.0,
                        hotwords_matched=matched, hotword_score=3.0, reference="paris then lachesis" if index == 0
                        else None, shard_id="s", worker="w", hotword_words=["lachesis", "paris", "tammie"])
        return asdict(row)

    rows = [window(0, 0.0, [("paris", 2.0), ("then", 10.0)], ["paris"]),
            window(1, 20.0, [("lachesis", 40.0)], ["lachesis", "tammie"])]
    out, _ = _stitch_one(rows, "r", tok, "english", 4.0, 30.0)
    assert out.text == "paris then lachesis"
    assert out.hotwords_matched == ["lachesis", "paris"]  # "tammie" is not in the stitched text
    assert out.hotword_score is None
    assert (out.biased_ref_words, out.biased_errors, out.unbiased_ref_words, out.unbiased_errors) == (2, 0, 1, 0)
    missed, _ = _stitch_one([rows[0], window(1, 20.0, [("lashes", 40.0)], [])], "r", tok, "english", 4.0, 30.0)
    assert missed.text == "paris then lashes" and missed.hotwords_matched == ["paris"]
    assert (missed.biased_ref_words, missed.biased_errors, missed.unbiased_ref_words, missed.unbiased_errors) == (2, 1, 1, 0)
    plain = [dict(r, hotwords_matched=None, hotword_words=None) for r in rows]
    stitched = _stitch_one(plain, "r", tok, "english", 4.0, 30.0)[0]
    assert stitched.hotwords_matched is None and stitched.biased_ref_words is None


def test_the_text_summary_states_the_list_and_which_decodings_bias():
    from pipeline.run.summary import RunSummary, format_summary

    base = {"run_id": "r", "manifest": [], "output": "o", "model_id": "m", "model_sha256": "x" * 64, "decoding": "d",
            "started_at": ""}
    hw = {"run_list": "hw.txt", "run_phrases": 2, "run_scores": [1.25, 2.5], "default_score": 1.25, "per_cut_lists": "",
          "biased_decodings": ["attention-rescoring beam=8"], "unbiased_decodings": ["ctc-greedy"]}
    text = format_summary(RunSummary(**base, hotwords=hw, hotword_cuts=4, hotword_phrases=10, hotword_max_phrases=3))
    assert ("hotwords: run list hw.txt (2 phrases, scores 1.25, 2.5), merged with each cut's custom['hotwords']; 4 "
            "cut(s) decoded with a list (2.5 phrases on average, at most 3); default 1.25 per token; biased: "
            "attention-rescoring beam=8; cannot bias (decoded without lists): ctc-greedy") in text
    assert "hotwords" not in format_summary(RunSummary(**base))
    # lists from the manifest only: still stated
    per_cut = dict(hw, run_list=None, run_phrases=0, run_scores=[])
    text = format_summary(RunSummary(**base, hotwords=per_cut, hotword_cuts=1, hotword_phrases=7, hotword_max_phrases=7))
    assert "hotwords: no run list, merged with each cut's custom['hotwords']; 1 cut(s) decoded with a list (7.0" in text
