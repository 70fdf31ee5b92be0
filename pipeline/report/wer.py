"""Word error counting per utterance: alignments of normalised texts and their counts.

:func:`align` aligns normalised reference and hypothesis words with jiwer's
``process_words`` (minimum edit distance; substitutions, deletions and insertions all cost
one); :func:`word_errors` counts the operations of that alignment. An empty reference makes
every hypothesis word an insertion; an empty hypothesis makes every reference word a deletion.

:func:`score_row` fills a transcript row's WER columns; :func:`corpus_wer` is the WER of a list
of utterances (what training and the benchmarks report).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Optional, Sequence

import jiwer

from pipeline.output.records import STATUS_OK

from .normalize import DEFAULT_NORMALIZER, get_normalizer

__all__ = [
    "AlignedWord",
    "WordErrors",
    "align",
    "align_many",
    "corpus_wer",
    "edits",
    "format_alignment",
    "score",
    "score_row",
    "word_errors",
]

Op = Literal["C", "S", "D", "I"]


@dataclass(frozen=True)
class AlignedWord:
    """One step of an alignment: ``C`` correct, ``S`` substitution, ``D`` deletion (reference
    word missing from the hypothesis), ``I`` insertion (hypothesis word not in the reference)."""

    op: Op
    ref: Optional[str]
    hyp: Optional[str]


@dataclass
class WordErrors:
    """Counts for one utterance, and the normalised texts they were computed on."""

    ref_words: int
    substitutions: int
    deletions: int
    insertions: int
    ref_norm: str = ""
    hyp_norm: str = ""

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions


_JIWER_OP: dict[str, Op] = {"equal": "C", "substitute": "S", "delete": "D", "insert": "I"}


def _convert(ref: list[str], hyp: list[str], chunks: list[Any]) -> list[AlignedWord]:
    out: list[AlignedWord] = []
    for chunk in chunks:
        op = _JIWER_OP[chunk.type]
        r = ref[chunk.ref_start_idx:chunk.ref_end_idx]
        h = hyp[chunk.hyp_start_idx:chunk.hyp_end_idx]
        if op == "D":
            out += [AlignedWord("D", w, None) for w in r]
        elif op == "I":
            out += [AlignedWord("I", None, w) for w in h]
        else:
            out += [AlignedWord(op, a, b) for a, b in zip(r, h)]
    return out


def align_many(pairs: Sequence[tuple[str, str]]) -> list[list[AlignedWord]]:
    """:func:`align` of many ``(ref_norm, hyp_norm)`` pairs with one jiwer call."""
    split = [(r.split(), h.split()) for r, h in pairs]
    out: list[list[AlignedWord]] = [
        [AlignedWord("D", w, None) for w in r] + [AlignedWord("I", None, w) for w in h] for r, h in split
    ]  # final for pairs with an empty side (jiwer < 4 rejects empty references)
    both = [i for i, (r, h) in enumerate(split) if r and h]
    if both:
        result = jiwer.process_words([" ".join(split[i][0]) for i in both], [" ".join(split[i][1]) for i in both])
        for i, chunks in zip(both, result.alignments):
            out[i] = _convert(split[i][0], split[i][1], chunks)
    return out


def align(ref_norm: str, hyp_norm: str) -> list[AlignedWord]:
    """Word alignment of two already normalised texts (jiwer ``process_words``)."""
    return align_many([(ref_norm, hyp_norm)])[0]


def count(alignment: list[AlignedWord]) -> tuple[int, int, int, int]:
    """``(ref_words, substitutions, deletions, insertions)`` of an alignment."""
    s = sum(a.op == "S" for a in alignment)
    d = sum(a.op == "D" for a in alignment)
    i = sum(a.op == "I" for a in alignment)
    c = sum(a.op == "C" for a in alignment)
    return c + s + d, s, d, i


def score(reference: str, hypothesis: str, normalizer: str = DEFAULT_NORMALIZER) -> tuple[WordErrors, list[AlignedWord]]:
    """Normalise both texts with ``normalizer``, align them, count. Returns counts and alignment."""
    norm = get_normalizer(normalizer)
    ref, hyp = norm(reference), norm(hypothesis)
    alignment = align(ref, hyp)
    n, s, d, i = count(alignment)
    return WordErrors(n, s, d, i, ref_norm=ref, hyp_norm=hyp), alignment


def word_errors(reference: str, hypothesis: str, normalizer: str = DEFAULT_NORMALIZER) -> WordErrors:
    """Edit-distance word errors after normalisation (jiwer alignment)."""
    return score(reference, hypothesis, normalizer)[0]


def edits(alignment: list[AlignedWord]) -> list[dict[str, Optional[str]]]:
    """The errors of an alignment as stored in a row's ``word_edits``: ``{op, ref, hyp}``."""
    return [{"op": a.op, "ref": a.ref, "hyp": a.hyp} for a in alignment if a.op != "C"]


