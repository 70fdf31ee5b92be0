"""The WER report as it was computed before reports became DuckDB queries: every row as a Python
object, every utterance aligned again with jiwer on the driver. Kept here, and only here, as an
independent oracle: tests check that the DuckDB report (``pipeline.report.tables``) gives the
same numbers, errors and worst utterances on the same rows."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Iterable, Optional

import pyarrow as pa

from pipeline.output.records import STATUS_ERROR, STATUS_OK
from pipeline.report.normalize import get_normalizer
from pipeline.report.tables import (
    _COUNTS, ERRORS_SCHEMA, NONE_LABEL, REPORT_SCHEMA, ROW_COLUMNS, GroupKey, WorstUtterance, _sort_key, duration_bucket,
)
from pipeline.report.wer import AlignedWord, align, align_many


@dataclass
class _Acc:
    """Running counts of one group."""

    utterances: int = 0
    scored: int = 0
    failed: int = 0
    no_reference: int = 0
    empty_reference: int = 0
    ref_words: int = 0
    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0
    audio_seconds: float = 0.0
    models: set[tuple[Optional[str], Optional[str]]] = field(default_factory=set)
    #: the B-WER / U-WER split of the scored rows that have one; None while none has
    bias: Optional[list[int]] = None

    def add(self, r: "_Row") -> None:
        self.utterances += 1
        self.models.add((r.model_id, r.model_sha256))
        if r.status != STATUS_OK:
            self.failed += 1
            return
        self.audio_seconds += r.duration or 0.0
        if r.reference is None:
            self.no_reference += 1
            return
        self.scored += 1
        self.empty_reference += r.ref_words == 0
        self.ref_words += r.ref_words
        self.substitutions += r.substitutions
        self.deletions += r.deletions
        self.insertions += r.insertions
        if r.bias is not None:
            self.bias = [a + b for a, b in zip(self.bias or [0, 0, 0, 0], r.bias)]


@dataclass
class _Row:
    """The fields of one transcript row a report needs (counts filled for scored rows)."""

    cut_id: str
    status: str
    dataset: Optional[str]
    decoding: Optional[str]
    speaker: Optional[str]
    duration: Optional[float]
    reference: Optional[str]
    text: Optional[str]
    ref_norm: Optional[str]
    hyp_norm: Optional[str]
    ref_words: int
    substitutions: int
    deletions: int
    insertions: int
    model_id: Optional[str]
    model_sha256: Optional[str]
    error: Optional[str]
    #: biased_ref_words, biased_errors, unbiased_ref_words, unbiased_errors (None: no hotword list)
    bias: Optional[list[int]] = None

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def scored(self) -> bool:
        return self.status == STATUS_OK and self.reference is not None


# -- reading rows ----------------------------------------------------------------------


def _column(rows: pa.Table, name: str) -> list[Any]:
    return rows.column(name).to_pylist() if name in rows.column_names else [None] * rows.num_rows


def _rows(rows: pa.Table, normalizer: str) -> list[_Row]:
    """Rows of the table as :class:`_Row`; a scored row without stored counts (parts written
    before the WER columns existed) is scored here with ``normalizer``."""
    cols = {name: _column(rows, name) for name in ROW_COLUMNS}
    out = []
    norm = None
    for i in range(rows.num_rows):
        r = _Row(
            cut_id=cols["cut_id"][i], status=cols["status"][i] or STATUS_ERROR, dataset=cols["dataset"][i],
            decoding=cols["decoding"][i], speaker=cols["speaker"][i], duration=cols["duration"][i],
            reference=cols["reference"][i], text=cols["text"][i], ref_norm=cols["ref_norm"][i],
            hyp_norm=cols["hyp_norm"][i], ref_words=cols["ref_words"][i] or 0,
            substitutions=cols["substitutions"][i] or 0, deletions=cols["deletions"][i] or 0,
            insertions=cols["insertions"][i] or 0, model_id=cols["model_id"][i],
            model_sha256=cols["model_sha256"][i], error=cols["error"][i],
            bias=None if cols["biased_ref_words"][i] is None else
            [cols[c][i] for c in ("biased_ref_words", "biased_errors", "unbiased_ref_words", "unbiased_errors")],
        )
        if r.scored and (r.ref_norm is None or r.hyp_norm is None or cols["substitutions"][i] is None):
            norm = norm or get_normalizer(normalizer)
            r.ref_norm, r.hyp_norm = norm(r.reference or ""), norm(r.text or "")
            ops = align(r.ref_norm, r.hyp_norm)
            r.substitutions = sum(a.op == "S" for a in ops)
            r.deletions = sum(a.op == "D" for a in ops)
            r.insertions = sum(a.op == "I" for a in ops)
            r.ref_words = sum(a.op != "I" for a in ops)
        out.append(r)
    return out


# -- groups ----------------------------------------------------------------------------

# the order of the groups is the report's own (pipeline.report.tables._sort_key); the numbers are computed here


def _group_keys(r: _Row) -> Iterable[GroupKey]:
    yield ("all", None, r.decoding, "all")
    yield ("dataset", r.dataset, r.decoding, r.dataset if r.dataset is not None else NONE_LABEL)
    yield ("duration_bucket", r.dataset, r.decoding, duration_bucket(r.duration))
    yield ("speaker", r.dataset, r.decoding, r.speaker if r.speaker is not None else NONE_LABEL)


def _join(values: Iterable[Optional[str]]) -> Optional[str]:
    present = sorted({v for v in values if v})
    return ",".join(present) if present else None


def group_table(rows: list[_Row], run_id: str, normalizer: str, created_at: datetime) -> pa.Table:
    """The ``wer_groups`` table (:data:`REPORT_SCHEMA`) of some rows."""
    accs: dict[GroupKey, _Acc] = defaultdict(_Acc)
    for r in rows:
        for key in _group_keys(r):
            accs[key].add(r)
    columns: dict[str, list[Any]] = {name: [] for name in REPORT_SCHEMA.names}
    for key in sorted(accs, key=_sort_key):
        group_by, dataset, decoding, value = key
        acc = accs[key]
        errors = acc.substitutions + acc.deletions + acc.insertions
        values: dict[str, Any] = dict(
            run_id=run_id, dataset=dataset, decoding=decoding, group_by=group_by, group_value=value,
            errors=errors, wer=errors / acc.ref_words if acc.ref_words else None,
            audio_seconds=round(acc.audio_seconds, 6), model_id=_join(m for m, _ in acc.models),
            model_sha256=_join(s for _, s in acc.models), normalizer=normalizer, created_at=created_at,
        )
        values.update({name: getattr(acc, name) for name in _COUNTS})
        b_ref, b_err, u_ref, u_err = acc.bias or [None] * 4
        values.update(biased_ref_words=b_ref, biased_errors=b_err, unbiased_ref_words=u_ref, unbiased_errors=u_err,
                      b_wer=b_err / b_ref if b_ref else None, u_wer=u_err / u_ref if u_ref else None)
        for name in REPORT_SCHEMA.names:
            columns[name].append(values[name])
    return pa.Table.from_pydict(columns, schema=REPORT_SCHEMA)


# -- error details ---------------------------------------------------------------------


def _alignments(rows: list[_Row], chunk: int = 5000) -> list[list[AlignedWord]]:
    """Alignments of the rows' normalised texts, in order (one jiwer call per ``chunk`` rows)."""
    out: list[list[AlignedWord]] = []
    for start in range(0, len(rows), chunk):
        out += align_many([(r.ref_norm or "", r.hyp_norm or "") for r in rows[start:start + chunk]])
    return out


