"""Numbers as English words, the way the models' transcripts spell them.

icefall's English recipes (and the demo model) are trained on text with numbers spelled out in
words, American style, without "and": ``25`` -> ``twenty five``, ``21st`` -> ``twenty first``.
The demo corpus speaks numbers this way (:mod:`model.training.corpus`) and the WER normaliser's
``numbers`` rule spells digits this way (:mod:`pipeline.report.normalize`).
"""

from __future__ import annotations

__all__ = ["digit_words", "number_to_words", "ordinal_of", "ordinal_words"]

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
         "fifteen sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((10**12, "trillion"), (10**9, "billion"), (10**6, "million"), (10**3, "thousand"))
_ORDINAL_WORDS = {"one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth",
                  "nine": "ninth", "twelve": "twelfth"}


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


def digit_words(s: str) -> str:
    """Each digit of a digit string as a word: ``"007"`` -> ``zero zero seven``."""
    return " ".join(_ONES[int(c)] for c in s)


def ordinal_words(n: int) -> str:
    """``3`` -> ``third``, ``21`` -> ``twenty first``, ``40`` -> ``fortieth``."""
    return ordinal_of(number_to_words(n))


def ordinal_of(words: str) -> str:
    """Turn the last word of a spelled-out number into its ordinal."""
    head, _, last = words.rpartition(" ")
    if last in _ORDINAL_WORDS:
        last = _ORDINAL_WORDS[last]
    elif last.endswith("y"):
        last = last[:-1] + "ieth"
    else:
        last += "th"
    return f"{head} {last}" if head else last
