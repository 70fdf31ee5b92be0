"""A word n-gram language model read from an ARPA file, for n-best rescoring.

ARPA is the plain-text format that SRILM, KenLM's ``lmplz`` and icefall's ``G_*_gram.arpa``
files use: per order, ``log10 P(w | h)`` of each listed n-gram and the log10 back-off weight
of each n-gram that is also a history. An n-gram that is not listed backs off::

    P(w | h1 .. hk) = bow(h1 .. hk) * P(w | h2 .. hk)        (bow = 1 when not listed)

A model directory may hold one as ``lm.arpa`` or ``lm.arpa.gz`` (:data:`LM_FILES`); the
:class:`model.recognizer.Recognizer` then adds ``lm_scale`` times the hypothesis's LM
log-probability to the attention-rescoring score of each n-best entry
(``DecodingConfig.lm_scale``). The LM's words must be spelled as the tokenizer writes them
(the demo model: lowercase ``a-z``); a word the LM does not list is scored as ``<unk>``.

With ``DecodingConfig.search_lm_scale`` > 0 its unigrams and bigrams also steer the CTC prefix
search that builds the n-best (shallow fusion, :mod:`model.decoding.lm_fusion`), so the
rescoring does not only choose among what an LM-blind search kept.
"""

from __future__ import annotations

import gzip
import math
from pathlib import Path
from typing import Iterable, Union

#: file names looked for in a model directory, in order of preference
LM_FILES = ("lm.arpa.gz", "lm.arpa")

_LN10 = math.log(10.0)


class ArpaError(ValueError):
    """The file is not a readable ARPA language model."""


class WordLM:
    """An ARPA back-off n-gram model over words (any order).

    ``probs[n]`` maps n-word tuples to log10 probabilities, ``bows[n]`` n-word histories to
    log10 back-off weights. Sentences are scored with ``<s>`` before and ``</s>`` after."""

    def __init__(self, probs: dict[int, dict[tuple[str, ...], float]], bows: dict[int, dict[tuple[str, ...], float]]):
        if 1 not in probs or not probs[1]:
            raise ArpaError("no unigrams")
        self.probs = probs
        self.bows = bows
        self.order = max(probs)
        unk = probs[1].get(("<unk>",))
        #: log10 probability of a word the model does not list (``<unk>``'s, or -99 without it)
        self.unk_log10 = unk if unk is not None else -99.0

    @classmethod
    def from_arpa(cls, path: Union[str, Path]) -> "WordLM":
        """Read ``path`` (``.gz`` read compressed). Raises :class:`ArpaError` naming the line."""
        path = Path(path)
        opener = gzip.open if path.suffix == ".gz" else open
        probs: dict[int, dict[tuple[str, ...], float]] = {}
        bows: dict[int, dict[tuple[str, ...], float]] = {}
        expected: dict[int, int] = {}
        order, section = 0, "head"
        with opener(path, "rt", encoding="utf-8") as f:
            for number, raw in enumerate(f, 1):
                line = raw.strip()
                if not line:
                    continue
                if line == "\\data\\":
                    section = "data"
                elif line == "\\end\\":
                    section = "end"
                    break
                elif line.startswith("\\") and line.endswith("-grams:"):
                    try:
                        order = int(line[1:-len("-grams:")])
                    except ValueError:
                        raise ArpaError(f"{path}:{number}: bad section header {line!r}") from None
                    section = "grams"
                    probs.setdefault(order, {})
                elif section == "data" and line.startswith("ngram "):
                    n, _, count = line[len("ngram "):].partition("=")
                    expected[int(n)] = int(count)
                elif section == "grams":
                    fields = line.split("\t") if "\t" in line else line.split()
                    if "\t" in line:
                        words = fields[1].split()
                        rest = fields[2:]
                    else:
                        words, rest = fields[1:1 + order], fields[1 + order:]
                    if len(words) != order or len(rest) > 1:
                        raise ArpaError(f"{path}:{number}: expected a log-prob, {order} word(s) and an optional "
                                        f"back-off weight, got {line!r}")
                    try:
                        key = tuple(words)
                        probs[order][key] = float(fields[0])
                        if rest:
                            bows.setdefault(order, {})[key] = float(rest[0])
                    except ValueError:
                        raise ArpaError(f"{path}:{number}: not a number in {line!r}") from None
        if section != "end":
            raise ArpaError(f"{path}: no \\end\\ line (truncated, or not an ARPA file)")
        for n, count in expected.items():
            if len(probs.get(n, {})) != count:
                raise ArpaError(f"{path}: the header says {count} {n}-grams, the file has {len(probs.get(n, {}))}")
        return cls(probs, bows)

    def log10_prob(self, word: str, history: tuple[str, ...]) -> float:
        """log10 P(word | history), backing off through shorter histories."""
        history = history[len(history) - (self.order - 1):] if self.order > 1 else ()
        penalty = 0.0
        while True:
            n = len(history) + 1
            p = self.probs.get(n, {}).get(history + (word,))
            if p is not None:
                return penalty + p
            if not history:
                return penalty + self.unk_log10
            penalty += self.bows.get(len(history), {}).get(history, 0.0)
            history = history[1:]

    def score_words(self, words: Iterable[str]) -> float:
        """Natural-log probability of a whole sentence, ``</s>`` included."""
        history: tuple[str, ...] = ("<s>",)
        total = 0.0
        for w in list(words) + ["</s>"]:
            total += self.log10_prob(w, history)
            history = (history + (w,))[-(max(1, self.order - 1)):]
        return total * _LN10

    def score(self, text: str) -> float:
        """:meth:`score_words` of ``text`` split at whitespace."""
        return self.score_words(text.split())

    def score_many(self, texts: Iterable[str]) -> list[float]:
        """:meth:`score` of each text (the same floats), looking each (history, word) up once:
        an n-best list's texts share most of their words."""
        seen: dict[tuple[str, tuple[str, ...]], float] = {}
        keep = max(1, self.order - 1)
        out = []
        for text in texts:
            history: tuple[str, ...] = ("<s>",)
            total = 0.0
            for w in text.split() + ["</s>"]:
                key = (w, history)
                p = seen.get(key)
                if p is None:
                    p = seen[key] = self.log10_prob(w, history)
                total += p
                history = (history + (w,))[-keep:]
            out.append(total * _LN10)
        return out

