"""Stitching the windows of long cuts back into one transcript row per cut.

The actors write the rows of long-cut windows to ``windows/run_id=<id>/part-<shard>.parquet``
(:data:`pipeline.output.records.WINDOW_SCHEMA`). Once every shard of a run has finished, the
driver splits the plan's long cuts into groups (:func:`stitch_groups`) and stitches each group
in a Ray task (:func:`stitch_group` -> :func:`stitch_run`): for each long cut whose windows are all there it merges
them (:func:`pipeline.longform.merge.merge_windows`), scores WER against the cut's reference and
writes the cut's row to ``transcripts/run_id=<id>/part-long-<hash>.parquet``, one small part
per cut, beside the shard parts.

Exactly once: a stitched part carries a fingerprint over the fingerprints of the window parts
it was built from; a rerun skips cuts whose part is there with the same fingerprint. A cut
whose windows are not all present (a shard failed every attempt) gets no row, like the cuts
of any failed shard, and is counted as incomplete; a rerun completes it.

A cut with a failed window becomes an error row naming the window(s) and their time ranges.
"""

from __future__ import annotations

import hashlib
import io
from collections import defaultdict
from dataclasses import dataclass, field, fields
from typing import Any

import pyarrow.parquet as pq

from model.tokenizer import Tokenizer
from pipeline.io import storage
from pipeline.output import parquet
from pipeline.output.paths import RunPaths
from pipeline.output.records import STATUS_ERROR, STATUS_OK, TranscriptRow, rows_to_table
from pipeline.output.words import FRAME_SHIFT, words_table
from pipeline.plan.windows import Window, plan_windows
from pipeline.report.normalize import get_normalizer
from pipeline.report.wer import score_row

from .merge import SCORES, WindowHypothesis, merge_windows


@dataclass
class StitchSummary:
    cuts_ok: int = 0
    cuts_error: int = 0
    cuts_skipped: int = 0  # already stitched by an earlier run (resume)
    cuts_incomplete: int = 0  # some window missing: a shard failed
    windows: int = 0
    seams: int = 0
    seams_aligned: int = 0
    incomplete: list[str] = field(default_factory=list)

    def add(self, other: "StitchSummary") -> None:
        """Add ``other``'s counts (and incomplete cuts) to this summary's."""
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


def _windows_of(rows: list[dict[str, Any]], overlap_seconds: float, max_cut_seconds: float) -> list[Window]:
    """The windows a cut's rows (sorted, all present) were transcribed from, re-planned once from
    the cut's duration and the options."""
    plan = plan_windows(rows[0]["cut_duration"], max_cut_seconds, overlap_seconds)
    if len(plan) != rows[0]["window_count"]:
        raise ValueError(f"cut {rows[0]['cut_id']}: stored windows ({rows[0]['window_count']}) do not match the "
                         f"options ({len(plan)})")
    return [plan[r["window_index"]] for r in rows]


def _stitch_one(rows: list[dict[str, Any]], run_id: str, tokenizer: Tokenizer, normalizer: str,
                overlap_seconds: float, max_cut_seconds: float) -> tuple[TranscriptRow, int]:
    rows = sorted(rows, key=lambda r: r["window_index"])
    first = rows[0]
    out = TranscriptRow(
        run_id=run_id, cut_id=first["cut_id"], status=STATUS_OK, recording_id=first["recording_id"],
        source=first["source"], channel=first["channel"], start_s=first["cut_start"], duration=first["cut_duration"],
        reference=first["reference"], speaker=first["speaker"], language=first["language"], dataset=first["dataset"],
        model_id=first["model_id"], model_sha256=first["model_sha256"], decoding=first["decoding"],
        shard_id=",".join(sorted({r["shard_id"] for r in rows})), worker=",".join(sorted({r["worker"] for r in rows})),
        processed_at=max(r["processed_at"] for r in rows),
    )
    failed = [r for r in rows if r["status"] != STATUS_OK]
    if failed:
        out.status = STATUS_ERROR
        out.error = "; ".join(
            f"window {r['window_index'] + 1}/{r['window_count']} ({r['start_s'] - r['cut_start']:.1f}-"
            f"{r['start_s'] - r['cut_start'] + r['duration']:.1f} s): {r['error']}" for r in failed)
        score_row(out, normalizer)
        return out, 0
    windows = _windows_of(rows, overlap_seconds, max_cut_seconds)
    hyps = [WindowHypothesis(w, list(r["token_ids"] or []), list(r["token_times"] or []), confidence=r["confidence"],
                             token_confidences=list(r.get("token_confidences") or []),
                             **{name: r.get(name) for name in SCORES})
            for w, r in zip(windows, rows)]
    merged = merge_windows(hyps, tokenizer.id_to_piece)
    out.token_ids, out.token_times = merged.token_ids, [float(t) for t in merged.token_times]
    out.token_confidences = merged.token_confidences
    out.text = tokenizer.decode(merged.token_ids)
    out.confidence = merged.confidence
    for name in SCORES:
        setattr(out, name, getattr(merged, name))
    found = [r.get("hotwords_matched") for r in rows]
    if any(m is not None for m in found):  # the cut had a hotword list: which of the windows' finds the text keeps
        text = f" {get_normalizer(normalizer)(out.text)} "
        out.hotwords_matched = sorted(p for p in {p for m in found if m for p in m} if f" {p} " in text)
    words = [r.get("hotword_words") for r in rows]
    if any(w is not None for w in words):  # every window of a cut carries the cut's list: B-WER / U-WER
        out.hotword_words = sorted({w for ws in words if ws for w in ws})
    score_row(out, normalizer)
    return out, merged.seams_aligned


