"""Live metrics in a real Prometheus: Debian's ``prometheus`` scrapes the metrics export port of a
real Ray head (``ray start --head --metrics-export-port``) every second while a small job runs on
it; its HTTP API is asked what the job exported. The job's third part upload is held at an S3
proxy (moto behind :class:`FaultProxy`), so the run is caught in the middle from outside: the
counters have risen, but not to their end, and one shard sits in a model actor. At the end the
counters equal the run summary (audio done, shards) and the Parquet (cuts by status). Every
query of the Grafana dashboard (``infra/grafana/zipscribe.json``) names only metrics the job
exported."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from audio_testing import speak
from helpers import make_tiny_model_dir
from s3_testing import FaultProxy, moto_environment
from services import REPO, Prometheus, RayHead, wait_for


DASHBOARD = REPO / "infra" / "grafana" / "zipscribe.json"
RUN = "m1"
SENTENCES = ["hello world", "the quick brown fox jumps over the lazy dog", "speech recognition turns audio into text",
             "one two three", "object storage holds the audio", "a batch transcription service on ray",
             "numbers like four five six", "the transcripts land as parquet"]
#: Ray's agents take what the processes record every second instead of every ten (a setting of the
#: head and of the job, Ray's own RAY_metrics_report_interval_ms), so a short job is seen rising
FAST_REPORTS = {"RAY_metrics_report_interval_ms": "1000"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A tiny model and ten local cuts: eight spoken sentences, a corrupt file and a missing one
    (two error rows)."""
    import soundfile as sf

    root = tmp_path_factory.mktemp("metrics-corpus")
    model = make_tiny_model_dir(root / "model")
    lines = []

    def cut(i: int, path: Path, frames: int) -> None:
        rec = {"id": f"r{i}", "sources": [{"type": "file", "channels": [0], "source": str(path)}],
               "sampling_rate": 16000, "num_samples": frames, "duration": frames / 16000, "channel_ids": [0]}
        lines.append(json.dumps({"id": f"c{i:02d}", "start": 0, "duration": frames / 16000, "channel": 0,
                                 "type": "MonoCut", "supervisions": [], "recording": rec}))

    for i, text in enumerate(SENTENCES):
        wav = speak(text, root / f"u{i}.wav", voice=("en-us", "en-gb")[i % 2])
        cut(i, wav, sf.info(str(wav)).frames)
    (root / "corrupt.wav").write_bytes(b"RIFF" + bytes(range(256)) * 8)
    cut(len(SENTENCES), root / "corrupt.wav", 16000)
    cut(len(SENTENCES) + 1, root / "missing.wav", 16000)
    manifest = root / "cuts.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return {"manifest": str(manifest), "model": str(model)}


@pytest.fixture(scope="module")
def services():
    """moto S3, a real Ray head (its metrics export port fixed) and Prometheus scraping that port."""
    import boto3

    with moto_environment() as s3:
        boto3.client("s3").create_bucket(Bucket="out")
        head = RayHead(num_cpus=2, env={**s3, **FAST_REPORTS}).start()
        try:
            with Prometheus([f"127.0.0.1:{head.metrics_port}"], interval=1.0) as prom:
                yield {"s3": s3, "head": head, "prom": prom}
        finally:
            head.stop()


def _in_actors(stages: dict) -> int:
    """Shards started but not finished in the model actors, from ``sum by (stage)`` of the stage counter."""
    by_stage = {dict(k)["stage"]: v for k, v in stages.items()}
    return int(by_stage.get("model_started", 0) - by_stage.get("model_finished", 0))


