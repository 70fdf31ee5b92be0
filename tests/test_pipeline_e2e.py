"""End to end on real services: a Ray head (token auth) + `ray job submit`, moto S3 over
HTTP, espeak-ng audio, Parquet read back with DuckDB and pyarrow."""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest

from audio_testing import ffmpeg, speak
from helpers import make_tiny_model_dir
from s3_testing import moto_environment
from services import REPO, RayHead, wait_for

pytestmark = pytest.mark.needs_tools("espeak-ng", "sox", "ffmpeg")

SENTENCES = {
    "utt-a": "hello world",
    "utt-b": "the quick brown fox jumps over the lazy dog",
    "utt-c": "speech recognition turns audio into text",
    "utt-d": "one two three",
    "utt-e": "object storage holds the audio and the transcripts for the analysts",
}
EXPECTED_ERRORS = {
    "corrupt": "not a recognised audio format",
    "empty": "empty file",
    "missing": "Missing",
    "header-only": "zero samples",
    "truncated": "truncated audio",
}
GOOD = list(SENTENCES) + ["utt-8k", "utt-stereo", "utt-mp3", "utt-opus", "silence"]


@pytest.fixture(scope="module")
def s3():
    """moto on 127.0.0.1; its endpoint and fake credentials in this process's environment
    (boto3 and the pipeline read them from there) and returned for the Ray head's."""
    with moto_environment() as env:
        yield env


