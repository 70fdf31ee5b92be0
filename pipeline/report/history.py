"""WER history of nightly evaluations and the regression gate.

Layout: ``<history>/wer_history/run_id=<id>/part-00000.parquet`` (local or ``s3://``), one
file per evaluation run holding one row per (dataset, decoding), :data:`HISTORY_SCHEMA` less
``run_id``, which is the hive partition directory only (as in every table of the project); ``day``
is the UTC day of the run (``date32``). DuckDB reads it with
``read_parquet('<history>/wer_history/**/*.parquet', hive_partitioning = 1, hive_types_autocast = 0)``.
Files are written atomically; re-running an evaluation with the same run id replaces its own file
and nothing else.

The gate (:func:`compare`): for each (dataset, decoding) of the current run, the *baseline* is
the latest earlier run in the history with the same dataset, decoding and normaliser whose
gate did not fail (``gate`` is ``first``, ``pass``, ``accepted``, or null for rows written
without a gate). Comparing against the last
*accepted* run rather than simply the last run means a regression keeps failing every night
until it is fixed or deliberately accepted (``jobs/evaluate.py --accept``), instead of
becoming the new baseline after one red night. Verdicts:

* ``FIRST``: no baseline (first run of this dataset and decoding): passes, and says so;
* ``PASS``: WER rose by at most ``max_regression`` absolute points (or fell);
* ``REGRESSION``: WER rose by more than ``max_regression`` points, or more cuts failed than
  in the baseline (by more than ``max_new_failures``), or (with ``max_rtfx_drop``) RTFx fell by more
  than that many percent below the baseline's: fails;
* ``NO-REFERENCE``: nothing could be scored (no reference words): fails;
* ``ACCEPTED``: would have been a regression, but the run was told to accept its result.
"""

from __future__ import annotations

import io
import os
import subprocess
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.io import storage
from pipeline.output.parquet import partition_value, table_to_bytes
from pipeline.output.paths import history_dir, history_part

__all__ = [
    "HISTORY_SCHEMA",
    "RunFacts",
    "Verdict",
    "append_history",
    "compare",
    "format_verdicts",
    "git_revision",
    "history_rows",
    "read_history",
]

HISTORY_SCHEMA = pa.schema(
    [
        pa.field("day", pa.date32(), nullable=False),
        pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("transcripts_run_id", pa.string()),
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("decoding", pa.string(), nullable=False),
        pa.field("normalizer", pa.string()),
        pa.field("model_id", pa.string()),
        pa.field("model_uri", pa.string()),
        pa.field("model_sha256", pa.string()),
        pa.field("git_revision", pa.string()),
        pa.field("utterances", pa.int64()),
        pa.field("scored", pa.int64()),
        pa.field("failed", pa.int64()),
        pa.field("no_reference", pa.int64()),
        pa.field("empty_reference", pa.int64()),
        pa.field("ref_words", pa.int64()),
        pa.field("substitutions", pa.int64()),
        pa.field("deletions", pa.int64()),
        pa.field("insertions", pa.int64()),
        pa.field("errors", pa.int64()),
        pa.field("wer", pa.float64()),
        pa.field("audio_seconds", pa.float64()),
        pa.field("wall_seconds", pa.float64()),
        pa.field("rtfx", pa.float64()),
        pa.field("gate", pa.string()),
        pa.field("baseline_run_id", pa.string()),
        pa.field("delta_points", pa.float64()),
        # speed and cost of the set's transcription run (its summary: resources held, measured from
        # the actors' and tasks' lifetimes, and their cost at the run's prices; null when unknown)
        pa.field("gpu_hours", pa.float64()),
        pa.field("node_hours", pa.float64()),
        pa.field("cpu_core_hours", pa.float64()),
        pa.field("cost_usd", pa.float64()),
        pa.field("cost_per_audio_hour_usd", pa.float64()),
        pa.field("rtfx_delta_pct", pa.float64()),  # RTFx change against the baseline's, in percent
        # contextual biasing: WER on the words of the cuts' hotword lists and on the others (null
        # when no cut had a list)
        pa.field("b_wer", pa.float64()),
        pa.field("u_wer", pa.float64()),
    ]
)

