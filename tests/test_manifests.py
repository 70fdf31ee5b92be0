"""pipeline.inputs.manifests: lhotse CutSet / RecordingSet manifests, audio directories and S3
prefixes, URI lists -- local and on a real moto S3 server, with real audio."""

from __future__ import annotations

import gzip
import json
import os
import uuid
from pathlib import Path

import boto3
import numpy as np
import pytest
from lhotse import AudioSource, CutSet, MonoCut, Recording, RecordingSet, SupervisionSegment
from lhotse.cut import MultiCut

from audio_testing import AudioSet, make_audio_set
from pipeline.io import storage
from pipeline.io.audio import decode_audio
from pipeline.inputs.items import ManifestError, WorkItem
from pipeline.inputs.manifests import detect_input_kind, iter_work_items
from pipeline.io.storage import MissingObjectError, S3Options
from s3_testing import moto_server

pytestmark = pytest.mark.needs_tools("espeak-ng", "sox", "ffmpeg", "ffprobe")


@pytest.fixture(scope="module")
def audio(tmp_path_factory: pytest.TempPathFactory) -> AudioSet:
    return make_audio_set(tmp_path_factory.mktemp("audio"))


@pytest.fixture(scope="module")
def opts() -> S3Options:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.delenv("AWS_PROFILE", raising=False)
        with moto_server() as url:
            yield S3Options(endpoint_url=url, region="us-east-1", access_key_id="testing",
                            secret_access_key="testing", max_attempts=3)


@pytest.fixture()
def bucket(opts: S3Options) -> str:
    name = f"m-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=opts.endpoint_url, region_name="us-east-1",
                 aws_access_key_id="testing", aws_secret_access_key="testing").create_bucket(Bucket=name)
    return name


def recording(rec_id: str, source: str, src_type: str, path: Path) -> Recording:
    """A Recording built directly (Recording.from_file does not take s3:// URIs)."""
    local = Recording.from_file(str(path), recording_id=rec_id)
    return Recording(
        id=rec_id,
        sources=[AudioSource(type=src_type, channels=list(local.channel_ids), source=source)],
        sampling_rate=local.sampling_rate,
        num_samples=local.num_samples,
        duration=local.duration,
    )


def build_cuts(mono: Recording, stereo: Recording) -> list:
    sup = lambda i, rec, start, dur, text, spk="spk1", lang="en", ch=0: SupervisionSegment(  # noqa: E731
        id=f"s{i}", recording_id=rec.id, start=start, duration=dur, channel=ch, text=text, speaker=spk,
        language=lang)
    return [
        # supervisions listed out of time order: the reference must come out in time order
        MonoCut(id="c-mono", start=0.0, duration=mono.duration, channel=0, recording=mono,
                supervisions=[sup(2, mono, 1.4, 1.0, "over the lazy dog"),
                              sup(1, mono, 0.1, 1.2, " the quick brown fox jumps ")],
                custom={"split": "dev", "n": 3, "nested": {"a": 1}}),
        MonoCut(id="c-right", start=0.5, duration=1.5, channel=1, recording=stereo,
                supervisions=[sup(3, stereo, 0.5, 1.5, "nothing here", spk="spk2", lang="fr", ch=1)]),
        MultiCut(id="c-mix", start=0.0, duration=stereo.duration, channel=[0, 1], recording=stereo,
                 supervisions=[sup(4, stereo, 0.0, 1.0, "a", spk="x"), sup(5, stereo, 1.0, 1.0, "b", spk="y")]),
        MonoCut(id="c-left-nosup", start=1.0, duration=1.0, channel=0, recording=stereo, supervisions=[]),
    ]


def expected_items(mono_src: str, stereo_src: str, src_type: str, mono: Recording, stereo: Recording,
                   dataset: str | None) -> list[WorkItem]:
    return [
        WorkItem("c-mono", "mono", mono_src, src_type, None, 0.0, mono.duration,
                 "the quick brown fox jumps over the lazy dog", "spk1", "en", dataset, {"split": "dev", "n": "3"}),
        WorkItem("c-right", "stereo", stereo_src, src_type, 1, 0.5, 1.5, "nothing here", "spk2", "fr", dataset, {}),
        WorkItem("c-mix", "stereo", stereo_src, src_type, None, 0.0, stereo.duration, "a b", "x,y", "en", dataset, {}),
        WorkItem("c-left-nosup", "stereo", stereo_src, src_type, 0, 1.0, 1.0, None, None, None, dataset, {}),
    ]


