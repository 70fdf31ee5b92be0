"""Text normalisation: what references and hypotheses go through before words are compared.

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
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from typing import Callable

from model.numbers import digit_words, number_to_words, ordinal_of

__all__ = [
    "BRITISH_TO_AMERICAN",
    "DEFAULT_NORMALIZER",
    "NORMALIZER_CHOICES",
    "americanize",
    "get_normalizer",
    "normalize_english",
    "normalize_none",
    "parse_normalizer",
    "spell_numbers",
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

# a number not glued to a letter/digit before it: 1,234,567 or 1234, optional decimals,
# optional ordinal suffix or percent sign, not followed by a letter or digit
_NUMBER = re.compile(
    r"(?<![\w.,])([0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.([0-9]+))?(?:(st|nd|rd|th)|\s*(%))?(?![\w])"
)


def _spell_number(m: re.Match[str]) -> str:
    integer, decimals, ordinal, percent = m.group(1), m.group(2), m.group(3), m.group(4)
    digits = integer.replace(",", "")
    if (len(digits) > 1 and digits.startswith("0")) or len(digits) > 15:
        words = digit_words(digits)
    else:
        words = number_to_words(int(digits))
    if decimals:
        words += " point " + digit_words(decimals)
    elif ordinal:
        words = ordinal_of(words)
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
