"""Runs on multi-node clusters simulated on this machine with Ray's own tools: a worker node lost
mid-run (``ray.cluster_utils.Cluster``), the resources a run held against its actors' lifetimes
seen from outside, and an autoscaling cluster whose GPU nodes start at zero (Ray's
``fake_multinode`` provider). Real espeak-ng audio, S3 on moto, Parquet read back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from audio_testing import speak
from helpers import make_tiny_model_dir
from s3_testing import FaultProxy, free_port, moto_server
from services import MODEL_ACTOR, REPO, FakeAutoscalingCluster, list_state, pid_holding, wait_for

pytestmark = pytest.mark.needs_tools("espeak-ng", "sox")

SENTENCES = ["hello world", "the quick brown fox jumps over the lazy dog", "speech recognition turns audio into text",
             "one two three", "object storage holds the audio", "a batch transcription service on ray",
             "numbers like four five six", "the transcripts land as parquet", "nodes come and go",
             "every cut is written once"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A tiny model and ten spoken sentences as a local lhotse manifest (every node reads the same disk)."""
    import soundfile as sf

    root = tmp_path_factory.mktemp("cluster-corpus")
    (root / "model").mkdir()
    model = make_tiny_model_dir(root / "model")
    lines = []
    for i, text in enumerate(SENTENCES):
        wav = speak(text, root / f"u{i}.wav", voice=("en-us", "en-gb")[i % 2])
        frames = sf.info(str(wav)).frames
        rec = {"id": f"r{i}", "sources": [{"type": "file", "channels": [0], "source": str(wav)}], "sampling_rate": 16000,
               "num_samples": frames, "duration": frames / 16000, "channel_ids": [0]}
        lines.append(json.dumps({"id": f"c{i:02d}", "start": 0, "duration": frames / 16000, "channel": 0,
                                 "type": "MonoCut", "supervisions": [], "recording": rec}))
    manifest = root / "cuts.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return {"manifest": str(manifest), "model": str(model), "root": root}


@pytest.fixture(scope="module")
def s3_env():
    with moto_server() as url:
        env = {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}
        with pytest.MonkeyPatch.context() as mp:
            for k, v in env.items():
                mp.setenv(k, v)
            import boto3

            boto3.client("s3").create_bucket(Bucket="out")
            yield env


def job_env(ray_address: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ, RAY_ADDRESS=ray_address, RAY_AUTH_MODE="disabled", PYTHONUNBUFFERED="1", **extra)
    env.pop("RAY_FAKE_CLUSTER", None)
    return env


def transcribe(corpus, env, output, run_id, *extra) -> subprocess.Popen:
    args = [sys.executable, "jobs/transcribe.py", "--manifest", corpus["manifest"], "--model", corpus["model"],
            "--output", output, "--run-id", run_id, "--summary-json", "--no-progress", *extra]
    return subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finished(proc: subprocess.Popen, timeout: float = 600) -> dict:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:] + err[-4000:]
    return json.loads(out[out.index("{\n"): out.rindex("}") + 1])


def texts(output_prefix: str, run_id: str) -> dict[str, str]:
    import boto3
    import pyarrow.parquet as pq

    client = boto3.client("s3")
    rows: dict[str, list[str]] = {}
    for obj in client.list_objects_v2(Bucket="out", Prefix=f"{output_prefix}/transcripts/run_id={run_id}/")["Contents"]:
        body = client.get_object(Bucket="out", Key=obj["Key"])["Body"].read()
        import io

        for r in pq.read_table(io.BytesIO(body)).to_pylist():
            rows.setdefault(r["cut_id"], []).append(r["text"])
    assert all(len(v) == 1 for v in rows.values()), {k: v for k, v in rows.items() if len(v) > 1}  # each cut once
    return {k: v[0] for k, v in rows.items()}


