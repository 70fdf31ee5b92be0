"""Synthetic English speech for the demo model: a sentence generator and espeak-ng synthesis.

Text: :class:`SentenceGenerator` mixes a template grammar (statements, questions, numbers,
dates, times, quantities) with random word sequences. Function words and a hand-written core
vocabulary come from this module; the open classes (nouns, verbs, adjectives, adverbs) are
widened with lowercase alphabetic words of a system word list (Debian ``wamerican``:
``/usr/share/dict/american-english``), sorted into rough parts of speech by their suffixes.
Everything is lowercase letters and single spaces; numbers are written as words. The same
seed and word list give the same sentences.

Audio: :func:`synthesize` speaks one sentence with espeak-ng (a voice + variant, speaking
rate, pitch), converts it to 16 kHz mono 16-bit with sox (optionally with a gain change) and
optionally adds light white noise at a given SNR.
"""

from __future__ import annotations

import random
import re
import subprocess
import tempfile
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

from model.numbers import number_to_words, ordinal_words

DEFAULT_WORD_LIST = Path("/usr/share/dict/american-english")

#: espeak-ng English voices of the ``gmw`` family (shipped with espeak-ng itself, no mbrola).
VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-gb-x-gbcwmd", "en-029", "en-us-nyc")
#: espeak-ng voice variants (``-v VOICE+VARIANT``) that still sound like speech.
VARIANTS = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "klatt", "klatt2", "klatt3",
    "klatt4", "adam", "Alex", "Andy", "Annie", "aunty", "benjamin", "caleb", "david", "ed", "edward",
    "john", "linda", "max", "Michael", "Mike", "paul", "quincy", "rob", "robert", "steph", "travis",
    "victor", "zac", "norbert", "shelby", "grandma", "belinda", "Andrea", "Alicia", "Denis", "Gene", "Hugo", "Lee",
)

_WORD = re.compile(r"^[a-z]{3,11}$")
_VOWEL = re.compile(r"[aeiouy]")
# a letter three times in a row, or long consonant clusters: rarely an everyday word
_ODD = re.compile(r"(.)\1\1|[^aeiouy]{5}")

_CORE_NOUNS = """time year people way day man woman child world life hand part place case week company system
program question work government number night point home water room mother area money story fact month
lot right study book eye job word business issue side kind head house service friend father power hour
game line end member law car city community name president team minute idea kid body information school
face others level office door health person art war history party result change morning reason research
girl guy moment air teacher force education garden river window table chair kitchen doctor market street
village island bridge train station airport letter paper picture music song bottle coffee bread apple
dinner breakfast lunch winter summer spring autumn evening weekend holiday mountain forest ocean beach
sky cloud storm rain snow wind sun moon star dog cat horse bird fish flower tree field farm road bicycle
computer phone screen camera radio engine machine box bag key clock map ticket shirt shoe hat coat""".split()
_CORE_VERBS = """see find take make give tell call keep leave bring hold build carry paint open close read write
watch follow visit move clean cook fix buy sell send share check count draw lift pull push wash help
catch drop pick order plan cover describe explain measure protect remember""".split()
_PAST = {"see": "saw", "find": "found", "take": "took", "make": "made", "give": "gave", "tell": "told",
         "keep": "kept", "leave": "left", "bring": "brought", "hold": "held", "build": "built", "read": "read",
         "write": "wrote", "buy": "bought", "sell": "sold", "send": "sent", "catch": "caught", "draw": "drew"}
_CORE_ADJECTIVES = """good new first last long great little own other old right big high different small large next
early young important few public bad same able red blue green yellow black white brown quiet loud bright
dark cold warm hot fresh clean empty full heavy light soft hard strong simple strange happy sad tired
busy careful famous friendly gentle lucky modern narrow nervous polite proud rich short tall wide wild""".split()
_CORE_ADVERBS = """quickly slowly carefully quietly loudly easily happily suddenly finally always never often
sometimes usually rarely again already almost nearly really simply gently politely""".split()
_SUBJECTS = ("i", "you", "we", "they", "he", "she", "my friend", "our teacher", "the old man", "the little girl",
             "my brother", "her sister", "the doctor", "a stranger", "everyone", "nobody", "the children",
             "my neighbour", "the driver", "the manager", "his uncle", "their cousin")