@pytest.fixture(scope="module")
def job(services, corpus):
    """The job, caught in the middle: its third part upload is held until Prometheus has seen audio
    done and a shard in an actor; then it runs to its end. Its summary and the Parquet's statuses."""
    import boto3

    head, prom = services["head"], services["prom"]
    with FaultProxy(services["s3"]["AWS_ENDPOINT_URL"]) as proxy:
        parts: list[str] = []

        def third_part(method, path, headers):
            if method == "PUT" and f"/transcripts/run_id={RUN}/part-" in path:
                parts.append(path)
                return len(parts) == 3
            return False

        proxy.hold(third_part)
        env = dict(head.env, RAY_ADDRESS=f"127.0.0.1:{head.port}", AWS_ENDPOINT_URL=proxy.url, PYTHONUNBUFFERED="1",
                   **FAST_REPORTS)
        proc = subprocess.Popen(
            [sys.executable, "jobs/transcribe.py", "--manifest", corpus["manifest"], "--model", corpus["model"],
             "--output", "s3://out/metrics", "--run-id", RUN, "--shard-size", "2", "--summary-json", "--no-progress",
             "--no-wer-report"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: proxy.held or proc.poll() is not None, 300, "the third part's upload", interval=0.2)
            during = wait_for(lambda: prom.value(DONE), 60, "audio done while the run is held", interval=0.5)
            in_actors = wait_for(lambda: _in_actors(prom.query(STAGES)), 60, "a shard in a model actor", interval=0.5)
            running = proc.poll() is None
        finally:
            proxy.release()
            out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-4000:] + err[-4000:]
    client = boto3.client("s3")
    listing = client.list_objects_v2(Bucket="out", Prefix=f"metrics/transcripts/run_id={RUN}/")["Contents"]
    statuses = Counter(s for o in listing for s in pq.read_table(
        io.BytesIO(client.get_object(Bucket="out", Key=o["Key"])["Body"].read())).column("status").to_pylist())
    return {"summary": json.loads(out[out.index("{\n"): out.rindex("}") + 1]), "during": during,
            "in_actors": in_actors, "running": running, "statuses": dict(statuses)}


DONE = f'sum(ray_zipscribe_audio_done_seconds_total{{run_id="{RUN}"}})'
STAGES = f'sum by (stage) (ray_zipscribe_stage_shards_total{{run_id="{RUN}"}})'


def by(prom: Prometheus, label: str, expr: str) -> dict[str, float]:
    return {dict(k).get(label, ""): v for k, v in prom.query(f"sum by ({label}) ({expr})").items()}


def settled(read, expected, timeout: float = 30.0):
    """``read()`` once it equals ``expected`` (within 1e-9), or its last value after ``timeout`` s."""
    last = []

    def same():
        last[:] = [read()]
        return last[0] == pytest.approx(expected, rel=1e-9, abs=1e-9)

    try:
        wait_for(same, timeout, f"{expected}", interval=0.5)
    except AssertionError:
        pass
    return last[0]


