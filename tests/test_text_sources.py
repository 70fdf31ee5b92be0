"""Natural text for the demo corpus (model/training/text_sources.py) and the generator's natural mode."""

from __future__ import annotations

import collections
import re
import sys
from pathlib import Path

import pytest

from model.training.corpus import NaturalMix, SentenceGenerator, read_sentence_list
from model.training.text_sources import frequent_words, load_natural_text, normalize_sentence, wordnet_parts_of_speech

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.needs_tools(word_list=True)
EVERYDAY = REPO / "tests" / "data" / "everyday_en.txt"


def test_normalize_sentence_speaks_plain_words_or_rejects():
    assert normalize_sentence("Don't look back; something might be gaining on you.") == \
        "do not look back something might be gaining on you"
    assert normalize_sentence("It's 25 miles, and I'm tired!") == "it is twenty five miles and i am tired"
    assert normalize_sentence("We'll see what they've done") == "we will see what they have done"
    assert normalize_sentence("A well-known fact") == "a well known fact"
    # what cannot be spoken as written is rejected, not mangled
    for bad in ("John's book is red", "The U.S. Army marched on", "NASA launched a rocket", "It costs $5 today",
                "It was 3.5 meters long", "Meet me at 10:30 please", "see the mp3 file now", "Ünïcode words are here",
                "too short", " ".join(["word"] * 21)):
        assert normalize_sentence(bad) is None, bad


def test_natural_text_is_normalised_frequent_english():
    text = load_natural_text()
    assert len(text.examples) > 10_000 and len(text.definitions) > 10_000 and len(text.fortunes) > 2_000
    allowed = set(frequent_words(30_000))
    numbers = {"zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
               "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty", "thirty",
               "forty", "fifty", "sixty", "seventy", "eighty", "ninety", "hundred", "thousand"}
    for source in (text.examples, text.definitions, text.fortunes):
        assert list(source) == sorted(set(source))  # deterministic: sorted, unique
        for s in source[::97]:
            assert re.fullmatch(r"[a-z]+( [a-z]+){2,19}", s), s
            assert set(s.split()) <= allowed | numbers, s
    assert not set(text.examples) & set(text.definitions) and not set(text.fortunes) & set(text.examples)
    # a held-out sentence is removed from the sources
    victim = text.examples[123]
    assert victim not in load_natural_text(exclude=(victim,)).examples


def test_frequent_words_and_parts_of_speech():
    words = frequent_words(10_000)
    assert len(words) == 10_000 and len(set(words)) == 10_000
    assert words[:3] == ("the", "to", "and") and all(w.isalpha() and w.islower() for w in words)
    pos = wordnet_parts_of_speech()
    assert {"dentist", "appointment", "kitchen"} <= pos["noun"] and "move" in pos["verb"] and "quickly" in pos["adv"]


def test_natural_generator_mixes_sources_and_deals_every_frequent_word():
    mix = NaturalMix.load(vocabulary_size=2_000)
    gen = SentenceGenerator(seed=5, natural=mix, random_fraction=0.4)
    sentences = gen.unique_sentences(3_000)
    assert sentences == SentenceGenerator(seed=5, natural=mix, random_fraction=0.4).unique_sentences(3_000)
    assert sentences != SentenceGenerator(seed=6, natural=mix, random_fraction=0.4).unique_sentences(3_000)
    natural = set(mix.examples) | set(mix.definitions) | set(mix.fortunes)
    share = sum(s in natural for s in sentences) / len(sentences)
    assert 0.55 < share < 0.75, share  # 65 % natural text by default, the rest templates and random words
    for s in sentences:
        assert re.fullmatch(r"[a-z]+( [a-z]+)*", s), s
    # random-word sentences deal the whole vocabulary before repeating a word
    only_random = NaturalMix(examples=(), definitions=(), fortunes=(), example_fraction=0, definition_fraction=0,
                             fortune_fraction=0, vocabulary_size=2_000)
    gen = SentenceGenerator(seed=1, natural=only_random, random_fraction=1.0)
    dealt: list[str] = []
    while len(dealt) < 2_000:
        dealt += gen.sentence().split()
    assert len(set(dealt[:2_000])) == 2_000 and set(dealt[:2_000]) == set(frequent_words(2_000))
    # template verbs' past forms are written right (a frequent English word, never "stoped")
    gen = SentenceGenerator(seed=1, natural=mix)
    from wordfreq import zipf_frequency

    assert all(zipf_frequency(gen._past(v), "en") >= 2.5 for v in gen.verbs[::7])


def test_everyday_list_is_held_out_of_every_split(tmp_path):
    """No split of a corpus says a sentence of a --held-out list; the everyday list is the default."""
    sys.path.insert(0, str(REPO / "jobs"))
    try:
        import make_synthetic_corpus as msc
    finally:
        sys.path.remove(str(REPO / "jobs"))
    everyday = read_sentence_list(EVERYDAY)
    assert len(everyday) == 100 and len(set(everyday)) == 100
    base = ["--out", str(tmp_path), "--train-utts", "800", "--dev-utts", "50", "--test-utts", "50", "--seed", "2"]
    args = msc.parse_args(base)
    assert [Path(p).resolve() for p in args.held_out] == [EVERYDAY.resolve()]
    plan = msc.plan(args)
    said = {i["text"] for split in plan.values() for i in split}
    assert not said & set(everyday)
    # a held-out file removes exactly the sentences it lists, from whichever split drew them
    victims = [plan["test"][0]["text"], plan["dev"][3]["text"]]
    listing = tmp_path / "held_out.txt"
    listing.write_text("# two sentences\n" + "\n".join(victims) + "\n")
    again = msc.plan(msc.parse_args(base + ["--held-out", str(listing)]))
    said_again = collections.Counter(i["text"] for split in again.values() for i in split)
    assert not set(victims) & set(said_again) and max(said_again.values()) == 1
    assert not {i["text"] for i in again["train"]} & {i["text"] for i in again["test"]}