_PLACES = ("in the kitchen", "near the station", "at the office", "by the river", "in the garden", "on the bus",
           "at the market", "behind the house", "under the bridge", "at school", "in the city", "at home",
           "on the beach", "in the library", "at the airport", "across the street", "in the village")
_WHEN = ("yesterday", "today", "tomorrow", "last night", "this morning", "this evening", "every day",
         "last week", "next week", "on monday", "on tuesday", "on wednesday", "on thursday", "on friday",
         "on saturday", "on sunday", "at noon", "at midnight", "in the afternoon", "after dinner", "before lunch")
_MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
           "november", "december")
_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_UNITS = ("dollars", "euros", "pounds", "minutes", "hours", "days", "miles", "kilometers", "meters", "people",
          "pages", "boxes", "apples", "tickets", "books", "cars", "houses", "degrees", "percent", "points")

_NOUN_SUFFIXES = ("tion", "ness", "ment", "ity", "ship", "ance", "ence", "ism", "hood", "dom", "ery", "ure", "age")
_ADJ_SUFFIXES = ("ful", "ous", "ive", "able", "ible", "less", "ical", "ish", "ary", "ent", "ant")
_VERB_SUFFIXES = ("ize", "ise", "ate", "ify", "en")


def year_words(year: int) -> str:
    """``1984`` -> ``nineteen eighty four``, ``2005`` -> ``two thousand five``, ``2024`` -> ``twenty twenty four``."""
    hi, lo = divmod(year, 100)
    if 2000 <= year < 2010 or lo == 0 and year % 1000 == 0:
        return number_to_words(year)
    if lo == 0:
        return f"{number_to_words(hi)} hundred"
    return f"{number_to_words(hi)} {'oh ' + number_to_words(lo) if lo < 10 else number_to_words(lo)}"


def time_words(hour: int, minute: int) -> str:
    """Twelve-hour clock in words: ``(7, 5)`` -> ``seven oh five in the morning``."""
    h12 = hour % 12 or 12
    part = "in the morning" if hour < 12 else "in the afternoon" if hour < 18 else "in the evening"
    if minute == 0:
        return f"{number_to_words(h12)} {part}"
    mm = f"oh {number_to_words(minute)}" if minute < 10 else number_to_words(minute)
    return f"{number_to_words(h12)} {mm} {part}"


def load_word_list(path: Optional[Path] = None) -> list[str]:
    """Lowercase alphabetic, common-looking words (3-11 letters) of a word list, sorted, unique."""
    path = Path(path) if path else DEFAULT_WORD_LIST
    if not path.is_file():
        raise FileNotFoundError(f"word list {path} not found: install Debian's wamerican (make system-deps) or pass --word-list")
    words = set()
    for line in path.read_text(encoding="utf-8", errors="ignore").splitlines():
        w = line.strip()
        if _WORD.match(w) and _VOWEL.search(w) and not _ODD.search(w):
            words.add(w)
    return sorted(words)


def _open_class(word: str) -> bool:
    if len(word) <= 5:
        return False
    return (word.endswith(_NOUN_SUFFIXES + _ADJ_SUFFIXES + _VERB_SUFFIXES)
            or (word.endswith("ly") and not word.endswith("ily")))