def format_alignment(alignment: list[AlignedWord]) -> str:
    """icefall ``errs-*`` style: ``the (cat->bat) sat (on->*) (*->uh) mat``."""
    parts = []
    for a in alignment:
        if a.op == "C":
            parts.append(a.ref or "")
        else:
            parts.append(f"({a.ref or '*'}->{a.hyp or '*'})")
    return " ".join(parts)


def corpus_wer(references: Sequence[str], hypotheses: Sequence[str], normalizer: str = DEFAULT_NORMALIZER) -> float:
    """WER in percent of paired references and hypotheses: total errors over total reference
    words, scored exactly as transcript rows and reports score them."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    counts = [word_errors(r, h, normalizer) for r, h in zip(references, hypotheses)]
    return 100.0 * sum(c.errors for c in counts) / max(1, sum(c.ref_words for c in counts))


def bias_counts(ref_norm: str, word_edits: list[dict[str, Any]], words: set[str]) -> tuple[int, int, int, int]:
    """The B-WER / U-WER split of one scored row (Le et al. 2021): ``(biased reference words,
    errors on them, other reference words, errors on those)``, where a reference word is biased
    when it is one of ``words`` (the words of the cut's hotword list), a substitution or deletion
    counts by its reference word and an insertion by the inserted word."""
    ref = ref_norm.split()
    b_ref = sum(w in words for w in ref)
    b_err = u_err = 0
    for e in word_edits:
        word = e["hyp"] if e["op"] == "I" else e["ref"]
        if word in words:
            b_err += 1
        else:
            u_err += 1
    return b_ref, b_err, len(ref) - b_ref, u_err


def score_row(row: Any, normalizer: str) -> None:
    """Fill a transcript row's WER columns (``ref_words``, ``errors``, ``substitutions``,
    ``deletions``, ``insertions``, ``ref_norm``, ``hyp_norm``, ``word_edits``) from its ``reference`` and
    ``text``. A row without a reference is left alone; a failed row (or one without text)
    gets only ``ref_norm``: what would have been compared, counting nothing."""
    if row.reference is None:
        return
    if row.status != STATUS_OK or row.text is None:
        row.ref_norm = get_normalizer(normalizer)(row.reference)
        return
    errs, alignment = score(row.reference, row.text, normalizer)
    row.word_edits = edits(alignment)
    row.ref_words, row.errors = errs.ref_words, errs.errors
    row.substitutions, row.deletions, row.insertions = errs.substitutions, errs.deletions, errs.insertions
    row.ref_norm, row.hyp_norm = errs.ref_norm, errs.hyp_norm
    words = getattr(row, "hotword_words", None)
    if words is not None:
        (row.biased_ref_words, row.biased_errors, row.unbiased_ref_words,
         row.unbiased_errors) = bias_counts(errs.ref_norm, row.word_edits, set(words))