FIRST, PASS, REGRESSION, NO_REFERENCE, ACCEPTED = "FIRST", "PASS", "REGRESSION", "NO-REFERENCE", "ACCEPTED"
_GATE = {FIRST: "first", PASS: "pass", REGRESSION: "fail", NO_REFERENCE: "fail", ACCEPTED: "accepted"}


def _history_files(history: str) -> list[str]:
    try:
        return list(storage.list_files(history_dir(history), suffixes=[".parquet"]))
    except storage.MissingObjectError:
        return []


def read_history(history: str) -> pa.Table:
    """Every history row (:data:`HISTORY_SCHEMA`; empty when there is no history yet), ``run_id``
    from each file's partition directory."""
    tables = []
    for uri in _history_files(history):
        table = pq.read_table(io.BytesIO(storage.read_bytes(uri)))
        run_id = partition_value(uri)
        if run_id is None:
            continue  # not a file of this layout
        table = table.append_column("run_id", pa.array([run_id] * table.num_rows, pa.string()))
        missing = [f for f in HISTORY_SCHEMA if f.name not in table.column_names]
        for f in missing:  # rows of an older schema: absent columns are null
            table = table.append_column(f.name, pa.nulls(table.num_rows, f.type))
        tables.append(table.select(HISTORY_SCHEMA.names).cast(HISTORY_SCHEMA))
    if not tables:
        return HISTORY_SCHEMA.empty_table()
    return pa.concat_tables(tables)


@dataclass
class RunFacts:
    """What the history needs to know about one transcription run besides its WER counts."""

    transcripts_run_id: str
    model_uri: str
    wall_seconds: float
    rtfx: float
    gpu_hours: Optional[float] = None
    node_hours: Optional[float] = None
    cpu_core_hours: Optional[float] = None
    cost_usd: Optional[float] = None
    cost_per_audio_hour_usd: Optional[float] = None

    @classmethod
    def from_summary(cls, summary: Any, model_uri: str) -> "RunFacts":
        """The facts of a :class:`pipeline.run.summary.RunSummary` (its ``resources`` and ``cost``
        when measured)."""
        r, c = summary.resources or {}, summary.cost or {}
        return cls(transcripts_run_id=summary.run_id, model_uri=model_uri, wall_seconds=summary.wall_seconds,
                   rtfx=summary.rtfx, gpu_hours=r.get("gpu_hours"), node_hours=r.get("node_hours"),
                   cpu_core_hours=r.get("cpu_core_hours"), cost_usd=c.get("total_usd"),
                   cost_per_audio_hour_usd=c.get("per_audio_hour_usd"))


@dataclass
class Verdict:
    """The gate's answer for one (dataset, decoding)."""

    dataset: str
    decoding: str
    status: str  # FIRST | PASS | REGRESSION | NO-REFERENCE | ACCEPTED
    wer: Optional[float]
    failed: int
    baseline_wer: Optional[float] = None
    baseline_failed: Optional[int] = None
    baseline_run_id: Optional[str] = None
    baseline_date: Optional[date] = None
    delta_points: Optional[float] = None
    rtfx: Optional[float] = None
    baseline_rtfx: Optional[float] = None
    rtfx_delta_pct: Optional[float] = None
    reason: str = ""

    @property
    def failing(self) -> bool:
        return self.status in (REGRESSION, NO_REFERENCE)

    @property
    def gate(self) -> str:
        return _GATE[self.status]

    def line(self) -> str:
        """One line: ``clean [ctc-greedy]: REGRESSION  WER 12.50% (baseline 10.00% ...)``."""
        wer = "-" if self.wer is None else f"{100 * self.wer:.2f}%"
        return f"{self.dataset} [{self.decoding}]: {self.status}  WER {wer} {self.reason}".rstrip()


