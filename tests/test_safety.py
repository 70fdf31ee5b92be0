"""Safe to operate (issue 33): an existing Ray is used, two runs cannot corrupt one output, nothing
from input reaches outside the output and cache folders, a finished run never fails on its report.
Real components: a `ray start --head`, moto's S3 behind a proxy, the jobs as users run them, and
generated hostile names (hypothesis)."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import make_tiny_model_dir
from s3_testing import FaultProxy, free_port, moto_environment
from services import RayHead, list_state, wait_for

from pipeline.io import storage
from pipeline.io.names import UnsafePathError, relative_key, safe_name, within
from pipeline.output.paths import RunPaths
from pipeline.run.lock import RunLock, RunLockedError

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny"))


def write_corpus(root: Path, cuts: list[tuple[str, str]], seconds: float = 1.5, speaker: str = "spk",
                 source_prefix: str | None = None) -> Path:
    """``cuts``: (cut id, recording id). One short WAV per recording (a tone), a CutSet manifest."""
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for k, (cut_id, rec_id) in enumerate(cuts):
        path = root / f"audio-{k}.wav"
        sf.write(str(path), (0.2 * np.sin(np.arange(int(seconds * 16000)) / (3 + k))).astype(np.float32), 16000,
                 subtype="PCM_16")
        source = str(path) if source_prefix is None else f"{source_prefix}/audio-{k}.wav"
        rec = {"id": rec_id, "sources": [{"type": "url" if source_prefix else "file", "channels": [0], "source": source}],
               "sampling_rate": 16000, "num_samples": int(seconds * 16000), "duration": seconds, "channel_ids": [0]}
        sup = {"id": cut_id, "recording_id": rec_id, "start": 0.0, "duration": seconds, "channel": 0,
               "text": "the quick brown fox", "speaker": speaker}
        lines.append(json.dumps({"id": cut_id, "start": 0.0, "duration": seconds, "channel": 0, "type": "MonoCut",
                                 "supervisions": [sup], "recording": rec}))
    manifest = root / "cuts.jsonl.gz"
    with gzip.open(manifest, "wt") as f:
        f.write("\n".join(lines) + "\n")
    return manifest


def transcribe(*args: str, env: dict | None = None, timeout: float = 600, wait: bool = True):
    cmd = [PYTHON, str(REPO / "jobs" / "transcribe.py"), *args]
    if not wait:
        return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


# ---------------------------------------------------------------- an existing local Ray


def _drivers(head: RayHead) -> int:
    """Driver jobs the head has seen whose entry point is the transcription job."""
    jobs = list_state(head.address, "jobs", env=head.env)
    return sum(1 for j in jobs if "transcribe.py" in (j.get("entrypoint") or ""))


def test_a_running_local_ray_is_used_and_local_asks_for_a_private_one(tmp_path, tiny):
    """`ray start --head` as a user runs it (no --temp-dir; the address file where ray.init() looks
    for it): a plain `python jobs/transcribe.py` joins it and says so, where it used to stop with
    "_system_config must not be provided"; `--ray-address local` starts a private one beside it;
    once the head is gone, its address file left behind is passed over, with a warning."""
    manifest = write_corpus(tmp_path / "corpus", [("a", "ra"), ("b", "rb")])
    head = RayHead(num_cpus=2, findable=True).start()
    try:
        env = dict(head.env)
        found = transcribe("--manifest", str(manifest), "--model", str(tiny), "--output", str(tmp_path / "out"),
                           "--run-id", "joined", "--no-progress", env=env)
        assert found.returncode == 0, found.stderr[-3000:]
        assert "using the Ray cluster already running on this machine" in found.stderr
        assert "_system_config" not in found.stderr
        assert wait_for(lambda: _drivers(head) >= 1, 60, "the job's driver on the head") == 1
        private = transcribe("--manifest", str(manifest), "--model", str(tiny), "--output", str(tmp_path / "out"),
                             "--run-id", "private", "--no-progress", "--ray-address", "local", env=env)
        assert private.returncode == 0, private.stderr[-3000:]
        assert "already running" not in private.stderr and _drivers(head) == 1
    finally:
        head.stop()
    stale = Path(head.temp_dir) / "ray"
    stale.mkdir(parents=True)
    (stale / "ray_current_cluster").write_text(f"127.0.0.1:{free_port()}")
    left = transcribe("--manifest", str(manifest), "--model", str(tiny), "--output", str(tmp_path / "out"),
                      "--run-id", "stale", "--no-progress", env=env)
    assert left.returncode == 0, left.stderr[-3000:]
    assert "no longer answers: starting a private one" in left.stderr
    for run in ("joined", "private", "stale"):
        assert sorted(pq.read_table(tmp_path / "out" / "transcripts" / f"run_id={run}").column("cut_id").to_pylist()) \
            == ["a", "b"]


# ---------------------------------------------------------------- the run lock


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_second_run_on_the_same_output_and_run_id_stops_naming_the_first(tmp_path, tiny, where):
    """Run A is inside its run (its audio reads held at a proxy); run B, same output and run id,
    stops at once with exit status 2 naming A's process; A then finishes with every cut, once."""
    import boto3

    with moto_environment() as env, FaultProxy(env["AWS_ENDPOINT_URL"]) as proxy:
        bucket = f"b-{uuid.uuid4().hex[:10]}"
        boto3.client("s3").create_bucket(Bucket=bucket)
        manifest = write_corpus(tmp_path / "corpus", [(f"c{k}", f"r{k}") for k in range(4)],
                                source_prefix=f"s3://{bucket}/audio")
        for f in (tmp_path / "corpus").glob("*.wav"):
            storage.write_bytes_atomic(f"s3://{bucket}/audio/{f.name}", f.read_bytes())
        output = str(tmp_path / "out") if where == "local" else f"s3://{bucket}/out"
        job_env = {**os.environ, **env, "AWS_ENDPOINT_URL": proxy.url, "RAY_AUTH_MODE": "disabled"}
        job_env["RAY_ADDRESS"] = "local"  # a private Ray, whatever else runs on this machine
        args = ("--manifest", str(manifest), "--model", str(tiny), "--output", output, "--run-id", "nightly",
                "--no-progress", "--ray-address", "local", "--shard-size", "2")
        proxy.hold(lambda method, path, headers: method == "GET" and path.startswith(f"/{bucket}/audio/"))
        first = transcribe(*args, env=job_env, wait=False)
        try:
            wait_for(lambda: proxy.held or first.poll() is not None, 300, "run A reading its audio")
            assert first.poll() is None, first.communicate()[1][-3000:]
            second = transcribe(*args, env=job_env, timeout=300)
            assert second.returncode == 2, second.stderr[-3000:]
            (line,) = [ln for ln in second.stderr.splitlines() if ln.startswith("error:")]
            assert f"run 'nightly' on this output is being run by pid {first.pid} on " in line
        finally:
            proxy.release()
            out, err = first.communicate(timeout=600)
        assert first.returncode == 0, err[-3000:]
    if where == "local":
        table = pq.read_table(tmp_path / "out" / "transcripts" / "run_id=nightly")
        assert not (tmp_path / "out" / "runs" / "nightly" / "lock.json").exists()
        ids = table.column("cut_id").to_pylist()
        assert sorted(ids) == ["c0", "c1", "c2", "c3"]