def stitch_run(output: str, run_id: str, window_parts: dict[str, str], expected: dict[str, int], tokenizer: Tokenizer,
               *, normalizer: str, max_cut_seconds: float, overlap_seconds: float, resume: bool = True,
               frame_shift: float = FRAME_SHIFT) -> StitchSummary:
    """Stitch every long cut of a run (see the module docstring). With several decodings, each
    decoding's windows are stitched into its own row; the cut's part holds them all.

    Args:
        window_parts: windows part URI -> the fingerprint of its shard, for every shard of the
            run that holds windows (parts with another fingerprint are stale and ignored).
        expected: cut_id -> number of windows, for every long cut of the run.
    """
    summary = StitchSummary()
    by_cut: dict[str, list[dict[str, Any]]] = defaultdict(list)
    sources: dict[str, set[str]] = defaultdict(set)
    for uri, fingerprint in sorted(window_parts.items()):
        meta = parquet.read_part_metadata(uri)
        if not meta or meta.get(parquet.FINGERPRINT_KEY, b"").decode() != fingerprint:
            continue  # its shard failed (or the part is stale): those cuts stay incomplete
        for row in pq.read_table(io.BytesIO(storage.read_bytes(uri))).to_pylist():
            by_cut[row["cut_id"]].append(row)
            sources[row["cut_id"]].add(fingerprint)
    paths = RunPaths(output, run_id)
    for cut_id, count in expected.items():
        by_decoding: dict[Any, list[dict[str, Any]]] = defaultdict(list)  # in the order the rows were written
        for r in by_cut.get(cut_id, []):
            by_decoding[r["decoding"]].append(r)
        if not by_decoding or any(sorted(r["window_index"] for r in rows) != list(range(count))
                                  for rows in by_decoding.values()):
            summary.cuts_incomplete += 1
            summary.incomplete.append(cut_id)
            continue
        uri = paths.stitched_part(cut_id)
        fp = hashlib.sha256("\n".join([cut_id, *sorted(sources[cut_id])]).encode()).hexdigest()
        done = parquet.finished_shard(uri, fp) if resume else None
        if done is not None:
            summary.cuts_skipped += 1
            summary.cuts_ok += done["cuts_ok"]
            summary.cuts_error += done["cuts_error"]
            continue
        stitched = [_stitch_one(rows, run_id, tokenizer, normalizer, overlap_seconds, max_cut_seconds)
                    for rows in by_decoding.values()]
        row, aligned = stitched[0]  # the cut is counted once, by its first decoding
        ok = row.status == STATUS_OK
        summary.cuts_ok += ok
        summary.cuts_error += not ok
        summary.windows += count
        summary.seams += count - 1
        summary.seams_aligned += aligned
        rows_out = [r for r, _ in stitched]
        # the words first: the transcripts part marks the cut done
        parquet.write_part(paths.words_part(uri), words_table(rows_out, tokenizer.id_to_piece, tokenizer.decode,
                                                              frame_shift), fp)
        parquet.write_part(uri, rows_to_table(rows_out), fp,
                           summary={"cuts_ok": int(ok), "cuts_error": int(not ok), "windows": count})
    return summary


@dataclass(frozen=True)
class StitchGroup:
    """Long cuts stitched together (one task): their window counts and the window parts that
    hold their windows, each with the fingerprint its shard was written with."""

    expected: dict[str, int]
    window_parts: dict[str, str]


def stitch_groups(long_cuts: dict[str, dict[str, Any]], fingerprints: dict[str, str], output: str, run_id: str,
                  cuts_per_group: int = 32) -> list[StitchGroup]:
    """Split a plan's long cuts (``cut_id -> {"window_count", "shard_ids"}``) into groups; a shard
    without a fingerprint (it failed) contributes no part, so its cuts end incomplete."""
    paths = RunPaths(output, run_id)
    groups = []
    cut_ids = list(long_cuts)
    for start in range(0, len(cut_ids), cuts_per_group):
        mine = cut_ids[start:start + cuts_per_group]
        parts = {paths.windows_part(s): fingerprints[s] for c in mine for s in long_cuts[c]["shard_ids"]
                 if s in fingerprints}
        groups.append(StitchGroup({c: int(long_cuts[c]["window_count"]) for c in mine}, parts))
    return groups


def stitch_group(group: StitchGroup, output: str, run_id: str, tokenizer: Tokenizer, **options: Any) -> StitchSummary:
    """:func:`stitch_run` of one group."""
    return stitch_run(output, run_id, group.window_parts, group.expected, tokenizer, **options)


__all__ = ["StitchGroup", "StitchSummary", "stitch_group", "stitch_groups", "stitch_run"]