def _latest_baseline(history: pa.Table, dataset: str, decoding: str, normalizer: Optional[str],
                     exclude_run_id: str) -> Optional[dict[str, Any]]:
    best = None
    for row in history.to_pylist():
        if (row["dataset"], row["decoding"]) != (dataset, decoding) or row["run_id"] == exclude_run_id:
            continue
        if normalizer is not None and row["normalizer"] not in (None, normalizer):
            continue
        if row["gate"] == "fail":  # a red night is never a baseline (null = not gated: usable)
            continue
        if best is None or row["created_at"] > best["created_at"]:
            best = row
    return best


def compare(
    current: pa.Table,
    history: pa.Table,
    *,
    max_regression: float,
    max_new_failures: Optional[int] = 0,
    accept: bool = False,
    max_rtfx_drop: Optional[float] = None,
) -> list[Verdict]:
    """Verdicts of the current run's history rows against the history (see the module doc).

    ``max_regression`` is in absolute WER percentage points (0.5 = 10.0 % -> 10.5 % is still a
    pass); ``max_new_failures`` is how many more failed cuts than the baseline are tolerated
    (``None``: failures are not gated); ``max_rtfx_drop`` is the largest tolerated fall of RTFx
    below the baseline's, in percent (``None``: speed is not gated; a row without RTFx on either
    side is not gated on it)."""
    verdicts = []
    for row in current.to_pylist():
        base = _latest_baseline(history, row["dataset"], row["decoding"], row["normalizer"], row["run_id"])
        v = Verdict(dataset=row["dataset"], decoding=row["decoding"], status=PASS, wer=row["wer"],
                    failed=row["failed"] or 0, rtfx=row["rtfx"])
        if row["wer"] is None:
            v.status = NO_REFERENCE
            v.reason = f"nothing to score: {row['scored']} utterances with references, {row['ref_words']} reference words"
            verdicts.append(v)
            continue
        if base is None:
            v.status = FIRST
            v.reason = "(first run: no earlier history for this dataset and decoding, nothing to compare)"
            verdicts.append(v)
            continue
        v.baseline_run_id, v.baseline_date = base["run_id"], base["day"]
        v.baseline_wer, v.baseline_failed = base["wer"], base["failed"] or 0
        problems = []
        if base["wer"] is not None:
            v.delta_points = round(100 * (row["wer"] - base["wer"]), 6)
            if v.delta_points > max_regression + 1e-9:
                problems.append(f"WER +{v.delta_points:.2f} points > {max_regression:g} allowed")
        new_failures = v.failed - v.baseline_failed
        if max_new_failures is not None and new_failures > max_new_failures:
            problems.append(f"{v.failed} failed cuts, {new_failures} more than the baseline")
        v.baseline_rtfx = base["rtfx"]
        if v.rtfx and v.baseline_rtfx:
            v.rtfx_delta_pct = round(100 * (v.rtfx / v.baseline_rtfx - 1), 6)
            if max_rtfx_drop is not None and -v.rtfx_delta_pct > max_rtfx_drop + 1e-9:
                problems.append(f"RTFx {v.rtfx:.1f} is {-v.rtfx_delta_pct:.1f}% below the baseline's "
                                f"{v.baseline_rtfx:.1f} > {max_rtfx_drop:g}% allowed")
        delta = "-" if v.delta_points is None else f"{v.delta_points:+.2f} points"
        was = "-" if base["wer"] is None else f"{100 * base['wer']:.2f}%"
        context = f"(baseline {was} in run {base['run_id']} of {base['day']}, {delta})"
        if problems:
            v.status = ACCEPTED if accept else REGRESSION
            v.reason = context + ": " + "; ".join(problems) + (" -- accepted (--accept)" if accept else "")
        else:
            v.reason = context
        verdicts.append(v)
    return verdicts