_HOLD = """
import sys, time
sys.path.insert(0, sys.argv[1])
from pipeline.output.paths import RunPaths
from pipeline.run.lock import RunLock
lock = RunLock(RunPaths(sys.argv[2], "r"), lease_seconds=600).acquire()
print("held", flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("where", ["local", "s3"])
def test_the_lock_of_a_killed_or_silent_holder_is_taken_over_and_a_live_one_is_not(tmp_path, where):
    import boto3

    with moto_environment() as env:
        bucket = f"b-{uuid.uuid4().hex[:10]}"
        boto3.client("s3").create_bucket(Bucket=bucket)
        output = str(tmp_path / "out") if where == "local" else f"s3://{bucket}/out"
        paths = RunPaths(output, "r")
        # a holder killed with -9 on this host: taken over at once (its lease would run 600 s)
        holder = subprocess.Popen([PYTHON, "-c", _HOLD, str(REPO), output], stdout=subprocess.PIPE, text=True,
                                  env=dict(os.environ, **env))
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError, match=f"pid {holder.pid} on "):
            RunLock(paths).acquire()
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        lock = RunLock(paths).acquire()
        lock.release()
        assert not storage.exists(paths.lock)
        # a holder elsewhere: live while renewed, taken over once its lease ran out
        for renewed, taken in ((time.time(), False), (time.time() - 300, True)):
            body = {"host": "gpu-node-7", "pid": 4242, "started_at": "2026-12-01T00:00:00+00:00",
                    "renewed_at": renewed, "token": "x"}
            storage.write_bytes_atomic(paths.lock, json.dumps(body).encode())
            if taken:
                with RunLock(paths, lease_seconds=120):
                    assert json.loads(storage.read_bytes(paths.lock))["pid"] == os.getpid()
            else:
                with pytest.raises(RunLockedError, match="pid 4242 on gpu-node-7"):
                    RunLock(paths, lease_seconds=120).acquire()
        # renewals: the holder's time moves on; a lock taken over under it is seen as lost
        storage.delete(paths.lock)
        lock = RunLock(paths, lease_seconds=2, renew_seconds=0.2).acquire()
        first = json.loads(storage.read_bytes(paths.lock))["renewed_at"]
        wait_for(lambda: json.loads(storage.read_bytes(paths.lock))["renewed_at"] > first, 10, "a renewal")
        data, version = storage.read_versioned(paths.lock)
        assert storage.put_if(paths.lock, data.replace(b'"pid": ', b'"pid": 1'), version) is not None
        wait_for(lambda: lock.lost, 10, "the holder to see its lock taken")
        lock.release()
        assert storage.exists(paths.lock)  # not ours any more: left to its new holder


@pytest.mark.parametrize("where", ["local", "s3"])
def test_of_runs_taking_a_free_lock_at_once_exactly_one_wins(tmp_path, where):
    import threading

    import boto3

    with moto_environment():
        bucket = f"b-{uuid.uuid4().hex[:10]}"
        boto3.client("s3").create_bucket(Bucket=bucket)
        output = str(tmp_path / "out") if where == "local" else f"s3://{bucket}/out"
        for attempt in range(5):
            paths = RunPaths(output, f"race-{attempt}")
            start, results = threading.Barrier(6), []

            def take() -> None:
                start.wait()
                try:
                    results.append(RunLock(paths).acquire())
                except RunLockedError:
                    results.append(None)

            threads = [threading.Thread(target=take) for _ in range(6)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            winners = [r for r in results if r is not None]
            assert len(winners) == 1, results
            winners[0].release()


# ---------------------------------------------------------------- containment


def test_a_model_key_climbing_out_of_the_cache_is_refused(tmp_path):
    """A key ``models/zf/data/lang/../../(...)/victim/bpe.model`` used to replace a local file
    outside the cache by a symlink into it: now one line and exit status 2, nothing touched."""
    import boto3

    victim = tmp_path / "victim" / "bpe.model"
    victim.parent.mkdir()
    victim.write_text("a user's file")
    with moto_environment() as env:
        bucket = f"b-{uuid.uuid4().hex[:10]}"
        client = boto3.client("s3")
        client.create_bucket(Bucket=bucket)
        model = make_tiny_model_dir(tmp_path / "model")
        for f in model.iterdir():
            client.put_object(Bucket=bucket, Key=f"models/zf/{f.name}", Body=f.read_bytes())
        hostile = "models/zf/data/lang/" + "../" * 30 + str(victim).lstrip("/")
        client.put_object(Bucket=bucket, Key=hostile, Body=b"attacker")
        cache = tmp_path / "cache"
        out = subprocess.run([PYTHON, str(REPO / "jobs" / "inspect_model.py"), f"s3://{bucket}/models/zf"],
                             capture_output=True, text=True, env={**os.environ, **env, "ZIPSCRIBE_CACHE": str(cache)})
    assert out.returncode == 2 and "Traceback" not in out.stderr
    (line,) = [ln for ln in out.stderr.strip().splitlines() if ln]
    assert "unsafe S3 key" in line and "'..'" in line
    assert victim.read_text() == "a user's file" and not victim.is_symlink()


def test_the_demo_deletes_only_what_it_made(tmp_path):
    parent = tmp_path / "parent"
    (parent / "keep").mkdir(parents=True)
    (parent / "keep" / "precious.txt").write_text("x")
    escape = subprocess.run([PYTHON, str(REPO / "jobs" / "demo.py"), "--output", str(parent / "demo-output"),
                             "--run-id", "../.."], capture_output=True, text=True, cwd=tmp_path)
    assert escape.returncode != 0 and "invalid --run-id '../..'" in escape.stderr
    mine = tmp_path / "mydata"
    mine.mkdir()
    (mine / "thesis.tex").write_text("y")
    refused = subprocess.run([PYTHON, str(REPO / "jobs" / "demo.py"), "--data", str(mine), "--output",
                              str(tmp_path / "o")], capture_output=True, text=True, cwd=tmp_path)
    assert refused.returncode != 0 and "holds files the demo did not make" in refused.stderr
    assert (parent / "keep" / "precious.txt").read_text() == "x" and (mine / "thesis.tex").read_text() == "y"


def test_replan_does_not_follow_symbolic_links_out_of_the_output(tmp_path):
    from pipeline.plan.frozen import PlanOptions, stale_parts, write_plan

    manifest = write_corpus(tmp_path / "corpus", [("a", "ra")])
    paths = RunPaths(str(tmp_path / "out"), "r")
    plan = write_plan(paths, PlanOptions(manifests=(str(manifest),)))
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "part-shard-0000000000000000.parquet").write_bytes(b"not ours")
    transcripts = Path(paths.transcripts)
    transcripts.mkdir(parents=True)
    (transcripts / "linked").symlink_to(outside, target_is_directory=True)
    (transcripts / "part-shard-1111111111111111.parquet").symlink_to(outside / "part-shard-0000000000000000.parquet")
    (transcripts / "part-shard-2222222222222222.parquet").write_bytes(b"a stale part of this run")
    assert stale_parts(paths, plan) == [str(transcripts / "part-shard-2222222222222222.parquet")]


def test_export_refuses_a_run_id_that_climbs_and_shortens_long_recording_ids(tmp_path, tiny):
    from pipeline.run.config import TranscribeConfig
    from pipeline.run.driver import run_in_process

    long_id = "rec-" + "x" * 300
    manifest = write_corpus(tmp_path / "corpus", [("a", long_id), ("b", "../../escape"), ("c", "ok")])
    run_in_process(TranscribeConfig(manifest=[str(manifest)], model=str(tiny), output=str(tmp_path / "out")), "real")
    bad = subprocess.run([PYTHON, str(REPO / "jobs" / "export.py"), "--run", str(tmp_path / "out"), "--run-id",
                          "real/../../../outside", "--format", "srt", "--out", str(tmp_path / "subs")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "invalid --run-id" in bad.stderr and "Traceback" not in bad.stderr
    good = subprocess.run([PYTHON, str(REPO / "jobs" / "export.py"), "--run", str(tmp_path / "out"), "--run-id", "real",
                           "--format", "json", "--out", str(tmp_path / "subs")], capture_output=True, text=True)
    assert good.returncode == 0, good.stderr[-2000:]
    files = sorted(p.name for p in (tmp_path / "subs").iterdir())
    words = pq.read_table(tmp_path / "out" / "words" / "run_id=real").column("recording_id").to_pylist()
    assert len(files) == len(set(words)) and all(len(n.encode()) <= 255 for n in files)
    assert all(p.parent == tmp_path / "subs" for p in (tmp_path / "subs").rglob("*"))
    assert not (tmp_path / "escape.json").exists()


# ---------------------------------------------------------------- reports never fail a run


def test_a_speaker_name_in_dollars_is_drawn_as_written(tmp_path, tiny):
    from pipeline.report.files import write_run_report
    from pipeline.run.config import TranscribeConfig
    from pipeline.run.driver import run_in_process

    manifest = write_corpus(tmp_path / "corpus", [("a", "ra"), ("b", "rb")], speaker="x $\\foo$ y")
    run_in_process(TranscribeConfig(manifest=[str(manifest)], model=str(tiny), output=str(tmp_path / "out")), "tex")
    _, uris = write_run_report(str(tmp_path / "out" / "transcripts" / "run_id=tex"), str(tmp_path / "out"), "tex",
                               "english")
    page = Path(uris["report.html"]).read_text()
    assert "x $\\foo$ y" in page


def test_a_report_that_cannot_be_rendered_leaves_the_rest_written(tmp_path, tiny, monkeypatch, caplog):
    """The page fails to render (simulated): the report's tables and summary are written, the
    failure is logged with its reason, nothing is raised."""
    import pipeline.report.files as files
    from pipeline.run.config import TranscribeConfig
    from pipeline.run.driver import run_in_process

    manifest = write_corpus(tmp_path / "corpus", [("a", "ra")])
    run_in_process(TranscribeConfig(manifest=[str(manifest)], model=str(tiny), output=str(tmp_path / "out")), "bad")

    def broken(report):
        raise ValueError("a plot that cannot be drawn")

    monkeypatch.setattr(files, "render_html", broken)
    _, uris = files.write_run_report(str(tmp_path / "out" / "transcripts" / "run_id=bad"), str(tmp_path / "out"),
                                     "bad", "english")
    assert set(uris) == {"wer_groups", "wer_errors", "summary.md"}
    assert all(Path(u).exists() for u in uris.values())
    assert "report.html of run bad could not be rendered" in caplog.text and "cannot be drawn" in caplog.text


# ---------------------------------------------------------------- hostile names, generated

HOSTILE = st.one_of(
    st.sampled_from(["..", "../..", "/", "/etc/passwd", "a/../../b", "\x00", "x\ny", "$\\frac{a}{b}$", ".", "",
                     "~", "con", "a" * 300, "é" * 150, "run_id=x", "part-long-x", "..\\..\\w"]),
    st.text(min_size=0, max_size=40),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=100, max_size=300),
)


@settings(max_examples=300, deadline=None, database=None)
@given(name=HOSTILE, other=HOSTILE)
def test_names_from_input_never_lead_out(name, other):
    root = "/srv/out"
    try:
        paths = RunPaths(root, name)
    except ValueError:
        pass
    else:  # an accepted run id: every output path stays under the output
        for uri in (paths.transcripts, paths.summary, paths.lock, paths.plan_shard("shard-x"), paths.words,
                    paths.report_document("report.html"), paths.stitched_part(other)):
            assert os.path.normpath(uri).startswith(root + "/") and "\x00" not in uri
    made = safe_name(name)
    assert made and "/" not in made and "\x00" not in made and not made.startswith(".") and len(made.encode()) <= 255
    assert (safe_name(other) == made) == (other == name)
    try:
        key = relative_key(name)
    except UnsafePathError:
        return
    assert within("/srv/cache", key).startswith("/srv/cache/")


HOSTILE_IDS = st.lists(st.one_of(
    st.sampled_from(["..", "../../escape", "/abs", "a/b", "x\ny", "$\\foo$", "~", "é" * 80, "b" * 300, "."]),
    st.text(min_size=1, max_size=30)), min_size=1, max_size=4, unique=True)


@settings(max_examples=6, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ids=HOSTILE_IDS, speaker=HOSTILE)
def test_a_run_with_hostile_ids_writes_every_cut_once_and_nothing_outside(tmp_path_factory, tiny, ids, speaker):
    """The real pipeline (in one process) and the export on cuts whose ids, recording ids and speakers
    are hostile: no traceback, every cut once, files only under the output, the export folder and
    the corpus's own folder."""
    from pipeline.report.files import write_run_report
    from pipeline.report.subtitles import export_run
    from pipeline.run.config import TranscribeConfig
    from pipeline.run.driver import run_in_process

    base = tmp_path_factory.mktemp("hostile")
    cuts = [(cut_id, f"rec/{cut_id}") for cut_id in ids]
    manifest = write_corpus(base / "corpus", cuts, speaker=speaker or "s")
    before = {p for p in base.parent.rglob("*")}
    out = base / "out"
    run_in_process(TranscribeConfig(manifest=[str(manifest)], model=str(tiny), output=str(out)), "hostile")
    table = pq.read_table(out / "transcripts" / "run_id=hostile")
    assert sorted(table.column("cut_id").to_pylist()) == sorted(ids)
    write_run_report(str(out / "transcripts" / "run_id=hostile"), str(out), "hostile", "english")
    export_run(str(out), "hostile", "srt", str(base / "subs"))
    created = {p for p in base.parent.rglob("*")} - before
    assert all(p == out or out in p.parents or p == base / "subs" or base / "subs" in p.parents for p in created), \
        sorted(map(str, created))
