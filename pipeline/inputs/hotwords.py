"""Hotword lists (contextual biasing, issue 35): where they come from and how they are read.

* A run-level list: ``--hotwords FILE|s3://...``, one phrase a line, optionally followed by
  `` :score`` (the bonus per token for that phrase, as sherpa-onnx writes hotword files);
  phrases without one get ``--hotwords-score``. Blank lines and lines starting with ``#`` are
  skipped. A malformed line (a score that is no positive finite number, a phrase that
  normalises to nothing) stops the run before it starts, naming the file and line.
* Per-cut lists: a lhotse cut's (or its supervisions') ``custom["hotwords"]``, a list of
  phrases, each optionally ``"phrase :score"``. A malformed per-cut list makes that cut an
  error row saying why (never a crash mid-job); the other cuts go on.

A cut's list is the run's list merged with its own (a phrase in both keeps the higher score).
Phrases are normalised like references (the run's ``--normalizer``), so that ``"Dr. Zyprexa"``
and ``"dr zyprexa"`` are one phrase and match the way WER counts words. The model side
(:meth:`model.recognizer.Recognizer.hotword_graph`) tokenises each distinct list once.

A list is a tuple of ``(phrase, score)`` pairs, sorted: equal lists compare and hash equal.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence

__all__ = [
    "DEFAULT_HOTWORDS_SCORE",
    "MAX_HOTWORDS",
    "HotwordError",
    "Hotwords",
    "merge_hotwords",
    "parse_hotword_entries",
    "parse_hotword_line",
    "read_hotwords_file",
]

#: a list: sorted (normalised phrase, bonus per token) pairs, one per distinct phrase
Hotwords = tuple[tuple[str, float], ...]

#: --hotwords-score's default: the bonus per matched token (sherpa-onnx's default is 1.5)
DEFAULT_HOTWORDS_SCORE = 1.5
#: the most phrases one list may hold (a larger one is refused with a clear error)
MAX_HOTWORDS = 20_000
#: the longest phrase, in characters
MAX_PHRASE_CHARS = 200
#: the largest run-level hotwords file read (MAX_HOTWORDS phrases of MAX_PHRASE_CHARS, with
#: scores, fit in it); a larger file is refused before it is read
MAX_FILE_BYTES = 8 << 20

_SCORE = re.compile(r"^(?P<phrase>.*?)\s+:(?P<score>\S+)\s*$")


class HotwordError(ValueError):
    """A hotword list or line that cannot be used (the message says where and why)."""


def parse_hotword_line(line: str, default_score: float, normalize: Callable[[str], str],
                       where: str = "hotword") -> tuple[str, float] | None:
    """``"phrase"`` or ``"phrase :score"`` -> (normalised phrase, score); None for a blank line or a
    ``#`` comment. Raises :class:`HotwordError` (naming ``where``) for a bad score or a phrase that
    normalises to nothing or is too long."""
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    score = default_score
    m = _SCORE.match(text)
    if m is not None:
        try:
            score = float(m.group("score"))
        except ValueError:
            raise HotwordError(f"{where}: the score after ':' is not a number: {text[:80]!r}") from None
        text = m.group("phrase")
    elif text.startswith(":") or re.search(r"\s:\S*$", text):
        raise HotwordError(f"{where}: malformed ' :score' suffix (a phrase, a space, a colon, a number): {text[:80]!r}")
    if not (math.isfinite(score) and score > 0):
        raise HotwordError(f"{where}: a hotword score must be a positive finite number, got {score} in {text[:80]!r}")
    if len(text) > MAX_PHRASE_CHARS:
        raise HotwordError(f"{where}: a hotword phrase is longer than {MAX_PHRASE_CHARS} characters: {text[:80]!r}...")
    phrase = normalize(text)
    if not phrase:
        raise HotwordError(f"{where}: the hotword {text[:80]!r} is empty once normalised")
    return phrase, score


def _as_list(pairs: Iterable[tuple[str, float]], where: str) -> Hotwords:
    best: dict[str, float] = {}
    for phrase, score in pairs:
        best[phrase] = max(score, best.get(phrase, score))
    if len(best) > MAX_HOTWORDS:
        raise HotwordError(f"{where}: {len(best)} hotwords, more than the {MAX_HOTWORDS} a list may hold")
    return tuple(sorted(best.items()))


def parse_hotword_entries(entries: object, default_score: float, normalize: Callable[[str], str],
                          where: str) -> Hotwords:
    """A per-cut ``custom["hotwords"]`` value (a list of ``"phrase"`` / ``"phrase :score"``
    strings) as a list. Raises :class:`HotwordError` for anything else (a bare string, numbers,
    an empty or malformed phrase, too many)."""
    if isinstance(entries, str) or not isinstance(entries, Sequence):
        raise HotwordError(f"{where}: custom['hotwords'] must be a list of phrases, got {type(entries).__name__}")
    pairs = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, str):
            raise HotwordError(f"{where}: hotword {i} is a {type(entry).__name__}, not a string")
        pair = parse_hotword_line(entry, default_score, normalize, f"{where}, hotword {i}")
        if pair is None:
            raise HotwordError(f"{where}: hotword {i} is empty")
        pairs.append(pair)
    return _as_list(pairs, where)


def read_hotwords_file(uri: str, default_score: float, normalize: Callable[[str], str]) -> Hotwords:
    """The run-level list at ``uri`` (a local path or ``s3://``; UTF-8 text). Raises
    :class:`HotwordError` naming the file and line of the first bad line, or when the file holds
    no phrase at all."""
    from pipeline.io import storage

    try:
        data, size = storage.read_head(uri, MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise HotwordError(f"hotwords file {uri} does not exist") from None
    if size > MAX_FILE_BYTES:
        raise HotwordError(f"hotwords file {uri} is {size} bytes, more than the {MAX_FILE_BYTES} a list of at most "
                           f"{MAX_HOTWORDS} phrases needs")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HotwordError(f"hotwords file {uri} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    pairs = []
    for n, line in enumerate(text.splitlines(), 1):
        pair = parse_hotword_line(line, default_score, normalize, f"{uri}:{n}")
        if pair is not None:
            pairs.append(pair)
    if not pairs:
        raise HotwordError(f"hotwords file {uri} holds no phrase")
    return _as_list(pairs, uri)


def merge_hotwords(*lists: Hotwords | None) -> Hotwords | None:
    """The union of lists (a phrase in several keeps its highest score); None when all are
    empty or None."""
    pairs = [p for lst in lists if lst for p in lst]
    return _as_list(pairs, "merged hotwords") if pairs else None
