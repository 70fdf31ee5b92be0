"""Text normalisation and word error counting (per utterance) for transcript rows and reports.

Normalisers
-----------
A normaliser is named by a *spec*: ``english`` (the default), ``none``, or ``english`` plus
optional rules joined with ``+``: ``english+numbers``, ``english+spelling``,
``english+numbers+spelling``. References and hypotheses always go through the same one, and
the normalised texts are what the counts are computed on (they are stored in the rows as
``ref_norm`` / ``hyp_norm``).

``english``, in order:

1. Unicode NFKC (full-width letters and digits become ASCII, ligatures split);
2. typographic apostrophes (``’ ‘ ʼ``) become ``'``;
3. case folding (``Straße`` -> ``strasse``);
4. *(numbers rule, when enabled; see below)*;
5. hyphens, dashes, slashes and underscores become spaces (``well-known`` -> ``well known``);
6. every other character that is neither a letter, digit, whitespace nor apostrophe is removed
   (it becomes a word boundary: ``hello,world`` -> ``hello world``);
7. apostrophes are kept only inside words (``don't``, ``o'clock`` stay; ``'quoted'`` loses
   its quotes);
8. whitespace collapsed to single spaces;
9. *(spelling rule, when enabled; see below)*.

``numbers`` rule (off by default): digit strings are spelt out in American English words
without "and": ``25`` -> ``twenty five``, ``1,000,000`` -> ``one million``, ``3.14`` ->
``three point one four``, ordinals ``1st 2nd 3rd 21st`` -> ``first second third twenty first``,
``50%`` -> ``fifty percent``. Years are not special (``1999`` -> ``one thousand nine hundred
ninety nine``); digit strings with a leading zero (``007``) and numbers of 10^15 or more are
read digit by digit; digits glued to letters (``mp3``, ``1990s``) are left alone.

``spelling`` rule (off by default): a small British -> American spelling map applied to whole
words (``colour`` -> ``color``, ``organisation`` -> ``organization``, ``centre`` -> ``center``,
``travelled`` -> ``traveled``, ``grey`` -> ``gray``, ...; see :data:`BRITISH_TO_AMERICAN`).

``none``: only whitespace is collapsed; case and punctuation count.

Counting
--------
:func:`align` aligns normalised reference and hypothesis words with jiwer's
``process_words`` (minimum edit distance; substitutions, deletions and insertions all cost
one); :func:`word_errors` counts the operations of that alignment. An empty reference makes
every hypothesis word an insertion; an empty hypothesis makes every reference word a deletion.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Literal, Optional, Sequence

import jiwer

__all__ = [
    "BRITISH_TO_AMERICAN",
    "DEFAULT_NORMALIZER",
    "NORMALIZER_CHOICES",
    "AlignedWord",
    "WordErrors",
    "align",
    "align_many",
    "format_alignment",
    "get_normalizer",
    "normalize_english",
    "normalize_none",
    "number_to_words",
    "parse_normalizer",
    "score",
    "word_errors",
]

DEFAULT_NORMALIZER = "english"
#: every accepted normaliser spec (for ``--help`` and validation)
NORMALIZER_CHOICES: tuple[str, ...] = (
    "english", "english+numbers", "english+spelling", "english+numbers+spelling", "none",
)
_RULES = ("numbers", "spelling")

_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})
_SEPARATORS = re.compile(r"[-\u2010-\u2015/_]+")
_NOT_WORD = re.compile(r"[^\w\s']+")
_EDGE_APOSTROPHE = re.compile(r"(?<!\w)'|'(?!\w)")

# -- numbers ---------------------------------------------------------------------------

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
         "fifteen sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((10**12, "trillion"), (10**9, "billion"), (10**6, "million"), (10**3, "thousand"))
_ORDINAL_WORDS = {"one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth",
                  "nine": "ninth", "twelve": "twelfth"}
# a number not glued to a letter/digit before it: 1,234,567 or 1234, optional decimals,
# optional ordinal suffix or percent sign, not followed by a letter or digit
_NUMBER = re.compile(
    r"(?<![\w.,])([0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.([0-9]+))?(?:(st|nd|rd|th)|\s*(%))?(?![\w])"
)


def _below_thousand(n: int) -> list[str]:
    words: list[str] = []
    if n >= 100:
        words += [_ONES[n // 100], "hundred"]
        n %= 100
        if n == 0:
            return words
    if n < 20:
        words.append(_ONES[n])
    else:
        words.append(_TENS[n // 10])
        if n % 10:
            words.append(_ONES[n % 10])
    return words


def number_to_words(n: int) -> str:
    """Cardinal American English words for ``0 <= n < 10**15``: ``25`` -> ``twenty five``."""
    if n < 0 or n >= 10**15:
        raise ValueError(f"number out of range: {n}")
    if n == 0:
        return "zero"
    words: list[str] = []
    for value, name in _SCALES:
        if n >= value:
            words += _below_thousand(n // value) + [name]
            n %= value
    if n:
        words += _below_thousand(n)
    return " ".join(words)


def _digits(s: str) -> str:
    return " ".join(_ONES[int(c)] for c in s)


def ordinal_words(n: int) -> str:
    """``3`` -> ``third``, ``21`` -> ``twenty first``, ``40`` -> ``fortieth``."""
    return _ordinal(number_to_words(n))


def _ordinal(words: str) -> str:
    """Turn the last word of a spelled-out number into its ordinal."""
    head, _, last = words.rpartition(" ")
    if last in _ORDINAL_WORDS:
        last = _ORDINAL_WORDS[last]
    elif last.endswith("y"):
        last = last[:-1] + "ieth"
    else:
        last += "th"
    return f"{head} {last}" if head else last


def _spell_number(m: re.Match[str]) -> str:
    integer, decimals, ordinal, percent = m.group(1), m.group(2), m.group(3), m.group(4)
    digits = integer.replace(",", "")
    if (len(digits) > 1 and digits.startswith("0")) or len(digits) > 15:
        words = _digits(digits)
    else:
        words = number_to_words(int(digits))
    if decimals:
        words += " point " + _digits(decimals)
    elif ordinal:
        words = _ordinal(words)
    if percent:
        words += " percent"
    return f" {words} "


def spell_numbers(text: str) -> str:
    """The numbers rule on its own (input: case-folded text, before punctuation removal)."""
    return _NUMBER.sub(_spell_number, text)


# -- British -> American spelling ------------------------------------------------------


def _spelling_map() -> dict[str, str]:
    out: dict[str, str] = {}
    for stem in ("colour", "favour", "honour", "labour", "neighbour", "behaviour", "humour", "flavour",
                 "rumour", "harbour", "vapour", "endeavour", "armour", "odour", "savour"):
        us = stem[:-3] + "or"
        for suffix in ("", "s", "ed", "ing", "ful", "able"):
            out[stem + suffix] = us + suffix
    out.update({"favourite": "favorite", "favourites": "favorites", "neighbourhood": "neighborhood",
                "neighbourhoods": "neighborhoods", "colourful": "colorful"})
    for stem in ("centre", "theatre", "metre", "litre", "fibre", "calibre", "sombre", "kilometre", "centimetre"):
        us = stem[:-2] + "er"
        out[stem] = us
        out[stem + "s"] = us + "s"
    for stem in ("organis", "realis", "recognis", "apologis", "criticis", "emphasis", "summaris", "prioritis",
                 "minimis", "maximis", "finalis", "utilis", "standardis", "authoris", "characteris", "memoris"):
        us = stem[:-1] + "z"
        for suffix in ("e", "ed", "es", "ing", "ation", "ations"):
            out[stem + suffix] = us + suffix
    for stem in ("analys", "paralys", "catalys"):
        us = stem[:-1] + "z"
        for suffix in ("e", "ed", "es", "ing"):
            out[stem + suffix] = us + suffix
    for stem, us in (("defence", "defense"), ("offence", "offense"), ("licence", "license"), ("pretence", "pretense"),
                     ("catalogue", "catalog"), ("analogue", "analog"), ("programme", "program"), ("tyre", "tire"),
                     ("manoeuvre", "maneuver"), ("aeroplane", "airplane"), ("plough", "plow"), ("mould", "mold")):
        out[stem] = us
        out[stem + "s"] = us + "s"
    for gb, us in (("travelled", "traveled"), ("travelling", "traveling"), ("traveller", "traveler"),
                   ("travellers", "travelers"), ("cancelled", "canceled"), ("cancelling", "canceling"),
                   ("labelled", "labeled"), ("labelling", "labeling"), ("modelled", "modeled"),
                   ("modelling", "modeling"), ("fuelled", "fueled"), ("signalled", "signaled"),
                   ("counsellor", "counselor"), ("jewellery", "jewelry"), ("grey", "gray"), ("greys", "grays"),
                   ("aluminium", "aluminum"), ("cosy", "cozy"), ("sceptical", "skeptical"), ("ageing", "aging"),
                   ("enrol", "enroll"), ("fulfil", "fulfill"), ("skilful", "skillful")):
        out[gb] = us
    return out


#: the spelling rule's whole-word map (lower case), British -> American
BRITISH_TO_AMERICAN: dict[str, str] = _spelling_map()


def americanize(text: str) -> str:
    """The spelling rule on its own (input: normalised, space-separated words)."""
    return " ".join(BRITISH_TO_AMERICAN.get(w, w) for w in text.split())


# -- normalisers -----------------------------------------------------------------------


def normalize_english(text: str, numbers: bool = False, spelling: bool = False) -> str:
    """The ``english`` normaliser (see the module docstring), optionally with its rules."""
    text = unicodedata.normalize("NFKC", text).translate(_APOSTROPHES).casefold()
    if numbers:
        text = spell_numbers(text)
    text = _SEPARATORS.sub(" ", text)
    text = _NOT_WORD.sub(" ", text)
    text = _EDGE_APOSTROPHE.sub(" ", text)
    text = " ".join(text.split())
    if spelling:
        text = americanize(text)
    return text


def normalize_none(text: str) -> str:
    """The ``none`` normaliser: whitespace collapsed, nothing else."""
    return " ".join(text.split())


def parse_normalizer(spec: str) -> str:
    """Validate a normaliser spec and return it in canonical form (rules in a fixed order).

    Raises ``ValueError`` naming the accepted specs. Usable as an argparse ``type``."""
    parts = [p.strip().lower() for p in spec.split("+")]
    base, rules = parts[0], parts[1:]
    bad = [r for r in rules if r not in _RULES] + ([] if base in ("english", "none") else [base])
    if bad or len(set(rules)) != len(rules) or (base == "none" and rules):
        raise ValueError(f"unknown normaliser {spec!r}: use one of {', '.join(NORMALIZER_CHOICES)}")
    return "+".join([base] + [r for r in _RULES if r in rules])


@lru_cache(maxsize=None)
def get_normalizer(spec: str = DEFAULT_NORMALIZER) -> Callable[[str], str]:
    """The normalising function for a spec (``english``, ``english+numbers``, ``none``, ...)."""
    canonical = parse_normalizer(spec)
    if canonical == "none":
        return normalize_none
    rules = set(canonical.split("+")[1:])
    numbers, spelling = "numbers" in rules, "spelling" in rules

    def normalize(text: str) -> str:
        return normalize_english(text, numbers=numbers, spelling=spelling)

    normalize.__name__ = f"normalize_{canonical.replace('+', '_')}"
    return normalize


#: kept for callers of the first version of this module
NORMALIZERS: dict[str, Callable[[str], str]] = {"english": normalize_english, "none": normalize_none}

# -- alignment and counts --------------------------------------------------------------

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


def format_alignment(alignment: list[AlignedWord]) -> str:
    """icefall ``errs-*`` style: ``the (cat->bat) sat (on->*) (*->uh) mat``."""
    parts = []
    for a in alignment:
        if a.op == "C":
            parts.append(a.ref or "")
        else:
            parts.append(f"({a.ref or '*'}->{a.hyp or '*'})")
    return " ".join(parts)