def select_open_words(words: Sequence[str], n: int, seed: int = 0) -> list[str]:
    """A fixed, seeded sample of ``n`` open-class words (noun / adjective / verb / adverb by suffix)
    of a word list, plus the words of the list that belong to the hand-written core vocabulary.

    Bounding the open vocabulary is what makes a held-out test split learnable: with the whole
    word list (10,000+ open-class words) a few hours of speech say most words once or never, and
    a test sentence is mostly words the model has never heard. With ``n`` = 1500 (about 2,300
    distinct words in all) and 8 h of train speech, 99 % of test words occur more than five
    times in train, while every dev / test sentence is still new.
    """
    pool = sorted({w for w in words if _open_class(w) and len(w) <= 11})
    rng = random.Random(stable_seed("open-words", seed, n))
    chosen = pool if n >= len(pool) else rng.sample(pool, n)
    core = set(_CORE_NOUNS) | set(_CORE_VERBS) | set(_CORE_ADJECTIVES) | set(_CORE_ADVERBS)
    return sorted(set(chosen) | {w for w in words if w in core})


class SentenceGenerator:
    """Deterministic generator of varied English sentences (lowercase, numbers as words).

    ``open_words`` bounds the open-class vocabulary taken from the word list (see
    :func:`select_open_words`; ``None``: the whole list). Random-word sentences draw from the
    same bounded vocabulary, so every split speaks the same words in different sentences.
    """

    def __init__(self, seed: int = 0, words: Optional[Sequence[str]] = None, random_fraction: float = 0.2,
                 open_words: Optional[int] = 1500, natural: Optional["NaturalMix"] = None):
        self.rng = random.Random(seed)
        self.random_fraction = random_fraction
        self.natural = natural
        if natural is not None:
            self._use_natural_vocabulary(natural)
        else:
            words = list(words) if words is not None else load_word_list()
            if open_words is not None:
                words = select_open_words(words, open_words, seed)
            self.all_words = sorted(set(words) | set(_CORE_NOUNS) | set(_CORE_VERBS) | set(_CORE_ADJECTIVES) | set(_CORE_ADVERBS))
            by = lambda sufs: [w for w in words if w.endswith(sufs) and len(w) > 5]  # noqa: E731
            self.nouns = sorted(set(_CORE_NOUNS) | set(by(_NOUN_SUFFIXES)))
            self.adjectives = sorted(set(_CORE_ADJECTIVES) | set(by(_ADJ_SUFFIXES)))
            self.adverbs = sorted(set(_CORE_ADVERBS) | {w for w in words if w.endswith("ly") and len(w) > 5 and not w.endswith("ily")})
            self.verbs = sorted(set(_CORE_VERBS) | {w for w in by(_VERB_SUFFIXES) if not w.endswith("men")})
        self._short_words = [w for w in self.all_words if len(w) <= 9]
        self._deck: list[str] = []
        self._templates = (
            self._statement, self._statement, self._statement, self._question, self._quantity, self._date,
            self._time, self._adjective_phrase, self._request, self._year_fact,
        )

    def _use_natural_vocabulary(self, mix: "NaturalMix") -> None:
        """Template slots filled with frequent English words by their WordNet part of speech, and
        random-word sentences drawn from the ``mix.vocabulary_size`` most frequent words."""
        from wordfreq import zipf_frequency

        from model.training.text_sources import frequent_words, wordnet_parts_of_speech

        frequent = frequent_words(mix.vocabulary_size)
        pos = wordnet_parts_of_speech()
        common = {w for w in frequent if len(w) > 2}
        self.all_words = sorted(set(frequent))
        self.nouns = sorted(set(_CORE_NOUNS) | (common & pos["noun"]))
        self.adjectives = sorted(set(_CORE_ADJECTIVES) | (common & pos["adj"]))
        self.adverbs = sorted(set(_CORE_ADVERBS) | {w for w in common & pos["adv"] if w.endswith("ly")})
        # verbs whose past tense this generator writes right: irregular ones only from _PAST, and a
        # regular past form must be a word English writers use (wordfreq), so "stoped" never appears
        self.verbs = sorted(set(_CORE_VERBS) | {v for v in common & pos["verb"]
                                                if v in _PAST or zipf_frequency(self._past(v), "en") >= 2.5})

    # -------------------------------------------------------------- pieces
    def _pick(self, seq: Sequence[str]) -> str:
        return seq[self.rng.randrange(len(seq))]

    def _noun_phrase(self) -> str:
        r = self.rng.random()
        det = self._pick(("the", "a", "this", "that", "my", "your", "our", "their", "every", "one"))
        if det == "a" and self.rng.random() < 0.5:
            det = "the"
        noun = self._pick(self.nouns)
        if det == "a" and noun[0] in "aeiou":
            det = "an"
        if r < 0.45:
            adj = self._pick(self.adjectives)
            if det in ("a", "an"):
                det = "an" if adj[0] in "aeiou" else "a"
            return f"{det} {adj} {noun}"
        return f"{det} {noun}"

    def _past(self, verb: str) -> str:
        if verb in _PAST:
            return _PAST[verb]
        if verb.endswith("e"):
            return verb + "d"
        if verb.endswith("y") and verb[-2] not in "aeiou":
            return verb[:-1] + "ied"
        return verb + "ed"

    def _small_number(self) -> str:
        r = self.rng.random()
        n = self.rng.randint(2, 20) if r < 0.5 else self.rng.randint(21, 999) if r < 0.85 else self.rng.randint(1000, 999999)
        return number_to_words(n)

    # -------------------------------------------------------------- templates
    def _statement(self) -> str:
        subj = self._pick(_SUBJECTS)
        verb = self._pick(self.verbs)
        parts = [subj]
        r = self.rng.random()
        if r < 0.5:
            parts.append(self._past(verb))
        elif r < 0.75:
            parts += [self._pick(("will", "can", "should", "might", "must", "could")), verb]
        else:
            parts += [self._pick(("wants to", "tried to", "forgot to", "decided to", "is going to")), verb]
        parts.append(self._noun_phrase())
        if self.rng.random() < 0.5:
            parts.append(self._pick(self.adverbs))
        if self.rng.random() < 0.5:
            parts.append(self._pick(_PLACES))
        if self.rng.random() < 0.5:
            parts.append(self._pick(_WHEN))
        return " ".join(parts)

    def _question(self) -> str:
        r = self.rng.random()
        if r < 0.3:
            return f"did {self._pick(_SUBJECTS)} {self._pick(self.verbs)} {self._noun_phrase()} {self._pick(_WHEN)}"
        if r < 0.6:
            return f"{self._pick(('where', 'why', 'when', 'how'))} did you {self._pick(self.verbs)} {self._noun_phrase()}"
        if r < 0.8:
            return f"is {self._noun_phrase()} {self._pick(self.adjectives)} {self._pick(('enough', 'today', 'again', 'now'))}"
        return f"how many {self._pick(_UNITS)} do we need for {self._noun_phrase()}"

    def _quantity(self) -> str:
        n, unit = self._small_number(), self._pick(_UNITS)
        return self._pick((
            f"the bill came to {n} {unit}",
            f"we counted {n} {unit} {self._pick(_PLACES)}",
            f"there were about {n} {unit} left",
            f"{self._pick(_SUBJECTS)} paid {n} {unit} for {self._noun_phrase()}",
            f"call me at extension {' '.join(number_to_words(self.rng.randint(0, 9)) for _ in range(4))}",
            f"the score was {number_to_words(self.rng.randint(0, 40))} to {number_to_words(self.rng.randint(0, 40))}",
        ))

    def _date(self) -> str:
        day = ordinal_words(self.rng.randint(1, 31))
        month = self._pick(_MONTHS)
        year = year_words(self.rng.randint(1900, 2035))
        return self._pick((
            f"the meeting is on {month} {day}",
            f"{self._pick(_SUBJECTS)} was born on the {day} of {month} {year}",
            f"see you on {self._pick(_DAYS)} the {day}",
            f"the {self._pick(self.nouns)} opened in {month} {year}",
        ))

    def _time(self) -> str:
        t = time_words(self.rng.randint(0, 23), self._pick((0, 5, 10, 15, 20, 30, 45, self.rng.randint(1, 59))))
        return self._pick((
            f"the train leaves at {t}",
            f"{self._pick(_SUBJECTS)} will arrive at {t}",
            f"set the alarm for {t}",
            f"we met {self._pick(_PLACES)} at {t}",
        ))

    def _adjective_phrase(self) -> str:
        return f"{self._noun_phrase()} {self._pick(('was', 'is', 'looks', 'seemed', 'felt'))} {self._pick(self.adjectives)}" + (
            f" and {self._pick(self.adjectives)}" if self.rng.random() < 0.4 else "")

    def _request(self) -> str:
        return f"{self._pick(('please', 'could you', 'do not', 'never', 'try to'))} {self._pick(self.verbs)} {self._noun_phrase()}" + (
            f" {self._pick(_PLACES)}" if self.rng.random() < 0.5 else "")

    def _year_fact(self) -> str:
        return f"in {year_words(self.rng.randint(1800, 2030))} {self._noun_phrase()} {self._past(self._pick(self.verbs))} {self._noun_phrase()}"

    def _random_words(self) -> str:
        n = self.rng.randint(3, 9)
        if self.natural is None:
            return " ".join(self._pick(self._short_words) for _ in range(n))
        # natural mode: deal the frequent words from a shuffled deck, so that every one of them is
        # spoken once before any is spoken twice (coverage of the whole vocabulary, not a sample)
        out = []
        for _ in range(n):
            if not self._deck:
                self._deck = list(self.all_words)
                self.rng.shuffle(self._deck)
            out.append(self._deck.pop())
        return " ".join(out)

    # -------------------------------------------------------------- public
    def sentence(self) -> str:
        if self.natural is not None:
            source = self.natural.choose(self.rng.random())
            if source is not None:
                return self._pick(source)
        if self.rng.random() < self.random_fraction:
            text = self._random_words()
        else:
            text = self._pick(self._templates)()
        return " ".join(text.split())

    def unique_sentences(self, n: int, exclude: Iterable[str] = ()) -> list[str]:
        """``n`` distinct sentences, none in ``exclude``."""
        seen = set(exclude)
        out: list[str] = []
        tries = 0
        while len(out) < n:
            s = self.sentence()
            tries += 1
            if tries > 50 * n + 1000:
                raise RuntimeError("cannot find enough distinct sentences")
            if s not in seen:
                seen.add(s)
                out.append(s)
        return out


