"""Word error counts used in transcript rows, checked against an independent edit distance."""

from __future__ import annotations

import pytest

from pipeline.wer import normalize_english, word_errors


def edit_distance(a: list[str], b: list[str]) -> int:
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Hello, World!", "hello world"),
        ("Don't stop—believing", "don't stop believing"),
        ("'quoted' words", "quoted words"),
        ("  many   spaces\tand\nlines ", "many spaces and lines"),
        ("Café ÜBER straße", "café über strasse"),
        ("well-known e-mail/address", "well known e mail address"),
    ],
)
def test_normalizer(text, expected):
    assert normalize_english(text) == expected


@pytest.mark.parametrize(
    "ref, hyp, counts",
    [
        ("the cat sat", "the cat sat", (3, 0, 0, 0)),
        ("the cat sat", "the bat sat", (3, 1, 0, 0)),
        ("the cat sat on the mat", "the cat on mat", (6, 0, 2, 0)),
        ("a b", "a x b y", (2, 0, 0, 2)),
        ("", "some words", (0, 0, 0, 2)),
        ("some words", "", (2, 0, 2, 0)),
    ],
)
def test_hand_computed(ref, hyp, counts):
    e = word_errors(ref, hyp)
    assert (e.ref_words, e.substitutions, e.deletions, e.insertions) == counts


def test_agrees_with_independent_edit_distance():
    import random

    rng = random.Random(3)
    vocab = "a b c d e f ünï".split()
    for _ in range(200):
        ref = [rng.choice(vocab) for _ in range(rng.randint(0, 8))]
        hyp = [rng.choice(vocab) for _ in range(rng.randint(0, 8))]
        e = word_errors(" ".join(ref), " ".join(hyp))
        assert e.errors == edit_distance(ref, hyp)
        assert e.ref_words == len(ref)