def test_cutset_jsonl_gz_local(audio: AudioSet, tmp_path: Path) -> None:
    mono = recording("mono", str(audio.wav16), "file", audio.wav16)
    stereo = recording("stereo", str(audio.stereo_flac), "file", audio.stereo_flac)
    manifest = tmp_path / "cuts.jsonl.gz"
    CutSet.from_cuts(build_cuts(mono, stereo)).to_file(str(manifest))
    assert detect_input_kind(str(manifest)) == "lhotse"

    items = list(iter_work_items(str(manifest), dataset="dev-clean"))
    assert items == expected_items(str(audio.wav16), str(audio.stereo_flac), "file", mono, stereo, "dev-clean")

    # the fields are what the loader needs: channel 1 of the stereo file is the silent one
    right = decode_audio(storage.read_bytes(items[1].source), channel=items[1].channel,
                         start=items[1].start, duration=items[1].duration)
    left = decode_audio(storage.read_bytes(items[3].source), channel=items[3].channel,
                        start=items[3].start, duration=items[3].duration)
    assert abs(right.duration_s - 1.5) < 1e-3 and not right.samples.any()
    assert abs(left.duration_s - 1.0) < 1e-3 and np.abs(left.samples).max() > 0.1


def test_cutset_from_s3_with_s3_audio(audio: AudioSet, bucket: str, opts: S3Options, tmp_path: Path) -> None:
    mono_uri = f"s3://{bucket}/audio/utt16.wav"
    stereo_uri = f"s3://{bucket}/audio/stereo44.flac"
    storage.write_bytes_atomic(mono_uri, audio.wav16.read_bytes(), options=opts)
    storage.write_bytes_atomic(stereo_uri, audio.stereo_flac.read_bytes(), options=opts)
    mono = recording("mono", mono_uri, "url", audio.wav16)
    stereo = recording("stereo", stereo_uri, "url", audio.stereo_flac)
    local = tmp_path / "cuts.jsonl.gz"
    CutSet.from_cuts(build_cuts(mono, stereo)).to_file(str(local))
    manifest = f"s3://{bucket}/manifests/cuts.jsonl.gz"
    storage.write_bytes_atomic(manifest, local.read_bytes(), options=opts)

    items = list(iter_work_items(manifest, options=opts))
    assert items == expected_items(mono_uri, stereo_uri, "url", mono, stereo, None)
    first = decode_audio(storage.read_bytes(items[0].source, options=opts), source=items[0].source,
                         channel=items[0].channel)
    np.testing.assert_array_equal(first.samples, audio.reference16)


def test_recordingset_manifest(audio: AudioSet, tmp_path: Path) -> None:
    recs = RecordingSet.from_recordings([
        Recording.from_file(str(audio.wav16), recording_id="r-mono"),
        Recording.from_file(str(audio.stereo_flac), recording_id="r-stereo"),
    ])
    manifest = tmp_path / "recordings.jsonl"
    recs.to_file(str(manifest))
    items = list(iter_work_items(str(manifest), dataset="d"))
    assert [(i.cut_id, i.recording_id, i.source, i.source_type, i.channel, i.start, i.reference) for i in items] == [
        ("r-mono", "r-mono", str(audio.wav16), "file", None, 0.0, None),
        ("r-stereo", "r-stereo", str(audio.stereo_flac), "file", None, 0.0, None),
    ]
    assert items[1].duration == pytest.approx(recs["r-stereo"].duration) and all(i.dataset == "d" for i in items)


def test_recording_with_channels_in_separate_files(audio: AudioSet, tmp_path: Path) -> None:
    rec = Recording(id="two-files", sampling_rate=16000, num_samples=len(audio.reference16),
                    duration=len(audio.reference16) / 16000,
                    sources=[AudioSource("file", [0], str(audio.wav16)), AudioSource("file", [1], str(audio.wav8))])
    cuts = [MonoCut(id="ch1", start=0, duration=1.0, channel=1, recording=rec),
            MultiCut(id="both", start=0, duration=1.0, channel=[0, 1], recording=rec)]
    manifest = tmp_path / "c.jsonl"
    manifest.write_text("\n".join(json.dumps(c.to_dict()) for c in cuts) + "\n")
    it = iter_work_items(str(manifest))
    first = next(it)
    assert (first.source, first.channel) == (str(audio.wav8), None)  # channel 1 is its own mono file
    with pytest.raises(ManifestError, match=r"line 2: .*separate files"):
        next(it)


