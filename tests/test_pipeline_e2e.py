"""End to end on real services: a Ray head (token auth) + `ray job submit`, moto S3 over
HTTP, espeak-ng audio, Parquet read back with DuckDB and pyarrow."""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from helpers import have_tools, make_tiny_model_dir, speak
from s3_testing import moto_server
from services import REPO, RayHead

pytestmark = pytest.mark.skipif(not have_tools("espeak-ng", "sox"), reason="needs espeak-ng and sox")

SENTENCES = {
    "utt-a": "hello world",
    "utt-b": "the quick brown fox jumps over the lazy dog",
    "utt-c": "speech recognition turns audio into text",
    "utt-d": "one two three",
    "utt-e": "object storage holds the audio and the transcripts for the analysts",
}
EXPECTED_ERRORS = {"corrupt": "not a recognised audio format", "empty": "empty file", "missing": "Missing"}


@pytest.fixture(scope="module")
def s3():
    """moto on 127.0.0.1; its endpoint and fake credentials in this process's environment
    (boto3 and the pipeline read them from there) and returned for the Ray head's."""
    from pipeline import storage

    with moto_server() as url, pytest.MonkeyPatch.context() as mp:
        env = {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}
        for k, v in env.items():
            mp.setenv(k, v)
        mp.delenv("AWS_PROFILE", raising=False)
        storage.set_default_s3_options(None)
        yield env
        storage.set_default_s3_options(None)


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
    add("utt-stereo", speak("two channels of audio", root / "utt-stereo.flac", rate=44100, channels=2), "two channels of audio", channels=(0, 1), channel=1)
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
    """All parts of a run via pyarrow's S3 filesystem (endpoint passed explicitly)."""
    import pyarrow.dataset as ds
    from pyarrow import fs

    s3fs = fs.S3FileSystem(endpoint_override=os.environ["AWS_ENDPOINT_URL"], scheme="http", region="us-east-1",
                           access_key="testing", secret_key="testing")
    return ds.dataset(f"out/run/transcripts/run_id={run_id}", filesystem=s3fs, format="parquet").to_table()


def test_ray_job_on_s3_end_to_end(ray_head, corpus):
    from pipeline import storage
    from pipeline.records import TRANSCRIPT_SCHEMA

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
    for cut_id in list(SENTENCES) + ["utt-8k", "utt-stereo"]:
        status, error, text, reference = rows[cut_id][1:5]
        assert status == "ok" and error is None and text, rows[cut_id]
        assert rows[cut_id][7] == len(reference.split()) and rows[cut_id][8] is not None
    assert rows["utt-stereo"][6] == 1
    assert rows["utt-b"][5] == "spk-b"
    assert len({r[9] for r in rows.values()}) == 1 and len(next(iter(rows.values()))[9]) == 64

    assert summary["cuts_ok"] == 7 and summary["cuts_error"] == 3
    assert summary["shards_total"] == 4 and summary["shards_done"] == 4 and summary["shards_skipped"] == 0
    assert summary["audio_seconds"] > 10 and summary["rtfx"] > 0 and 0 <= summary["padding_ratio"] < 1
    assert {"features", "encoder", "decoding", "load"} <= set(summary["stage_seconds"])
    stored = json.loads(storage.read_bytes("s3://out/run/runs/e2e/summary.json"))
    assert stored["run_id"] == "e2e" and stored["cuts_ok"] == 7


def test_rerun_resumes_and_writes_each_cut_once(ray_head, corpus):
    import boto3

    _job(ray_head, corpus, "s3://out/run", "resume")
    before = _s3_parts("resume")
    assert len(before) == 4
    summary, _ = _job(ray_head, corpus, "s3://out/run", "resume")
    assert summary["shards_skipped"] == 4 and summary["shards_done"] == 0
    assert summary["cuts_ok"] == 7 and summary["cuts_error"] == 3  # counted from the parts' metadata
    assert _s3_parts("resume") == before  # nothing rewritten

    victim = sorted(before)[1]
    boto3.client("s3").delete_object(Bucket="out", Key=victim)
    summary, _ = _job(ray_head, corpus, "s3://out/run", "resume")
    assert summary["shards_skipped"] == 3 and summary["shards_done"] == 1
    table = _s3_table("resume")
    assert sorted(table.column("cut_id").to_pylist()) == sorted(corpus["cut_ids"])

    # different decoding settings change the fingerprint: everything is redone
    summary, _ = _job(ray_head, corpus, "s3://out/run", "resume", "--decoding", "ctc-greedy")
    assert summary["shards_skipped"] == 0 and summary["shards_done"] == 4


def test_killed_actor_shard_is_retried(ray_head, corpus, tmp_path):
    out = tmp_path / "out"
    summary, log = _job(ray_head, corpus, str(out), "crash", env={"ZIPSCRIBE_TEST_CRASH_SHARDS": "shard-000001"})
    assert summary["shard_retries"] >= 1 and summary["shards_failed"] == []
    con = duckdb.connect()
    rows = con.execute(
        f"SELECT cut_id, count(*) FROM read_parquet('{out}/transcripts/**/*.parquet', hive_partitioning=1) "
        "WHERE run_id = 'crash' GROUP BY cut_id").fetchall()
    assert sorted(r[0] for r in rows) == sorted(corpus["cut_ids"])
    assert all(n == 1 for _, n in rows)


def test_plain_python_starts_local_ray(corpus, tmp_path):
    """`python jobs/transcribe.py` without a cluster: local Ray, local files in and out."""
    audio = corpus["root"]
    out = tmp_path / "out"
    env = dict(os.environ, RAY_AUTH_MODE="disabled", ZIPSCRIBE_CACHE=str(tmp_path / "cache"))
    env.pop("RAY_ADDRESS", None)
    model = corpus["root"] / "model"
    proc = subprocess.run(
        [sys.executable, "jobs/transcribe.py", "--manifest", str(audio), "--model", str(model), "--output", str(out),
         "--run-id", "local", "--no-progress"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "RTFx" in proc.stdout and "padding ratio" in proc.stdout
    table = pq.read_table(out / "transcripts" / "run_id=local")
    files = sorted(p.name for p in audio.iterdir() if p.suffix in (".wav", ".flac"))
    assert sorted(table.column("cut_id").to_pylist()) == files
    status = dict(zip(table.column("cut_id").to_pylist(), table.column("status").to_pylist()))
    assert status["corrupt.wav"] == "error" and status["empty.wav"] == "error" and status["utt-a.wav"] == "ok"