@dataclass
class _WordStats:
    correct: int = 0
    ref_count: int = 0
    hyp_count: int = 0
    substituted: int = 0
    substituted_in: int = 0
    deleted: int = 0
    inserted: int = 0

    @property
    def errors(self) -> int:
        return self.substituted + self.substituted_in + self.deleted + self.inserted


def error_table(scored: list[_Row], alignments: list[list[AlignedWord]], run_id: str) -> pa.Table:
    """The ``errors.parquet`` table (:data:`ERRORS_SCHEMA`) from scored rows and their alignments."""
    per_set: dict[tuple[Optional[str], Optional[str]], dict[str, Any]] = {}
    for r, ops in zip(scored, alignments):
        key = (r.dataset, r.decoding)
        if key not in per_set:
            per_set[key] = {"sub": Counter(), "del": Counter(), "ins": Counter(), "words": defaultdict(_WordStats)}
        d = per_set[key]
        words: dict[str, _WordStats] = d["words"]
        for a in ops:
            if a.ref is not None:
                words[a.ref].ref_count += 1
            if a.hyp is not None:
                words[a.hyp].hyp_count += 1
            if a.op == "C":
                words[a.ref].correct += 1  # type: ignore[index]
            elif a.op == "S":
                d["sub"][(a.ref, a.hyp)] += 1
                words[a.ref].substituted += 1  # type: ignore[index]
                words[a.hyp].substituted_in += 1  # type: ignore[index]
            elif a.op == "D":
                d["del"][a.ref] += 1
                words[a.ref].deleted += 1  # type: ignore[index]
            else:
                d["ins"][a.hyp] += 1
                words[a.hyp].inserted += 1  # type: ignore[index]
    records: list[dict[str, Any]] = []
    for (dataset, decoding) in sorted(per_set, key=lambda k: (k[1] or "", k[0] or "")):
        d = per_set[(dataset, decoding)]
        base = dict(run_id=run_id, dataset=dataset, decoding=decoding)
        for (ref, hyp), n in sorted(d["sub"].items(), key=lambda kv: (-kv[1], kv[0])):
            records.append(dict(base, kind="substitution", ref_word=ref, hyp_word=hyp, count=n))
        for ref, n in sorted(d["del"].items(), key=lambda kv: (-kv[1], kv[0])):
            records.append(dict(base, kind="deletion", ref_word=ref, count=n))
        for hyp, n in sorted(d["ins"].items(), key=lambda kv: (-kv[1], kv[0])):
            records.append(dict(base, kind="insertion", hyp_word=hyp, count=n))
        for word, st in sorted(d["words"].items(), key=lambda kv: (-kv[1].errors, kv[0])):
            records.append(dict(base, kind="word", ref_word=word, count=st.errors, correct=st.correct,
                                ref_count=st.ref_count, hyp_count=st.hyp_count, substituted=st.substituted,
                                substituted_in=st.substituted_in, deleted=st.deleted, inserted=st.inserted))
    return pa.Table.from_pylist(records, schema=ERRORS_SCHEMA)


