"""Natural English text for the demo corpus: sentences people wrote, and the words people use.

Three sources, all installed from Debian or PyPI (no downloads at run time):

- **WordNet** (Debian ``wordnet-base``, ``/usr/share/wordnet/data.*``): the quoted example
  sentences of its glosses ("the pilot reported two kills during the mission") and the
  definitions themselves ("an act that has disastrous consequences"); its index files also give
  the parts of speech of words, which the template grammar uses to fill its slots.
- **fortune files** (Debian ``fortunes``, ``/usr/share/games/fortunes``): quotations, proverbs
  and jokes, split into sentences; attributions are dropped.
- **wordfreq** (PyPI): English words ranked by frequency, the vocabulary that the corpus must
  cover (the ~10,000 most frequent words) and the filter that keeps rare names and jargon out.

:func:`normalize_sentence` turns a written sentence into the corpus's form (lowercase ``a-z``
words separated by single spaces, common contractions expanded, numbers as words) or rejects it
(``None``) when it holds something that cannot be spoken plainly (symbols, other scripts,
possessives, abbreviations).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterator, Optional

from model.numbers import number_to_words

WORDNET_DIR = Path("/usr/share/wordnet")
FORTUNE_DIR = Path("/usr/share/games/fortunes")
#: fortune files that are verse, ASCII art, code or mostly names: not used.
SKIP_FORTUNES = frozenset({"art", "ascii-art", "computers", "debian", "linux", "linuxcookie", "perl", "startrek",
                           "translate-me", "zippy", "songs-poems", "goedel", "knghtbrd", "definitions", "riddles"})

_CONTRACTIONS = {
    "can't": "can not", "won't": "will not", "shan't": "shall not", "ain't": "is not", "let's": "let us",
    "it's": "it is", "that's": "that is", "there's": "there is", "here's": "here is", "what's": "what is",
    "who's": "who is", "where's": "where is", "how's": "how is", "he's": "he is", "she's": "she is",
    "i'm": "i am",
}
_SUFFIXES = (("n't", " not"), ("'re", " are"), ("'ve", " have"), ("'ll", " will"), ("'d", " would"))
_TOKEN = re.compile(r"[a-z0-9']+")
_ALLOWED = re.compile(r"^[A-Za-z0-9 ,.;:!?'\"()\-]+$")


def _word_form(token: str) -> Optional[str]:
    if token in _CONTRACTIONS:
        return _CONTRACTIONS[token]
    for suffix, expansion in _SUFFIXES:
        if token.endswith(suffix) and len(token) > len(suffix):
            stem = token[: -len(suffix)]
            if "'" in stem:
                return None
            if suffix == "n't":  # don't -> do not, couldn't -> could not
                return stem + expansion
            return stem + expansion
    if "'" in token:
        return None  # a possessive or an elision: its spoken form is not its written one
    if token.isdigit():
        if len(token) > 1 and token.startswith("0") or int(token) > 999_999:
            return None
        return number_to_words(int(token))
    if not token.isalpha():
        return None  # letters and digits mixed (mp3, 3d)
    return token


def normalize_sentence(text: str, min_words: int = 3, max_words: int = 20) -> Optional[str]:
    """``text`` as the corpus writes it (lowercase words, numbers as words), or ``None`` when it
    cannot be spoken plainly or has fewer than ``min_words`` / more than ``max_words`` words."""
    text = " ".join(text.replace("--", " ").replace("`", "'").replace("\u2019", "'").split())
    if not text or not _ALLOWED.match(text):
        return None
    if re.search(r"\b[A-Z]\.|[A-Z]{2,}|\d[.,:]\d", text):  # initials, acronyms, decimals, clock times
        return None
    words: list[str] = []
    for token in _TOKEN.findall(text.lower().replace("-", " ")):
        token = token.strip("'")
        if not token:
            continue
        form = _word_form(token)
        if form is None:
            return None
        words.extend(form.split())
    if not min_words <= len(words) <= max_words:
        return None
    return " ".join(words)


def _split_sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?;])\s+|\s*--\s+", text) if s.strip()]


def wordnet_sentences(root: Path = WORDNET_DIR) -> Iterator[tuple[str, str]]:
    """``(kind, text)`` for each gloss of WordNet's data files: kind ``example`` for the quoted
    example sentences, ``definition`` for the definitions. Texts are as written."""
    for pos in ("noun", "verb", "adj", "adv"):
        path = root / f"data.{pos}"
        with path.open(encoding="utf-8", errors="ignore") as f:
            for line in f:
                if line.startswith("  ") or "|" not in line:
                    continue
                gloss = line.split("|", 1)[1].strip()
                for quoted in re.findall(r'"([^"]+)"', gloss):
                    yield "example", quoted
                definition = gloss.split(";", 1)[0].split('"', 1)[0].strip()
                if definition:
                    yield "definition", definition


def fortune_sentences(root: Path = FORTUNE_DIR, skip: frozenset[str] = SKIP_FORTUNES) -> Iterator[str]:
    """The sentences of the (inoffensive) fortune files under ``root``, attributions dropped."""
    for path in sorted(root.iterdir()):
        if path.suffix or path.name in skip or not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="ignore")
        for entry in text.split("\n%\n"):
            lines = [ln.strip() for ln in entry.splitlines() if ln.strip() and not ln.strip().startswith("--")]
            if not lines or any(ln.startswith(("Q:", "A:", "(")) or ":" in ln[:15] for ln in lines):
                continue  # dialogue, numbered lists
            for sentence in _split_sentences(" ".join(lines)):
                yield sentence


@lru_cache(maxsize=4)
def frequent_words(n: int = 10_000) -> tuple[str, ...]:
    """The ``n`` most frequent English words (wordfreq), alphabetic only, most frequent first."""
    import wordfreq

    out: list[str] = []
    for w in wordfreq.top_n_list("en", n * 2):
        if w.isalpha() and w.isascii() and (len(w) > 1 or w in ("a", "i")):
            out.append(w)
            if len(out) == n:
                break
    return tuple(out)


def wordnet_parts_of_speech(root: Path = WORDNET_DIR) -> dict[str, frozenset[str]]:
    """Single-word lemmas of WordNet's index files by part of speech (noun, verb, adj, adv)."""
    out = {}
    for pos in ("noun", "verb", "adj", "adv"):
        words = set()
        with (root / f"index.{pos}").open(encoding="utf-8", errors="ignore") as f:
            for line in f:
                if line.startswith("  "):
                    continue
                lemma = line.split(" ", 1)[0]
                if lemma.isalpha():
                    words.add(lemma)
        out[pos] = frozenset(words)
    return out