@dataclass(frozen=True)
class NaturalMix:
    """How much of a corpus is natural text (see :mod:`model.training.text_sources`), by source;
    the rest is the template grammar and random frequent words (``random_fraction`` of it).

    Built with :meth:`load`; ``vocabulary_size`` bounds the words (most frequent English words)
    that natural sentences, template slots and random-word sentences may use.
    """

    examples: tuple[str, ...]
    definitions: tuple[str, ...]
    fortunes: tuple[str, ...]
    example_fraction: float = 0.35
    definition_fraction: float = 0.1
    fortune_fraction: float = 0.2
    vocabulary_size: int = 10_000

    def __post_init__(self) -> None:
        total = self.example_fraction + self.definition_fraction + self.fortune_fraction
        if not 0.0 <= total <= 1.0 or min(self.example_fraction, self.definition_fraction, self.fortune_fraction) < 0:
            raise ValueError("natural text fractions must be >= 0 and sum to at most 1")

    @classmethod
    def load(cls, exclude: Iterable[str] = (), text_vocabulary: int = 30_000, **fractions) -> "NaturalMix":
        """The sources' sentences whose words are all among the ``text_vocabulary`` most frequent
        (held-out sentences in ``exclude`` removed)."""
        from model.training.text_sources import load_natural_text

        text = load_natural_text(text_vocabulary, exclude=tuple(exclude))
        return cls(examples=text.examples, definitions=text.definitions, fortunes=text.fortunes, **fractions)

    def choose(self, u: float) -> Optional[tuple[str, ...]]:
        """The source for a uniform draw ``u``; ``None``: the template grammar."""
        for fraction, source in ((self.example_fraction, self.examples), (self.definition_fraction, self.definitions),
                                 (self.fortune_fraction, self.fortunes)):
            if u < fraction and source:
                return source
            u -= fraction
        return None


