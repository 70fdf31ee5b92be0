"""Long recordings through the real actor code (no Ray here; see test_pipeline_e2e for the
Ray job): windows, range reads, stitching, and WER against transcribing the same sentences
one by one with the shipped demo model."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from helpers import make_tiny_model_dir
from model.training.corpus import long_recording, recording_manifest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "jobs"))
from demo import held_out_sentences  # noqa: E402  (test-split sentences of the demo corpus)
DEMO = REPO / "model" / "assets" / "demo"

pytestmark = pytest.mark.needs_tools("espeak-ng", "sox", word_list=True)


def run_in_process(manifest: Path, model_dir: Path, output: Path, run_id: str, *, max_cut: float, overlap: float,
                   shard_size: int = 4, threads: int = 2):
    """The driver's flow without Ray (pipeline.run.driver.run_in_process); the run's rows."""
    from pipeline.run.config import TranscribeConfig
    from pipeline.run.driver import run_in_process as run_local

    cfg = TranscribeConfig(manifest=[str(manifest)], model=str(model_dir), output=str(output), shard_size=shard_size,
                           max_batch_seconds=120.0, max_cut_seconds=max_cut, window_overlap_seconds=overlap)
    done = run_local(cfg, run_id, num_threads=threads)
    rows = []
    for part in sorted((output / "transcripts" / f"run_id={run_id}").glob("*.parquet")):
        rows += pq.read_table(part).to_pylist()
    return rows, done["stitched"], done["actor"]


def _transcribe(waves) -> list[str]:
    from model.recognizer import Recognizer

    rec = Recognizer.from_dir(DEMO)
    texts = []
    for k in range(0, len(waves), 8):
        transcripts, _ = rec.transcribe(waves[k:k + 8])
        texts += [t.text for t in transcripts]
    return texts


def _oracle_chunks(recording: np.ndarray, sentences, waves, starts, limit: float):
    """The recording cut at sentence boundaries into chunks of at most ``limit`` seconds: the
    same multi-sentence context as the windows, but no cut through speech and no seam."""
    chunks, refs, i = [], [], 0
    while i < len(sentences):
        j = i
        while j + 1 < len(sentences) and starts[j + 1] + waves[j + 1].size / 16000 - starts[i] <= limit:
            j += 1
        a, b = int(starts[i] * 16000), int((starts[j] + waves[j].size / 16000) * 16000)
        chunks.append(recording[a:b])
        refs.append(" ".join(sentences[i:j + 1]))
        i = j + 1
    return chunks, refs


@pytest.mark.parametrize("pauses", [(0.3, 0.9), (0.0, 0.0)], ids=["with-pauses", "no-pauses"])
def test_long_recording_matches_segmented_wer(tmp_path, pauses):
    from pipeline.report.wer import corpus_wer

    sentences = held_out_sentences(60, offset=200 if pauses[1] else 260)
    wav = tmp_path / "long.wav"
    waves, starts = long_recording(wav, sentences, pauses, seed=1)
    duration = sf.info(str(wav)).duration
    assert duration > 150  # several minutes, many seams
    reference = " ".join(sentences)
    manifest = recording_manifest(tmp_path / "cuts.jsonl.gz", wav, "meeting", reference)
    rows, stitched, actor = run_in_process(manifest, DEMO, tmp_path / "out", "long", max_cut=30.0, overlap=4.0)

    (row,) = rows  # one row for the recording, not one per window
    assert row["cut_id"] == "meeting" and row["status"] == "ok" and row["start_s"] == 0.0
    assert row["duration"] == pytest.approx(duration)
    n_windows = stitched.windows
    assert n_windows >= 6 and stitched.seams == n_windows - 1
    times = row["token_times"]
    assert len(times) == len(row["token_ids"]) > 100
    assert all(a <= b for a, b in zip(times, times[1:])) and 0.0 <= times[0] and times[-1] <= duration
    # the text's first and last words are placed where those sentences were spoken
    assert abs(times[0] - starts[0]) < 1.0 and times[-1] > starts[-1]

    long_wer = corpus_wer([reference], [row["text"]])
    one_by_one = corpus_wer(sentences, _transcribe(waves))
    recording, _ = sf.read(str(wav), dtype="float32")
    chunks, chunk_refs = _oracle_chunks(recording, sentences, waves, starts, limit=26.0)
    chunk_texts = _transcribe(chunks)
    oracle_wer = corpus_wer(chunk_refs, chunk_texts)
    hyp_words, oracle_words = len(row["text"].split()), sum(len(t.split()) for t in chunk_texts)
    print(f"pauses {pauses}: {n_windows} windows, {stitched.seams_aligned}/{stitched.seams} seams aligned; WER long-form "
          f"{long_wer:.2f} %, sentence-aligned chunks {oracle_wer:.2f} %, one sentence at a time {one_by_one:.2f} %; "
          f"words {hyp_words} vs {oracle_words}")
    assert row["errors"] is not None and row["ref_words"] == len(reference.split())
    assert 100.0 * row["errors"] / row["ref_words"] == pytest.approx(long_wer, abs=0.01)
    # The bar: with pauses, within 1 point (absolute) of the same sentences one by one.
    # Windows are cut at their pauses and rescored in <= 6 s segments, so each sentence is
    # decoded about as it is alone (measured with the first demo model over several runs: 5.6-6.3
    # vs 5.8-6.3 % with pauses, 5.7-5.9 vs 4.6 % without; bench/longform_wer.py runs more
    # recordings). Before that, the 30 s windows gave 14.4 / 9.0 %: n-best rescoring of a whole
    # window fixes little.
    # The demo model trained on natural text (issue 19) measured 20.9 vs 20.5 % with pauses and
    # 22.6 vs 19.0 % without at beam 8. Its shipped decoding (beam 32, word LM, chosen on dev)
    # helps a sentence alone more than a stream: over 6 recordings with pauses (bench offsets
    # 200-800), long - one by one = -0.5 .. +1.7 points (mean +0.7; +1.2 on this one); over 10
    # without pauses, long - sentence-aligned chunks = -2.7 .. +3.2 (mean +1.1; +1.55 on this one)
    # and long - one by one = +2.9 .. +7.5 (mean +5.0; +4.65 on this one). The audio is the same
    # every run (speak_plain: no dither), so each figure here is too.
    if pauses[1]:
        assert long_wer <= one_by_one + 1.5
        assert long_wer <= oracle_wer  # no worse than sentence-aligned chunks: the pieces work
    else:  # no pause to cut at: only the segmented rescoring helps, and windows start mid-sentence
        assert long_wer <= one_by_one + 6.0
        assert long_wer <= oracle_wer + 2.0
    # nothing dropped or doubled wholesale at the seams: word counts follow the chunked transcripts
    assert abs(hyp_words - oracle_words) <= 0.05 * oracle_words
    # the windows were read as byte ranges of the WAV, not as whole-file downloads
    assert actor._ranges.bytes_fetched < 2.0 * wav.stat().st_size


def test_windows_of_a_flac_file_share_one_local_copy(tmp_path):
    """Formats without a byte map (FLAC here) are fetched once per actor into a temporary
    copy and every window decodes its own range from it."""
    model_dir = make_tiny_model_dir(tmp_path / "model")
    sentences = held_out_sentences(8, offset=0)
    wav = tmp_path / "long.wav"
    long_recording(wav, sentences * 3, (0.2, 0.5), seed=2)
    flac = tmp_path / "long.flac"
    subprocess.run(["sox", str(wav), str(flac)], check=True, capture_output=True)
    manifest = recording_manifest(tmp_path / "cuts.jsonl.gz", flac, "rec", " ".join(sentences * 3))
    rows, stitched, actor = run_in_process(manifest, model_dir, tmp_path / "out", "flac", max_cut=10.0, overlap=2.0,
                                           threads=1)
    (row,) = rows
    assert row["status"] == "ok" and stitched.windows >= 5
    assert row["duration"] == pytest.approx(sf.info(str(flac)).duration)
    # one copy of the file (plus the header reads), not one per window
    assert actor._ranges.bytes_fetched < flac.stat().st_size + stitched.windows * 65536 + 1


def test_long_recording_is_read_window_by_window(tmp_path, monkeypatch):
    """An 8-minute file is never fetched whole into memory nor decoded as one array: no whole-object
    read of it, every window's audio is its own range, and its windows, all in one shard, are read
    in one pass: the bytes fetched are the file's, once (not once per window, overlaps again).
    (Peak RSS over recording length is measured by bench/longform_memory.py, see the README;
    it varies by batch by more than a whole-file decode of a short file would add, so it is
    not asserted here.)"""
    import importlib.util

    from pipeline.io import ranges as audio_ranges, storage

    spec = importlib.util.spec_from_file_location("longform_memory", REPO / "bench" / "longform_memory.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    wav = tmp_path / "long.wav"
    seconds = bench.build_recording(wav, 8.0, tmp_path)
    manifest = recording_manifest(tmp_path / "cuts.jsonl.gz", wav, "long", "unused")

    whole_reads = []
    real_read_bytes = storage.read_bytes
    monkeypatch.setattr(storage, "read_bytes", lambda uri, **kw: whole_reads.append(uri) or real_read_bytes(uri, **kw))
    decoded = []
    real_read = audio_ranges.RangeReader.read_spans

    def read_spans(self, source, spans, **kw):
        results, stats = real_read(self, source, spans, **kw)
        decoded.extend(out.samples.size for out in results)
        return results, stats

    monkeypatch.setattr(audio_ranges.RangeReader, "read_spans", read_spans)
    started = time.monotonic()
    # shard size 8: the shard cap (32 items) holds all ~19 windows, so they are one shard
    rows, stitched, actor = run_in_process(manifest, DEMO, tmp_path / "out", "mem", max_cut=30.0, overlap=4.0,
                                           shard_size=8)
    elapsed = time.monotonic() - started
    # the heap is trimmed at most once per interval (pipeline.run.heap), not after each of the
    # run's batches (which made every batch fault its memory in afresh)
    from pipeline.run.heap import TRIM_INTERVAL_S

    assert 1 <= actor._heap.trims <= 1 + elapsed / TRIM_INTERVAL_S
    (row,) = rows
    assert row["status"] == "ok" and row["duration"] == pytest.approx(seconds)
    # the demo model rescores with its word LM: the stitched cut carries the LM's share of the choice
    assert row["lm_score"] is not None and row["lm_score"] < 0
    assert str(wav) not in whole_reads
    assert len(decoded) == stitched.windows >= 18 and max(decoded) <= 30 * 16000
    size = wav.stat().st_size
    # the file once (the windows overlap by 4 s: read per window it would be ~15 % more)
    assert size <= actor._ranges.bytes_fetched <= 1.01 * size


def test_windows_reach_the_model_as_the_speech_between_pauses(tmp_path, monkeypatch):
    """Each window is cut at its pauses: the model sees sentence-sized inputs, never a window,
    and the stitched token times fall on the sentences, not on the silences between them."""
    from model.recognizer import Recognizer

    sentences = held_out_sentences(12, offset=320)
    wav = tmp_path / "talk.wav"
    waves, starts = long_recording(wav, sentences, (0.8, 1.2), seed=5)
    duration = sf.info(str(wav)).duration
    assert duration > 45
    seen: list[float] = []
    original = Recognizer.transcribe_all

    def spy(self, waveforms, overlap=None):
        seen.extend(w.size / 16000 for w in getattr(waveforms, "waveforms", waveforms))  # a list, or a prepared batch
        return original(self, waveforms, overlap)

    monkeypatch.setattr(Recognizer, "transcribe_all", spy)
    manifest = recording_manifest(tmp_path / "cuts.jsonl.gz", wav, "talk", " ".join(sentences))
    rows, stitched, _ = run_in_process(manifest, DEMO, tmp_path / "out", "pieces", max_cut=20.0, overlap=4.0)
    (row,) = rows
    assert stitched.windows >= 3 and row["status"] == "ok"
    longest = max(w.size for w in waves) / 16000
    assert max(seen) <= longest + 0.6 + 1e-6  # a sentence and at most 0.3 s of silence each side
    assert len(seen) >= len(sentences)  # (sentences in window overlaps are transcribed in both)
    spans = [(s, s + w.size / 16000) for s, w in zip(starts, waves)]
    # on a sentence, not in a pause: a CTC spike may come up to two output frames (40 ms each)
    # before the sentence's first sample (the current demo model: 85 ms once in this recording)
    for t in row["token_times"]:
        assert any(a - 0.1 <= t <= b for a, b in spans), (t, [sp for sp in spans if sp[0] - 2 < t < sp[1] + 2])
    # about the model card's test WER (24.7 % with rescoring; 20.0 % measured here on these 12
    # sentences): a 5-point margin for 95 words
    card = json.loads((DEMO / "train_log.json").read_text())["test"]["attention-rescoring"]
    assert 100.0 * row["errors"] / row["ref_words"] <= card + 5.0
    # the pauses were not transcribed: the summary counts less model input than audio
    from pipeline.output.parquet import part_summary

    (part,) = (tmp_path / "out" / "transcripts" / "run_id=pieces").glob("part-shard-*.parquet")
    summary = part_summary(str(part))
    gaps = sum(b - a for a, b in zip([s + w.size / 16000 for s, w in zip(starts, waves)], starts[1:]))
    print(f"audio {summary['audio_seconds']:.1f} s, model input {summary['model_input_seconds']:.1f} s, "
          f"pauses between sentences {gaps:.1f} s")
    assert summary["model_input_seconds"] < summary["audio_seconds"] - 0.25 * gaps


def test_a_failed_window_makes_one_error_row_naming_it(tmp_path):
    """The manifest promises 60 s but the file holds 35 s: the windows past the end fail, and
    the recording becomes a single error row that says which windows and where."""
    from lhotse import AudioSource, CutSet, Recording, SupervisionSegment
    from lhotse.cut import MonoCut

    model_dir = make_tiny_model_dir(tmp_path / "model")
    wav = tmp_path / "short.wav"
    long_recording(wav, held_out_sentences(10, offset=20), (0.2, 0.4), seed=3)
    real = sf.info(str(wav)).duration
    assert 25 < real < 50
    rec = Recording(id="r", sources=[AudioSource(type="file", channels=[0], source=str(wav))], sampling_rate=16000,
                    num_samples=60 * 16000, duration=60.0)
    sup = SupervisionSegment(id="r", recording_id="r", start=0.0, duration=60.0, text="some words")
    manifest = tmp_path / "cuts.jsonl.gz"
    CutSet.from_cuts([MonoCut(id="r", start=0.0, duration=60.0, channel=0, recording=rec, supervisions=[sup])]).to_file(str(manifest))
    rows, stitched, _ = run_in_process(manifest, model_dir, tmp_path / "out", "bad", max_cut=20.0, overlap=4.0, threads=1)
    (row,) = rows
    assert row["status"] == "error" and row["text"] is None and row["errors"] is None
    assert "window 4/4 (40.0-60.0 s)" in row["error"] and ("beyond end" in row["error"] or "truncated" in row["error"])
    assert "window 1/4" not in row["error"]
    assert row["ref_norm"] == "some words" and row["duration"] == 60.0
    assert (stitched.cuts_ok, stitched.cuts_error) == (0, 1)


def test_rerun_stitches_each_long_cut_once(tmp_path):
    model_dir = make_tiny_model_dir(tmp_path / "model")
    wav = tmp_path / "long.wav"
    sentences = held_out_sentences(12, offset=40)
    long_recording(wav, sentences, (0.2, 0.6), seed=4)
    manifest = recording_manifest(tmp_path / "cuts.jsonl.gz", wav, "rec", " ".join(sentences))
    out = tmp_path / "out"
    rows, first, _ = run_in_process(manifest, model_dir, out, "again", max_cut=12.0, overlap=2.0, threads=1)
    part = next((out / "transcripts" / "run_id=again").glob("part-long-*.parquet"))
    stamp = part.stat().st_mtime_ns
    rows2, second, _ = run_in_process(manifest, model_dir, out, "again", max_cut=12.0, overlap=2.0, threads=1)
    assert first.cuts_ok == 1 and second.cuts_skipped == 1 and second.cuts_ok == 1
    assert part.stat().st_mtime_ns == stamp and len(rows2) == 1 and rows2[0]["text"] == rows[0]["text"]