def test_a_lost_worker_node_costs_a_retry_not_a_cut(corpus, s3_env):
    """A head with no CPUs and three 1-CPU worker nodes (the model actors are sized by a node, so
    each fits on one). Mid-run, the upload of the second part is held at the proxy and the node of
    the actor writing it is removed: its shard runs again on a live node; every cut is written
    once, with the same texts as a run without faults."""
    from ray.cluster_utils import Cluster

    dashboard = free_port()
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": dashboard})
    try:
        workers = [cluster.add_node(num_cpus=1) for _ in range(3)]
        cluster.wait_for_nodes()
        base = finished(transcribe(corpus, job_env(cluster.address), "s3://out/nodes", "base", "--shard-size", "1"))
        # Which worker nodes the actors land on is Ray's scheduling (an actor is sized to fit one
        # node, not to own it): seen here, three actors on two nodes. What holds every time: they
        # run on the worker nodes, never on the 0-CPU head.
        assert base["num_actors"] >= 1
        assert {a["node_id"] for a in base["actors"]} <= {w.node_id for w in workers}
        with FaultProxy(s3_env["AWS_ENDPOINT_URL"]) as proxy:
            seen: list[str] = []

            def second_part(method, path, headers):
                if method == "PUT" and "/transcripts/run_id=lost/part-" in path:
                    seen.append(path)
                    return len(seen) == 2
                return False

            proxy.hold(second_part)
            job = transcribe(corpus, job_env(cluster.address, AWS_ENDPOINT_URL=proxy.url), "s3://out/nodes", "lost",
                             "--shard-size", "1")
            held = wait_for(lambda: proxy.held, 300, "the second part's upload")
            actors = list_state(f"http://127.0.0.1:{dashboard}", "actors", f"class_name={MODEL_ACTOR}", "state=ALIVE")
            victim = next(a for a in actors if pid_holding(a["pid"], held[0].client_port))
            (node,) = [w for w in workers if w.node_id == victim["node_id"]]
            cluster.remove_node(node)
            proxy.release(forward=False)  # the upload of the dead node's actor never reaches the store
            summary = finished(job)
        assert summary["shards_failed"] == [] and summary["shards_done"] == summary["shards_total"] == len(SENTENCES)
        assert summary["shard_retries"] >= 1
        assert victim["node_id"] in {a["node_id"] for a in summary["actors"]}  # the lost node did work first
        assert texts("nodes", "lost") == texts("nodes", "base")  # every cut once, the same texts
    finally:
        cluster.shutdown()


def test_autoscaling_from_zero_gpu_nodes(corpus, s3_env, tmp_path):
    """A cluster whose only worker type declares GPU 1 starts with no worker node. The job asks for
    one GPU per actor (on CPU on purpose: the GPUs are fake), says it waits, the autoscaler
    launches a node, the first actor starts. Its part uploads are held at the proxy, so work
    queues up behind it: the pool grows to two actors on two nodes (the uploads are released once
    both are alive), and the run completes."""
    many = tmp_path / "many.jsonl"  # 40 cuts, so work waits while the first actor is held
    lines = open(corpus["manifest"]).read().splitlines()
    many.write_text("\n".join(line.replace(f'"id": "c{i % 10:02d}"', f'"id": "c{i:02d}"', 1)
                              for i, line in enumerate(lines * 4)) + "\n")
    with FakeAutoscalingCluster(worker_resources={"CPU": 2, "GPU": 1}, max_workers=2) as cluster, \
            FaultProxy(s3_env["AWS_ENDPOINT_URL"]) as proxy:
        proxy.hold(lambda method, path, headers: method == "PUT" and "/transcripts/run_id=scale/part-" in path)
        job = transcribe({**corpus, "manifest": str(many)}, job_env(cluster.address, AWS_ENDPOINT_URL=proxy.url),
                         "s3://out/scale", "scale", "--shard-size", "1", "--gpus-per-actor", "1", "--device", "cpu",
                         "--num-actors", "1:2", "--resource-timeout", "240")
        wait_for(lambda: len(cluster.actors(MODEL_ACTOR)) == 2 or job.poll() is not None, 300, "a second model actor",
                 interval=1.0)
        proxy.release()
        out, err = job.communicate(timeout=600)
        assert job.returncode == 0, out[-4000:] + err[-4000:]
        summary = json.loads(out[out.index("{\n"): out.rindex("}") + 1])
    assert "no node can host a model actor (CPU 1, GPU 1) yet" in err and "joined after" in err
    assert summary["stages"]["resource_wait_seconds"] > 0
    assert summary["cuts_ok"] == 40 and summary["shards_done"] == 40 and summary["shards_failed"] == []
    assert {a["device"] for a in summary["actors"]} == {"cpu"}
    assert len(summary["actors"]) == 2 and len({a["node_id"] for a in summary["actors"]}) == 2, summary["actors"]
    assert sorted(texts("scale", "scale")) == [f"c{i:02d}" for i in range(40)]  # each cut once



