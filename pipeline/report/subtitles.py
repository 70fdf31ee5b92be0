"""Subtitles and JSON transcripts per recording, from a run's words table.

:func:`export_run` streams the words of a run (``words/run_id=<id>/part-*.parquet``,
:mod:`pipeline.output.words`) sorted by recording, channel and time through DuckDB (which
spills to disk beyond its memory limit, so a run of any size streams), cuts each recording's
words into cues (:func:`make_cues`) and writes one file per recording (and channel):

* ``srt``: SubRip, composed with the ``srt`` package;
* ``vtt``: WebVTT, composed with ``webvtt-py``;
* ``json``: ``{"recording_id", "channel", "run_id", "decoding", "segments": [{"start", "end",
  "text", "words": [{"word", "start", "end", "confidence"}]}]}``, the segments being the cues.

Cues (:class:`CueRules`): a cue holds at most ``max_chars`` characters (42, the usual subtitle
line) and ``max_seconds`` (7 s); a new cue starts before a word that would break either, after
a pause of at least ``min_pause`` seconds (the gap between a word's end and the next word's
start), and at every new cut (cuts of one recording are transcribed apart).

File names: the recording id with anything but letters, digits, ``.``, ``_`` and ``-`` replaced
by ``_`` (and then a short hash of the id, so two ids never share a file), plus ``.ch<N>``
for channels other than 0.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional, Sequence

import srt
import webvtt

from pipeline.io import storage
from pipeline.io.names import safe_name
from pipeline.output.paths import RunPaths

__all__ = ["FORMATS", "Cue", "CueRules", "ExportSummary", "export_run", "file_stem", "make_cues", "render"]

FORMATS = ("srt", "vtt", "json")


@dataclass(frozen=True)
class CueRules:
    """How words are cut into cues."""

    max_chars: int = 42
    max_seconds: float = 7.0
    min_pause: float = 0.5

    def __post_init__(self) -> None:
        if self.max_chars < 1 or self.max_seconds <= 0 or self.min_pause < 0:
            raise ValueError(f"cue rules need max_chars >= 1, max_seconds > 0, min_pause >= 0; got {self}")


@dataclass
class Cue:
    """One subtitle: its time span in the recording, its text and its words (dicts of the words table)."""

    start: float
    end: float
    words: list[dict[str, Any]] = field(default_factory=list)

    @property
    def text(self) -> str:
        return " ".join(w["word"] for w in self.words)


def make_cues(words: Sequence[dict[str, Any]], rules: CueRules = CueRules()) -> list[Cue]:
    """Cut one recording's words (sorted by time; dicts with ``word``, ``start``, ``end`` and
    ``cut_id``) into cues (see the module docstring). A single word longer than ``max_chars`` is
    a cue of its own."""
    cues: list[Cue] = []
    for w in words:
        cue = cues[-1] if cues else None
        if cue is not None:
            last = cue.words[-1]
            too_long = len(cue.text) + 1 + len(w["word"]) > rules.max_chars
            too_slow = w["end"] - cue.start > rules.max_seconds
            pause = w["start"] - last["end"] >= rules.min_pause
            if too_long or too_slow or pause or w.get("cut_id") != last.get("cut_id"):
                cue = None
        if cue is None:
            cue = Cue(start=w["start"], end=w["end"])
            cues.append(cue)
        cue.words.append(w)
        cue.end = max(cue.end, w["end"])
    return cues


def render(cues: Sequence[Cue], fmt: str, meta: dict[str, Any]) -> str:
    """The text of one recording's file in ``fmt`` (:data:`FORMATS`)."""
    if fmt == "srt":
        return srt.compose([srt.Subtitle(i + 1, dt.timedelta(seconds=c.start), dt.timedelta(seconds=c.end), c.text)
                            for i, c in enumerate(cues)], reindex=False)
    if fmt == "vtt":
        doc = webvtt.WebVTT()
        for c in cues:
            doc.captions.append(webvtt.Caption(_vtt_time(c.start), _vtt_time(c.end), c.text))
        return doc.content
    if fmt == "json":
        segments = [{"start": c.start, "end": c.end, "text": c.text,
                     "words": [{k: w[k] for k in ("word", "start", "end", "confidence")} for w in c.words]}
                    for c in cues]
        return json.dumps({**meta, "segments": segments}, ensure_ascii=False, indent=1) + "\n"
    raise ValueError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")


def _vtt_time(seconds: float) -> str:
    ms = int(round(seconds * 1000))
    return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d}.{ms % 1000:03d}"