@pytest.mark.needs_tools("prometheus", "espeak-ng", "sox")
def test_counters_rise_during_the_run_and_end_equal_to_the_summary_and_the_parquet(job, services):
    prom, summary = services["prom"], job["summary"]
    audio = summary["audio_seconds"]
    # seen during the run (the job still running, a part held): risen, not to the end, a shard in an actor
    assert job["running"] and 0 < job["during"] < audio, (job["during"], audio)
    assert job["in_actors"] >= 1
    # at the end: the summary's audio, shards, cuts; the Parquet's statuses
    assert settled(lambda: prom.value(DONE), audio) == pytest.approx(audio, rel=1e-9)
    assert summary["cuts_ok"] == 8 and summary["cuts_error"] == 2 and summary["shards_failed"] == []
    assert job["statuses"] == {"ok": 8, "error": 2}
    cuts = f'ray_zipscribe_cuts_total{{run_id="{RUN}"}}'
    assert settled(lambda: by(prom, "status", cuts), {"ok": 8.0, "error": 2.0}) == job["statuses"]
    shards = summary["shards_total"]
    assert by(prom, "status", f'ray_zipscribe_shards_total{{run_id="{RUN}"}}') == {"done": summary["shards_done"]}
    assert summary["shards_done"] == shards
    expect_stages = {"audio_loaded": shards, "model_started": shards, "model_finished": shards}  # queues empty
    assert settled(lambda: by(prom, "stage", f'ray_zipscribe_stage_shards_total{{run_id="{RUN}"}}'),
                   expect_stages) == expect_stages
    planned = prom.value(f'sum(ray_zipscribe_audio_planned_seconds_total{{run_id="{RUN}"}})')
    assert planned == pytest.approx(summary["plan"]["audio_hours"] * 3600, abs=0.01)
    assert prom.value(f'sum(ray_zipscribe_shards_planned_total{{run_id="{RUN}"}})') == shards
    model_audio = f'sum(ray_zipscribe_model_audio_seconds_total{{run_id="{RUN}"}})'
    assert settled(lambda: prom.value(model_audio), audio) == pytest.approx(audio, rel=1e-6)
    busy = prom.value(f'sum(ray_zipscribe_model_busy_seconds_total{{run_id="{RUN}"}})')
    model_time = sum(summary["stage_seconds"][k] for k in ("features", "encoder", "decoding"))
    assert busy == pytest.approx(model_time, rel=1e-6)
    assert prom.value(f'sum(ray_zipscribe_shard_model_seconds_count{{run_id="{RUN}"}})') == shards
    padded = prom.value(f'sum(ray_zipscribe_model_padded_seconds_total{{run_id="{RUN}"}})')
    assert padded == pytest.approx(summary["padded_seconds"], rel=1e-6)
    # the series about work done are tagged with the type of the node that did it: here the head
    from pipeline.run.metrics import METRICS, exported_name

    tagged = {(dict(k)["__name__"], dict(k).get("node_type", "")) for k in prom.query(  # gauges: gone 20 s after the run
        f'group by (__name__, node_type) (last_over_time({{__name__=~"ray_zipscribe_.*", run_id="{RUN}"}}[10m]))')}
    expected = {(n, "head" if "node_type" in spec.tags else "") for spec in METRICS for n in exported_name(spec)}
    assert tagged == expected, tagged ^ expected


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords, label names, durations,
    strings and Grafana variables left out)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    keywords = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset",
                "inf", "nan"}
    names = set()
    for m in re.finditer(r"(?<![\w$.])([A-Za-z_:][\w:]*)(\s*\()?", expr):
        if not m.group(2) and m.group(1).lower() not in keywords:
            names.add(m.group(1))
    return names


def dashboard_queries() -> list[str]:
    """Every PromQL expression of the dashboard: its panels' targets and its variables' queries."""
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            m = re.fullmatch(r"label_values\((.*),\s*\w+\)", var["definition"])
            exprs.append(m.group(1))
    return exprs


def test_promql_metric_names_are_found():
    assert promql_metric_names('sum by (le) (rate(a_bucket{x="y",run_id=~"$run_id"}[$__rate_interval])) / '
                               "sum(b_total) or vector(0)") == {"a_bucket", "b_total"}


def test_the_dashboard_shows_every_declared_metric_and_only_those():
    """Static: each panel's query names only metrics of pipeline.run.metrics.METRICS (as Ray exports
    them), and each of them is on the dashboard."""
    from pipeline.run.metrics import METRICS, exported_name

    declared = {name for spec in METRICS for name in exported_name(spec)}
    used = set().union(*(promql_metric_names(e) for e in dashboard_queries()))
    assert used <= declared, used - declared
    assert {spec.name for spec in METRICS} == {n.removeprefix("ray_").rsplit("_", 1)[0] if n.endswith(
        ("_total", "_bucket", "_sum", "_count")) else n.removeprefix("ray_") for n in used}


@pytest.mark.needs_tools("prometheus", "espeak-ng", "sox")
def test_every_dashboard_query_names_metrics_the_job_exported(job, services):
    exported = {n for n in services["prom"].names() if n.startswith("ray_zipscribe_")}
    for expr in dashboard_queries():
        missing = promql_metric_names(expr) - exported
        assert not missing, (expr, missing, sorted(exported))
