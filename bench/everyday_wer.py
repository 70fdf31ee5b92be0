"""WER of a model on everyday English it never saw: tests/data/everyday_en.txt (100 sentences
written by hand for this check, never in any training corpus), spoken by espeak-ng.

    python bench/everyday_wer.py                                   # the shipped demo model, 3 styles
    python bench/everyday_wer.py --model exp/ --styles 5 --seed 1

Each sentence is spoken in ``--styles`` speech styles drawn with ``--seed`` from the demo
corpus's own style space (``model.training.corpus.random_style``: voice, variant, rate, pitch,
gain, noise), so the speech sounds like the corpus's while the words are new. Every batch is
encoded once and decoded with ctc-greedy, ctc-beam and attention rescoring
(``Recognizer.transcribe_all``, the model's own decoding settings; with a word LM, rescoring is
also scored without it, and, where the LM is fused into the search, with the LM in the
rescoring only). Prints the WER of each method
overall and per style, the share of the sentences' words the model's training text never had
(when ``--train-text`` points at it), and one JSON line.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

METHODS = ("ctc-greedy", "ctc-beam", "attention-rescoring")
NO_LM = "attention-rescoring, no LM"
NO_FUSION = "attention-rescoring, LM in rescoring only"


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
    from model.training.corpus import EVERYDAY_LIST, read_sentence_list
    from model.training.evaluation import spoken_sentences
    from pipeline.report.wer import corpus_wer

    torch.set_num_threads(2)
    texts = read_sentence_list(EVERYDAY_LIST)
    base = Recognizer.from_dir(args.model)
    methods = list(METHODS)
    decodings = [{**asdict(base.decoding), "method": m} for m in METHODS]
    if base.lm is not None and base.decoding.lm_scale:  # no word LM at all, as the card reports it
        methods.append(NO_LM)
        decodings.append({**asdict(base.decoding), "method": "attention-rescoring", "lm_scale": 0.0,
                          "search_lm_scale": 0.0, "word_bonus": 0.0})
    if base.lm is not None and base.decoding.search_lm_scale:  # ... and with the LM in the rescoring only
        methods.append(NO_FUSION)
        decodings.append({**asdict(base.decoding), "method": "attention-rescoring", "search_lm_scale": 0.0,
                          "word_bonus": 0.0})
    rec = Recognizer.from_dir(args.model, decoding=decodings)
    refs: list[str] = []
    hyps: dict[str, list[str]] = {m: [] for m in methods}
    by_style: dict[str, dict[str, list[tuple[str, str]]]] = {}
    with tempfile.TemporaryDirectory(prefix="everyday-") as tmp:
        utts = spoken_sentences(texts, tmp, styles=args.styles, seed=args.seed)
        waves = [sf.read(u.audio_path, dtype="float32")[0] for u in utts]
    order = np.argsort([w.size for w in waves])
    results: dict[int, list[str]] = {}
    for start in range(0, len(order), args.batch):
        idx = [int(j) for j in order[start:start + args.batch]]
        per_method, _ = rec.transcribe_all([waves[j] for j in idx])
        for j, *outs in zip(idx, *per_method):
            results[j] = [t.text for t in outs]
    for j, utt in enumerate(utts):
        style = utt.id.rsplit("-", 2)[0]
        by_style.setdefault(style, {m: [] for m in methods})
        refs.append(utt.text)
        for m, hyp in zip(methods, results[j]):
            hyps[m].append(hyp)
            by_style[style][m].append((utt.text, hyp))
    summary = {m: round(corpus_wer(refs, hyps[m]), 2) for m in methods}
    print(f"{len(texts)} everyday sentences x {args.styles} styles, model {args.model}")
    print("WER %: " + ", ".join(f"{m} {summary[m]}" for m in methods))
    for name, per in by_style.items():
        print(f"  {name}: " + ", ".join(f"{m} {corpus_wer(*zip(*per[m])):.2f}" for m in methods))
    oov = None
    if args.train_text:
        vocab = {w for line in Path(args.train_text).read_text().splitlines() for w in line.lower().split()}
        words = [w for t in texts for w in t.split()]
        oov = round(100 * sum(w not in vocab for w in words) / len(words), 1)
        print(f"words never in the training text: {oov} %")
    print(json.dumps({"sentences": len(texts), "styles": args.styles, "wer": summary, "oov_pct": oov,
                      "decodings": [d.label() for d in rec.decodings]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