def file_stem(recording_id: str, channel: Optional[int]) -> str:
    """The file name (without extension) of a recording's export: the id as a safe name
    (:func:`pipeline.io.names.safe_name`: other characters as ``_``, long ids shortened, each with
    a hash of the id), ``.ch<N>`` for channels other than 0."""
    return safe_name(recording_id) + (f".ch{channel}" if channel else "")


@dataclass
class ExportSummary:
    recordings: int = 0
    words: int = 0
    cues: int = 0
    files: list[str] = field(default_factory=list)


def _choose_decoding(available: list[str], wanted: Optional[str]) -> str:
    if wanted is None:
        if len(available) > 1:
            raise ValueError(f"the run has several decodings, choose one with --decoding: {', '.join(available)}")
        return available[0]
    matches = [d for d in available if d == wanted or d.split(" ", 1)[0] == wanted]
    if len(matches) != 1:
        raise ValueError(f"--decoding {wanted!r} matches {len(matches)} of the run's decodings: {', '.join(available)}")
    return matches[0]


def _local_words_parts(words_dir: str, workdir: str) -> list[str]:
    try:
        uris = list(storage.list_files(words_dir, suffixes=[".parquet"]))
    except storage.MissingObjectError:
        uris = []
    paths = []
    for n, uri in enumerate(uris):
        if storage.is_s3_uri(uri):  # DuckDB reads local files here (its S3 extension needs a download)
            local = os.path.join(workdir, f"words-{n:06d}.parquet")
            with open(local, "wb") as f:
                f.write(storage.read_bytes(uri))
            uri = local
        paths.append(uri)
    return paths


def _recordings(reader: Any) -> Iterator[tuple[tuple[str, Optional[int]], list[dict[str, Any]]]]:
    """``((recording id, channel), words)`` from a reader of words sorted by recording and time."""
    key, words = None, []
    for batch in reader:
        for w in batch.to_pylist():
            k = (w["recording"], w["channel"])
            if k != key and words:
                yield key, words
                words = []
            key = k
            words.append(w)
    if words:
        yield key, words


def export_run(output: str, run_id: str, fmt: str, out_dir: str, *, decoding: Optional[str] = None,
               rules: CueRules = CueRules(), memory_limit: str = "1GB") -> ExportSummary:
    """Write one ``fmt`` file per recording (and channel) of run ``run_id`` under ``out_dir``
    (local or ``s3://``) from the run's words table under ``output``. Raises ``ValueError`` (a
    missing run, an unknown format, an ambiguous decoding)."""
    import duckdb

    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    words_dir = RunPaths(output, run_id).words
    summary = ExportSummary()
    with tempfile.TemporaryDirectory(prefix="zipscribe-export-") as workdir:
        parts = _local_words_parts(words_dir, workdir)
        if not parts:
            raise ValueError(f"no words under {words_dir}: is {run_id!r} a run of {output}?")
        con = duckdb.connect(config={"memory_limit": memory_limit, "temp_directory": os.path.join(workdir, "spill")})
        try:
            files = "[" + ", ".join("'" + p.replace("'", "''") + "'" for p in parts) + "]"
            con.execute(f"CREATE TEMP VIEW words AS SELECT * FROM read_parquet({files}, union_by_name = true)")
            available = [r[0] for r in con.sql("SELECT DISTINCT decoding FROM words ORDER BY 1").fetchall()]
            if not available:
                raise ValueError(f"run {run_id!r} has no words (no cut was transcribed to text)")
            chosen = _choose_decoding(available, decoding)
            reader = con.sql(
                "SELECT coalesce(recording_id, cut_id) AS recording, channel, cut_id, word_index, word, start_s AS start, "
                "end_s AS \"end\", confidence FROM words WHERE decoding = $d ORDER BY recording, channel NULLS FIRST, "
                "start_s, cut_id, word_index", params={"d": chosen}).to_arrow_reader(batch_size=65536)
            for (recording, channel), words in _recordings(reader):
                cues = make_cues(words, rules)
                meta = {"recording_id": recording, "channel": channel, "run_id": run_id, "decoding": chosen}
                uri = storage.join(out_dir, f"{file_stem(recording, channel)}.{fmt}")
                storage.write_bytes_atomic(uri, render(cues, fmt, meta).encode())
                summary.recordings += 1
                summary.words += len(words)
                summary.cues += len(cues)
                summary.files.append(uri)
        finally:
            con.close()
    return summary
