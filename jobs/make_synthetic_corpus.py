"""Write a synthetic English speech corpus (espeak-ng + sox) with lhotse manifests.

Example:
  python jobs/make_synthetic_corpus.py --out data/synth12 --seed 0 --train-hours 12 --dev-utts 300 --test-utts 500 --jobs 2

Output (under --out):
  wav/{train,dev,test}/<id>.wav     16 kHz mono 16-bit
  cuts_{train,dev,test}.jsonl.gz    lhotse CutSets; one supervision per cut: text, speaker
                                    (voice+variant), language "English", custom style fields
  text_{train,dev,test}.txt         the reference texts, one utterance per line
  corpus.json                       the options and per-split counts / hours

Sentences come from model.training.corpus.corpus_generator: by default (--text natural) natural
English (WordNet's example sentences and definitions, fortune files) mixed with the template grammar
and random sequences of the --vocabulary most frequent English words (wordfreq), every word of that
vocabulary dealt once before any repeats. They are distinct across (and within) the splits: no dev or
test sentence is ever spoken in train, and no split says a sentence of a --held-out list (by default
tests/data/everyday_en.txt, the hand-written everyday-English check). A --multi-sentence-fraction of
the train utterances say 2-4 sentences in a row, so that the model also hears the long,
multi-sentence stretches that long-form windows hold. The same --seed and options give the same
sentences, voices and noise.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from model.training.corpus import HELD_OUT_LISTS, corpus_generator, random_style, read_sentence_list, stable_seed, synthesize

SECONDS_PER_WORD = 60.0 / 170  # espeak-ng at its default-ish rate; used only to size the train split


def estimate_seconds(text: str, rate: int) -> float:
    return 0.35 + len(text.split()) * 60.0 / rate


def plan(args: argparse.Namespace) -> dict[str, list[dict]]:
    banned = excluded_sentences(args)
    gen = corpus_generator(args.seed, text=args.text, vocabulary=args.vocabulary, open_words=args.open_words,
                           random_fraction=args.random_fraction, word_list=args.word_list, held_out=banned)
    style_rng = random.Random(stable_seed("style", args.seed))
    held_out = gen.unique_sentences(args.dev_utts + args.test_utts, exclude=banned)
    splits: dict[str, list[str]] = {"dev": held_out[: args.dev_utts], "test": held_out[args.dev_utts :]}
    if args.train_utts is not None:
        splits["train"] = gen.unique_sentences(args.train_utts, exclude=set(held_out) | set(banned))
    else:
        target = args.train_hours * 3600.0
        train: list[str] = []
        seen = set(held_out) | set(banned)
        total = 0.0
        while total < target:
            s = gen.unique_sentences(1, exclude=seen)[0]
            seen.add(s)
            train.append(s)
            total += estimate_seconds(s, 170)
        splits["train"] = train
    out: dict[str, list[dict]] = {}
    for split in ("train", "dev", "test"):
        groups = group_sentences(splits[split], args.multi_sentence_fraction, stable_seed("multi", args.seed)) \
            if split == "train" else [[s] for s in splits[split]]
        items = []
        for i, group in enumerate(groups):
            uid = f"synth-{split}-{i:06d}"
            items.append({"id": uid, "text": " ".join(group), "speak": join_for_speech(group, stable_seed(uid, args.seed)),
                          "style": random_style(style_rng, args.noise_prob, args.gain_prob)})
        out[split] = items
    return out


def excluded_sentences(args: argparse.Namespace) -> list[str]:
    """The sentences of the --held-out lists: no split of the corpus may say them."""
    return [s for path in args.held_out for s in read_sentence_list(Path(path))]


def natural_sentences(args: argparse.Namespace) -> frozenset[str]:
    """The sentences people wrote that --text natural draws from: WordNet's examples and fortune
    files (definitions left out: they are phrases, not sentences one says)."""
    from model.training.corpus import NaturalMix

    mix = NaturalMix.load(exclude=excluded_sentences(args), vocabulary_size=args.vocabulary)
    return frozenset(mix.examples) | frozenset(mix.fortunes)


def group_sentences(sentences: list[str], fraction: float, seed: int) -> list[list[str]]:
    """Consecutive sentences grouped into utterances: a ``fraction`` of the utterances say 2-4
    sentences in a row (long-form windows hold several sentences, with and without pauses
    between them), the rest one. Every sentence is used exactly once."""
    rng = random.Random(seed)
    groups: list[list[str]] = []
    i = 0
    while i < len(sentences):
        k = rng.randint(2, 4) if rng.random() < fraction else 1
        groups.append(sentences[i : i + k])
        i += k
    return groups


def join_for_speech(sentences: list[str], seed: int) -> str:
    """The text espeak-ng speaks for a group: sentences joined by ". " (a pause), ", " (a short
    one) or " " (none, run together). The reference text is always the words alone."""
    rng = random.Random(seed)
    out = sentences[0]
    for s in sentences[1:]:
        out += rng.choice((". ", ", ", " ")) + s
    return out


def build(args: argparse.Namespace) -> dict:
    from lhotse import CutSet, Recording, SupervisionSegment
    from lhotse.cut import MonoCut

    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    items = plan(args)
    summary: dict = {"options": {k: v for k, v in vars(args).items()}, "splits": {}}
    t0 = time.time()
    natural = natural_sentences(args) if args.only_natural else None
    for split, utts in items.items():
        if split not in args.splits:
            continue
        if natural is not None:
            utts = [u for u in utts if u["text"] in natural]
        utts = utts[: args.limit]
        wav_dir = root / "wav" / split
        wav_dir.mkdir(parents=True, exist_ok=True)

        def one(item: dict) -> float:
            path = wav_dir / f"{item['id']}.wav"
            return synthesize(item["speak"], path, item["style"], seed=stable_seed(args.seed, item["id"]))

        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:  # espeak-ng / sox are subprocesses
            durations = list(pool.map(one, utts))
        cuts = []
        for item, dur in zip(utts, durations):
            path = wav_dir / f"{item['id']}.wav"
            rec = Recording.from_file(str(path), recording_id=item["id"])
            style = item["style"]
            sup = SupervisionSegment(
                id=item["id"], recording_id=item["id"], start=0.0, duration=rec.duration, channel=0,
                text=item["text"], speaker=style.speaker, language="English",
                custom={"rate": style.rate, "pitch": style.pitch, "gain_db": style.gain_db, "snr_db": style.snr_db},
            )
            cuts.append(MonoCut(id=item["id"], start=0.0, duration=rec.duration, channel=0, recording=rec, supervisions=[sup]))
        CutSet.from_cuts(cuts).to_file(str(root / f"cuts_{split}.jsonl.gz"))
        (root / f"text_{split}.txt").write_text("".join(item["text"] + "\n" for item in utts))
        hours = sum(durations) / 3600
        summary["splits"][split] = {"utterances": len(utts), "hours": round(hours, 4),
                                    "speakers": len({i["style"].speaker for i in utts})}
        print(f"{split}: {len(utts)} utterances, {hours:.3f} h ({time.time() - t0:.0f} s so far)", file=sys.stderr)
    summary["seconds"] = round(time.time() - t0, 1)
    (root / "corpus.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-hours", type=float, default=5.0, help="approximate hours of train audio")
    p.add_argument("--train-utts", type=int, default=None, help="exact number of train utterances (overrides --train-hours)")
    p.add_argument("--dev-utts", type=int, default=300)
    p.add_argument("--test-utts", type=int, default=500)
    p.add_argument("--splits", type=lambda v: [x for x in v.split(",") if x], default=["train", "dev", "test"],
                   help="comma-separated splits to synthesise (default train,dev,test). Sentences are planned for all "
                        "splits either way, so `--train-utts 0 --dev-utts 300 --test-utts 60 --splits test` speaks the "
                        "first 60 test sentences of a corpus made with --dev-utts 300 (make demo does this)")
    p.add_argument("--only-natural", action="store_true",
                   help="with --text natural: of the planned sentences of the written splits, speak only those people "
                        "wrote (WordNet examples, fortune files); make demo shows everyday sentences this way. The plan, "
                        "and so every split's held-out property, is unchanged")
    p.add_argument("--limit", type=int, default=None, help="speak at most N utterances of each written split")
    p.add_argument("--jobs", type=int, default=2, help="parallel synthesis processes")
    p.add_argument("--noise-prob", type=float, default=0.3, help="fraction of utterances with light white noise (SNR 15-35 dB)")
    p.add_argument("--gain-prob", type=float, default=0.3, help="fraction of utterances with a gain change (-10..+3 dB)")
    p.add_argument("--random-fraction", type=float, default=0.2, help="fraction of the template-grammar sentences that are random word sequences (with --text natural: of the "
                        "35 %% of sentences that are not natural text)")
    p.add_argument("--multi-sentence-fraction", type=float, default=0.1,
                   help="fraction of TRAIN utterances that say 2-4 sentences in a row (pauses between them or not); "
                        "dev and test stay one sentence per utterance")
    p.add_argument("--text", choices=("natural", "templates"), default="natural",
                   help="natural (default): WordNet example sentences and definitions, fortune-file sentences, and the "
                        "template grammar and random words over the --vocabulary most frequent English words (wordfreq); "
                        "templates: the template grammar over a bounded word list (--open-words, --word-list), the first "
                        "demo models' text")
    p.add_argument("--vocabulary", type=int, default=10_000,
                   help="with --text natural: template slots and random-word sentences use the N most frequent English "
                        "words (wordfreq), so that all of them are heard; natural sentences may use the 30,000 most "
                        "frequent")
    p.add_argument("--held-out", action="append", default=None, metavar="FILE",
                   help="a list of sentences (one per line, # comments) that no split may say; repeatable (default: "
                        "tests/data/everyday_en.txt, the everyday-English check)")
    p.add_argument("--open-words", type=int, default=1500,
                   help="with --text templates: open-class words (nouns, verbs, adjectives, adverbs) sampled from the word list on top of the "
                        "core vocabulary; 0: the whole list. Bounded so that test words are heard in train (about 2,300 "
                        "distinct words in all at 1500)")
    p.add_argument("--word-list", default=None,
                   help="with --text templates: word list (default /usr/share/dict/american-english, Debian wamerican)")
    args = p.parse_args(argv)
    if args.held_out is None:
        args.held_out = [str(p) for p in HELD_OUT_LISTS if p.is_file()]
    return args


if __name__ == "__main__":
    print(json.dumps(build(parse_args())["splits"], indent=1))
