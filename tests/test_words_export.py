"""One run, three decodings; the words table; subtitles and JSON per recording.

A real recording: three held-out demo-corpus sentences spoken by espeak-ng with 1.2 s of
silence between them (sox). Recording ``long`` is the whole file as one cut, longer than
``--max-cut-seconds``, so it is transcribed in windows and stitched; recording ``part`` is the
same audio file under another id with a cut that starts at the second sentence (a cut that does
not start at 0). ``jobs/transcribe.py`` runs with local Ray and three ``--decoding`` methods;
each method is then run on its own (the same pipeline in one process,
``pipeline.run.driver.run_in_process``) and must give the same texts. The words table is
checked against the known sentence spans; SRT and WebVTT exports are parsed with the ``srt``
and ``webvtt-py`` packages.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest

from audio_testing import speak
from helpers import named_queries
from services import REPO

pytestmark = pytest.mark.needs_tools("espeak-ng", "sox", word_list=True)

DEMO = REPO / "model" / "assets" / "demo"
METHODS = ("ctc-greedy", "ctc-beam", "attention-rescoring")
PAUSE = 1.2
MAX_CUT = 9.0


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    import soundfile as sf
    from lhotse import AudioSource, MonoCut, Recording, SupervisionSegment

    sys.path.insert(0, str(REPO / "jobs"))
    import demo as demo_job

    root = tmp_path_factory.mktemp("words")
    sentences = [s for s in demo_job.held_out_sentences(40, offset=100) if 5 <= len(s.split()) <= 9][:3]
    pieces, spans, t = [], [], 0.0
    silence = np.zeros(int(PAUSE * 16000), dtype=np.float32)
    for k, text in enumerate(sentences):
        wav = speak(text, root / f"s{k}.wav", voice=("en-us", "en-gb", "en-us")[k])
        audio, rate = sf.read(str(wav), dtype="float32")
        assert rate == 16000
        if k:
            pieces.append(silence)
            t += PAUSE
        pieces.append(audio)
        spans.append((t, t + audio.size / 16000))
        t += audio.size / 16000
    path = root / "three.wav"
    sf.write(str(path), np.concatenate(pieces), 16000, subtype="PCM_16")
    duration = sum(p.size for p in pieces) / 16000
    assert duration > MAX_CUT, duration

    manifest = root / "cuts.jsonl"
    second_start = round(spans[1][0] - 0.3, 2)
    second_end = round(spans[1][1] + 0.3, 2)
    with manifest.open("w") as f:
        for rec_id, cut_id, start, end, text in (("long", "long-0", 0.0, duration, " ".join(sentences)),
                                                 ("part", "part-1", second_start, second_end, sentences[1])):
            rec = Recording(id=rec_id, sources=[AudioSource(type="file", channels=[0], source=str(path))],
                            sampling_rate=16000, num_samples=int(round(duration * 16000)), duration=duration)
            sup = SupervisionSegment(id=cut_id, recording_id=rec_id, start=0, duration=round(end - start, 3),
                                     channel=0, text=text, speaker="spk")
            cut = MonoCut(id=cut_id, start=start, duration=round(end - start, 3), channel=0, recording=rec,
                          supervisions=[sup])
            f.write(json.dumps(cut.to_dict()) + "\n")
    return dict(root=root, sentences=sentences, spans=spans, duration=duration, manifest=manifest,
                second=(second_start, second_end))


def env_for(root: Path) -> dict[str, str]:
    env = dict(os.environ, RAY_AUTH_MODE="disabled", ZIPSCRIBE_CACHE=str(root / "cache"))
    env["RAY_ADDRESS"] = "local"  # a private Ray, whatever else runs on this machine
    return env


@pytest.fixture(scope="module")
def run(recording):
    """jobs/transcribe.py with three decodings (local Ray)."""
    out = recording["root"] / "out"
    args = [sys.executable, "jobs/transcribe.py", "--manifest", str(recording["manifest"]), "--model", str(DEMO),
            "--output", str(out), "--run-id", "multi", "--no-progress", "--max-cut-seconds", str(MAX_CUT)]
    for m in METHODS:
        args += ["--decoding", m]
    proc = subprocess.run(args, cwd=REPO, env=env_for(recording["root"]), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return dict(out=out, stdout=proc.stdout)


def rows_of(out: Path, run_id: str) -> list[dict]:
    return pq.read_table(out / "transcripts" / f"run_id={run_id}").to_pylist()


def test_one_run_gives_each_cut_once_per_decoding_and_the_texts_of_separate_runs(recording, run):
    from pipeline.run.config import TranscribeConfig
    from pipeline.run.driver import run_in_process

    rows = rows_of(run["out"], "multi")
    labels = sorted({r["decoding"] for r in rows})
    assert [label.split()[0] for label in labels] == sorted(METHODS)
    assert sorted((r["cut_id"], r["decoding"]) for r in rows) == sorted(
        (c, d) for c in ("long-0", "part-1") for d in labels)  # each cut exactly once per decoding
    assert all(r["status"] == "ok" and r["text"] for r in rows)
    summary = json.loads((run["out"] / "runs" / "multi" / "summary.json").read_text())
    assert summary["cuts_ok"] == 2 and summary["long_cuts"] == 1 and len(summary["decodings"]) == 3
    # the report has a table per decoding
    report = pq.read_table(run["out"] / "wer_groups" / "run_id=multi" / "part-00000.parquet").to_pylist()
    assert sorted(g["decoding"] for g in report if g["group_by"] == "all") == labels

    for method in METHODS:
        single = recording["root"] / f"single-{method}"
        cfg = TranscribeConfig(manifest=[str(recording["manifest"])], model=str(DEMO), output=str(single),
                               decoding={"method": method}, max_cut_seconds=MAX_CUT, progress=False)
        run_in_process(cfg, run_id="one")
        alone = {r["cut_id"]: r for r in rows_of(single, "one")}
        together = {r["cut_id"]: r for r in rows if r["decoding"].split()[0] == method}
        assert sorted(alone) == sorted(together)
        for cut_id, r in alone.items():
            assert r["decoding"] == together[cut_id]["decoding"]
            assert r["text"] == together[cut_id]["text"], (method, cut_id)
            assert r["token_ids"] == together[cut_id]["token_ids"]


def test_words_table_has_the_words_at_their_times_in_the_recording(recording, run):
    from pipeline.report.wer import word_errors

    con = duckdb.connect()
    words = con.sql(f"SELECT * FROM read_parquet('{run['out']}/words/**/*.parquet', hive_partitioning = 1, "
                    "hive_types_autocast = 0) ORDER BY decoding, cut_id, word_index").to_arrow_table().to_pylist()
    rows = {(r["cut_id"], r["decoding"]): r for r in rows_of(run["out"], "multi")}
    assert {w["run_id"] for w in words} == {"multi"}
    assert {(w["cut_id"], w["decoding"]) for w in words} == set(rows)
    spans = recording["spans"]
    for (cut_id, decoding), row in rows.items():
        mine = [w for w in words if (w["cut_id"], w["decoding"]) == (cut_id, decoding)]
        assert [w["word_index"] for w in mine] == list(range(len(mine)))
        # the words are the row's text, in order
        assert " ".join(w["word"] for w in mine) == " ".join(row["text"].split())
        starts = [w["start_s"] for w in mine]
        assert starts == sorted(starts)
        assert all(w["start_s"] <= w["end_s"] for w in mine)
        assert all(mine[i]["end_s"] <= mine[i + 1]["start_s"] + 1e-6 for i in range(len(mine) - 1))
        assert all(0.0 < w["confidence"] <= 1.0 for w in mine)
        lo, hi = (0.0, recording["duration"]) if cut_id == "long-0" else recording["second"]
        assert all(lo - 1e-6 <= w["start_s"] and w["end_s"] <= hi + 1e-6 for w in mine), (cut_id, lo, hi)
        # recording time: each sentence's words lie in its span (0.3 s of slack for CTC's timing)
        sentences = recording["sentences"] if cut_id == "long-0" else recording["sentences"][1:2]
        own = spans if cut_id == "long-0" else spans[1:2]
        for sentence, (a, b) in zip(sentences, own):
            inside = [w["word"] for w in mine if a - 0.3 <= w["start_s"] < b + 0.3]
            errs = word_errors(sentence, " ".join(inside))
            # the demo model's own WER on its test split is ~9 % (more on some sentences): a sentence's
            # words, found by their times, match it but for its recognition errors; words from the wrong
            # place (another sentence's) would not match at all
            assert errs.errors <= 0.5 * errs.ref_words, (sentence, inside, errs)
        # nothing in the pauses
        assert not [w for w in mine if any(b + 0.3 <= w["start_s"] < a2 - 0.3 for (_, b), (a2, _) in zip(own, own[1:]))]


def export(run, fmt: str, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "jobs/export.py", "--run", str(run["out"]), "--run-id", "multi", "--format",
                           fmt, "--out", str(out), *extra], cwd=REPO, capture_output=True, text=True, timeout=300)


def vtt_seconds(stamp: str) -> float:
    """``HH:MM:SS.mmm`` (as webvtt-py parsed it) in seconds."""
    h, m, rest = stamp.split(":")
    return int(h) * 3600 + int(m) * 60 + float(rest)


def test_subtitles_parse_and_break_at_pauses(recording, run):
    import srt
    import webvtt

    root = recording["root"]
    ambiguous = export(run, "srt", root / "srt")
    assert ambiguous.returncode == 2 and "--decoding" in ambiguous.stderr and "Traceback" not in ambiguous.stderr
    missing = subprocess.run([sys.executable, "jobs/export.py", "--run", str(run["out"]), "--run-id", "nope", "--format",
                              "srt", "--out", str(root / "x")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "no words" in missing.stderr and "Traceback" not in missing.stderr

    words = duckdb.connect().sql(
        f"SELECT recording_id, word FROM read_parquet('{run['out']}/words/**/*.parquet') "
        "WHERE decoding LIKE 'attention-rescoring%' ORDER BY recording_id, start_s, word_index").fetchall()
    for fmt in ("srt", "vtt", "json"):
        proc = export(run, fmt, root / fmt, "--decoding", "attention-rescoring")
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert sorted(p.name for p in (root / fmt).iterdir()) == [f"long.{fmt}", f"part.{fmt}"]

    spans = recording["spans"]
    for rec in ("long", "part"):
        subs = list(srt.parse((root / "srt" / f"{rec}.srt").read_text()))
        vtt = webvtt.read(str(root / "vtt" / f"{rec}.vtt"))
        doc = json.loads((root / "json" / f"{rec}.json").read_text())
        assert len(subs) == len(vtt.captions) == len(doc["segments"]) >= 1
        expected = [w for r, w in words if r == rec]
        assert " ".join(s.content.replace("\n", " ") for s in subs).split() == expected
        assert " ".join(c.text.replace("\n", " ") for c in vtt.captions).split() == expected
        assert [w["word"] for seg in doc["segments"] for w in seg["words"]] == expected
        times = [(s.start.total_seconds(), s.end.total_seconds()) for s in subs]
        assert times == sorted(times) and all(a < b for a, b in times)
        assert all(times[i][1] <= times[i + 1][0] + 1e-6 for i in range(len(times) - 1))
        for s, c, seg, (a, b) in zip(subs, vtt.captions, doc["segments"], times):
            assert len(s.content) <= 42 and b - a <= 7.0 + 1e-6
            assert abs(vtt_seconds(c.start) - a) < 0.002 and abs(vtt_seconds(c.end) - b) < 0.002
            assert abs(seg["start"] - a) < 0.002 and seg["text"] == s.content
            # no cue runs across a pause between two sentences
            assert not any(a < spans[k][1] and b > spans[k + 1][0] for k in range(len(spans) - 1)), (a, b)
        assert doc["recording_id"] == rec and doc["decoding"].startswith("attention-rescoring")
    long_cues = list(srt.parse((root / "srt" / "long.srt").read_text()))
    assert len(long_cues) >= 3  # at least one cue per sentence: the pauses split them


def test_documented_words_queries(recording, run):
    """docs/queries.sql's words queries on the run: a phrase of the second sentence is found in both
    recordings inside that sentence's time span; one speaker, at espeak's speaking rate."""
    queries = named_queries()
    con = duckdb.connect()
    con.execute(f"SET VARIABLE output = '{run['out']}'")
    con.execute("SET VARIABLE run_id = 'multi'")
    said = con.sql(f"SELECT list(lower(word) ORDER BY word_index) FROM read_parquet('{run['out']}/words/**/*.parquet') "
                   "WHERE cut_id = 'part-1' AND decoding LIKE 'attention-rescoring%'").fetchall()[0][0]
    phrase = said[1:4]
    con.execute("SET VARIABLE phrase = $p", {"p": phrase})
    hits = con.sql(queries["phrase_search"]).to_arrow_table().to_pylist()
    a, b = recording["spans"][1]
    mine = [h for h in hits if h["decoding"].startswith("attention-rescoring")]
    assert {h["recording_id"] for h in mine} == {"long", "part"}, (phrase, hits)
    assert all(a - 0.3 <= h["start_s"] < h["end_s"] <= b + 0.3 for h in mine), (hits, a, b)
    rates = con.sql(queries["words_per_minute_per_speaker"]).to_arrow_table().to_pylist()
    assert [r["speaker"] for r in rates] == ["spk"] and rates[0]["cuts"] == 2
    assert 80 <= rates[0]["words_per_minute"] <= 300, rates  # espeak-ng speaks at ~175 words per minute