#: The everyday-English check: 100 sentences written by hand for evaluation (issue 19).
EVERYDAY_LIST = Path(__file__).resolve().parents[2] / "tests" / "data" / "everyday_en.txt"
#: Hand-written evaluation sentences that no corpus may train on.
HELD_OUT_LISTS = (EVERYDAY_LIST,)


def read_sentence_list(path: Path) -> list[str]:
    """The sentences of a held-out list: one per line, ``#`` comments and blank lines skipped."""
    return [ln.strip() for ln in Path(path).read_text(encoding="utf-8").splitlines()
            if ln.strip() and not ln.lstrip().startswith("#")]


def corpus_generator(seed: int, text: str = "natural", vocabulary: int = 10_000, open_words: Optional[int] = 1500,
                     random_fraction: float = 0.2, word_list: Optional[Path] = None,
                     held_out: Iterable[str] = ()) -> SentenceGenerator:
    """The sentence generator of a corpus made with these options (jobs/make_synthetic_corpus.py and
    jobs/demo.py build it here, so that the demo speaks exactly the corpus's held-out sentences).

    ``text="natural"``: natural sentences (WordNet, fortunes) plus templates and random words over the
    ``vocabulary`` most frequent English words; ``"templates"``: the template grammar over a word list
    bounded by ``open_words`` (the recipe of the first demo models). ``held_out`` sentences are
    removed from the natural sources (the generator's callers also exclude them from every split).
    """
    if text == "natural":
        mix = NaturalMix.load(exclude=held_out, vocabulary_size=vocabulary)
        return SentenceGenerator(seed=seed, random_fraction=random_fraction, natural=mix)
    if text == "templates":
        words = load_word_list(Path(word_list) if word_list else None)
        return SentenceGenerator(seed=seed, words=words, random_fraction=random_fraction, open_words=open_words or None)
    raise ValueError(f"text must be 'natural' or 'templates', not {text!r}")


