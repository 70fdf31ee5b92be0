"""Inputs as real corpora come: globs of many manifests and lhotse Shar directories (local and on
moto's S3), planned unit by unit in parallel into the same plan as one after another; segments of
long recordings transcribed exactly as the same audio cut into separate files."""

from __future__ import annotations

import gzip
import json
import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pipeline.inputs.items import ManifestError
from pipeline.inputs.sources import expand_inputs
from pipeline.io import storage
from pipeline.io.ranges import RangeReader
from pipeline.output.paths import RunPaths
from pipeline.plan.frozen import PlanOptions, iter_plan_shards, read_index, read_long_cuts, write_plan
from pipeline.plan.units import plan_unit, process_planner, serial_planner, unit_items
from pipeline.run.shard_audio import load_shard_audio
from s3_testing import moto_environment

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "model" / "assets" / "demo"


def write_manifest(path: Path, first: int, count: int, seconds: float = 3.0, long_every: int = 0) -> Path:
    """A CutSet of ``count`` cuts of files that need not exist (planning reads no audio); every
    ``long_every``-th cut is 95 s long (windows)."""
    with gzip.open(path, "wt") as f:
        for i in range(first, first + count):
            dur = 95.0 if long_every and i % long_every == 0 else seconds
            rec = {"id": f"r{i}", "sources": [{"type": "file", "channels": [0], "source": f"/corpus/{i}.flac"}],
                   "sampling_rate": 16000, "num_samples": int(dur * 16000), "duration": dur, "channel_ids": [0]}
            f.write(json.dumps({"id": f"c{i:06d}", "start": 0, "duration": dur, "channel": 0, "type": "MonoCut",
                                "supervisions": [], "recording": rec}) + "\n")
    return path


def plan_files(paths: RunPaths) -> dict[str, bytes]:
    """A written plan's files (its summary without times), by name."""
    out = {}
    root = Path(paths.plan)
    for f in sorted(root.rglob("*")):
        if f.is_file():
            data = f.read_bytes()
            if f.name == "summary.json":
                summary = json.loads(data)
                for key in ("created_at", "planning_seconds", "driver_cpu_seconds", "inputs"):
                    summary.pop(key)
                data = json.dumps(summary, sort_keys=True).encode()
            out[str(f.relative_to(root))] = data
    return out


def test_globs_expand_to_files_in_key_order_locally_and_on_s3(tmp_path):
    root = tmp_path / "cuts"
    (root / "sub").mkdir(parents=True)
    for name in ("cuts.000002.jsonl.gz", "cuts.000000.jsonl.gz", "cuts.000001.jsonl.gz", "sub/cuts.000003.jsonl.gz",
                 "other.jsonl.gz", "cuts.000004.txt"):
        write_manifest(root / name, 0, 1)
    local = expand_inputs([str(root / "cuts.*.jsonl.gz"), str(root / "other.jsonl.gz")])
    assert [Path(u.uri).name for u in local] == ["cuts.000000.jsonl.gz", "cuts.000001.jsonl.gz", "cuts.000002.jsonl.gz",
                                                 "other.jsonl.gz"]
    assert [u.position for u in local] == [0, 1, 2, 3] and {u.kind for u in local} == {"lhotse"}
    deep = expand_inputs([str(root / "**" / "cuts.*.jsonl.gz")])
    assert [Path(u.uri).name for u in deep][-1] == "cuts.000003.jsonl.gz" and len(deep) == 4
    with pytest.raises(ManifestError, match="no file matches"):
        expand_inputs([str(root / "nothing.*.jsonl.gz")])
    with pytest.raises(ManifestError, match="reached twice"):
        expand_inputs([str(root / "cuts.*.jsonl.gz"), str(root / "cuts.000001.jsonl.gz")])
    with moto_environment():
        import boto3

        bucket = f"b-{uuid.uuid4().hex[:10]}"
        boto3.client("s3").create_bucket(Bucket=bucket)
        for f in sorted(root.rglob("*")):
            if f.is_file():
                storage.write_bytes_atomic(f"s3://{bucket}/cuts/{f.relative_to(root)}", f.read_bytes())
        on_s3 = expand_inputs([f"s3://{bucket}/cuts/cuts.*.jsonl.gz", f"s3://{bucket}/cuts/other.jsonl.gz"])
        assert [u.uri.rsplit("/", 1)[1] for u in on_s3] == [Path(u.uri).name for u in local]
        assert len(expand_inputs([f"s3://{bucket}/cuts/**/cuts.*.jsonl.gz"])) == 4