class HeldResources:
    """Ray's own account of what the cluster's nodes hold, sampled from outside every 0.1 s (the
    control store's available resources of each node against its totals) and integrated over
    time: GPU- and CPU-seconds in use, and per node the seconds during which anything was."""

    def __init__(self, address: str):
        self.address = address
        self.gpu_s = self.cpu_s = 0.0
        self.busy_s: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        import ray
        from ray._private import state

        totals = {n["NodeID"]: n["Resources"] for n in ray.nodes() if n["Alive"]}
        last, used = time.time(), {}
        while not self._stop.is_set():
            available = state.state.available_resources_per_node()
            now = time.time()
            for node, (gpus, cpus) in used.items():  # what was in use since the last sample
                self.gpu_s += gpus * (now - last)
                self.cpu_s += cpus * (now - last)
                if gpus > 1e-9 or cpus > 1e-9:
                    self.busy_s[node] = self.busy_s.get(node, 0.0) + now - last
            used = {node: (total.get("GPU", 0) - available.get(node, {}).get("GPU", 0),
                           total.get("CPU", 0) - available.get(node, {}).get("CPU", 0)) for node, total in totals.items()}
            last = now
            time.sleep(0.1)

    def __enter__(self) -> "HeldResources":
        import ray

        ray.init(address=self.address, logging_level="ERROR", log_to_driver=False)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        import ray

        self._stop.set()
        self._thread.join()
        ray.shutdown()


def test_resources_held_agree_with_what_ray_saw_held(corpus, tmp_path):
    """A head with no CPUs and two worker nodes of 2 CPUs and 1 (made-up) GPU each; a job with one
    GPU per model actor, so two actors, one per node (the model runs on CPU). From outside, the
    test samples Ray's own account of the resources in use on each node and integrates it over
    the run (wall time x resources held). The summary's GPU- and node-hours, measured from the
    actors' and tasks' lifetimes, agree with it within 5 %, its CPU core-hours within what the tasks'
    own measure leaves out; every audio task and the planning task are counted; the cost is the
    GPU-hours at the given price."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=2, num_gpus=1)
        cluster.wait_for_nodes()
        with HeldResources(cluster.address) as seen:
            time.sleep(0.5)  # a few samples of the idle cluster first
            summary = finished(transcribe(corpus, job_env(cluster.address), str(tmp_path / "out"), "held",
                                          "--shard-size", "1", "--gpus-per-actor", "1", "--device", "cpu",
                                          "--num-actors", "2", "--cpus-per-actor", "1", "--audio-cpus", "0.5",
                                          "--price", "gpu=2.5", "--no-wer-report"))
            time.sleep(0.5)  # the job has ended (its driver waited for its actors' ends): the last samples
    finally:
        cluster.shutdown()
    assert summary["cuts_ok"] == len(SENTENCES) and summary["shards_failed"] == []
    r = summary["resources"]
    assert list(r["by_node_type"]) == ["gpu1-cpu2"] and r["by_node_type"]["gpu1-cpu2"]["nodes"] == 2  # not the head
    observed = {"gpu_hours": seen.gpu_s / 3600, "cpu_core_hours": seen.cpu_s / 3600,
                "node_hours": sum(seen.busy_s.values()) / 3600}
    measured = {k: r[k] for k in observed}
    for key in ("gpu_hours", "node_hours"):
        assert measured[key] == pytest.approx(observed[key], rel=0.05), (measured, observed)
    # CPU core-hours: the actors' exactly, the tasks' from their functions' start (a fresh worker's
    # first task: from the process's start) to their end, so without Ray's own work around each task
    # (lease, fetching its input, storing its output block): less than Ray saw, by ~0.3 core-s per
    # audio task here (8 % of this tiny run; less the longer the shards)
    assert 0.85 * observed["cpu_core_hours"] <= measured["cpu_core_hours"] <= 1.02 * observed["cpu_core_hours"], \
        (measured, observed, r["by_holder"])
    assert r["by_holder"]["model actor"]["cpu_core_hours"] == pytest.approx(r["gpu_hours"])  # 1 CPU, 1 GPU each
    assert len(seen.busy_s) == 2 and observed["gpu_hours"] > 0
    assert r["by_holder"]["audio task"]["holds"] == summary["shards_total"] == len(SENTENCES)
    assert r["by_holder"]["planning task"]["holds"] == 1
    assert r["gpu_hours"] <= 2 * summary["wall_seconds"] / 3600  # two GPUs at most, for no longer than the run
    cost = summary["cost"]
    assert cost["total_usd"] == pytest.approx(2.5 * r["gpu_hours"], rel=1e-9) and cost["unpriced"] == []
    assert cost["per_audio_hour_usd"] == pytest.approx(cost["total_usd"] / (summary["audio_seconds"] / 3600), rel=1e-9)
