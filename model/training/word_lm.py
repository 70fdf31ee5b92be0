"""Build the demo model's word LM: a bigram over natural English text, written as ARPA.

The attention decoder only knows the word sequences of the training transcripts (~13,500
sentences). A word LM estimated on much more text (all of WordNet's examples and definitions,
the fortune files, the training transcripts) and backed by English word frequencies
(``wordfreq``) tells a real word from a near-miss spelling ("tomorrow" / "tomorw") and a
likely word pair from an unlikely one; n-best rescoring then picks among the search's
entries with it (``DecodingConfig.lm_scale``; :mod:`model.word_lm` reads the file).

The model (absolute discounting, interpolated with the unigram, written in back-off form):

* unigram ``P1(w)``: the vocabulary is the ``vocabulary_size`` most frequent English words
  plus every word of the text; ``P1(w)`` is proportional to ``w``'s wordfreq frequency (a text
  word wordfreq does not know gets the smallest one), scaled so that ``P1(</s>)`` is the
  text's share of sentence ends and ``P1(<unk>)`` is ``unk_prob``;
* bigram, for a history ``h`` seen ``c(h)`` times: ``P(w | h) = (c(h, w) - D) / c(h) +
  gamma(h) P1(w)`` for the pairs seen at least ``min_count`` times, and ``gamma(h) P1(w)``
  for the others, where ``gamma(h) = 1 - sum over kept pairs of (c(h, w) - D) / c(h)``
  makes each history's distribution sum to one. In ARPA: the kept pairs with their
  probability, and ``log10 gamma(h)`` as the back-off weight of ``h``.

Pairs seen fewer than ``min_count`` (3) times are dropped: measured on the demo corpus's
dev split, count >= 1, >= 2 and >= 3 rescored within 0.1 point of each other, and >= 3
keeps the file about a quarter of the size.
"""

from __future__ import annotations

import gzip
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Union


@dataclass(frozen=True)
class BigramCounts:
    """Word-pair counts of a text, ``<s>`` / ``</s>`` around each sentence."""

    pairs: Counter
    history: Counter
    words: Counter
    sentences: int

    @classmethod
    def of(cls, sentences: Iterable[str]) -> "BigramCounts":
        pairs, history, words, n = Counter(), Counter(), Counter(), 0
        for s in sentences:
            w = ["<s>"] + s.split() + ["</s>"]
            n += 1
            words.update(w[1:])
            history.update(w[:-1])
            pairs.update(zip(w[:-1], w[1:]))
        return cls(pairs=pairs, history=history, words=words, sentences=n)


def word_frequencies(n: int) -> dict[str, float]:
    """wordfreq's frequency of the ``n`` most frequent English words (alphabetic, as
    :func:`model.training.text_sources.frequent_words` picks them)."""
    import wordfreq

    from model.training.text_sources import frequent_words

    return {w: wordfreq.word_frequency(w, "en") for w in frequent_words(n)}


def bigram_arpa_lines(counts: BigramCounts, frequencies: dict[str, float], discount: float = 0.75,
                      min_count: int = 3, unk_prob: float = 1e-8) -> list[str]:
    """The ARPA text (lines) of the bigram described in the module docstring."""
    if not 0.0 < discount < 1.0 or min_count < 1 or not 0.0 < unk_prob < 0.01:
        raise ValueError("need 0 < discount < 1, min_count >= 1, 0 < unk_prob < 0.01")
    floor = min(f for f in frequencies.values() if f > 0)
    vocab = dict(frequencies)
    for w in counts.words:
        if w != "</s>":
            vocab[w] = max(vocab.get(w, 0.0), floor)
    vocab = {w: f for w, f in vocab.items() if f > 0}
    total = sum(vocab.values())
    eos = counts.sentences / max(1, sum(counts.words.values()))
    scale = (1.0 - eos - unk_prob) / total
    p1 = {w: f * scale for w, f in vocab.items()}
    p1["</s>"] = eos
    p1["<unk>"] = unk_prob

    kept: dict[str, dict[str, float]] = {}
    for (h, w), c in counts.pairs.items():
        if c >= min_count:
            kept.setdefault(h, {})[w] = (c - discount) / counts.history[h]
    gamma = {h: 1.0 - sum(kept.get(h, {}).values()) for h in counts.history}

    def fmt(x: float) -> str:
        return f"{math.log10(x):.6f}"

    uni = sorted(p1)
    lines = ["\\data\\", f"ngram 1={len(uni) + 1}", f"ngram 2={sum(len(v) for v in kept.values())}", "", "\\1-grams:"]
    lines.append(f"-99\t<s>\t{fmt(gamma['<s>'])}" if "<s>" in gamma else "-99\t<s>")
    for w in uni:
        lines.append(f"{fmt(p1[w])}\t{w}\t{fmt(gamma[w])}" if w in gamma and w in kept else f"{fmt(p1[w])}\t{w}")
    lines += ["", "\\2-grams:"]
    for h in sorted(kept):
        for w in sorted(kept[h]):
            lines.append(f"{fmt(kept[h][w] + gamma[h] * p1[w])}\t{h} {w}")
    lines += ["", "\\end\\", ""]
    return lines


def write_bigram_lm(out: Union[str, Path], sentences: Iterable[str], vocabulary_size: int = 20_000,
                    discount: float = 0.75, min_count: int = 3) -> dict:
    """Estimate the bigram on ``sentences`` (normalised: lowercase words, single spaces) and
    write it to ``out`` (``.gz``: gzip without a timestamp, so the same text gives the same
    bytes). Returns its facts for the model card."""
    counts = BigramCounts.of(sentences)
    lines = bigram_arpa_lines(counts, word_frequencies(vocabulary_size), discount=discount, min_count=min_count)
    data = "\n".join(lines).encode("utf-8")
    out = Path(out)
    if out.suffix == ".gz":
        with open(out, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as f:
            f.write(data)
    else:
        out.write_bytes(data)
    n_uni = int(lines[1].split("=")[1])
    n_bi = int(lines[2].split("=")[1])
    return {"sentences": counts.sentences, "words": sum(counts.words.values()) - counts.sentences,
            "unigrams": n_uni, "bigrams": n_bi, "vocabulary_size": vocabulary_size, "discount": discount,
            "min_count": min_count, "bytes": out.stat().st_size}
