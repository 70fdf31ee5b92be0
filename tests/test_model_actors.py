"""Model actors in real runs on a local Ray (in process, 2 CPUs), faults injected from outside the
product (tests/stage_fakes.py): an actor decodes its next shard while the last one's parts are still
being written; a cut that poisons the CUDA context every time ends its actor a bounded number of
times, then its shard is reported failed with the reason while the other shards are done; a warm-up
that fails on the device makes the actor exit, Ray restarts it a bounded number of times, and the
run stops saying why."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

import stage_fakes
from helpers import make_tiny_model_dir

SR = 16000


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    import ray
    from ray import cloudpickle

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    events = tmp_path_factory.mktemp("events") / "events.jsonl"
    os.environ["STAGE_EVENTS"] = str(events)  # the workers inherit this process's environment
    cloudpickle.register_pickle_by_value(stage_fakes)
    temp = tmp_path_factory.mktemp("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING",
             _temp_dir=str(temp), runtime_env={"env_vars": {"RAY_AUTH_MODE": "disabled"}})
    yield events
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """8 cuts of noise (1-2 s), one of them the poison cut (2.5 s), as a lhotse manifest; a model."""
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(3)
    seconds = [1.0, 1.5, 2.0, 1.2, 2.5, 1.8, 1.1, 1.6]
    manifest = root / "cuts.jsonl"
    with manifest.open("w") as f:
        for i, s in enumerate(seconds):
            n = int(s * SR)
            path = root / f"c{i}.wav"
            sf.write(str(path), (0.1 * rng.standard_normal(n)).astype(np.float32), SR, subtype="PCM_16")
            rec = {"id": f"r{i}", "sources": [{"type": "file", "channels": [0], "source": str(path)}],
                   "sampling_rate": SR, "num_samples": n, "duration": s, "channel_ids": [0]}
            f.write(json.dumps({"id": f"c{i}", "start": 0, "duration": s, "channel": 0, "type": "MonoCut",
                                "supervisions": [], "recording": rec}) + "\n")
    assert int(seconds[4] * SR) == stage_fakes.POISON_SAMPLES
    return {"manifest": str(manifest), "model": str(make_tiny_model_dir(root / "model")),
            "cuts": [f"c{i}" for i in range(len(seconds))], "poison": "c4"}


def run(corpus, output, stage, **kw):
    from pipeline.run.config import TranscribeConfig
    from pipeline.run.driver import run as run_job

    options = dict(num_actors="1", max_attempts=2, shard_size=3, progress=False, eta=False, device="cpu")
    cfg = TranscribeConfig(manifest=[corpus["manifest"]], model=corpus["model"], output=str(output), run_id="r",
                           **{**options, **kw})
    return run_job(cfg, model_stage=stage)


def test_a_cut_that_poisons_the_device_costs_bounded_restarts_then_its_shard_is_reported(local_ray, corpus, tmp_path):
    summary = run(corpus, tmp_path / "out", stage_fakes.PoisonStage)
    (failed,) = summary.shards_failed
    error = summary.shard_errors[failed]
    assert error.startswith("not started again after 2 starts: a device failure on it ended its actor, the last: ")
    assert stage_fakes.DEVICE_SIDE_ASSERT in error
    assert [f["shard_id"] for f in summary.device_failures] == [failed, failed]  # two actors ended, then no more
    assert summary.shards_done == summary.shards_total - 1 and not summary.stopped
    parts = sorted((tmp_path / "out" / "transcripts" / "run_id=r").glob("part-*.parquet"))
    cut_ids = [c for p in parts for c in pq.read_table(p).column("cut_id").to_pylist()]
    from pipeline.output.paths import RunPaths
    from pipeline.plan.frozen import read_shard

    lost = [i.cut_id for i in read_shard(RunPaths(str(tmp_path / "out"), "r").plan_shard(failed), failed, 0).items]
    assert corpus["poison"] in lost and len(parts) == summary.shards_total - 1
    assert sorted(cut_ids + lost) == sorted(corpus["cuts"])  # every other cut written, each once
    from pipeline.run.summary import format_summary

    text = format_summary(summary)
    assert f"failed {failed}: not started again" in text and "device failures: 2 actor(s) ended" in text


def test_a_warm_up_that_fails_on_the_device_restarts_the_actor_then_stops_the_run_saying_why(local_ray, corpus, tmp_path):
    summary = run(corpus, tmp_path / "out", stage_fakes.WarmUpFails)
    assert summary.shards_done == 0 and sorted(summary.shards_failed) and summary.stopped
    # the first start and the 2 restarts --max-attempts allows, each at start-up (no shard)
    assert [f["shard_id"] for f in summary.device_failures] == [None, None, None]
    assert "model actors ended 3 time(s) after device failures, the last: " in summary.stopped
    assert f"the model's warm-up failed on cpu: RuntimeError: {stage_fakes.ILLEGAL_ADDRESS}" in summary.stopped


def test_an_actor_decodes_its_next_shard_while_the_last_ones_parts_are_written(local_ray, corpus, tmp_path):
    """Parts take 1.5 s each to write (two per shard: words, transcripts): with one actor, some
    shard's decoding starts before the shard before it is written, and every shard is done once."""
    summary = run(corpus, tmp_path / "out", stage_fakes.SlowWrites, shard_size=2)
    assert summary.shards_done == summary.shards_total >= 3 and summary.shards_failed == []
    events = [json.loads(line) for line in local_ray.read_text().splitlines()]
    spans = {}
    for e in events:
        spans.setdefault((e["shard"], e["event"].split()[0]), {})[e["event"].split()[1]] = e["t"]
    writes = [(shard, span) for (shard, kind), span in spans.items() if kind == "write"]
    decodes = [(shard, span) for (shard, kind), span in spans.items() if kind == "decode"]
    assert len(writes) == len(decodes) == summary.shards_total  # each shard decoded and written once
    overlapped = [(d, w) for d, dspan in decodes for w, wspan in writes
                  if d != w and wspan["start"] < dspan["start"] < wspan["end"]]
    assert overlapped, events