def format_verdicts(verdicts: Sequence[Verdict]) -> str:
    """The verdict table: one line per (dataset, decoding), then the overall result."""
    lines = [v.line() for v in verdicts]
    failing = [v for v in verdicts if v.failing]
    if failing:
        names = ", ".join(f"{v.dataset} [{v.decoding}]" for v in failing)
        lines.append(f"evaluation FAILED: {len(failing)} of {len(verdicts)} checks failed ({names})")
    else:
        lines.append(f"evaluation passed: {len(verdicts)} of {len(verdicts)} checks passed")
    return "\n".join(lines)


def history_rows(
    report_table: pa.Table,
    facts: Mapping[tuple[str, str], RunFacts],
    *,
    run_id: str,
    created_at: datetime,
    git_rev: Optional[str],
    verdicts: Sequence[Verdict] = (),
) -> pa.Table:
    """History rows of a run: its report's ``group_by='dataset'`` rows, one per (dataset,
    decoding), with run facts and (once known) the gate's verdicts."""
    by_key = {(v.dataset, v.decoding): v for v in verdicts}
    records = []
    for g in report_table.to_pylist():
        if g["group_by"] != "dataset":
            continue
        key = (g["group_value"], g["decoding"] or "")
        f = facts.get(key)
        v = by_key.get(key)
        records.append(dict(
            day=created_at.astimezone(timezone.utc).date(), created_at=created_at, run_id=run_id,
            transcripts_run_id=f.transcripts_run_id if f else None, dataset=key[0], decoding=key[1],
            normalizer=g["normalizer"], model_id=g["model_id"], model_uri=f.model_uri if f else None,
            model_sha256=g["model_sha256"], git_revision=git_rev,
            **{k: g[k] for k in ("utterances", "scored", "failed", "no_reference", "empty_reference", "ref_words",
                                 "substitutions", "deletions", "insertions", "errors", "wer", "audio_seconds",
                                 "b_wer", "u_wer")},
            wall_seconds=f.wall_seconds if f else None, rtfx=f.rtfx if f else None,
            gate=v.gate if v else None, baseline_run_id=v.baseline_run_id if v else None,
            delta_points=v.delta_points if v else None,
            **{k: getattr(f, k) if f else None for k in ("gpu_hours", "node_hours", "cpu_core_hours", "cost_usd",
                                                         "cost_per_audio_hour_usd")},
            rtfx_delta_pct=v.rtfx_delta_pct if v else None,
        ))
    return pa.Table.from_pylist(records, schema=HISTORY_SCHEMA)


def append_history(history: str, rows: pa.Table) -> str:
    """Write a run's history rows as its partition of the history table (atomically); returns the
    file's URI. A re-run of the same run id replaces its own file."""
    run_ids = set(rows.column("run_id").to_pylist())
    if len(run_ids) != 1:
        raise ValueError(f"history rows must come from exactly one run, got {sorted(run_ids)}")
    uri = history_part(history, run_ids.pop())
    storage.write_bytes_atomic(uri, table_to_bytes(rows.drop_columns(["run_id"])))
    return uri


def git_revision(path: Optional[Path] = None) -> Optional[str]:
    """The code's git revision: ``$ZIPSCRIBE_GIT_REVISION`` when set (CI, images); else
    ``git rev-parse HEAD`` of the checkout at ``path`` (default: this code's), with ``-dirty``
    when tracked files are modified; else None (e.g. under ``ray job submit``, whose
    working-dir upload has no ``.git``)."""
    if os.environ.get("ZIPSCRIBE_GIT_REVISION"):
        return os.environ["ZIPSCRIBE_GIT_REVISION"]
    where = (path or Path(__file__).resolve().parents[1]).resolve()

    def git(*args: str) -> Optional[str]:
        out = subprocess.run(["git", "-C", str(where), *args], capture_output=True, text=True, timeout=30)
        return out.stdout.strip() if out.returncode == 0 else None

    try:
        top = git("rev-parse", "--show-toplevel")
        if top is None or Path(top).resolve() != where:  # not a checkout of its own (or inside another one)
            return None
        head = git("rev-parse", "HEAD")
        if not head:
            return None
        return head + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        return None