def test_reading_is_lazy_and_bad_lines_are_named(audio: AudioSet, bucket: str, opts: S3Options,
                                                 tmp_path: Path) -> None:
    mono = recording("mono", str(audio.wav16), "file", audio.wav16)
    good = [json.dumps(MonoCut(id=f"c{i}", start=0.0, duration=1.0, channel=0, recording=mono).to_dict())
            for i in range(2)]
    for where in ("local", "s3"):
        body = "\n".join(good + ['{"id": "c2", "start": 0.0, "durat']) + "\n"
        if where == "local":
            uri = str(tmp_path / "broken.jsonl.gz")
            Path(uri).write_bytes(gzip.compress(body.encode()))
            ropts = None
        else:
            uri = f"s3://{bucket}/broken.jsonl.gz"
            storage.write_bytes_atomic(uri, gzip.compress(body.encode()), options=opts)
            ropts = opts
        it = iter_work_items(uri, options=ropts)
        assert next(it).cut_id == "c0"  # yielded before the broken last line was read
        assert next(it).cut_id == "c1"
        with pytest.raises(ManifestError, match=r"line 3: invalid JSON") as info:
            next(it)
        assert info.value.line == 3 and uri in str(info.value)

    # a big manifest on S3: the first item arrives after reading only the first part of the object
    template = MonoCut(id="x", start=0.0, duration=1.0, channel=0, recording=mono).to_dict()
    lines = [json.dumps(dict(template, id=f"big-{i:06d}", custom={"pad": os.urandom(96).hex()}))
             for i in range(30000)]
    blob = gzip.compress("\n".join(lines).encode(), compresslevel=1)
    assert len(blob) > 3 * (1 << 20)  # several times the 1 MiB read buffer
    uri = f"s3://{bucket}/big.jsonl.gz"
    storage.write_bytes_atomic(uri, blob, options=opts)
    reads: list[tuple[int, int | None]] = []
    real_reader = storage.s3.S3Reader

    class CountingReader(real_reader):  # type: ignore[misc,valid-type]
        def readinto(self, b):  # type: ignore[no-untyped-def]
            n = super().readinto(b)
            reads.append((n, self._stop))
            return n

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(storage.s3, "S3Reader", CountingReader)
        it = iter_work_items(uri, options=opts)
        assert next(it).cut_id == "big-000000"
        consumed = sum(n for n, _ in reads)
        assert consumed < len(blob) / 2, (consumed, len(blob))
        it.close()