# ------------------------------------------------------------------ audio


@dataclass(frozen=True)
class SpeechStyle:
    """How one utterance is spoken and degraded."""

    voice: str
    variant: str
    rate: int  # espeak-ng words per minute
    pitch: int  # espeak-ng 0..99
    gain_db: float = 0.0
    snr_db: Optional[float] = None  # None: no added noise

    @property
    def speaker(self) -> str:
        return f"{self.voice}+{self.variant}"

    def as_dict(self) -> dict:
        return asdict(self)


def random_style(rng: random.Random, noise_prob: float = 0.3, gain_prob: float = 0.3,
                 voices: Sequence[str] = VOICES, variants: Sequence[str] = VARIANTS) -> SpeechStyle:
    return SpeechStyle(
        voice=rng.choice(list(voices)),
        variant=rng.choice(list(variants)),
        rate=rng.randint(130, 210),
        pitch=rng.randint(25, 75),
        gain_db=round(rng.uniform(-10.0, 3.0), 1) if rng.random() < gain_prob else 0.0,
        snr_db=round(rng.uniform(15.0, 35.0), 1) if rng.random() < noise_prob else None,
    )


def synthesize(text: str, out: Path, style: SpeechStyle, seed: int = 0) -> float:
    """Speak ``text`` into ``out`` (16 kHz mono 16-bit WAV); returns the duration in seconds."""
    import soundfile as sf

    out = Path(out)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        raw = Path(tmp) / "raw.wav"
        subprocess.run(["espeak-ng", "-v", f"{style.voice}+{style.variant}", "-s", str(style.rate), "-p", str(style.pitch),
                        "-w", str(raw), text], check=True, capture_output=True)
        conv = Path(tmp) / "conv.wav"
        effects = ["gain", str(style.gain_db)] if style.gain_db else []
        subprocess.run(["sox", "-D", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(conv), *effects],
                       check=True, capture_output=True)
        samples, sr = sf.read(str(conv), dtype="float32")
    assert sr == 16000
    if style.snr_db is not None and samples.size:
        rng = np.random.default_rng(seed)
        power = float(np.mean(samples.astype(np.float64) ** 2)) or 1e-8
        noise = rng.standard_normal(samples.size) * np.sqrt(power / 10 ** (style.snr_db / 10))
        samples = samples + noise.astype(np.float32)
    peak = float(np.max(np.abs(samples))) if samples.size else 0.0
    if peak > 0.99:
        samples = samples * (0.99 / peak)
    sf.write(str(out), samples, 16000, subtype="PCM_16")
    return samples.size / 16000


