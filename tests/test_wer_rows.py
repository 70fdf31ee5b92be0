"""Word error counts used in transcript rows, checked against an independent edit distance."""

from __future__ import annotations

import pytest

from helpers import edit_distance
from pipeline.report.normalize import normalize_english
from pipeline.report.wer import word_errors


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


# -- normaliser specs and rules ----------------------------------------------------------

from pipeline.report.normalize import BRITISH_TO_AMERICAN, get_normalizer, parse_normalizer
from pipeline.report.wer import align, format_alignment, score
from model.numbers import number_to_words


@pytest.mark.parametrize(
    "text, expected",
    [
        ("I have 25 apples", "i have twenty five apples"),
        ("0 and 7 and 10 and 13", "zero and seven and ten and thirteen"),
        ("100 101 110 999", "one hundred one hundred one one hundred ten nine hundred ninety nine"),
        ("1,000,000 people", "one million people"),
        ("2025", "two thousand twenty five"),
        ("pi is 3.14", "pi is three point one four"),
        ("the 1st, 2nd, 3rd, 5th, 12th, 20th and 21st", "the first second third fifth twelfth twentieth and twenty first"),
        ("50% of 007", "fifty percent of zero zero seven"),
        ("mp3 files from the 1990s", "mp3 files from the 1990s"),  # digits glued to letters stay
        ("Twenty-Five", "twenty five"),
    ],
)
def test_number_rule(text, expected):
    assert get_normalizer("english+numbers")(text) == expected


def test_number_words_scales():
    assert number_to_words(0) == "zero"
    assert number_to_words(40_000_019) == "forty million nineteen"
    assert number_to_words(1_002_003_004) == "one billion two million three thousand four"
    with pytest.raises(ValueError):
        number_to_words(10**15)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The colour of the Centre", "the color of the center"),
        ("organisation travelled grey", "organization traveled gray"),
        ("analysed the catalogue programme", "analyzed the catalog program"),
        ("favourite neighbours", "favorite neighbors"),
        ("the emphasis stays", "the emphasis stays"),
    ],
)
def test_spelling_rule(text, expected):
    assert get_normalizer("english+spelling")(text) == expected


def test_rules_are_off_by_default_and_combine():
    assert get_normalizer("english")("The colour 25") == "the colour 25"
    assert get_normalizer("english+numbers+spelling")("The colour 25") == "the color twenty five"
    assert parse_normalizer("English+Spelling+numbers") == "english+numbers+spelling"
    assert all(k.islower() and " " not in k for k in BRITISH_TO_AMERICAN)


def test_none_normalizer_keeps_case_and_punctuation():
    assert get_normalizer("none")("  Hello,   World! ") == "Hello, World!"
    e = word_errors("Hello, world", "hello world", "none")
    assert (e.ref_norm, e.substitutions, e.deletions, e.insertions) == ("Hello, world", 1, 0, 0)


@pytest.mark.parametrize("spec", ["english+numbers+numbers", "none+numbers", "french", "english+slang", ""])
def test_invalid_normalizer_specs(spec):
    with pytest.raises(ValueError, match="unknown normaliser"):
        parse_normalizer(spec)


def test_numbers_rule_changes_the_score():
    ref, hyp = "I paid 25 dollars", "i paid twenty five dollars"
    assert word_errors(ref, hyp).errors == 2  # by default: 25 -> twenty (S), five (I)
    assert word_errors(ref, hyp, "english+numbers").errors == 0


# -- normalised texts, alignments and unicode --------------------------------------------


@pytest.mark.parametrize(
    "ref, hyp, counts",
    [
        ("a b c d", "a x c d e", (4, 1, 0, 1)),
        ("Żółć gęślą jaźń", "ŻÓŁĆ gęśla jaźń", (3, 1, 0, 0)),  # case folding is unicode-aware
        ("ＡＢＣ straße", "abc STRASSE", (2, 0, 0, 0)),  # NFKC full-width letters, ß folds to ss
        ("日本 語", "日本", (2, 0, 1, 0)),
        ("", "", (0, 0, 0, 0)),
        ("...", "uh", (0, 0, 0, 1)),  # punctuation-only reference: empty after normalisation
    ],
)
def test_hand_computed_unicode_and_empty(ref, hyp, counts):
    e = word_errors(ref, hyp)
    assert (e.ref_words, e.substitutions, e.deletions, e.insertions) == counts


def test_score_keeps_normalised_texts_and_alignment():
    e, ops = score("The cat sat on the mat.", "the bat sat the mat uh")
    assert e.ref_norm == "the cat sat on the mat" and e.hyp_norm == "the bat sat the mat uh"
    assert format_alignment(ops) == "the (cat->bat) sat (on->*) the mat (*->uh)"
    assert (e.substitutions, e.deletions, e.insertions, e.errors) == (1, 1, 1, 3)


def test_alignment_is_consistent_with_counts_and_edit_distance():
    import random

    rng = random.Random(7)
    vocab = ["a", "b", "c", "ünï", "日本", "don't", "x"]
    for _ in range(300):
        ref = [rng.choice(vocab) for _ in range(rng.randint(0, 9))]
        hyp = [rng.choice(vocab) for _ in range(rng.randint(0, 9))]
        ops = align(" ".join(ref), " ".join(hyp))
        assert [o.ref for o in ops if o.ref is not None] == ref  # the alignment walks both texts in order
        assert [o.hyp for o in ops if o.hyp is not None] == hyp
        assert all((o.op == "C") == (o.ref == o.hyp) for o in ops if o.op in "CS")
        assert sum(o.op != "C" for o in ops) == edit_distance(ref, hyp)
        e = word_errors(" ".join(ref), " ".join(hyp))
        assert (e.substitutions, e.deletions, e.insertions) == tuple(sum(o.op == k for o in ops) for k in "SDI")


def test_score_row_fills_the_wer_columns():
    from pipeline.output.records import STATUS_ERROR, STATUS_OK, TranscriptRow
    from pipeline.report.wer import corpus_wer, score_row

    ok = TranscriptRow(run_id="r", cut_id="a", status=STATUS_OK, reference="The cat sat.", text="the bat sat down")
    score_row(ok, "english")
    assert (ok.ref_words, ok.substitutions, ok.deletions, ok.insertions, ok.errors) == (3, 1, 0, 1, 2)
    assert (ok.ref_norm, ok.hyp_norm) == ("the cat sat", "the bat sat down")
    failed = TranscriptRow(run_id="r", cut_id="b", status=STATUS_ERROR, reference="Never heard", error="corrupt")
    score_row(failed, "english")
    assert failed.ref_norm == "never heard" and failed.errors is None and failed.hyp_norm is None
    unscored = TranscriptRow(run_id="r", cut_id="c", status=STATUS_OK, text="no reference here")
    score_row(unscored, "english")
    assert unscored.ref_norm is None and unscored.errors is None
    # the corpus WER sums errors over reference words (2 + 1 errors over 3 + 2 words)
    assert corpus_wer(["The cat sat.", "hello world"], ["the bat sat down", "hello"]) == 100.0 * 3 / 5
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        corpus_wer(["a", "b"], ["a"])
