"""Actor sizing from cluster resources, run-id checks and the plan-only dry run."""

from __future__ import annotations

import gzip
import json

import pytest

from pipeline.run.config import TranscribeConfig, check_run_id
from pipeline.run.driver import dry_run as plan
from pipeline.run.resources import plan_resources


def cfg(**kw):
    return TranscribeConfig(manifest=["m"], model="d", output="o", **kw)


def test_two_cpu_machine_gets_one_actor_using_both_cores():
    assert plan_resources({"CPU": 2.0}, cfg()) == (1, {"num_cpus": 2.0, "num_gpus": 0.0})


def test_cpu_cluster_is_split_into_four_cpu_actors():
    assert plan_resources({"CPU": 32.0}, cfg()) == (8, {"num_cpus": 4.0, "num_gpus": 0.0})


def test_gpu_cluster_gets_one_actor_per_gpu():
    assert plan_resources({"CPU": 64.0, "GPU": 4.0}, cfg()) == (4, {"num_cpus": 1.0, "num_gpus": 1.0})
    assert plan_resources({"CPU": 64.0, "GPU": 4.0}, cfg(gpus_per_actor=0.5)) == (8, {"num_cpus": 1.0, "num_gpus": 0.5})


def test_gpus_never_requested_from_a_cluster_without_them():
    with pytest.raises(RuntimeError, match="no GPUs"):
        plan_resources({"CPU": 8.0}, cfg(gpus_per_actor=1.0))
    assert plan_resources({"CPU": 8.0}, cfg(gpus_per_actor=0.0))[1]["num_gpus"] == 0.0


def test_explicit_actor_count_wins():
    assert plan_resources({"CPU": 8.0}, cfg(num_actors=3, cpus_per_actor=2.0)) == (3, {"num_cpus": 2.0, "num_gpus": 0.0})


@pytest.mark.parametrize("bad", ["../x", "a/b", "", ".hidden", "x" * 200, "run id"])
def test_run_ids_that_could_escape_the_output_are_refused(bad):
    with pytest.raises(ValueError, match="invalid --run-id"):
        check_run_id(bad)


def test_plan_only_counts_and_padding(tmp_path):
    manifest = tmp_path / "cuts.jsonl.gz"
    with gzip.open(manifest, "wt") as f:
        for i, dur in enumerate([2.0, 2.0, 4.0, 8.0, 16.0]):
            rec = {"id": f"r{i}", "sources": [{"type": "file", "channels": [0], "source": f"/a/{i}.wav"}],
                   "sampling_rate": 16000, "num_samples": int(dur * 16000), "duration": dur, "channel_ids": [0]}
            f.write(json.dumps({"id": f"c{i}", "start": 0, "duration": dur, "channel": 0, "type": "MonoCut",
                                "supervisions": [], "recording": rec}) + "\n")
    out = plan(TranscribeConfig(manifest=[str(manifest)], model="", output="", shard_size=2, max_batch_seconds=16.0))
    assert (out.cuts, out.shards) == (5, 3)
    assert out.audio_seconds == pytest.approx(32.0)
    assert out.padded_seconds >= out.audio_seconds and 0 <= out.padding_ratio < 1
    assert out.peak_rss_mb > 0


def test_long_audio_options_reach_the_config_and_the_fingerprint():
    import sys
    from pathlib import Path

    from pipeline.run.config import long_audio_label
    from pipeline.longform.pauses import PauseSplit

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "jobs"))
    import transcribe

    def parsed(*extra):
        args = transcribe.build_parser().parse_args(["--manifest", "m", "--model", "d", "--output", "o", *extra])
        return transcribe.config_from_args(args)

    default = parsed()
    assert default.pause_split == PauseSplit() and "max_segment_seconds" not in default.decoding  # model's default
    tuned = parsed("--min-pause-seconds", "0.5", "--pause-threshold-db", "40", "--max-segment-seconds", "8")
    assert tuned.pause_split == PauseSplit(min_pause_seconds=0.5, threshold_db=40.0)
    assert tuned.decoding["max_segment_seconds"] == 8.0
    off = parsed("--no-pause-split", "--max-segment-seconds", "0")
    assert off.pause_split is None and off.decoding["max_segment_seconds"] is None
    labels = {long_audio_label(c) for c in (default, tuned, off)}
    assert len(labels) == 3  # each changes what resume may reuse
