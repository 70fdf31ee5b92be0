"""Where every output of a run lives: the one place that builds output URIs.

Under ``<output>`` (local path or ``s3://``), for run ``<id>``::

    transcripts/run_id=<id>/part-<shard>.parquet        one row per cut of a shard
    transcripts/run_id=<id>/part-long-<hash>.parquet    one stitched long cut
    windows/run_id=<id>/part-<shard>.parquet            the windows of long cuts in a shard
    words/run_id=<id>/part-<shard>.parquet              one row per word of a shard's cuts
    words/run_id=<id>/part-long-<hash>.parquet          the words of one stitched long cut
    runs/<id>/summary.json                              the run summary
    runs/<id>/lock.json                                 the run lock while a run holds it (pipeline.run.lock)
    runs/<id>/plan/summary.json                         the frozen plan: what it holds, how it was made
    runs/<id>/plan/index-<n>.parquet                    the plan's shards in order, one row each
    runs/<id>/plan/shards/<shard>.jsonl.gz              the work items of one shard
    runs/<id>/plan/long_cuts.parquet                    the plan's long cuts and their windows
    wer_groups/run_id=<id>/part-00000.parquet           the WER report: one row per group
    wer_errors/run_id=<id>/part-00000.parquet           the WER report: word errors
    reports/run_id=<id>/{summary.md, report.html}       the WER report's documents

and under ``<history>`` (nightly evaluations)::

    wer_history/run_id=<id>/part-00000.parquet          one evaluation run's rows

Every folder under ``<output>`` but ``runs/`` and ``reports/`` is one table (:data:`TABLES`):
``<table>/run_id=<id>/part-*.parquet`` and nothing else, one schema. ``run_id=`` is a hive
partition: engines read the run id from the path (it is not a column of the files), as a string
(run ids start with a letter: :func:`check_run_id`).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from pipeline.io import storage

__all__ = ["REPORT_DOCUMENTS", "TABLES", "RunPaths", "check_run_id", "history_dir", "history_part"]

#: the tables of an output folder, one per folder, partitioned by run id
TABLES = ("transcripts", "words", "windows", "wer_groups", "wer_errors")
#: the documents of a WER report, under ``reports/run_id=<id>/``
REPORT_DOCUMENTS = ("summary.md", "report.html")

_RUN_ID = re.compile(r"[A-Za-z][A-Za-z0-9._-]{0,127}")


def check_run_id(run_id: str) -> str:
    """Run ids become path segments of every output object and the value of every table's
    partition key: 1-128 letters, digits and ``._-``, starting with a letter (so that no engine
    reads ``2026-11-25`` as a date or ``0042`` as the number 42), no ``..``; anything else is a
    :class:`ValueError`."""
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id) or ".." in run_id:
        raise ValueError(f"invalid --run-id {run_id!r}: use 1-128 letters, digits, '.', '_', '-', starting with a "
                         "letter (e.g. nightly-2026-11-25; no '..', no '/')")
    return run_id


@dataclass(frozen=True)
class RunPaths:
    """The URIs of one run's outputs under ``output``; the run id is checked here, the one place every
    output path is made (:func:`check_run_id`)."""

    output: str
    run_id: str

    def __post_init__(self) -> None:
        check_run_id(self.run_id)

    @property
    def transcripts(self) -> str:
        """``<output>/transcripts/run_id=<id>``: every transcripts part of the run."""
        return storage.join(self.output, "transcripts", f"run_id={self.run_id}")

    def part(self, shard_id: str) -> str:
        """The transcripts part of a shard."""
        return storage.join(self.transcripts, f"part-{shard_id}.parquet")

    def stitched_part(self, cut_id: str) -> str:
        """The transcripts part of one stitched long cut (named by a digest of its id)."""
        digest = hashlib.sha1(cut_id.encode()).hexdigest()[:20]
        return storage.join(self.transcripts, f"part-long-{digest}.parquet")

    @property
    def windows(self) -> str:
        """``<output>/windows/run_id=<id>``: the window rows of long cuts."""
        return storage.join(self.output, "windows", f"run_id={self.run_id}")

    def windows_part(self, shard_id: str) -> str:
        """The windows part of a shard that holds windows of long cuts."""
        return storage.join(self.windows, f"part-{shard_id}.parquet")

    @property
    def words(self) -> str:
        """``<output>/words/run_id=<id>``: one row per transcribed word (:mod:`pipeline.output.words`)."""
        return storage.join(self.output, "words", f"run_id={self.run_id}")

    def words_part(self, part_uri: str) -> str:
        """The words part beside a transcripts part (a shard's or a stitched cut's): same file name."""
        return storage.join(self.words, part_uri.rsplit("/", 1)[-1])

    @property
    def summary(self) -> str:
        """``<output>/runs/<id>/summary.json``."""
        return storage.join(self.output, "runs", self.run_id, "summary.json")

    @property
    def lock(self) -> str:
        """``<output>/runs/<id>/lock.json``: the run lock (:mod:`pipeline.run.lock`)."""
        return storage.join(self.output, "runs", self.run_id, "lock.json")

    @property
    def plan(self) -> str:
        """``<output>/runs/<id>/plan``: the run's frozen plan."""
        return storage.join(self.output, "runs", self.run_id, "plan")

    @property
    def plan_summary(self) -> str:
        return storage.join(self.plan, "summary.json")

    def plan_index(self, number: int) -> str:
        """The ``number``-th file of the plan's shard index."""
        return storage.join(self.plan, f"index-{number:05d}.parquet")

    def plan_shard(self, shard_id: str) -> str:
        """The work items of one shard of the plan."""
        return storage.join(self.plan, "shards", f"{shard_id}.jsonl.gz")

    @property
    def plan_long_cuts(self) -> str:
        return storage.join(self.plan, "long_cuts.parquet")

    def table(self, name: str) -> str:
        """``<output>/<name>/run_id=<id>``: the run's partition of one of the :data:`TABLES`."""
        if name not in TABLES:
            raise ValueError(f"not a table: {name!r} (one of {', '.join(TABLES)})")
        return storage.join(self.output, name, f"run_id={self.run_id}")

    @property
    def wer_groups_part(self) -> str:
        """The WER report's group rows (:data:`pipeline.report.tables.REPORT_SCHEMA`)."""
        return storage.join(self.table("wer_groups"), "part-00000.parquet")

    @property
    def wer_errors_part(self) -> str:
        """The WER report's word errors (:data:`pipeline.report.tables.ERRORS_SCHEMA`)."""
        return storage.join(self.table("wer_errors"), "part-00000.parquet")

    @property
    def reports(self) -> str:
        """``<output>/reports/run_id=<id>``: the WER report's documents (not a table)."""
        return storage.join(self.output, "reports", f"run_id={self.run_id}")

    def report_document(self, name: str) -> str:
        """One of the report's :data:`REPORT_DOCUMENTS`."""
        if name not in REPORT_DOCUMENTS:
            raise ValueError(f"not a report document: {name!r} (one of {', '.join(REPORT_DOCUMENTS)})")
        return storage.join(self.reports, name)


def history_dir(history: str) -> str:
    """``<history>/wer_history``: the history table."""
    return storage.join(history, "wer_history")


def history_part(history: str, run_id: str) -> str:
    """The history rows of one evaluation run: its partition of the history table."""
    return storage.join(history_dir(history), f"run_id={check_run_id(run_id)}", "part-00000.parquet")
