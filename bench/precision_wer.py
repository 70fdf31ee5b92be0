"""WER of the demo model in fp32, bf16 and fp16 (CPU autocast), on the demo test sentences (not a test).

What ``--precision auto`` should pick is a question of accuracy as well as speed; GPUs are not
always at hand, but CPU autocast runs the same reduced-precision arithmetic (slowly, where the
CPU has no native bf16 / fp16), so the accuracy side can be measured anywhere:

1. the demo model's test sentences (``jobs/make_synthetic_corpus.py --seed 0 --dev-utts 300
   --test-utts 500``, the held-out sentences of the shipped model's card) are synthesised into
   ``--workdir`` (re-synthesised with one train utterance, so voices may differ from the card's
   run: the comparison between precisions uses the same audio throughout), or ``--manifest``
   names a CutSet with references;
2. every utterance is transcribed with ``Recognizer.from_dir(model/assets/demo, amp_dtype=p,
   rescoring_dtype=p)`` for each precision, in duration-sorted batches, with the model's default
   decoding (attention rescoring) and with CTC prefix beam search;
3. WER (the pipeline's scorer), the number of utterances whose text differs from fp32's, the
   precision the recognizer ended in (fp16 falls back to fp32 for good when the encoder's output
   overflows: ``fp16_fallbacks``), and the largest encoder-output difference from fp32, relative to
   its largest value, of the asked-for precision without that fallback (NaN: it overflowed).

Prints one JSON object (progress on stderr).

    python bench/precision_wer.py --utts 200
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from model.decoding import DecodingConfig  # noqa: E402
from model.precision import DTYPES  # noqa: E402
from model.recognizer import Recognizer  # noqa: E402
from model.training.data import bucketed_batches, load_audio, load_manifest  # noqa: E402
from pipeline.report.wer import corpus_wer  # noqa: E402


def log(message: str) -> None:
    print(f"[precision_wer] {message}", file=sys.stderr, flush=True)


def ensure_corpus(workdir: Path, jobs: int) -> Path:
    manifest = workdir / "cuts_test.jsonl.gz"
    if not manifest.is_file():
        log(f"synthesising the demo test sentences into {workdir}")
        subprocess.run([sys.executable, str(REPO / "jobs" / "make_synthetic_corpus.py"), "--out", str(workdir),
                        "--seed", "0", "--train-utts", "1", "--dev-utts", "300", "--test-utts", "500",
                        "--open-words", "1500", "--jobs", str(jobs)], check=True, cwd=REPO)
    return manifest


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=REPO / "model" / "assets" / "demo")
    p.add_argument("--manifest", type=Path, default=None, help="a CutSet with references (default: synthesise)")
    p.add_argument("--utts", type=int, default=500, help="utterances used (default 500: all)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "zipscribe-bench" / "precision_wer")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.workdir.mkdir(parents=True, exist_ok=True)
    utts = load_manifest(args.manifest or ensure_corpus(args.workdir, args.threads))[: args.utts]
    refs = [u.text for u in utts]
    audio = {i: load_audio(u) for i, u in enumerate(utts)}
    batches = bucketed_batches([u.duration for u in utts], 200.0)
    report: dict = {"model": str(args.model), "utterances": len(utts),
                    "audio_minutes": round(sum(u.duration for u in utts) / 60, 1), "results": {}}
    baseline: dict[str, list[str]] = {}
    base_enc: dict[int, torch.Tensor] = {}
    for precision in ("fp32", "bf16", "fp16"):
        for method in ("attention-rescoring", "ctc-beam"):
            rec = Recognizer.from_dir(args.model, decoding=DecodingConfig(method=method), amp_dtype=precision,
                                      rescoring_dtype=precision)
            texts = [""] * len(utts)
            started = time.perf_counter()
            for batch in batches:
                out, _ = rec.transcribe([audio[i] for i in batch])
                for i, t in zip(batch, out):
                    texts[i] = t.text
            seconds = time.perf_counter() - started
            key = f"{precision} {method}"
            baseline.setdefault(method, texts)
            entry = {"wer": round(corpus_wer(refs, texts), 2),
                     "texts_differing_from_fp32": sum(a != b for a, b in zip(texts, baseline[method])),
                     "seconds": round(seconds, 1), "precision_at_end": rec.precision.reason,
                     "fp16_fallbacks": rec.fp16_fallbacks}
            if method == "ctc-beam":  # encoder drift in the asked-for precision, on the first batch
                with torch.inference_mode():
                    feats, lens = rec.features([audio[i] for i in batches[0]])
                    with torch.autocast("cpu", dtype=DTYPES[precision], enabled=DTYPES[precision] is not None):
                        enc, _ = rec.model.forward_encoder(feats, lens)
                enc = enc.float()
                ref = base_enc.setdefault(0, enc)
                entry["encoder_max_rel_diff"] = float((enc - ref).abs().max() / ref.abs().max())
            report["results"][key] = entry
            log(f"{key}: WER {entry['wer']} ({seconds:.0f} s)")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