def test_a_plan_is_the_same_whatever_order_its_units_finish_in(tmp_path):
    """The first manifest is the largest, so in processes the later ones finish first; the plan's
    files (index, shard files, long cuts, counts) are byte for byte those of planning one after
    another."""
    files = [write_manifest(tmp_path / "m0.jsonl.gz", 0, 3000, long_every=500)]
    files += [write_manifest(tmp_path / f"m{k}.jsonl.gz", 3000 + 40 * (k - 1), 40, long_every=13) for k in range(1, 6)]
    options = PlanOptions(manifests=(str(tmp_path / "m*.jsonl.gz"),), shard_size=25)
    serial = RunPaths(str(tmp_path / "serial"), "r")
    parallel = RunPaths(str(tmp_path / "parallel"), "r")
    a = write_plan(serial, options, serial_planner, index_rows=50)
    b = write_plan(parallel, options, process_planner(2), index_rows=50)
    assert a.units == b.units == 6 and a.cuts == b.cuts == 3200 and a.long_cuts == b.long_cuts > 0
    assert plan_files(serial) == plan_files(parallel)
    rows = list(read_index(parallel, b))
    assert [r["index"] for r in rows] == list(range(b.shards)) and len(b.index_files) > 1
    got = [i.cut_id for shard in iter_plan_shards(parallel, b) for i in shard.items if not i.is_window or i.window_index == 0]
    assert got == [f"c{i:06d}" for i in range(3200)]  # input order, each cut once
    assert set(read_long_cuts(parallel)) == {f"c{i:06d}" for i in range(3200) if (i < 3000 and i % 500 == 0) or (i >= 3000 and i % 13 == 0)}


def test_the_same_cuts_given_twice_are_refused(tmp_path):
    one = write_manifest(tmp_path / "a.jsonl.gz", 0, 30)
    shutil.copy(one, tmp_path / "b.jsonl.gz")
    with pytest.raises(ManifestError, match="same cuts as an earlier input"):
        write_plan(RunPaths(str(tmp_path / "out"), "r"), PlanOptions(manifests=(str(tmp_path / "*.jsonl.gz"),)))


def make_shar(root: Path, recordings: int = 3, segments: int = 5, shard_size: int = 4) -> tuple[Path, dict[str, np.ndarray]]:
    """A lhotse Shar directory (lhotse's own writer, FLAC in the tars) of segment cuts of a few 16 kHz
    recordings; and each cut's samples as written."""
    from lhotse import CutSet, MonoCut, Recording, SupervisionSegment

    src = root / "src"
    src.mkdir(parents=True)
    cuts, expected = [], {}
    rng = np.random.default_rng(1)
    for r in range(recordings):
        pcm = (0.2 * np.sin(np.arange(segments * 32000) / (3 + r)) + 0.01 * rng.standard_normal(segments * 32000))
        pcm = (np.round(pcm * 32767) / 32768).astype(np.float32)
        sf.write(str(src / f"rec{r}.wav"), pcm, 16000, subtype="PCM_16")
        rec = Recording.from_file(str(src / f"rec{r}.wav"), recording_id=f"rec{r}")
        for k in range(segments):
            cut_id = f"rec{r}-seg{k}"
            cuts.append(MonoCut(id=cut_id, start=2.0 * k, duration=2.0, channel=0, recording=rec, supervisions=[
                SupervisionSegment(id=cut_id, recording_id=f"rec{r}", start=0, duration=2.0, text=f"words of {cut_id}")]))
            expected[cut_id] = pcm[32000 * k:32000 * (k + 1)]
    shar = root / "shar"
    shar.mkdir()
    CutSet.from_cuts(cuts).to_shar(str(shar), fields={"recording": "flac"}, shard_size=shard_size)
    return shar, expected


def check_shar_audio(units, options, expected) -> int:
    """Every cut of the Shar units read from its tar member: its samples as written (FLAC is
    lossless), its reference kept; returns the bytes fetched."""
    fetched = 0
    reader = RangeReader()
    for unit in units:
        items = list(unit_items(unit, options))
        assert all(i.source == unit.tar and i.member == i.cut_id and i.source_type == "shar" for i in items)
        audio = load_shard_audio(items, reader)
        assert audio.errors == [None] * len(items)
        for item, samples in zip(items, audio.samples):
            np.testing.assert_array_equal(samples, expected[item.cut_id])
            assert item.reference == f"words of {item.cut_id}"
        fetched += audio.bytes_fetched
    return fetched


def test_a_shar_directory_is_planned_shard_by_shard_and_read_from_its_tars(tmp_path):
    shar, expected = make_shar(tmp_path)
    units = expand_inputs([str(shar)])
    assert [(Path(u.uri).name, Path(u.tar).name) for u in units] == [
        (f"cuts.{k:06d}.jsonl.gz", f"recording.{k:06d}.tar") for k in range(4)]
    options = PlanOptions(manifests=(str(shar),))
    tars = sum(f.stat().st_size for f in shar.glob("recording.*.tar"))
    assert check_shar_audio(units, options, expected) == tars  # each tar read once, whole: every member is needed
    plan = plan_unit(units[0], options)
    assert plan.cuts == 4 and len(plan.shards) == 1  # a Shar tar is one object: its cuts stay in one shard
    (shar / "recording.000002.tar").unlink()
    with pytest.raises(ManifestError, match=r"no recording\.000002\.tar"):
        expand_inputs([str(shar)])


