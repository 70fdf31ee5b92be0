"""Turn an input URI into a lazy stream of :class:`WorkItem` s (one per cut to transcribe).

Accepted inputs (local paths, ``file://`` or ``s3://`` URIs), detected by :func:`detect_input_kind`:

``lhotse``
    A lhotse manifest in JSON Lines, ``*.jsonl`` or ``*.jsonl.gz``: a **CutSet** (``MonoCut`` /
    ``MultiCut`` lines) or a **RecordingSet** (one item per recording, all of its audio). The
    file is streamed line by line through :func:`pipeline.io.storage.open_text` and each line is
    deserialised on its own with ``lhotse.serialization.deserialize_item``; no CutSet is ever
    built, so memory does not grow with the manifest.
``uri_list``
    A text file ``*.txt`` / ``*.lst`` (optionally ``.gz``) with one audio URI per line. Blank
    lines and lines starting with ``#`` are skipped. Relative paths are resolved against the
    list's own directory (or S3 prefix).
``audio_dir``
    A local directory or an S3 prefix holding audio files (``.wav .flac .mp3 .opus .ogg .m4a``,
    any letter case), listed recursively in lexicographic order.
``audio_file``
    A single audio file.
``shar``
    A lhotse Shar directory (local or S3): ``cuts.000000.jsonl.gz``, ``recording.000000.tar``, ...
    Each shard's cuts are items whose audio is the member ``<cut id>.<format>`` of its recording
    tar (:attr:`WorkItem.member`), read by range in the audio stage. A run plans each Shar shard
    on its own (:mod:`pipeline.inputs.sources`); :func:`iter_work_items` reads one, given its
    cuts file and ``shar_tar``.

Manifest numbers are claims. A cut (or segment) whose start is not a finite number >= 0, whose
duration is not a finite number > 0, that is longer than ``max_seconds`` (``--max-recording-hours``)
or that starts after its recording ends becomes an item with :attr:`WorkItem.error` set (an error
row, its audio never fetched); so does a plain file whose probed duration is longer than
``max_seconds``. A line that cannot be read as a cut at all is a :class:`ManifestError` naming the
file and the line, as is a line longer than :data:`MAX_LINE_CHARS`.

``cut_id`` rules (deterministic: the same input always gives the same ids, in the same order):

* lhotse CutSet: the cut's ``id``; RecordingSet: the recording's ``id``;
* audio directory / prefix: the file's path relative to the directory, ``/``-separated, with its
  extension (``spk1/utt01.wav``) -- unique by construction;
* URI list: the line as written (stripped), e.g. ``s3://bucket/a/b.flac`` or ``audio/x.wav``;
* single file: its base name.

With ``check_unique=True`` (default) a repeated ``cut_id`` in a lhotse manifest or URI list is
an error naming the id and the line where it repeats; the check keeps a 64-bit digest per item (about 70 bytes
each, ~70 MB per million cuts).

``channel`` is the channel to pick *in the file at* ``source`` (what
:func:`pipeline.io.audio.decode_audio` takes), or ``None`` when the file is mono or when all its
channels are to be mixed. A ``MonoCut`` on channel 1 of a 2-channel file gives ``channel=1``;
a mono recording, or a recording whose channels are stored one file each, gives ``None``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import posixpath
from typing import Any, Iterable, Iterator, Literal

import numpy as np

from pipeline.io import storage
from pipeline.io.storage import S3Options

from .durations import Prober, threaded_prober
from .items import SEGMENT_MODES, ManifestError, WorkItem

__all__ = [
    "AUDIO_SUFFIXES",
    "InputKind",
    "ManifestError",
    "WorkItem",
    "MAX_LINE_CHARS",
    "detect_input_kind",
    "is_shar_dir",
    "iter_work_items",
]

AUDIO_SUFFIXES: tuple[str, ...] = (".wav", ".flac", ".mp3", ".opus", ".ogg", ".m4a")
_LHOTSE_SUFFIXES = (".jsonl", ".jsonl.gz")
_LIST_SUFFIXES = (".txt", ".lst", ".txt.gz", ".lst.gz")

InputKind = Literal["lhotse", "uri_list", "audio_dir", "audio_file", "shar"]

#: the longest manifest line read (a lhotse cut is a few kB; a 2 GiB "line" is not a manifest)
MAX_LINE_CHARS = 16 << 20


# --------------------------------------------------------------------------------------
# Detection
# --------------------------------------------------------------------------------------


def detect_input_kind(uri: str, options: S3Options | None = None) -> InputKind:
    """Classify an input URI by its name: ``*.jsonl[.gz]`` -> ``"lhotse"``, ``*.txt`` /
    ``*.lst`` (``.gz`` too) -> ``"uri_list"``, an audio suffix -> ``"audio_file"``, anything
    else is a directory or S3 prefix: ``"shar"`` when it holds lhotse Shar cuts files
    (``cuts.*.jsonl*``, one listing), else ``"audio_dir"``.

    Raises:
        ManifestError: for whole-file lhotse ``.json`` manifests (not streamable), and for a
            local path that is an existing regular file of another kind.
    """
    lower = uri.lower().rstrip("/")
    if lower.endswith(_LHOTSE_SUFFIXES):
        return "lhotse"
    if lower.endswith(_LIST_SUFFIXES):
        return "uri_list"
    if lower.endswith(AUDIO_SUFFIXES):
        return "audio_file"
    if lower.endswith((".json", ".json.gz")):
        raise ManifestError(
            uri, "JSON (not JSON Lines) manifests must be loaded whole; convert it to .jsonl or .jsonl.gz "
            "(e.g. lhotse.load_manifest(path).to_file('cuts.jsonl.gz'))"
        )
    if not storage.is_s3_uri(uri) and storage.exists(uri):
        raise ManifestError(
            uri, "unsupported input: expected a lhotse .jsonl[.gz] manifest, a .txt/.lst list of audio URIs, "
            "an audio file, a directory of audio files or a lhotse Shar directory"
        )
    return "shar" if is_shar_dir(uri, options) else "audio_dir"


def is_shar_dir(uri: str, options: S3Options | None = None) -> bool:
    """A directory or S3 prefix holding lhotse Shar cuts files (``cuts.000000.jsonl.gz`` ...)."""
    try:
        return bool(storage.glob(storage.join(uri, "cuts.*.jsonl*"), options=options))
    except storage.MissingObjectError:
        return False


# --------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------


def iter_work_items(
    uri: str,
    *,
    dataset: str | None = None,
    kind: InputKind | None = None,
    probe_durations: bool = True,
    probe_workers: int = 8,
    prober: Prober | None = None,
    check_unique: bool = True,
    options: S3Options | None = None,
    segments: str = "cuts",
    max_seconds: float | None = None,
    shar_tar: str | None = None,
) -> Iterator[WorkItem]:
    """Lazily yield the work items described by ``uri`` (see the module docstring).

    Args:
        uri: input manifest / list / directory / prefix / file.
        dataset: copied into every item's ``dataset``.
        kind: skip auto-detection.
        probe_durations: for plain audio files (directory, list, single file), read the first
            64 KiB of each file to get its duration from the header (WAV, FLAC; small files of
            any libsndfile format are probed whole); larger MP3 and Ogg Opus / Vorbis files from
            their frame headers plus, for Ogg, one read of the file's tail
            (:mod:`pipeline.inputs.durations`); ``duration`` is ``None`` when unknown.
        probe_workers: concurrent header reads in this process (order of the output is preserved).
        prober: how durations are probed instead (:data:`pipeline.inputs.durations.Prober`;
            the driver passes one that runs the reads in Ray tasks).
        check_unique: fail on a repeated ``cut_id`` (lhotse manifests and URI lists).
        options: S3 options for reading the input and probing.
        segments: ``"cuts"`` (one item per cut) or ``"supervisions"``: for lhotse cuts, one
            item per supervision segment (its id, ``start`` and ``duration`` within the
            recording, its text, speaker and language); cuts without supervisions stay whole.
        max_seconds: cuts (and probed files) longer than this become error items.
        shar_tar: for the cuts file of a lhotse Shar shard: its recording tar, where each cut's
            audio is read from (``kind`` is then ``"lhotse"``).

    Raises:
        ManifestError: malformed lines (with the line number), unsupported cut/source types
            (in-memory audio, MixedCut, ...), duplicate ids, an empty directory/prefix.
        pipeline.io.storage.MissingObjectError: the input does not exist.
    """
    if segments not in SEGMENT_MODES:
        raise ValueError(f"segments must be one of {SEGMENT_MODES}, got {segments!r}")
    kind = kind or detect_input_kind(uri, options)
    if not probe_durations:
        prober = None
    elif prober is None:
        prober = threaded_prober(probe_workers if kind != "audio_file" else 1, options)
    if kind == "shar":
        raise ManifestError(uri, "a Shar directory is planned shard by shard: pass one cuts.NNNNNN.jsonl.gz "
                                 "with its recording tar (pipeline.inputs.sources.expand_inputs)")
    if kind == "lhotse":
        items = _iter_lhotse(uri, dataset, check_unique, options, segments, max_seconds, shar_tar)
    elif kind == "uri_list":
        items = _iter_uri_list(uri, dataset, check_unique, prober, options, max_seconds)
    elif kind == "audio_dir":
        items = _iter_audio_dir(uri, dataset, prober, options, max_seconds)
    elif kind == "audio_file":
        items = _probe_items(iter([(posixpath.basename(uri.rstrip("/")), uri, None)]), dataset, prober, max_seconds)
    else:
        raise ValueError(f"unknown input kind {kind!r}")
    return items


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


class _UniqueIds:
    """Duplicate-id check in about 8 bytes per id: 64-bit digests in a sorted numpy
    array, with recent ones in a small set merged in batches (a Python set of ints
    would cost ~70 MB per million cuts and make the driver's memory grow)."""

    _BUFFER = 1 << 16

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.sorted = np.empty(0, dtype=np.uint64)
        self.recent: set[int] = set()

    def add(self, cut_id: str, line: int | None) -> None:
        key = int.from_bytes(hashlib.blake2b(cut_id.encode("utf-8"), digest_size=8).digest(), "little")
        pos = int(np.searchsorted(self.sorted, np.uint64(key)))
        if key in self.recent or (pos < self.sorted.size and int(self.sorted[pos]) == key):
            raise ManifestError(self.uri, f"duplicate cut_id {cut_id!r}", line)
        self.recent.add(key)
        if len(self.recent) >= self._BUFFER:
            merged = np.concatenate((self.sorted, np.fromiter(self.recent, dtype=np.uint64, count=len(self.recent))))
            merged.sort()
            self.sorted, self.recent = merged, set()


def _source_type(uri: str) -> str:
    return "url" if storage.is_s3_uri(uri) or uri.lower().startswith("file://") else "file"


def _distinct_joined(values: Iterable[str | None]) -> str | None:
    out: list[str] = []
    for value in values:
        if value and value not in out:
            out.append(value)
    return ",".join(out) if out else None


def _scalar_custom(custom: dict[str, Any] | None) -> dict[str, str]:
    if not custom:
        return {}
    return {str(k): str(v) for k, v in custom.items() if isinstance(v, (str, int, float, bool))}


def _probe_items(
    entries: Iterator[tuple[str, str, int | None]],
    dataset: str | None,
    prober: Prober | None,
    max_seconds: float | None = None,
) -> Iterator[WorkItem]:
    """entries: (cut_id, source, line). Adds probed durations (``None`` without a prober); a file
    whose header claims more than its size holds, that holds no audio, or more than ``max_seconds``
    is an error item."""
    pairs = ((entry, entry[1]) for entry in entries)
    probed = prober(pairs) if prober is not None else ((entry, (None, None)) for entry, _ in pairs)
    for (cut_id, source, _), (duration, lie) in probed:
        item = WorkItem(
            cut_id=cut_id,
            recording_id=cut_id,
            source=source,
            source_type=_source_type(source),
            channel=None,
            start=0.0,
            duration=duration,
            dataset=dataset,
        )
        if lie is not None:
            yield _with_error(item, f"the file cannot be transcribed as it is: {lie}")
        elif duration is not None and duration <= 0:
            yield _with_error(item, "the file holds no audio (its header says 0 samples)")
        elif duration is not None and max_seconds is not None and duration > max_seconds:
            yield _with_error(item, f"the file holds {duration / 3600:.1f} h of audio, more than "
                                    f"--max-recording-hours ({max_seconds / 3600:g} h)")
        else:
            yield item


def _custom_hotwords(customs: list[dict[str, Any] | None]) -> tuple[list[str] | None, str | None]:
    """The hotword entries of a cut's and its supervisions' ``custom["hotwords"]`` (in that order,
    repeats kept once), and why they cannot be used when they are not lists of strings."""
    entries: list[str] = []
    for custom in customs:
        value = (custom or {}).get("hotwords")
        if value is None:
            continue
        if isinstance(value, str) or not isinstance(value, (list, tuple)) or \
                not all(isinstance(v, str) for v in value):
            return None, "custom['hotwords'] must be a list of phrases (strings, optionally 'phrase :score')"
        entries += [v for v in value if v not in entries]
    return (entries or None), None


def _with_error(item: WorkItem, reason: str) -> WorkItem:
    """``item`` as an error item: it becomes an error row; no audio is fetched, no window planned."""
    start = item.start if math.isfinite(item.start) and item.start >= 0 else 0.0
    return dataclasses.replace(item, start=start, duration=None, error=reason, custom=dict(item.custom))


def _range_error(start: float, duration: float | None, max_seconds: float | None,
                 recording_seconds: float | None = None) -> str | None:
    """Why a manifest's time range cannot be transcribed (``None`` when it can)."""
    if not math.isfinite(start) or start < 0:
        return f"start {start!r} is not a time in the recording (a finite number of seconds >= 0)"
    if duration is None:
        return None
    if not math.isfinite(duration) or duration <= 0:
        return f"duration {duration!r} is not a finite number of seconds > 0"
    if max_seconds is not None and duration > max_seconds:
        return (f"duration {duration:.6g} s is longer than --max-recording-hours "
                f"({max_seconds / 3600:g} h)")
    if recording_seconds is not None and math.isfinite(recording_seconds) and recording_seconds > 0 \
            and start >= recording_seconds:
        return f"starts at {start:.6g} s, after its recording ends ({recording_seconds:.6g} s)"
    return None


# --------------------------------------------------------------------------------------
# Lhotse manifests
# --------------------------------------------------------------------------------------


def _numbered_lines(uri: str, options: S3Options | None) -> Iterator[tuple[int, str]]:
    """(1-based line number, line) of a text object, streamed; decoding errors and lines longer
    than :data:`MAX_LINE_CHARS` (a gzip bomb without newlines) name the line."""
    with storage.open_text(uri, options=options) as f:
        lineno = 0
        while True:
            try:
                line = f.readline(MAX_LINE_CHARS + 1)
                if len(line) > MAX_LINE_CHARS:
                    raise ManifestError(uri, f"line longer than {MAX_LINE_CHARS >> 20} Mi characters (one line is "
                                             "one cut: this does not look like a manifest)", lineno + 1)
            except UnicodeDecodeError as exc:
                raise ManifestError(uri, f"not valid UTF-8 text ({exc.reason})", lineno + 1) from None
            except (EOFError, OSError) as exc:
                if isinstance(exc, storage.StorageError):
                    raise
                raise ManifestError(uri, f"cannot read the file ({type(exc).__name__}: {exc})", lineno + 1) from None
            if not line:
                return
            lineno += 1
            yield lineno, line


def _iter_lhotse(uri: str, dataset: str | None, check_unique: bool, options: S3Options | None,
                 segments: str = "cuts", max_seconds: float | None = None,
                 shar_tar: str | None = None) -> Iterator[WorkItem]:
    from lhotse import MonoCut, MultiCut, Recording
    from lhotse.serialization import deserialize_item

    unique = _UniqueIds(uri) if check_unique else None
    for lineno, line in _numbered_lines(uri, options):
        text = line.strip()
        if not text:
            continue
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ManifestError(uri, f"invalid JSON ({exc.msg} at column {exc.colno})", lineno) from None
        if not isinstance(data, dict):
            raise ManifestError(uri, f"expected a JSON object, got {type(data).__name__}", lineno)
        try:
            obj = deserialize_item(data)
        except Exception as exc:  # noqa: BLE001 -- lhotse raises many types for bad dicts
            raise ManifestError(uri, f"not a valid lhotse cut or recording ({type(exc).__name__}: {exc})",
                                lineno) from None
        if isinstance(obj, (MonoCut, MultiCut)):
            item = _item_from_cut(obj, uri, lineno, shar_tar)
            items = _supervision_items(obj, item) if segments == "supervisions" and obj.supervisions else [item]
        elif isinstance(obj, Recording):
            items = [_item_from_recording(obj, uri, lineno)]
        else:
            raise ManifestError(
                uri, f"unsupported lhotse manifest item {type(obj).__name__} (expected a MonoCut/MultiCut of a "
                "CutSet or a Recording of a RecordingSet)", lineno
            )
        for item in items:
            item.dataset = dataset
            if unique is not None:
                unique.add(item.cut_id, lineno)
            if item.error is None:
                recording = obj.recording if isinstance(obj, (MonoCut, MultiCut)) else obj
                reason = _range_error(item.start, item.duration, max_seconds,
                                      None if recording is None else float(recording.duration))
                if reason is not None:
                    item = _with_error(item, reason)
            yield item


def _resolve_source(recording: Any, channels: list[int], uri: str, line: int) -> tuple[str, str, int | None]:
    """(source, source_type, channel-in-file) for the recording channels a cut uses."""
    transforms = [t["name"] if isinstance(t, dict) else type(t).__name__ for t in (recording.transforms or [])]
    unsupported = [name for name in transforms if name != "Resample"]  # decoding resamples anyway
    if unsupported:
        raise ManifestError(
            uri, f"recording {recording.id!r} has audio transforms {unsupported} (e.g. speed perturbation) "
            "which the pipeline does not apply", line
        )
    sources = list(recording.sources)
    if not sources:
        raise ManifestError(uri, f"recording {recording.id!r} has no audio source", line)
    wanted = list(dict.fromkeys(channels))
    if len(wanted) == 1:
        matches = [s for s in sources if wanted[0] in s.channels]
        if not matches:
            raise ManifestError(uri, f"recording {recording.id!r} has no source for channel {wanted[0]}", line)
        src = matches[0]
        in_file: int | None = None if len(src.channels) == 1 else src.channels.index(wanted[0])
    else:
        if len(sources) != 1:
            raise ManifestError(
                uri, f"recording {recording.id!r} keeps its channels in separate files; mixing channels "
                f"{wanted} across files is not supported (use one MonoCut per channel)", line
            )
        src = sources[0]
        if set(wanted) != set(src.channels):
            raise ManifestError(
                uri, f"mixing a subset {wanted} of recording {recording.id!r}'s channels {src.channels} is not "
                "supported (use all channels or one MonoCut per channel)", line
            )
        in_file = None
    if src.type in ("file", "url"):
        if not isinstance(src.source, str) or not src.source:
            raise ManifestError(uri, f"recording {recording.id!r} has an empty {src.type} source", line)
        return src.source, src.type, in_file
    if src.type == "memory":
        raise ManifestError(
            uri, f"recording {recording.id!r} has in-memory audio (AudioSource type 'memory'), which is not "
            "supported: store the audio as a file or object and reference it by path or s3:// URL", line
        )
    raise ManifestError(
        uri, f"recording {recording.id!r} has an AudioSource of type {src.type!r}; only 'file' and 'url' "
        "sources are supported", line
    )


def _item_from_cut(cut: Any, uri: str, line: int, shar_tar: str | None = None) -> WorkItem:
    recording = cut.recording
    if recording is None:
        raise ManifestError(uri, f"cut {cut.id!r} has no recording (feature-only cuts are not supported)", line)
    member = None
    if shar_tar is not None and recording.sources and recording.sources[0].type == "shar":
        # lhotse Shar: the cut's own audio (its channels only) is the tar member <cut id>.<format>
        source, source_type, channel, member = shar_tar, "shar", None, cut.id
    else:
        channels = list(cut.channel) if isinstance(cut.channel, (list, tuple)) else [cut.channel]
        source, source_type, channel = _resolve_source(recording, channels, uri, line)
    sups = sorted(cut.supervisions, key=lambda s: (s.start, s.end))
    texts = [s.text.strip() for s in sups if s.text and s.text.strip()]
    hotwords, bad_hotwords = _custom_hotwords([cut.custom] + [s.custom for s in sups])
    item = WorkItem(
        cut_id=cut.id,
        recording_id=recording.id,
        source=source,
        source_type=source_type,
        channel=channel,
        start=float(cut.start),
        duration=float(cut.duration),
        reference=" ".join(texts) if texts else None,
        speaker=_distinct_joined(s.speaker for s in sups),
        language=_distinct_joined(s.language for s in sups),
        custom=_scalar_custom(cut.custom),
        hotwords=hotwords,
        member=member,
    )
    return _with_error(item, bad_hotwords) if bad_hotwords else item


def _supervision_items(cut: Any, whole: WorkItem) -> list[WorkItem]:
    """One item per supervision of ``cut`` (time order), clipped to the cut."""
    out = []
    for sup in sorted(cut.supervisions, key=lambda s: (s.start, s.end)):
        if not (math.isfinite(sup.start) and math.isfinite(sup.duration)):
            text = sup.text.strip() if sup.text and sup.text.strip() else None
            out.append(_with_error(dataclasses.replace(
                whole, cut_id=sup.id, reference=text, speaker=sup.speaker, language=sup.language),
                f"supervision start {sup.start!r} / duration {sup.duration!r} are not finite numbers of seconds"))
            continue
        start = max(0.0, float(sup.start))
        end = min(float(cut.duration), float(sup.start) + float(sup.duration))
        if end <= start:
            continue
        text = sup.text.strip() if sup.text and sup.text.strip() else None
        out.append(dataclasses.replace(
            whole, cut_id=sup.id, start=whole.start + start, duration=end - start, reference=text,
            speaker=sup.speaker, language=sup.language, custom=dict(whole.custom),
        ))
    return out


def _item_from_recording(recording: Any, uri: str, line: int) -> WorkItem:
    source, source_type, channel = _resolve_source(recording, list(recording.channel_ids), uri, line)
    return WorkItem(
        cut_id=recording.id,
        recording_id=recording.id,
        source=source,
        source_type=source_type,
        channel=channel,
        start=0.0,
        duration=float(recording.duration),
    )


# --------------------------------------------------------------------------------------
# Directories, prefixes and lists of plain audio files
# --------------------------------------------------------------------------------------


def _iter_audio_dir(uri: str, dataset: str | None, prober: Prober | None, options: S3Options | None,
                    max_seconds: float | None = None) -> Iterator[WorkItem]:
    base = uri if uri.endswith("/") else uri + "/"

    def entries() -> Iterator[tuple[str, str, int | None]]:
        found = False
        for file_uri in storage.list_files(uri, AUDIO_SUFFIXES, options=options):
            found = True
            rel = file_uri[len(base):] if file_uri.startswith(base) else posixpath.basename(file_uri)
            yield rel, file_uri, None
        if not found:
            raise ManifestError(uri, f"no audio files ({' '.join(AUDIO_SUFFIXES)}) found under this "
                                "directory / prefix")

    return _probe_items(entries(), dataset, prober, max_seconds)


def _parent(uri: str) -> str:
    if storage.is_s3_uri(uri):
        return uri.rsplit("/", 1)[0] if uri.count("/") > 2 else uri
    head = uri.rsplit("/", 1)[0] if "/" in uri else ""
    return head if head or not uri.startswith("/") else "/"


def _resolve_entry(entry: str, parent: str) -> str:
    lower = entry.lower()
    if lower.startswith(("s3://", "file://")) or os.path.isabs(entry):
        return entry
    return storage.join(parent, entry) if parent else entry


def _iter_uri_list(
    uri: str, dataset: str | None, check_unique: bool, prober: Prober | None, options: S3Options | None,
    max_seconds: float | None = None,
) -> Iterator[WorkItem]:
    parent = _parent(uri)
    unique = _UniqueIds(uri) if check_unique else None

    def entries() -> Iterator[tuple[str, str, int | None]]:
        for lineno, raw in _numbered_lines(uri, options):
            entry = raw.strip()
            if not entry or entry.startswith("#"):
                continue
            scheme, sep, _ = entry.partition("://")
            if sep and scheme.lower() not in ("s3", "file"):
                raise ManifestError(uri, f"unsupported URI scheme {scheme!r} in {entry!r}", lineno)
            if unique is not None:
                unique.add(entry, lineno)
            yield entry, _resolve_entry(entry, parent), lineno

    return _probe_items(entries(), dataset, prober, max_seconds)
