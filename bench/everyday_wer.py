"""WER of a model on everyday English it never saw: tests/data/everyday_en.txt (100 sentences
written by hand for this check, never in any training corpus), spoken by espeak-ng.

    python bench/everyday_wer.py                                   # the shipped demo model, 3 styles
    python bench/everyday_wer.py --model exp/ --styles 5 --seed 1

Each sentence is spoken in ``--styles`` speech styles drawn with ``--seed`` from the demo
corpus's own style space (``model.training.corpus.random_style``: voice, variant, rate, pitch,
gain, noise), so the speech sounds like the corpus's while the words are new. Every batch is
encoded once and decoded with ctc-greedy, ctc-beam and attention rescoring
(``Recognizer.transcribe_all``, the model's own decoding settings). Prints the WER of each method
overall and per style, the share of the sentences' words the model's training text never had
(when ``--train-text`` points at it), and one JSON line.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
import random
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SENTENCES = REPO / "tests" / "data" / "everyday_en.txt"
METHODS = ("ctc-greedy", "ctc-beam", "attention-rescoring")


def sentences(path: Path = SENTENCES) -> list[str]:
    """The sentences of an everyday-English list (``#`` lines are comments)."""
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(REPO / "model" / "assets" / "demo"))
    p.add_argument("--styles", type=int, default=3, help="speech styles per sentence (default 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--train-text", default=None, help="the training text, one sentence per line, for the OOV rate")
    args = p.parse_args()

    import soundfile as sf
    import torch

    from model.recognizer import Recognizer
    from model.training.corpus import random_style, synthesize
    from pipeline.report.wer import corpus_wer

    torch.set_num_threads(2)
    texts = sentences()
    base = Recognizer.from_dir(args.model)
    rec = Recognizer.from_dir(args.model, decoding=[{**asdict(base.decoding), "method": m} for m in METHODS])
    rng = random.Random(args.seed)
    styles = [random_style(rng) for _ in range(args.styles)]
    refs: list[str] = []
    hyps: dict[str, list[str]] = {m: [] for m in METHODS}
    by_style: dict[str, dict[str, list[tuple[str, str]]]] = {}
    with tempfile.TemporaryDirectory(prefix="everyday-") as tmp:
        for k, style in enumerate(styles):
            waves = []
            for i, text in enumerate(texts):
                out = Path(tmp) / f"{k}-{i}.wav"
                synthesize(text, out, style, seed=args.seed * 1000 + k * 100 + i)
                waves.append(sf.read(str(out), dtype="float32")[0])
            order = np.argsort([w.size for w in waves])
            results: dict[int, list[str]] = {}
            for start in range(0, len(order), args.batch):
                idx = [int(j) for j in order[start:start + args.batch]]
                per_method, _ = rec.transcribe_all([waves[j] for j in idx])
                for j, *outs in zip(idx, *per_method):
                    results[j] = [t.text for t in outs]
            name = f"{style.speaker} rate {style.rate} pitch {style.pitch}" + (
                f" snr {style.snr_db:g} dB" if style.snr_db is not None else "")
            by_style[name] = {m: [] for m in METHODS}
            for i, text in enumerate(texts):
                refs.append(text)
                for m, hyp in zip(METHODS, results[i]):
                    hyps[m].append(hyp)
                    by_style[name][m].append((text, hyp))
    summary = {m: round(corpus_wer(refs, hyps[m]), 2) for m in METHODS}
    print(f"{len(texts)} everyday sentences x {len(styles)} styles, model {args.model}")
    print("WER %: " + ", ".join(f"{m} {summary[m]}" for m in METHODS))
    for name, per in by_style.items():
        print(f"  {name}: " + ", ".join(f"{m} {corpus_wer(*zip(*per[m])):.2f}" for m in METHODS))
    oov = None
    if args.train_text:
        vocab = {w for line in Path(args.train_text).read_text().splitlines() for w in line.lower().split()}
        words = [w for t in texts for w in t.split()]
        oov = round(100 * sum(w not in vocab for w in words) / len(words), 1)
        print(f"words never in the training text: {oov} %")
    print(json.dumps({"sentences": len(texts), "styles": len(styles), "wer": summary, "oov_pct": oov,
                      "decodings": [d.label() for d in rec.decodings]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