def test_a_shar_directory_on_s3_is_read_by_range(tmp_path):
    import boto3

    shar, expected = make_shar(tmp_path, recordings=2, segments=4)
    with moto_environment():
        bucket = f"b-{uuid.uuid4().hex[:10]}"
        boto3.client("s3").create_bucket(Bucket=bucket)
        for f in shar.iterdir():
            storage.write_bytes_atomic(f"s3://{bucket}/corpus/shar/{f.name}", f.read_bytes())
        units = expand_inputs([f"s3://{bucket}/corpus/shar"])
        assert len(units) == 2 and all(u.tar.startswith(f"s3://{bucket}/corpus/shar/recording.") for u in units)
        options = PlanOptions(manifests=(f"s3://{bucket}/corpus/shar",))
        fetched = check_shar_audio(units, options, expected)
    assert fetched == sum(f.stat().st_size for f in shar.glob("recording.*.tar"))


@pytest.mark.needs_tools("espeak-ng", "sox")
def test_segments_of_a_recording_transcribe_as_the_same_audio_in_separate_files(tmp_path):
    """Eight sentences spoken into one FLAC recording, as eight segment cuts, against the same
    samples cut into eight FLAC files: identical transcripts with the demo model; the segments'
    recording read once (bytes fetched about the bytes needed)."""
    from lhotse import AudioSource, MonoCut, Recording

    from audio_testing import speak
    from pipeline.run.config import TranscribeConfig
    from pipeline.run.driver import run_in_process

    sentences = ["the weather was calm all morning", "she read the letter twice before answering",
                 "we walked along the river after dinner", "the train left the station on time",
                 "please close the window when it rains", "he planted tomatoes in the garden",
                 "the children laughed at the funny story", "our meeting starts at nine tomorrow"]
    pieces, bounds = [], []
    for k, text in enumerate(sentences):
        wave, sr = sf.read(str(speak(text, tmp_path / f"s{k}.wav")), dtype="int16")
        start = sum(p.size for p in pieces)
        pieces += [wave, np.zeros(8000, dtype=np.int16)]
        bounds.append((start, start + wave.size + 4000))
    whole = np.concatenate(pieces)
    recording = tmp_path / "talk.flac"
    sf.write(str(recording), whole, 16000, subtype="PCM_16")
    seg_cuts, file_cuts = [], []
    rec = Recording(id="talk", sources=[AudioSource(type="file", channels=[0], source=str(recording))],
                    sampling_rate=16000, num_samples=whole.size, duration=whole.size / 16000)
    for k, (a, b) in enumerate(bounds):
        seg_cuts.append(MonoCut(id=f"s{k}", start=a / 16000, duration=(b - a) / 16000, channel=0, recording=rec))
        sf.write(str(tmp_path / f"file{k}.flac"), whole[a:b], 16000, subtype="PCM_16")
        one = Recording(id=f"file{k}", sources=[AudioSource(type="file", channels=[0], source=str(tmp_path / f"file{k}.flac"))],
                        sampling_rate=16000, num_samples=b - a, duration=(b - a) / 16000)
        file_cuts.append(MonoCut(id=f"s{k}", start=0, duration=(b - a) / 16000, channel=0, recording=one))
    texts, results = {}, {}
    for name, cuts in (("segments", seg_cuts), ("files", file_cuts)):
        manifest = tmp_path / f"{name}.jsonl.gz"
        with gzip.open(manifest, "wt") as f:
            for cut in cuts:
                f.write(json.dumps(cut.to_dict()) + "\n")
        cfg = TranscribeConfig(manifest=[str(manifest)], model=str(DEMO), output=str(tmp_path / name), shard_size=100)
        done = run_in_process(cfg, name, num_threads=2)
        results[name] = done["shards"]
        import pyarrow.parquet as pq

        table = pq.read_table(tmp_path / name / "transcripts" / f"run_id={name}")
        texts[name] = dict(zip(table.column("cut_id").to_pylist(), table.column("text").to_pylist()))
    assert texts["segments"] == texts["files"] and len(texts["segments"]) == 8
    assert sum(1 for t in texts["segments"].values() if t) == 8
    (shard,) = results["segments"]
    assert recording.stat().st_size <= shard.bytes_fetched <= 1.01 * recording.stat().st_size + 65536
    assert shard.bytes_needed == pytest.approx(sum(b - a for a, b in bounds) / whole.size * recording.stat().st_size,
                                               rel=0.1)
