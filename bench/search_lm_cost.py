"""What the word LM inside the CTC prefix search costs and gains (not a test).

    python bench/search_lm_cost.py                       # the shipped demo model, 3 styles, 5 repeats
    python bench/search_lm_cost.py --model exp/ --repeats 7

Speaks tests/data/everyday_en.txt in ``--styles`` speech styles (as bench/everyday_wer.py does),
encodes every batch once, then decodes the batches with the model's attention rescoring twice
per repeat, alternating: with the LM fused into the search (the model's ``search_lm_scale``,
``word_bonus``) and with the LM in the rescoring only (``search_lm_scale`` 0). Prints, for each,
the decoding seconds of the whole list (median, min, max over the repeats), the WER, and one
JSON line. Encoder time is not part of either.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(REPO / "model" / "assets" / "demo"))
    p.add_argument("--styles", type=int, default=3)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()

    import torch

    from model.decoding import decode
    from model.recognizer import Recognizer
    from model.training.corpus import EVERYDAY_LIST, read_sentence_list
    from model.training.evaluation import encode_batches, spoken_sentences
    from pipeline.report.wer import corpus_wer

    torch.set_num_threads(args.threads)
    rec = Recognizer.from_dir(args.model)
    fused = rec.decoding
    if rec.lm is None or not fused.search_lm_scale:
        print(f"{args.model}: its decoding does not fuse a word LM into the search (search_lm_scale 0)")
        return 2
    plain = replace(fused, search_lm_scale=0.0, word_bonus=0.0)
    texts = read_sentence_list(EVERYDAY_LIST)
    with tempfile.TemporaryDirectory(prefix="search-lm-") as tmp:
        utts = spoken_sentences(texts, tmp, styles=args.styles, seed=0)
        encoded = encode_batches(rec, utts, 200.0)
    refs = [u.text for u in utts]
    seconds: dict[str, list[float]] = {"fused": [], "rescoring only": []}
    texts_by: dict[str, list[str]] = {}
    for _ in range(args.repeats):
        for name, cfg in (("fused", fused), ("rescoring only", plain)):
            out = [""] * len(utts)
            started = time.perf_counter()
            for batch, enc, enc_lens, log_probs in encoded:
                hyps = decode(rec.model, enc, enc_lens, cfg, ctc_log_probs=log_probs, lm_scorer=rec.lm_scores,
                              search_lm=rec.search_lm)
                for i, h in zip(batch, hyps):
                    out[i] = rec.tokenizer.decode(h.token_ids)
            seconds[name].append(time.perf_counter() - started)
            texts_by[name] = out
    audio = sum(u.duration for u in utts)
    summary = {}
    for name, times in seconds.items():
        summary[name] = {"decode_s_median": round(statistics.median(times), 2), "min": round(min(times), 2),
                         "max": round(max(times), 2), "wer": round(corpus_wer(refs, texts_by[name]), 2),
                         "label": (fused if name == "fused" else plain).label()}
        s = summary[name]
        print(f"{name:15s} decode {s['decode_s_median']:.2f} s (min {s['min']:.2f}, max {s['max']:.2f}) for "
              f"{audio:.0f} s of audio, WER {s['wer']:.2f} %  [{s['label']}]")
    print(json.dumps({"utterances": len(utts), "audio_s": round(audio, 1), "repeats": args.repeats,
                      "threads": args.threads, **summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