@pytest.fixture(scope="module")
def ray_head(s3, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    head = RayHead(num_cpus=2, env={**s3, "ZIPSCRIBE_CACHE": str(cache)}).start()
    yield head
    head.stop()


def _put(client, uri: str, data: bytes) -> None:
    bucket, key = uri[len("s3://"):].split("/", 1)
    client.put_object(Bucket=bucket, Key=key, Body=data)


@pytest.fixture(scope="module")
def corpus(s3, tmp_path_factory):
    """Model and audio in S3 plus a lhotse CutSet manifest with references."""
    import boto3
    from lhotse import AudioSource, MonoCut, Recording, SupervisionSegment
    import soundfile as sf

    root = tmp_path_factory.mktemp("corpus")
    client = boto3.client("s3")
    for bucket in ("models", "data", "out"):
        client.create_bucket(Bucket=bucket)
    model_dir = make_tiny_model_dir(root / "model")
    for f in model_dir.iterdir():
        _put(client, f"s3://models/tiny/{f.name}", f.read_bytes())

    cuts = []

    def add(cut_id: str, path: Path, text: str | None, channels=(0,), channel=0, fake=None):
        uri = f"s3://data/audio/{path.name}"
        if path.exists():
            _put(client, uri, path.read_bytes())
        if fake:
            sr, n = fake
        else:
            info = sf.info(str(path))
            sr, n = info.samplerate, info.frames
        rec = Recording(id=cut_id, sources=[AudioSource(type="url", channels=list(channels), source=uri)],
                        sampling_rate=sr, num_samples=n, duration=n / sr)
        sups = [] if text is None else [SupervisionSegment(id=cut_id, recording_id=cut_id, start=0, duration=rec.duration,
                                                            channel=channel, text=text, speaker=f"spk-{cut_id[-1]}", language="English")]
        cuts.append(MonoCut(id=cut_id, start=0, duration=rec.duration, channel=channel, recording=rec, supervisions=sups))

    for i, (cut_id, text) in enumerate(SENTENCES.items()):
        add(cut_id, speak(text, root / f"{cut_id}.wav", voice=["en-us", "en-gb"][i % 2]), text)
    add("utt-8k", speak("a telephone call sampled at eight kilohertz", root / "utt-8k.wav", rate=8000), "a telephone call sampled at eight kilohertz")
    stereo = ffmpeg(speak("two channels of audio", root / "stereo-src.wav", rate=44100), root / "utt-stereo.flac", "-ac", "2")
    add("utt-stereo", stereo, "two channels of audio", channels=(0, 1), channel=1)
    mp3 = ffmpeg(speak("compressed with a lossy codec", root / "mp3-src.wav", rate=22050), root / "utt-mp3.mp3")
    add("utt-mp3", mp3, "compressed with a lossy codec")
    opus = ffmpeg(speak("opus in an ogg container", root / "opus-src.wav", rate=48000), root / "utt-opus.opus")
    add("utt-opus", opus, "opus in an ogg container")
    for src in root.glob("*-src.wav"):
        src.unlink()
    sf.write(root / "silence.wav", np.zeros(16000, dtype=np.float32), 16000, subtype="PCM_16")
    add("silence", root / "silence.wav", None)
    header = root / "header-only.wav"
    sf.write(header, np.zeros(0, dtype=np.float32), 16000, subtype="PCM_16")
    add("header-only", header, "never heard", fake=(16000, 16000))
    full = speak("this file was cut short in transfer", root / "full.wav")
    data = full.read_bytes()
    (root / "truncated.wav").write_bytes(data[: len(data) // 3])  # header still promises the whole file
    add("truncated", root / "truncated.wav", "this file was cut short in transfer", fake=(16000, (len(data) - 44) // 2))
    (root / "corrupt.wav").write_bytes(b"RIFF" + os.urandom(4000))
    add("corrupt", root / "corrupt.wav", "never heard", fake=(16000, 16000))
    (root / "empty.wav").write_bytes(b"")
    add("empty", root / "empty.wav", "never heard", fake=(16000, 16000))
    add("missing", root / "missing.wav", "never heard", fake=(16000, 16000))

    buf = io.BytesIO()
    with gzip.open(buf, "wt") as f:
        for cut in cuts:
            f.write(json.dumps(cut.to_dict()) + "\n")
    _put(client, "s3://data/cuts.jsonl.gz", buf.getvalue())
    return {"manifest": "s3://data/cuts.jsonl.gz", "model": "s3://models/tiny", "cut_ids": [c.id for c in cuts], "root": root}


def _job(ray_head, corpus, output, run_id, *extra, env=None):
    args = ["jobs/transcribe.py", "--manifest", corpus["manifest"], "--model", corpus["model"], "--output", output,
            "--run-id", run_id, "--shard-size", "3", "--summary-json", "--no-progress", *extra]
    proc = ray_head.submit(args, extra_env=env)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    text = proc.stdout
    summary = json.loads(text[text.index("{\n"): text.rindex("}") + 1])
    return summary, text


def _s3_parts(run_id: str):
    import boto3

    client = boto3.client("s3")
    listing = client.list_objects_v2(Bucket="out", Prefix=f"run/transcripts/run_id={run_id}/")
    return {o["Key"]: o["LastModified"] for o in listing.get("Contents", [])}


def _s3_table(run_id: str):
    """All parts of a run under s3://out/run via pyarrow's S3 filesystem."""
    return _s3_table_of(f"run/transcripts/run_id={run_id}")


def _s3_table_of(prefix: str, bucket: str = "out"):
    """All Parquet parts under ``s3://bucket/prefix`` via pyarrow's S3 filesystem (endpoint passed explicitly)."""
    import pyarrow.dataset as ds
    from pyarrow import fs

    s3fs = fs.S3FileSystem(endpoint_override=os.environ["AWS_ENDPOINT_URL"], scheme="http", region="us-east-1",
                           access_key="testing", secret_key="testing")
    return ds.dataset(f"{bucket}/{prefix}", filesystem=s3fs, format="parquet").to_table()


def test_ray_job_on_s3_end_to_end(ray_head, corpus):
    from pipeline.io import storage
    from pipeline.output.records import TRANSCRIPT_SCHEMA

    summary, log = _job(ray_head, corpus, "s3://out/run", "e2e")
    table = _s3_table("e2e")
    assert table.schema.remove_metadata().equals(TRANSCRIPT_SCHEMA), table.schema
    con = duckdb.connect()
    con.register("t", table)
    rows = {r[0]: r for r in con.execute("SELECT cut_id, status, error, text, reference, speaker, channel, ref_words, errors, model_sha256 FROM t").fetchall()}
    ids = con.execute("SELECT cut_id, count(*) FROM t GROUP BY cut_id HAVING count(*) > 1").fetchall()
    assert ids == []
    assert sorted(rows) == sorted(corpus["cut_ids"])
    for cut_id, reason in EXPECTED_ERRORS.items():
        assert rows[cut_id][1] == "error" and reason in rows[cut_id][2], rows[cut_id]
    for cut_id in GOOD:
        status, error, text, reference = rows[cut_id][1:5]
        assert status == "ok" and error is None, rows[cut_id]
        if reference is not None:
            assert text and rows[cut_id][7] == len(reference.split()) and rows[cut_id][8] is not None
    assert rows["silence"][3] == ""  # digital silence: empty text, status ok
    expected = model_texts(corpus, shard_size=3, max_batch_seconds=160.0)
    assert {c: rows[c][3] for c in expected} == expected
    assert rows["utt-stereo"][6] == 1
    assert rows["utt-b"][5] == "spk-b"
    assert len({r[9] for r in rows.values()}) == 1 and len(next(iter(rows.values()))[9]) == 64

    n_ok, n_err = len(GOOD), len(EXPECTED_ERRORS)
    assert summary["cuts_ok"] == n_ok and summary["cuts_error"] == n_err
    shards = summary["plan"]["shards"]
    assert summary["shards_total"] == shards == summary["shards_done"] and summary["shards_skipped"] == 0
    assert summary["plan"]["cuts"] == n_ok + n_err and not summary["plan"]["reused"]
    assert len(_s3_parts("e2e")) == shards
    assert summary["actors"] and all(a["device"] == "cpu" and a["node_id"] for a in summary["actors"])
    assert sum(a["shards"] for a in summary["actors"]) == shards and summary["shard_retries"] == 0
    assert summary["audio_seconds"] > 10 and summary["rtfx"] > 0 and 0 <= summary["padding_ratio"] < 1
    assert {"features", "encoder", "decoding", "load"} <= set(summary["stage_seconds"])
    stored = json.loads(storage.read_bytes("s3://out/run/runs/e2e/summary.json"))
    assert stored["run_id"] == "e2e" and stored["cuts_ok"] == n_ok
    assert "testing" not in json.dumps(stored) and "testing" not in log  # no credentials in summaries or logs

    # the cuts have references, so the job wrote the WER report beside the transcripts
    report = pq.read_table(io.BytesIO(storage.read_bytes("s3://out/run/wer_groups/run_id=e2e/part-00000.parquet"))).to_pylist()
    (overall,) = [g for g in report if g["group_by"] == "all"]
    scored = con.execute("SELECT count(*), sum(ref_words), sum(errors), sum(substitutions + deletions + insertions) "
                         "FROM t WHERE status = 'ok' AND reference IS NOT NULL").fetchone()
    assert (overall["utterances"], overall["failed"], overall["no_reference"]) == (n_ok + n_err, n_err, 1)  # silence: no ref
    assert (overall["scored"], overall["ref_words"], overall["errors"], overall["errors"]) == scored
    assert overall["wer"] == pytest.approx(scored[2] / scored[1]) and "run_id" not in overall
    assert "WER " in log and "s3://out/run/reports/run_id=e2e/report.html" in log
    assert storage.exists("s3://out/run/wer_errors/run_id=e2e/part-00000.parquet")
    for name in ("summary.md", "report.html"):
        assert storage.exists(f"s3://out/run/reports/run_id=e2e/{name}")


def test_rerun_resumes_and_writes_each_cut_once(ray_head, corpus):
    import boto3

    first, _ = _job(ray_head, corpus, "s3://out/run", "resume")
    shards = first["shards_total"]
    before = _s3_parts("resume")
    assert len(before) == shards
    summary, _ = _job(ray_head, corpus, "s3://out/run", "resume")
    assert summary["shards_skipped"] == shards and summary["shards_done"] == 0
    assert (summary["cuts_ok"], summary["cuts_error"]) == (first["cuts_ok"], first["cuts_error"])  # from the parts' metadata
    assert _s3_parts("resume") == before  # nothing rewritten

    victim = sorted(before)[1]
    boto3.client("s3").delete_object(Bucket="out", Key=victim)
    summary, _ = _job(ray_head, corpus, "s3://out/run", "resume")
    assert summary["shards_skipped"] == shards - 1 and summary["shards_done"] == 1
    table = _s3_table("resume")
    assert sorted(table.column("cut_id").to_pylist()) == sorted(corpus["cut_ids"])

    # different decoding settings change the fingerprint: everything is redone
    summary, _ = _job(ray_head, corpus, "s3://out/run", "resume", "--decoding", "ctc-greedy")
    assert summary["shards_skipped"] == 0 and summary["shards_done"] == shards


def audio_after_the_first(n: int):
    """A proxy rule: GETs of the corpus's audio files after the first ``n`` files asked for."""
    allowed: list[str] = []

    def rule(method, path, headers):
        if method != "GET" or not path.startswith("/data/audio/"):
            return False
        if path not in allowed and len(allowed) < n:
            allowed.append(path)
        return path not in allowed
    return rule


def parts_after_the_first(run_id: str):
    """A proxy rule: PUTs of the run's transcripts parts after the first one has gone through."""
    seen = []

    def rule(method, path, headers):
        if method != "PUT" or f"/transcripts/run_id={run_id}/part-" not in path:
            return False
        seen.append(path)
        return len(seen) > 1
    return rule


def submit_in_background(ray_head, args, env=None):
    """``ray job submit`` (which waits for the job) on a thread; returns (thread, result list)."""
    import threading

    result: list = []
    thread = threading.Thread(target=lambda: result.append(ray_head.submit(args, extra_env=env)), daemon=True)
    thread.start()
    return thread, result


def finished_job(thread, result):
    thread.join(timeout=600)
    proc = result[0]
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return json.loads(proc.stdout[proc.stdout.index("{\n"): proc.stdout.rindex("}") + 1]), proc


def test_killed_actor_shard_is_retried(ray_head, corpus, s3):
    """The only model actor is killed (SIGKILL from outside, its pid from Ray's state API) in the
    middle of a shard: the shard's part upload is held at the proxy, so the actor is inside the
    shard whatever the machine's speed. Ray restarts the actor and the shards it held run again,
    once each: the one being written and, when the model thread had already started it, the next
    (an actor holds up to CONCURRENCY shards: pipeline.run.model_stage)."""
    from pipeline.run.model_stage import CONCURRENCY
    from s3_testing import FaultProxy

    args = ["jobs/transcribe.py", "--manifest", corpus["manifest"], "--model", corpus["model"], "--output",
            "s3://out/run", "--run-id", "crash", "--shard-size", "3", "--num-actors", "1", "--summary-json",
            "--no-progress"]
    with FaultProxy(s3["AWS_ENDPOINT_URL"]) as proxy:
        proxy.hold(parts_after_the_first("crash"))
        thread, result = submit_in_background(ray_head, args, env={"AWS_ENDPOINT_URL": proxy.url})
        held = wait_for(lambda: proxy.held, 300, "the second part's upload")
        ray_head.kill_holder(held[0].client_port)
        proxy.release(forward=False)  # the killed actor's upload never reaches the store
        summary, _ = finished_job(thread, result)
    assert 1 <= summary["shard_retries"] <= CONCURRENCY and summary["shards_failed"] == [], summary
    assert summary["shards_done"] == summary["shards_total"]
    assert len({a["worker"] for a in summary["actors"]}) == 2  # the killed process and its restart
    table = _s3_table("crash")
    assert sorted(table.column("cut_id").to_pylist()) == sorted(corpus["cut_ids"])  # each cut once


def test_plain_python_starts_local_ray(corpus, tmp_path):
    """`python jobs/transcribe.py` without a cluster: local Ray, local files in and out."""
    audio = corpus["root"]
    out = tmp_path / "out"
    env = dict(os.environ, RAY_AUTH_MODE="disabled", ZIPSCRIBE_CACHE=str(tmp_path / "cache"))
    env["RAY_ADDRESS"] = "local"  # a private Ray, whatever else runs on this machine
    model = corpus["root"] / "model"
    proc = subprocess.run(
        [sys.executable, "jobs/transcribe.py", "--manifest", str(audio), "--model", str(model), "--output", str(out),
         "--run-id", "local", "--no-progress"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "RTFx" in proc.stdout and "padding ratio" in proc.stdout
    table = pq.read_table(out / "transcripts" / "run_id=local")
    files = sorted(p.name for p in audio.iterdir() if p.suffix in (".wav", ".flac", ".mp3", ".opus"))
    assert sorted(table.column("cut_id").to_pylist()) == files
    status = dict(zip(table.column("cut_id").to_pylist(), table.column("status").to_pylist()))
    assert status["corrupt.wav"] == "error" and status["empty.wav"] == "error" and status["utt-a.wav"] == "ok"
    assert status["truncated.wav"] == "error" and status["utt-mp3.mp3"] == "ok" and status["utt-opus.opus"] == "ok"


def model_texts(corpus, shard_size: int, max_batch_seconds: float) -> dict[str, str]:
    """What the model's own entry point says for the good cuts, batched as the pipeline batches
    (batch composition matters: the front end sees padding, as in the reference)."""
    import torch

    from model.recognizer import Recognizer
    from pipeline.io import storage
    from pipeline.run.transcriber import MIN_SECONDS
    from pipeline.io.audio import decode_audio
    from pipeline.plan.shards import make_shards
    from pipeline.plan.batching import pack_batches
    from pipeline.inputs.manifests import iter_work_items

    torch.set_num_threads(2)
    rec = Recognizer.from_dir(corpus["root"] / "model")
    texts = {}
    for shard in make_shards(iter_work_items(corpus["manifest"]), shard_size):
        for batch in pack_batches(shard.items, [i.duration for i in shard.items], max_batch_seconds):
            waves, ids = [], []
            for item in batch.items:
                if item.cut_id not in SENTENCES and item.cut_id not in ("utt-8k", "utt-stereo", "utt-mp3", "utt-opus"):
                    continue
                audio = decode_audio(storage.read_bytes(item.source), channel=item.channel or 0,
                                     start=item.start, duration=item.duration)
                w = audio.samples
                waves.append(np.pad(w, (0, max(0, int(MIN_SECONDS * 16000) - w.size))))
                ids.append(item.cut_id)
            if waves:
                for cut_id, tr in zip(ids, rec.transcribe(waves)[0]):
                    texts[cut_id] = tr.text
    return texts


def test_driver_killed_then_rerun_completes_each_cut_once(ray_head, corpus, s3, tmp_path):
    """The job is stopped after three shards; only their audio gets through the proxy (the first
    three files asked for), so it cannot have finished more. The rerun reuses the plan, skips those
    three parts and writes the rest once."""
    from s3_testing import FaultProxy

    out = tmp_path / "out"
    parts_dir = out / "transcripts" / "run_id=killed"
    args = ["jobs/transcribe.py", "--manifest", corpus["manifest"], "--model", corpus["model"], "--output", str(out),
            "--run-id", "killed", "--shard-size", "1", "--no-progress", "--summary-json"]
    with FaultProxy(s3["AWS_ENDPOINT_URL"]) as proxy:
        proxy.hold(audio_after_the_first(3))
        job = ray_head.submit_no_wait(args, extra_env={"AWS_ENDPOINT_URL": proxy.url})
        wait_for(lambda: len(list(parts_dir.glob("part-*.parquet"))) == 3 and proxy.held, 300,
                 "three parts and a held read")
        ray_head.stop_job(job)
        wait_for(lambda: "was stopped" in ray_head.job_status(job), 120, "the job to stop")
    written = {p.name: p.stat().st_mtime_ns for p in parts_dir.glob("part-*.parquet")}
    assert len(written) == 3 and pq.read_table(parts_dir).num_rows == 3  # one cut per shard
    for part in parts_dir.glob("part-*.parquet"):
        pq.read_metadata(part)  # atomic writes: every visible part is a complete Parquet file

    summary, _ = _job(ray_head, corpus, str(out), "killed", "--shard-size", "1")
    assert summary["plan"]["reused"] and summary["plan"]["inputs_changed"] == []
    assert summary["shards_skipped"] == 3 and summary["shards_done"] == len(corpus["cut_ids"]) - 3
    for name, mtime in written.items():
        assert (parts_dir / name).stat().st_mtime_ns == mtime  # completed parts not redone
    rows = duckdb.connect().execute(
        f"SELECT cut_id, count(*) FROM read_parquet('{parts_dir}/*.parquet') GROUP BY cut_id").fetchall()
    assert sorted(r[0] for r in rows) == sorted(corpus["cut_ids"]) and all(n == 1 for _, n in rows)


def test_a_prefix_that_gained_a_file_keeps_its_shards_and_replan_adds_it(ray_head, corpus, s3):
    """A bucket prefix run; a file lands in the prefix; the rerun reuses the plan (and says the
    input changed), renumbers nothing and writes nothing twice; --replan transcribes the new file,
    keeps the parts of shards it did not touch and removes the part its shard replaced."""
    import boto3

    client = boto3.client("s3")
    for name in ("utt-a.wav", "utt-b.wav", "utt-c.wav", "utt-d.wav", "utt-e.wav", "utt-8k.wav"):
        client.copy_object(Bucket="data", Key=f"prefix/{name}", CopySource={"Bucket": "data", "Key": f"audio/{name}"})
    args = ("--manifest", "s3://data/prefix/", "--model", corpus["model"], "--output", "s3://out/grow",
            "--run-id", "grow", "--shard-size", "2", "--summary-json", "--no-progress")

    def job(*extra):
        proc = ray_head.submit(["jobs/transcribe.py", *args, *extra])
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
        return json.loads(proc.stdout[proc.stdout.index("{\n"): proc.stdout.rindex("}") + 1]), proc.stdout + proc.stderr

    def parts():
        listing = client.list_objects_v2(Bucket="out", Prefix="grow/transcripts/run_id=grow/")
        return {o["Key"]: o["LastModified"] for o in listing.get("Contents", [])}

    first, _ = job()
    before = parts()
    assert first["cuts_ok"] == 6 and len(before) == first["plan"]["shards"]
    client.copy_object(Bucket="data", Key="prefix/utt-c2.wav", CopySource={"Bucket": "data", "Key": "audio/utt-c.wav"})

    rerun, log = job()
    assert rerun["plan"]["reused"] and rerun["plan"]["inputs_changed"] == ["s3://data/prefix/"]
    assert "--replan" in log and rerun["shards_skipped"] == rerun["shards_total"] and parts() == before

    replanned, _ = job("--replan")
    after = parts()
    table = _s3_table_of("grow/transcripts/run_id=grow")
    assert sorted(table.column("cut_id").to_pylist()) == sorted(
        ["utt-a.wav", "utt-b.wav", "utt-c.wav", "utt-c2.wav", "utt-d.wav", "utt-e.wav", "utt-8k.wav"])  # once each
    kept = set(before) & set(after)
    assert all(after[k] == before[k] for k in kept)  # untouched shards were skipped, not rewritten
    assert 1 <= len(set(after) - set(before)) <= 3 and len(kept) >= len(before) - 2
    assert replanned["shards_done"] == len(set(after) - set(before))
    assert replanned["shards_skipped"] == len(kept)


def test_s3_outage_during_run_is_survived(ray_head, corpus, s3):
    """The S3 endpoint answers 503 SlowDown to the first requests (manifest, model) and, armed
    to start once the first part is uploaded, to the 5 requests after it: reads and writes of
    the later shards meet the outage, and the storage layer's retries carry the job through."""
    from s3_testing import FaultProxy

    with FaultProxy(s3["AWS_ENDPOINT_URL"]) as proxy:
        proxy.fail_next = 4  # even the first requests (manifest, model) meet errors
        proxy.fail_after(lambda method, path, headers: method == "PUT" and "/transcripts/run_id=outage/part-" in path, 5)
        summary, _ = _job(ray_head, corpus, "s3://out/run", "outage", "--shard-size", "2",
                          env={"AWS_ENDPOINT_URL": proxy.url})
        assert proxy.outage_started.is_set() and proxy.failed == 4 + 5
    assert summary["shards_done"] == summary["shards_total"] > 2
    assert summary["shards_failed"] == [] and summary["cuts_ok"] == len(GOOD)
    table = _s3_table("outage")
    assert sorted(table.column("cut_id").to_pylist()) == sorted(corpus["cut_ids"])


def test_part_uploads_failing_for_a_while_are_retried(ray_head, corpus, s3):
    """After the first part, the next 12 part uploads are refused: more than the storage layer's
    own 8 attempts, so one write fails and the model stage writes it again a little later."""
    from s3_testing import FaultProxy

    def part_put(method, path, headers):
        return method == "PUT" and "/transcripts/run_id=puts/part-" in path

    with FaultProxy(s3["AWS_ENDPOINT_URL"]) as proxy:
        proxy.fail_after(part_put, 12, which=part_put)
        summary, _ = _job(ray_head, corpus, "s3://out/run", "puts", "--shard-size", "3", "--num-actors", "1",
                          env={"AWS_ENDPOINT_URL": proxy.url, "AWS_MAX_ATTEMPTS": "8"})
        assert proxy.outage_started.is_set() and proxy.failed == 12
    assert summary["shards_failed"] == [] and summary["shards_done"] == summary["shards_total"]
    table = _s3_table("puts")
    assert sorted(table.column("cut_id").to_pylist()) == sorted(corpus["cut_ids"])


def test_a_shard_that_fails_every_attempt_is_reported_and_a_rerun_finishes_it(ray_head, corpus, s3):
    """After the first part, every part upload is refused for a while: the shards whose writes fail
    every attempt are reported (exit 3, naming them) while the others land; the rerun finishes
    them, every cut once."""
    from s3_testing import FaultProxy

    def part_put(method, path, headers):
        return method == "PUT" and "/transcripts/run_id=stubborn/part-" in path

    args = ["jobs/transcribe.py", "--manifest", corpus["manifest"], "--model", corpus["model"], "--output",
            "s3://out/run", "--run-id", "stubborn", "--shard-size", "3", "--num-actors", "1", "--max-attempts", "2",
            "--summary-json", "--no-progress"]
    with FaultProxy(s3["AWS_ENDPOINT_URL"]) as proxy:
        proxy.fail_after(part_put, 4, which=part_put)  # 2 attempts x 2 tries of the storage layer: one shard
        proc = ray_head.submit(args, extra_env={"AWS_ENDPOINT_URL": proxy.url, "AWS_MAX_ATTEMPTS": "2"})
    # `ray job submit` exits 1 for any failed job; Ray's status message carries the job's own exit status
    assert proc.returncode != 0 and "failed with exit code 3" in proc.stdout + proc.stderr, \
        proc.stdout[-4000:] + proc.stderr[-4000:]
    # the first summary printed (Ray's failure message repeats the job's last output after it)
    summary, _ = json.JSONDecoder().raw_decode(proc.stdout[proc.stdout.index("{\n"):])
    assert len(summary["shards_failed"]) == 1 and summary["shards_done"] == summary["shards_total"] - 1
    assert f"1 shard(s) not done ({summary['shards_failed'][0]})" in proc.stdout + proc.stderr
    assert len(_s3_parts("stubborn")) == summary["shards_total"] - 1

    again, _ = _job(ray_head, corpus, "s3://out/run", "stubborn", "--shard-size", "3", "--num-actors", "1")
    assert again["shards_done"] == 1 and again["shards_skipped"] == summary["shards_total"] - 1
    assert sorted(_s3_table("stubborn").column("cut_id").to_pylist()) == sorted(corpus["cut_ids"])


DEMO_MODEL = REPO / "model" / "assets" / "demo"


def test_demo_model_transcripts_are_right_end_to_end(ray_head, s3, corpus, tmp_path):  # corpus: the buckets
    """The shipped demo model through the whole product (S3 model and audio, Ray job, Parquet):
    held-out sentences, some resampled or mp3-coded, come back with a WER near the model card's."""
    import boto3
    from lhotse import AudioSource, MonoCut, Recording, SupervisionSegment
    import soundfile as sf

    from pipeline.io import storage

    sys.path.insert(0, str(REPO / "jobs"))
    from demo import held_out_sentences

    client = boto3.client("s3")
    for f in DEMO_MODEL.iterdir():
        if f.is_file():
            _put(client, f"s3://models/demo/{f.name}", f.read_bytes())
    sentences = held_out_sentences(12, offset=100)  # test split of the demo corpus: never spoken in training
    cuts = []
    for i, text in enumerate(sentences):
        cut_id = f"held-out-{i:02d}"
        src = speak(text, tmp_path / f"{cut_id}.wav", voice=("en-us", "en-gb", "en-gb-x-rp")[i % 3],
                    rate=(16000, 8000, 22050)[i % 3])
        path = ffmpeg(src, tmp_path / f"{cut_id}.mp3") if i % 4 == 3 else src
        uri = f"s3://data/held-out/{path.name}"
        _put(client, uri, path.read_bytes())
        if path.suffix == ".mp3":
            info = sf.info(str(src))
        else:
            info = sf.info(str(path))
        rec = Recording(id=cut_id, sources=[AudioSource(type="url", channels=[0], source=uri)],
                        sampling_rate=info.samplerate, num_samples=info.frames, duration=info.frames / info.samplerate)
        sup = SupervisionSegment(id=cut_id, recording_id=cut_id, start=0, duration=rec.duration, channel=0, text=text)
        cuts.append(MonoCut(id=cut_id, start=0, duration=rec.duration, channel=0, recording=rec, supervisions=[sup]))
    buf = io.BytesIO()
    with gzip.open(buf, "wt") as f:
        for cut in cuts:
            f.write(json.dumps(cut.to_dict()) + "\n")
    _put(client, "s3://data/held-out.jsonl.gz", buf.getvalue())

    corpus = {"manifest": "s3://data/held-out.jsonl.gz", "model": "s3://models/demo"}
    summary, log = _job(ray_head, corpus, "s3://out/run", "demo-wer")
    assert summary["cuts_ok"] == len(sentences) and summary["cuts_error"] == 0
    table = _s3_table("demo-wer").to_pylist()
    assert sorted(r["cut_id"] for r in table) == [c.id for c in cuts]
    assert all(r["model_id"] == "zipscribe-demo-synthetic" and r["decoding"].startswith("attention-rescoring") for r in table)
    errors, words = sum(r["errors"] for r in table), sum(r["ref_words"] for r in table)
    wer = 100.0 * errors / words
    card = json.loads((DEMO_MODEL / "train_log.json").read_text())["test"]["attention-rescoring"]
    # about 90 words, a third of them at 8 kHz or through mp3: a margin over the card's test WER
    assert wer <= card + 8.0, (wer, [(r["reference"], r["text"]) for r in table if r["errors"]])
    report = pq.read_table(io.BytesIO(storage.read_bytes("s3://out/run/wer_groups/run_id=demo-wer/part-00000.parquet"))).to_pylist()
    (overall,) = [g for g in report if g["group_by"] == "all"]
    assert overall["errors"] == errors and overall["ref_words"] == words
    assert "WER " in log


def test_long_recording_windows_over_two_actors_one_killed(ray_head, corpus, s3, tmp_path):
    """A long recording's windows spread over shards on two actors; the actor holding one of
    them dies. The retried shard completes the windows and the recording is stitched into
    exactly one row; a rerun writes nothing twice."""
    import boto3
    from lhotse import AudioSource, MonoCut, Recording, SupervisionSegment
    import soundfile as sf

    client = boto3.client("s3")
    texts = list(SENTENCES.values()) * 3
    pieces = []
    for k, text in enumerate(texts):
        wav = speak(text, tmp_path / f"long-{k}.wav", voice=("en-us", "en-gb")[k % 2])
        samples, _ = sf.read(str(wav), dtype="float32")
        pieces += [samples, np.zeros(6000, dtype=np.float32)]
    long_wav = tmp_path / "long.wav"
    sf.write(str(long_wav), np.concatenate(pieces), 16000, subtype="PCM_16")
    info = sf.info(str(long_wav))
    assert info.duration > 40
    _put(client, "s3://data/long/long.wav", long_wav.read_bytes())
    rec = Recording(id="long", sources=[AudioSource(type="url", channels=[0], source="s3://data/long/long.wav")],
                    sampling_rate=16000, num_samples=info.frames, duration=info.duration)
    sup = SupervisionSegment(id="long", recording_id="long", start=0, duration=info.duration, text=" ".join(texts))
    cuts = [MonoCut(id="long", start=0, duration=info.duration, channel=0, recording=rec, supervisions=[sup])]
    buf = io.BytesIO()
    with gzip.open(buf, "wt") as f:
        for cut in cuts:
            f.write(json.dumps(cut.to_dict()) + "\n")
    _put(client, "s3://data/long.jsonl.gz", buf.getvalue())

    from s3_testing import FaultProxy

    out = tmp_path / "out"
    job = {"manifest": "s3://data/long.jsonl.gz", "model": corpus["model"]}
    extra = ["--max-cut-seconds", "10", "--window-overlap-seconds", "2", "--num-actors", "2", "--cpus-per-actor", "0.5"]
    # shard size 1: a shard holds at most 4 items, so the recording's windows (which shards keep
    # together up to that cap) fill two shards or more
    args = ["jobs/transcribe.py", "--manifest", job["manifest"], "--model", job["model"], "--output", "s3://out/long",
            "--run-id", "long", "--shard-size", "1", "--summary-json", "--no-progress", *extra]
    # the second windows part's upload is held: whichever actor writes it is inside its shard
    # while the other goes on; that one is killed
    seen = []

    def second_windows_part(method, path, headers):
        if method == "PUT" and "/windows/run_id=long/part-" in path:
            seen.append(path)
            return len(seen) == 2
        return False

    with FaultProxy(s3["AWS_ENDPOINT_URL"]) as proxy:
        proxy.hold(second_windows_part)
        thread, result = submit_in_background(ray_head, args, env={"AWS_ENDPOINT_URL": proxy.url})
        held = wait_for(lambda: proxy.held, 300, "the second windows part's upload")
        ray_head.kill_holder(held[0].client_port)
        proxy.release(forward=False)  # the killed actor's upload never reaches the store
        summary, _ = finished_job(thread, result)
    windows = summary["windows"]
    assert windows >= 5 and summary["plan"]["windows"] == windows and summary["shards_total"] == summary["plan"]["shards"]
    assert summary["shards_failed"] == []
    assert summary["long_cuts"] == 1 and summary["cuts_ok"] == 1 and summary["long_cuts_incomplete"] == 0

    import boto3

    client = boto3.client("s3")
    for key in [o["Key"] for o in client.list_objects_v2(Bucket="out", Prefix="long/").get("Contents", [])]:
        if key.startswith(("long/transcripts/", "long/windows/")):
            (out / key).parent.mkdir(parents=True, exist_ok=True)
            client.download_file("out", key, str(out / key))
    out = out / "long"
    con = duckdb.connect()
    rows = con.execute(f"SELECT cut_id, status, duration, token_times, worker, shard_id FROM "
                       f"read_parquet('{out}/transcripts/run_id=long/*.parquet')").fetchall()
    assert len(rows) == 1
    cut_id, status, duration, times, worker, shards = rows[0]
    assert cut_id == "long" and status == "ok" and duration == pytest.approx(info.duration)
    assert all(a <= b for a, b in zip(times, times[1:])) and (not times or times[-1] <= duration)
    assert len(shards.split(",")) == summary["shards_total"]
    # the killed actor held that shard and at most one more (pipeline.run.model_stage.CONCURRENCY): one retry each
    from pipeline.run.model_stage import CONCURRENCY

    assert 1 <= summary["shard_retries"] <= CONCURRENCY and worker, (summary, worker)
    n_windows = con.execute(f"SELECT count(*), count(DISTINCT window_index) FROM "
                            f"read_parquet('{out}/windows/run_id=long/*.parquet')").fetchone()
    assert n_windows == (windows, windows)

    again = ray_head.submit(args)
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-4000:]
    second = json.loads(again.stdout[again.stdout.index("{\n"): again.stdout.rindex("}") + 1])
    assert second["shards_skipped"] == summary["shards_total"] and second["cuts_ok"] == 1
    listing = client.list_objects_v2(Bucket="out", Prefix="long/transcripts/run_id=long/")["Contents"]
    assert len([o for o in listing if "part-long-" in o["Key"]]) == 1


def test_globs_and_a_shar_directory_are_planned_in_ray_tasks(ray_head, corpus, s3, tmp_path):
    """Three manifests by a glob and a lhotse Shar directory, all on S3, in one job: each input file
    planned in a Ray task, into the plan that planning them one after another gives; every cut
    transcribed once; the segments of one recording read once for all of them."""
    import boto3
    import soundfile as sf
    from lhotse import AudioSource, CutSet, MonoCut, Recording, SupervisionSegment

    from pipeline.output.paths import RunPaths
    from pipeline.plan.frozen import PlanOptions, read_index, read_plan, write_plan

    client = boto3.client("s3")
    root = corpus["root"]
    waves = [sf.read(str(root / f"{cut_id}.wav"), dtype="int16")[0] for cut_id in SENTENCES]
    talk = np.concatenate([np.concatenate([w, np.zeros(4000, dtype=np.int16)]) for w in waves])
    sf.write(str(tmp_path / "talk.flac"), talk, 16000, subtype="PCM_16")
    _put(client, "s3://data/long/talk.flac", (tmp_path / "talk.flac").read_bytes())
    rec = Recording(id="talk", sources=[AudioSource(type="url", channels=[0], source="s3://data/long/talk.flac")],
                    sampling_rate=16000, num_samples=talk.size, duration=talk.size / 16000)
    segments, start = [], 0
    for cut_id, w in zip(SENTENCES, waves):
        segments.append(MonoCut(id=f"talk-{cut_id}", start=start / 16000, duration=(w.size + 4000) / 16000, channel=0,
                                recording=rec))
        start += w.size + 4000
    for k, part in enumerate((segments[:2], segments[2:4], segments[4:])):
        buf = io.BytesIO()
        with gzip.open(buf, "wt") as f:
            for cut in part:
                f.write(json.dumps(cut.to_dict()) + "\n")
        _put(client, f"s3://data/many/cuts.{k:06d}.jsonl.gz", buf.getvalue())
    shar_cuts = []
    for cut_id in SENTENCES:
        one = Recording.from_file(str(root / f"{cut_id}.wav"), recording_id=f"shar-{cut_id}")
        shar_cuts.append(MonoCut(id=f"shar-{cut_id}", start=0, duration=one.duration, channel=0, recording=one,
                                 supervisions=[SupervisionSegment(id=f"shar-{cut_id}", recording_id=one.id, start=0,
                                                                  duration=one.duration, text=SENTENCES[cut_id])]))
    (tmp_path / "shar").mkdir()
    CutSet.from_cuts(shar_cuts).to_shar(str(tmp_path / "shar"), fields={"recording": "flac"}, shard_size=2)
    for f in (tmp_path / "shar").iterdir():
        _put(client, f"s3://data/shar/{f.name}", f.read_bytes())

    inputs = ("s3://data/many/cuts.*.jsonl.gz", "s3://data/shar")
    args = ["jobs/transcribe.py", "--manifest", inputs[0], "--manifest", inputs[1], "--model", corpus["model"],
            "--output", "s3://out/globs", "--run-id", "globs", "--shard-size", "2", "--summary-json", "--no-progress"]
    from s3_testing import FaultProxy

    with FaultProxy(s3["AWS_ENDPOINT_URL"]) as proxy:  # counts what the store serves
        proc = ray_head.submit(args, extra_env={"AWS_ENDPOINT_URL": proxy.url})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    summary = json.loads(proc.stdout[proc.stdout.index("{\n"): proc.stdout.rindex("}") + 1])
    table = _s3_table_of("globs/transcripts/run_id=globs")
    ids = table.column("cut_id").to_pylist()
    assert sorted(ids) == sorted(c.id for c in segments + shar_cuts) and len(set(ids)) == len(ids)
    assert set(table.column("status").to_pylist()) == {"ok"}
    assert summary["plan"]["units"] == 3 + 3 and summary["plan"]["cuts"] == 10  # 3 manifests, 3 Shar shards
    options = PlanOptions(manifests=inputs, shard_size=2)
    made = RunPaths("s3://out/globs", "globs")
    serial = RunPaths(str(tmp_path / "serial"), "globs")
    in_ray = [r["shard_id"] for r in read_index(made, read_plan(made, options))]
    assert in_ray == [r["shard_id"] for r in read_index(serial, write_plan(serial, options))]
    # every Shar tar read once, whole (all its members are wanted); the talk read by each of the
    # 3 shards its manifests make, each its own part and a header's read-ahead; the run's own count
    # of bytes fetched is what the store served
    tars = {f"/data/shar/{f.name}": f.stat().st_size for f in (tmp_path / "shar").glob("recording.*.tar")}
    assert {path: proxy.got_bytes(path) for path in tars} == tars
    talk_size = (tmp_path / "talk.flac").stat().st_size
    assert proxy.got_bytes("/data/long/talk.flac") <= talk_size + 3 * 3 * 65536
    assert summary["audio_bytes_fetched"] == sum(tars.values()) + proxy.got_bytes("/data/long/talk.flac")