def test_unsupported_lhotse_items_are_explained(audio: AudioSet, tmp_path: Path) -> None:
    in_memory = Recording.from_bytes(audio.wav16.read_bytes(), recording_id="mem")
    # lhotse 1.33 cannot write bytes sources to JSON itself; a manifest could still carry one
    # as text (e.g. base64), so build that line by hand
    memory_cut = MonoCut(id="m", start=0, duration=1, channel=0, recording=in_memory).to_dict()
    memory_cut["recording"]["sources"][0]["source"] = "UklGRg=="
    mono = recording("mono", str(audio.wav16), "file", audio.wav16)
    cases = {
        "memory": (memory_cut, "in-memory audio"),
        "mixed": (MonoCut(id="x", start=0, duration=1, channel=0, recording=mono).pad(duration=3).to_dict(),
                  "unsupported lhotse manifest item MixedCut"),
        "supervision": (SupervisionSegment(id="s", recording_id="r", start=0, duration=1).to_dict(),
                        "unsupported lhotse manifest item SupervisionSegment"),
        "speed": (MonoCut(id="sp", start=0, duration=1, channel=0, recording=mono.perturb_speed(1.1)).to_dict(),
                  r"audio transforms \['Speed'\]"),
        "not-object": ([1, 2, 3], "expected a JSON object"),
        "bad-cut": ({"type": "MonoCut", "id": "q"}, "not a valid lhotse cut"),
    }
    for name, (data, message) in cases.items():
        path = tmp_path / f"{name}.jsonl"
        path.write_text(json.dumps(data) + "\n")
        with pytest.raises(ManifestError, match=message) as info:
            list(iter_work_items(str(path)))
        assert info.value.line == 1, name

    dup = tmp_path / "dup.jsonl"
    cut = json.dumps(MonoCut(id="same", start=0, duration=1, channel=0, recording=mono).to_dict())
    dup.write_text(f"{cut}\n\n{cut}\n")
    with pytest.raises(ManifestError, match=r"line 3: duplicate cut_id 'same'"):
        list(iter_work_items(str(dup)))
    assert len(list(iter_work_items(str(dup), check_unique=False))) == 2

    with pytest.raises(ManifestError, match="JSON Lines"):
        iter_work_items(str(tmp_path / "cuts.json"))
    with pytest.raises(MissingObjectError):
        list(iter_work_items(str(tmp_path / "missing.jsonl.gz")))
    (tmp_path / "bad.jsonl.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ManifestError, match="line 1: cannot read"):
        list(iter_work_items(str(tmp_path / "bad.jsonl.gz")))


def populate_dir(audio: AudioSet, put) -> None:  # type: ignore[no-untyped-def]
    put("spk1/a.wav", audio.wav16)
    put("spk1/b.FLAC", audio.stereo_flac)
    put("spk2/deep/c.mp3", audio.mp3)
    put("spk2/d.opus", audio.opus)
    put("e.m4a", audio.m4a)
    put("notes.txt", audio.wav16)  # not audio by name: skipped


def check_dir_items(items: list[WorkItem], base: str, audio: AudioSet) -> None:
    expected_ids = ["e.m4a", "spk1/a.wav", "spk1/b.FLAC", "spk2/d.opus", "spk2/deep/c.mp3"]
    assert [i.cut_id for i in items] == expected_ids
    assert [i.source for i in items] == [f"{base}/{c}" for c in expected_ids]
    assert all(i.recording_id == i.cut_id and i.channel is None and i.start == 0.0 for i in items)
    assert all(i.dataset == "ds" and i.reference is None for i in items)
    durations = {i.cut_id: i.duration for i in items}
    speech = len(audio.reference16) / 16000
    assert durations["e.m4a"] is None  # libsndfile can't probe AAC
    assert durations["spk1/a.wav"] == pytest.approx(speech)
    assert durations["spk1/b.FLAC"] == pytest.approx(speech, abs=1e-3)
    assert durations["spk2/d.opus"] == pytest.approx(speech, abs=0.05)  # small file: probed whole
    assert durations["spk2/deep/c.mp3"] == pytest.approx(speech, abs=0.1)


def test_local_directory_of_audio(audio: AudioSet, tmp_path: Path) -> None:
    root = tmp_path / "corpus"

    def put(rel: str, src: Path) -> None:
        storage.write_bytes_atomic(str(root / rel), src.read_bytes())

    populate_dir(audio, put)
    assert detect_input_kind(str(root)) == "audio_dir"
    items = list(iter_work_items(str(root), dataset="ds"))
    check_dir_items(items, str(root), audio)
    assert all(i.source_type == "file" for i in items)
    assert [i.cut_id for i in iter_work_items(str(root) + "/", dataset="ds", probe_durations=False)] == \
        [i.cut_id for i in items]
    assert all(i.duration is None for i in iter_work_items(str(root), probe_durations=False))

    # a long WAV is probed from its header only (64 KiB read), not downloaded
    long_wav = tmp_path / "long" / "hour.wav"
    long_wav.parent.mkdir()
    import soundfile as sf
    sf.write(str(long_wav), np.zeros(16000 * 120, np.int16), 16000, subtype="PCM_16")
    (only,) = iter_work_items(str(long_wav.parent))
    assert only.duration == pytest.approx(120.0)
    (single,) = iter_work_items(str(long_wav))
    assert (single.cut_id, single.duration) == ("hour.wav", pytest.approx(120.0))

    (tmp_path / "empty").mkdir()
    with pytest.raises(ManifestError, match="no audio files"):
        list(iter_work_items(str(tmp_path / "empty")))


def test_s3_prefix_of_audio(audio: AudioSet, bucket: str, opts: S3Options) -> None:
    base = f"s3://{bucket}/corpus"

    def put(rel: str, src: Path) -> None:
        storage.write_bytes_atomic(f"{base}/{rel}", src.read_bytes(), options=opts)

    populate_dir(audio, put)
    storage.write_bytes_atomic(f"s3://{bucket}/corpus2/zzz.wav", audio.wav16.read_bytes(), options=opts)
    items = list(iter_work_items(base, dataset="ds", options=opts))
    check_dir_items(items, base, audio)
    assert all(i.source_type == "url" for i in items)
    with pytest.raises(ManifestError, match="no audio files"):
        list(iter_work_items(f"s3://{bucket}/nothing", options=opts))


def test_uri_list(audio: AudioSet, bucket: str, opts: S3Options, tmp_path: Path) -> None:
    s3_audio = f"s3://{bucket}/x/utt.flac"
    storage.write_bytes_atomic(s3_audio, audio.stereo_flac.read_bytes(), options=opts)
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "rel.wav").write_bytes(audio.wav16.read_bytes())
    content = "\n".join([
        "# evaluation files",
        "",
        str(audio.mp3),
        "   rel.wav   ",
        s3_audio,
        "file://" + str(audio.wav8),
        "  # indented comment",
    ]) + "\n"
    listing = lists / "eval.lst"
    listing.write_text(content)
    assert detect_input_kind(str(listing)) == "uri_list"
    items = list(iter_work_items(str(listing), dataset="eval", options=opts))
    assert [(i.cut_id, i.source, i.source_type) for i in items] == [
        (str(audio.mp3), str(audio.mp3), "file"),
        ("rel.wav", str(lists / "rel.wav"), "file"),  # relative to the list's directory
        (s3_audio, s3_audio, "url"),
        ("file://" + str(audio.wav8), "file://" + str(audio.wav8), "url"),
    ]
    speech = len(audio.reference16) / 16000
    assert items[1].duration == pytest.approx(speech) and items[2].duration == pytest.approx(speech, abs=1e-3)
    assert all(i.dataset == "eval" for i in items)

    # the same list on S3 with a relative entry resolves against the list's prefix
    storage.write_text_atomic(f"s3://{bucket}/x/list.txt", "utt.flac\n", options=opts)
    (item,) = iter_work_items(f"s3://{bucket}/x/list.txt", options=opts)
    assert (item.cut_id, item.source) == ("utt.flac", s3_audio)

    (lists / "dup.txt").write_text("a.wav\nb.wav\na.wav\n")
    with pytest.raises(ManifestError, match=r"line 3: duplicate cut_id 'a.wav'"):
        list(iter_work_items(str(lists / "dup.txt"), probe_durations=False))
    (lists / "http.txt").write_text("a.wav\nhttps://example.com/b.wav\n")
    with pytest.raises(ManifestError, match=r"line 2: unsupported URI scheme 'https'"):
        list(iter_work_items(str(lists / "http.txt"), probe_durations=False))
    # a listed file that is missing still gives an item (duration unknown); the loader reports it
    (lists / "missing.txt").write_text("nope.wav\n")
    (missing,) = iter_work_items(str(lists / "missing.txt"))
    assert missing.duration is None