def worst_utterances(scored: list[_Row], alignments: list[list[AlignedWord]], n: int) -> list[WorstUtterance]:
    """The ``n`` scored utterances with the most errors (ties: higher WER first, then cut id)."""
    ranked = sorted(
        (i for i, r in enumerate(scored) if r.errors > 0),
        key=lambda i: (-scored[i].errors, -(scored[i].errors / max(scored[i].ref_words, 1)), scored[i].cut_id),
    )[:n]
    return [
        WorstUtterance(dataset=scored[i].dataset, decoding=scored[i].decoding, cut_id=scored[i].cut_id,
                       speaker=scored[i].speaker, duration=scored[i].duration, ref_words=scored[i].ref_words,
                       errors=scored[i].errors, reference=scored[i].reference or "", text=scored[i].text or "",
                       alignment=alignments[i])
        for i in ranked
    ]




def reference_report(rows: pa.Table, run_id: str, normalizer: str, created_at: datetime, worst_n: int = 20):
    """``(report table, errors table, worst utterances)`` computed the old way."""
    parsed = _rows(rows, normalizer)
    scored = [r for r in parsed if r.scored]
    alignments = _alignments(scored)
    return (group_table(parsed, run_id, normalizer, created_at), error_table(scored, alignments, run_id),
            worst_utterances(scored, alignments, worst_n))
