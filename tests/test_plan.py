"""The frozen plan (pipeline.plan.frozen): written once, streamed, read back as the same shards;
reused by a rerun that says when the inputs changed; replans remove the parts they no longer
have."""

from __future__ import annotations

import gzip
import json
import os

import pyarrow as pa
import pytest

from pipeline.inputs.items import WorkItem
from pipeline.io import storage
from pipeline.output import parquet
from pipeline.output.paths import RunPaths
from pipeline.plan.frozen import (PlanMismatchError, PlanOptions, changed_inputs, iter_plan_shards, read_long_cuts,
                                  read_plan, stale_parts, write_plan)
from pipeline.inputs.sources import expand_inputs
from pipeline.plan.shards import make_shards
from pipeline.plan.units import unit_items


def manifest(path, durations):
    with gzip.open(path, "wt") as f:
        for i, dur in enumerate(durations):
            rec = {"id": f"r{i}", "sources": [{"type": "file", "channels": [0], "source": f"/a/{i}.wav"}],
                   "sampling_rate": 16000, "num_samples": int(dur * 16000), "duration": dur, "channel_ids": [0]}
            f.write(json.dumps({"id": f"c{i:03d}", "start": 0, "duration": dur, "channel": 0, "type": "MonoCut",
                                "supervisions": [], "recording": rec}) + "\n")
    return path


def items_of(options):
    for unit in expand_inputs(options.manifests):
        yield from unit_items(unit, options)


def test_plan_holds_the_shards_of_its_inputs(tmp_path):
    durations = [1.0 + (i % 7) for i in range(120)] + [95.0]  # the last is long: windows
    options = PlanOptions(manifests=(str(manifest(tmp_path / "cuts.jsonl.gz", durations)),), shard_size=10,
                          max_cut_seconds=30.0, overlap_seconds=4.0)
    paths = RunPaths(str(tmp_path / "out"), "r1")
    plan = write_plan(paths, options, index_rows=4)  # several index files
    expected = list(make_shards(items_of(options), 10))
    assert plan.shards == len(expected) and len(plan.index_files) == -(-len(expected) // 4)
    assert plan.cuts == 121 and plan.long_cuts == 1 and plan.windows == 4 and plan.items == 124
    assert plan.audio_seconds == pytest.approx(sum(durations))
    got = list(iter_plan_shards(paths, plan))
    assert [s.shard_id for s in got] == [s.shard_id for s in expected]
    assert [[i.to_dict() for i in s.items] for s in got] == [[i.to_dict() for i in s.items] for s in expected]
    long_cuts = read_long_cuts(paths)
    assert list(long_cuts) == ["c120"] and long_cuts["c120"]["window_count"] == 4
    assert set(long_cuts["c120"]["shard_ids"]) == {s.shard_id for s in expected if any(i.is_window for i in s.items)}
    summary = json.loads(storage.read_bytes(paths.plan_summary))
    assert summary["options"]["shard_size"] == 10 and summary["inputs"][0]["kind"] == "lhotse"


def test_a_rerun_reuses_the_plan_and_says_when_inputs_changed(tmp_path):
    path = manifest(tmp_path / "cuts.jsonl.gz", [2.0] * 30)
    options = PlanOptions(manifests=(str(path),), shard_size=5)
    paths = RunPaths(str(tmp_path / "out"), "r1")
    assert read_plan(paths, options) is None
    made = write_plan(paths, options)
    again = read_plan(paths, options)
    assert again == made and changed_inputs(again) == []
    manifest(path, [2.0] * 31)
    os.utime(path, ns=(1, 1))  # another size and mtime
    assert changed_inputs(again) == [str(path)]
    with pytest.raises(PlanMismatchError, match="shard_size: plan 5, now 6"):
        read_plan(paths, PlanOptions(manifests=(str(path),), shard_size=6))


def test_a_prefix_that_gained_a_file_is_noticed(tmp_path):
    audio = tmp_path / "audio"
    audio.mkdir()
    for i in range(5):
        (audio / f"{i}.wav").write_bytes(b"")
    options = PlanOptions(manifests=(str(audio),), shard_size=2)
    paths = RunPaths(str(tmp_path / "out"), "r1")
    plan = write_plan(paths, options)
    assert plan.cuts == 5 and plan.unknown_durations == 5 and changed_inputs(plan) == []
    (audio / "5.wav").write_bytes(b"")
    assert changed_inputs(plan) == [str(audio)]


def test_a_plan_without_its_summary_is_not_a_plan(tmp_path):
    """The summary is written last: a plan interrupted before it is made again."""
    options = PlanOptions(manifests=(str(manifest(tmp_path / "c.jsonl.gz", [1.0] * 4)),), shard_size=2)
    paths = RunPaths(str(tmp_path / "out"), "r1")
    write_plan(paths, options)
    storage.delete(paths.plan_summary)
    assert read_plan(paths, options) is None


def test_stale_parts_are_those_the_plan_does_not_have(tmp_path):
    options = PlanOptions(manifests=(str(manifest(tmp_path / "c.jsonl.gz", [1.0] * 12)),), shard_size=3)
    paths = RunPaths(str(tmp_path / "out"), "r1")
    plan = write_plan(paths, options)
    table = pa.table({"x": [1]})
    kept = [paths.part(s.shard_id) for s in iter_plan_shards(paths, plan)]
    for uri in kept + [paths.part("shard-0000000000000000"), paths.windows_part("shard-ffffffffffffffff"),
                       paths.stitched_part("gone")]:
        parquet.write_part(uri, table, "fp")
    assert sorted(stale_parts(paths, plan)) == sorted([paths.part("shard-0000000000000000"),
                                                       paths.windows_part("shard-ffffffffffffffff"),
                                                       paths.stitched_part("gone")])


def test_work_items_survive_the_plan_file(tmp_path):
    item = WorkItem(cut_id="c", recording_id="r", source="s3://b/x.flac", source_type="url", channel=1, start=2.5,
                    duration=None, reference="hi", speaker="s", language="en", dataset="d", custom={"k": "v"},
                    window_index=0, window_count=3, cut_start=0.0, cut_duration=80.0)
    assert WorkItem.from_dict(json.loads(json.dumps(item.to_dict()))) == item