def test_duplicate_ids_found_in_buffer_and_in_merged_digests(monkeypatch):
    from pipeline.inputs.items import ManifestError
    from pipeline.inputs.manifests import _UniqueIds

    monkeypatch.setattr(_UniqueIds, "_BUFFER", 64)
    ids = _UniqueIds("mem://x")
    for i in range(1000):
        ids.add(f"cut-{i}", i)
    assert ids.sorted.size >= 900 and len(ids.recent) < 64  # most digests were merged
    for old in ("cut-0", "cut-500", "cut-999"):  # merged early, middle, still buffered
        with pytest.raises(ManifestError, match=f"duplicate cut_id '{old}'"):
            ids.add(old, 1001)
    ids.add("cut-1000", 1002)  # new ids still pass


def test_supervision_segments_become_items(tmp_path: Path) -> None:
    rec = Recording(id="meet", sources=[AudioSource(type="file", channels=[0], source="/data/meet.wav")],
                    sampling_rate=16000, num_samples=16000 * 600, duration=600.0)
    sups = [
        SupervisionSegment(id="meet-b", recording_id="meet", start=70.0, duration=5.5, text="second part", speaker="bo"),
        SupervisionSegment(id="meet-a", recording_id="meet", start=12.0, duration=4.0, text=" first part ", speaker="al",
                           language="English"),
        SupervisionSegment(id="meet-c", recording_id="meet", start=95.0, duration=20.0, text="runs past the cut end"),
    ]
    cut = MonoCut(id="meet-0", start=100.0, duration=105.0, channel=0, recording=rec, supervisions=sups)
    bare = MonoCut(id="quiet", start=0.0, duration=30.0, channel=0, recording=rec)
    path = tmp_path / "cuts.jsonl.gz"
    CutSet.from_cuts([cut, bare]).to_file(str(path))

    whole = list(iter_work_items(str(path)))
    assert [i.cut_id for i in whole] == ["meet-0", "quiet"]
    assert whole[0].reference == "first part second part runs past the cut end"

    items = list(iter_work_items(str(path), segments="supervisions", dataset="dev"))
    assert [i.cut_id for i in items] == ["meet-a", "meet-b", "meet-c", "quiet"]
    a, b, c, q = items
    assert (a.start, a.duration, a.reference, a.speaker, a.language) == (112.0, 4.0, "first part", "al", "English")
    assert (b.start, b.duration, b.reference, b.speaker) == (170.0, 5.5, "second part", "bo")
    assert (c.start, c.duration) == (195.0, 10.0)  # clipped to the cut
    assert all(i.recording_id == "meet" and i.source == "/data/meet.wav" and i.dataset == "dev" for i in items)
    assert (q.start, q.duration, q.reference) == (0.0, 30.0, None)
    with pytest.raises(ValueError, match="segments"):
        list(iter_work_items(str(path), segments="words"))