@dataclass(frozen=True)
class NaturalText:
    """Normalised natural sentences by source, every word among the ``vocabulary_size`` most
    frequent English words (wordfreq) or spelled-out numbers."""

    examples: tuple[str, ...]
    definitions: tuple[str, ...]
    fortunes: tuple[str, ...]

    @property
    def all(self) -> tuple[str, ...]:
        return self.examples + self.definitions + self.fortunes


@lru_cache(maxsize=4)
def load_natural_text(vocabulary_size: int = 30_000, exclude: tuple[str, ...] = (),
                      wordnet_root: Path = WORDNET_DIR, fortune_root: Path = FORTUNE_DIR) -> NaturalText:
    """Every usable sentence of the sources, normalised and deduplicated (sorted, so the result does
    not depend on file order); sentences in ``exclude`` (held-out evaluation lists) are dropped.
    Cached per arguments (a corpus job plans with it and then filters by it; the result is immutable)."""
    for root, package in ((wordnet_root, "wordnet-base"), (fortune_root, "fortunes")):
        if not root.is_dir():
            raise FileNotFoundError(f"{root} not found: install Debian's {package} (make system-deps)")
    allowed = set(frequent_words(vocabulary_size)) | {w for n in range(0, 1000) for w in number_to_words(n).split()}
    allowed |= {"thousand", "hundred"}
    banned = set(exclude)

    def keep(texts) -> tuple[str, ...]:
        out = set()
        for t in texts:
            s = normalize_sentence(t)
            if s and s not in banned and all(w in allowed for w in s.split()):
                out.add(s)
        return tuple(sorted(out))

    glosses = list(wordnet_sentences(wordnet_root))
    examples = keep(t for k, t in glosses if k == "example")
    definitions = keep(t for k, t in glosses if k == "definition")
    fortunes = keep(fortune_sentences(fortune_root))
    return NaturalText(examples=examples, definitions=tuple(sorted(set(definitions) - set(examples))),
                       fortunes=tuple(sorted(set(fortunes) - set(examples) - set(definitions))))
