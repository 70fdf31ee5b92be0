"""Stage sizing from the nodes, waiting for an autoscaler, run-id checks and the plan-only dry run."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import pytest

from pipeline.run.config import TranscribeConfig, check_run_id
from pipeline.run.driver import ALLOCATOR_ENV, dry_run, local_system_config, model_runtime_env
from pipeline.run.resources import ResourceTimeoutError, capacity, parse_num_actors, plan_resources, wait_for_resources

REPO = Path(__file__).resolve().parent.parent


def cfg(**kw):
    return TranscribeConfig(manifest=["m"], model="d", output="o", **kw)


def test_two_cpu_machine_gets_a_single_thread_actor_per_core_beside_an_audio_task():
    res = plan_resources([{"CPU": 2.0}], cfg())
    assert (res.min_actors, res.max_actors, res.cpus_per_actor, res.audio_cpus, res.threads) == (2, 2, 0.75, 0.5, 1)
    # asking for multi-threaded actors: torch gets that many threads, fewer actors fit
    two = plan_resources([{"CPU": 2.0}], cfg(cpus_per_actor=1.5))
    assert (two.max_actors, two.threads) == (1, 2)


def test_actors_are_sized_by_the_largest_node_not_the_cluster():
    """A head with no CPUs and three 1-CPU workers: 2 CPUs per actor would fit no node."""
    res = plan_resources([{"CPU": 0.0}, {"CPU": 1.0}, {"CPU": 1.0}, {"CPU": 1.0}], cfg())
    assert (res.min_actors, res.max_actors, res.cpus_per_actor, res.threads) == (3, 3, 0.5, 1)
    big = plan_resources([{"CPU": 32.0}, {"CPU": 32.0}], cfg())
    assert (big.cpus_per_actor, big.max_actors, big.threads) == (31.5 / 32, 64, 1)  # a core each, less the audio share
    four = plan_resources([{"CPU": 32.0}, {"CPU": 32.0}], cfg(cpus_per_actor=4.0))
    assert (four.max_actors, four.threads) == (14, 4)  # 7 per node beside the node's audio task


def test_gpu_cluster_pool_grows_from_one_to_the_gpus():
    res = plan_resources([{"CPU": 16.0, "GPU": 2.0}, {"CPU": 16.0, "GPU": 2.0}], cfg())
    assert (res.min_actors, res.max_actors, res.cpus_per_actor, res.gpus_per_actor, res.audio_cpus) == (1, 4, 1.0, 1.0, 1.0)
    assert res.actor_bundle() == {"CPU": 1.0, "GPU": 1.0}
    assert plan_resources([{"CPU": 16.0, "GPU": 4.0}], cfg(gpus_per_actor=0.5)).max_actors == 8


def test_explicit_pool_bounds_win():
    res = plan_resources([{"CPU": 8.0}], cfg(num_actors="1:2", cpus_per_actor=2.0, audio_cpus=1.0))
    assert (res.min_actors, res.max_actors, res.cpus_per_actor, res.audio_cpus) == (1, 2, 2.0, 1.0)
    assert plan_resources([{"CPU": 8.0}], cfg(num_actors="3")).min_actors == 3
    assert parse_num_actors(None) is None and parse_num_actors(2) == (2, 2)
    for bad in ("0", "3:2", "x", "1:"):
        with pytest.raises(ValueError, match="--num-actors"):
            parse_num_actors(bad)


class FakeRequest:
    """What wait_for_resources asked the autoscaler for, and whether it was released."""

    made: list = []

    def __init__(self, bundle, count):
        self.bundle, self.count, self.released = bundle, count, False
        FakeRequest.made.append(self)

    def release(self):
        self.released = True


def test_gpus_asked_of_a_cluster_without_them_are_waited_for_then_refused():
    FakeRequest.made = []
    with pytest.raises(ResourceTimeoutError, match="GPU 1.*--resource-timeout"):
        wait_for_resources({"CPU": 1.0, "GPU": 1.0}, 1, 2, timeout=0.3, nodes=lambda: [{"CPU": 8.0}], poll=0.05,
                           request=FakeRequest)
    (asked,) = FakeRequest.made
    assert (asked.bundle, asked.count, asked.released) == ({"CPU": 1.0, "GPU": 1.0}, 2, True)  # asked, then withdrew


def test_a_node_that_joins_ends_the_wait_and_the_request_stays_for_the_pool_to_grow():
    FakeRequest.made = []
    calls = iter([[{"CPU": 0.0}], [{"CPU": 0.0}], [{"CPU": 0.0}, {"CPU": 2.0, "GPU": 1.0}]])
    waited, asked = wait_for_resources({"CPU": 1.0, "GPU": 1.0}, 1, 2, timeout=30, nodes=lambda: next(calls),
                                       poll=0.01, request=FakeRequest)
    assert 0 < waited < 5 and asked.count == 2 and not asked.released  # released by the run when it ends


def test_no_request_when_the_nodes_already_hold_the_pool():
    FakeRequest.made = []
    assert wait_for_resources({"CPU": 1.0}, 2, 2, timeout=0, nodes=lambda: [{"CPU": 2.0}], request=FakeRequest) \
        == (0.0, None)
    assert FakeRequest.made == []
    assert capacity({"CPU": 1.0, "GPU": 1.0}, [{"CPU": 4.0, "GPU": 2.0}, {"CPU": 1.0, "GPU": 4.0}, {"CPU": 8.0}]) == 3


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
    out = dry_run(TranscribeConfig(manifest=[str(manifest)], model="", output="", shard_size=2, max_batch_seconds=16.0))
    assert out.cuts == 5 and 1 <= out.shards <= 5
    assert out.audio_seconds == pytest.approx(32.0)
    assert out.padded_seconds >= out.audio_seconds and 0 <= out.padding_ratio < 1
    assert out.peak_rss_mb > 0


def parsed(*extra: str) -> TranscribeConfig:
    """The driver configuration ``jobs/transcribe.py`` makes of these options."""
    sys.path.insert(0, str(REPO / "jobs"))
    import transcribe

    args = transcribe.build_parser().parse_args(["--manifest", "m", "--model", "d", "--output", "o", *extra])
    return transcribe.config_from_args(args)


def test_long_audio_options_reach_the_config_and_the_fingerprint():
    from pipeline.run.config import long_audio_label
    from pipeline.longform.pauses import PauseSplit

    default = parsed()
    assert default.pause_split == PauseSplit() and "max_segment_seconds" not in default.decoding  # model's default
    tuned = parsed("--min-pause-seconds", "0.5", "--pause-threshold-db", "40", "--max-segment-seconds", "8")
    assert tuned.pause_split == PauseSplit(min_pause_seconds=0.5, threshold_db=40.0)
    assert tuned.decoding["max_segment_seconds"] == 8.0
    off = parsed("--no-pause-split", "--max-segment-seconds", "0")
    assert off.pause_split is None and off.decoding["max_segment_seconds"] is None
    labels = {long_audio_label(c) for c in (default, tuned, off)}
    assert len(labels) == 3  # each changes what resume may reuse


def test_unset_beam_sizes_leave_the_models_own_defaults_and_reach_every_decoding(tmp_path):
    """--beam / --transducer-beam not given: the model's config.json decides (the demo model's
    n-best size was chosen on dev), for the first decoding and the extra ones alike."""
    import shutil

    from model.recognizer import Recognizer
    from pipeline.run.config import decoding_list

    model_dir = tmp_path / "demo"
    shutil.copytree(REPO / "model" / "assets" / "demo", model_dir)
    cfg = json.loads((model_dir / "config.json").read_text())
    cfg["decoding"].update(beam=24, transducer_beam=6, lm_scale=0.8)
    (model_dir / "config.json").write_text(json.dumps(cfg))

    default = parsed("--decoding", "attention-rescoring", "--decoding", "ctc-beam")
    assert "beam" not in default.decoding and "transducer_beam" not in default.decoding and "lm_scale" not in default.decoding
    decodings = Recognizer.from_dir(model_dir, decoding=decoding_list(default.decoding, default.extra_methods)).decodings
    assert [(d.method, d.beam, d.transducer_beam, d.lm_scale) for d in decodings] == [
        ("attention-rescoring", 24, 6, 0.8), ("ctc-beam", 24, 6, 0.8)]
    assert " lm=0.8 " in decodings[0].label() and "lm=" not in decodings[1].label()  # ctc-beam has no LM term
    given = parsed("--decoding", "ctc-beam", "--beam", "5", "--transducer-beam", "2")
    assert (given.decoding["beam"], given.decoding["transducer_beam"]) == (5, 2)
    assert Recognizer.from_dir(model_dir, decoding=decoding_list(given.decoding)).decodings[0].beam == 5
    # --lm-scale 0 switches the word LM off
    off = parsed("--lm-scale", "0")
    assert Recognizer.from_dir(model_dir, decoding=decoding_list(off.decoding)).decodings[0].lm_scale == 0.0
    # the LM inside the search: the model's own setting unless --search-lm-scale / --word-bonus say otherwise
    assert decodings[0].search_lm_scale == cfg["decoding"]["search_lm_scale"] > 0
    assert f" fusion={decodings[0].search_lm_scale:g}" in decodings[0].label() and "fusion" not in decodings[1].label()
    plain = Recognizer.from_dir(model_dir, decoding=decoding_list(parsed("--search-lm-scale", "0").decoding))
    assert plain.decodings[0].search_lm_scale == 0.0 and plain.search_lm is None
    assert "fusion" not in plain.decodings[0].label()
    tuned = parsed("--search-lm-scale", "0.4", "--word-bonus", "1.5").decoding
    chosen = Recognizer.from_dir(model_dir, decoding=decoding_list(tuned)).decodings[0]
    assert (chosen.search_lm_scale, chosen.word_bonus) == (0.4, 1.5)


def test_a_local_ray_keeps_audio_workers_and_collects_no_metrics(monkeypatch):
    """The run's own local Ray: idle workers are kept well beyond one per CPU (a model actor per
    core would otherwise leave audio tasks none, and each shard paid a new Python process)."""
    monkeypatch.delenv("RAY_num_workers_soft_limit", raising=False)
    monkeypatch.delenv("RAY_enable_metrics_collection", raising=False)
    config = local_system_config(cpus=2)
    assert config["num_workers_soft_limit"] >= 2 * 2 + 4  # two actors, audio tasks, Ray Data's own actors
    assert config["enable_metrics_collection"] is False
    # what the environment sets is the environment's
    monkeypatch.setenv("RAY_num_workers_soft_limit", "3")
    monkeypatch.setenv("RAY_enable_metrics_collection", "1")
    assert local_system_config(cpus=2) is None


def test_model_actors_get_the_allocator_settings_unless_the_environment_has_its_own(monkeypatch):
    for key in ALLOCATOR_ENV:
        monkeypatch.delenv(key, raising=False)
    base = {"env_vars": {"AWS_ENDPOINT_URL": "http://127.0.0.1:9"}, "pip": ["x"]}
    env = model_runtime_env(base)
    assert env["pip"] == ["x"] and env["env_vars"]["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9"
    assert int(env["env_vars"]["MALLOC_MMAP_THRESHOLD_"]) >= 1 << 28 and env["env_vars"]["MALLOC_ARENA_MAX"] == "1"
    assert base["env_vars"] == {"AWS_ENDPOINT_URL": "http://127.0.0.1:9"}  # not changed in place
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert "MALLOC_ARENA_MAX" not in model_runtime_env(None)["env_vars"]
