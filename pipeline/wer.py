"""Word error counting for transcript rows.

Default English normaliser: Unicode NFKC, case folding, punctuation removed
except word-internal apostrophes (``don't`` stays, ``'quoted'`` loses its
quotes), hyphens and slashes become spaces, whitespace collapsed. ``none``
only collapses whitespace. References and hypotheses go through the same one.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Callable

import jiwer

_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})
_SEPARATORS = re.compile(r"[-\u2010-\u2015/_]+")
_NOT_WORD = re.compile(r"[^\w\s']+")
_EDGE_APOSTROPHE = re.compile(r"(?<!\w)'|'(?!\w)")


def normalize_english(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).translate(_APOSTROPHES).casefold()
    text = _SEPARATORS.sub(" ", text)
    text = _NOT_WORD.sub(" ", text)
    text = _EDGE_APOSTROPHE.sub(" ", text)
    return " ".join(text.split())


def normalize_none(text: str) -> str:
    return " ".join(text.split())


NORMALIZERS: dict[str, Callable[[str], str]] = {"english": normalize_english, "none": normalize_none}


@dataclass
class WordErrors:
    ref_words: int
    substitutions: int
    deletions: int
    insertions: int

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions


def word_errors(reference: str, hypothesis: str, normalizer: str = "english") -> WordErrors:
    """Edit-distance word errors after normalisation (jiwer alignment)."""
    norm = NORMALIZERS[normalizer]
    ref, hyp = norm(reference), norm(hypothesis)
    if not ref:
        return WordErrors(0, 0, 0, len(hyp.split()))
    if not hyp:
        return WordErrors(len(ref.split()), 0, len(ref.split()), 0)
    out = jiwer.process_words(ref, hyp)
    return WordErrors(len(ref.split()), out.substitutions, out.deletions, out.insertions)