def speak_plain(text: str, out: Path, voice: str = "en-us") -> np.ndarray:
    """``text`` spoken by espeak-ng's default voice into ``out`` (16 kHz mono 16-bit WAV); its samples.
    The same text gives the same samples every time: sox's dither (on by default when it
    reduces to 16 bits, seeded from the clock) is off, as for the training corpus."""
    import soundfile as sf

    out = Path(out)
    raw = out.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(raw), text], check=True, capture_output=True)
    subprocess.run(["sox", "-D", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(out)], check=True, capture_output=True)
    raw.unlink()
    samples, sr = sf.read(str(out), dtype="float32")
    assert sr == 16000
    return samples


def long_recording(out: Path, sentences: Sequence[str], pauses: tuple[float, float], seed: int = 0,
                   voice: str = "en-us") -> tuple[list[np.ndarray], list[float]]:
    """Sentences spoken one after another into ``out`` (16-bit WAV) with uniformly random pauses of
    digital silence in ``pauses`` seconds before each (and 0.5 s at the end); returns the sentences'
    own waves and their start times in the recording. The clips are written next to ``out``."""
    import soundfile as sf

    out = Path(out)
    rng = random.Random(seed)
    waves, starts, pieces, t = [], [], [], 0.0
    for k, text in enumerate(sentences):
        wave = speak_plain(text, out.parent / f"{out.stem}-s{k}.wav", voice)
        gap = np.zeros(int(rng.uniform(*pauses) * 16000), dtype=np.float32)
        pieces += [gap, wave]
        t += gap.size / 16000
        starts.append(t)
        t += wave.size / 16000
        waves.append(wave)
    pieces.append(np.zeros(8000, dtype=np.float32))
    sf.write(str(out), np.concatenate(pieces), 16000, subtype="PCM_16")
    return waves, starts


def recording_manifest(path: Path, wav: Path, cut_id: str, reference: Optional[str] = None) -> Path:
    """A lhotse manifest at ``path`` with one cut: the whole of ``wav``, with ``reference`` as its
    one supervision's text (no supervision when None). Returns ``path``."""
    from lhotse import CutSet, Recording, SupervisionSegment
    from lhotse.cut import MonoCut

    rec = Recording.from_file(str(wav), recording_id=cut_id)
    sups = [] if reference is None else [SupervisionSegment(id=cut_id, recording_id=cut_id, start=0.0,
                                                            duration=rec.duration, text=reference)]
    CutSet.from_cuts([MonoCut(id=cut_id, start=0.0, duration=rec.duration, channel=0, recording=rec,
                              supervisions=sups)]).to_file(str(path))
    return Path(path)


def stable_seed(*parts: object) -> int:
    """A seed derived from ``parts`` that does not depend on Python's hash randomisation."""
    return zlib.crc32("\x1f".join(str(p) for p in parts).encode())
