"""Engines side by side: the same model and the same audio through zipscribe on torch, zipscribe on
onnxruntime (fp32 and int8, :mod:`model.onnx_runtime`) and sherpa-onnx's OfflineRecognizer (its
own fbank and greedy search on the exported ``model.onnx``), on CPU.

Every engine goes from waveforms to text (features included) over the same duration-sorted
batches of ``--batch`` utterances, with ``--threads`` threads. The engines take turns, in a
rotated order each repeat (A B C, B C A, ...), so a noisy machine slows them alike; the table gives
each one's median audio seconds per wall second over ``--repeats`` passes, the spread (min - max),
the ratio to sherpa-onnx fp32, the WER against the spoken sentences and, for zipscribe engines,
the share of features / encoder / decoding in their time. zipscribe engines decode
with ``--method`` (default ctc-greedy, what sherpa-onnx does with a CTC model).

    python bench/engines.py                                  # demo model, 40 utterances, 3 repeats
    python bench/engines.py --utts 100 --repeats 5 --batch 16
    python bench/engines.py --method attention-rescoring      # zipscribe's default decoding

The audio is the demo corpus's held-out test sentences spoken with espeak-ng (jobs/demo.py's
``ensure_data``; needs espeak-ng, sox and Debian's word list), cached under ``--data``. Prints a
table, then one JSON object.
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
from typing import Callable

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "jobs"))

from model.decoding import DecodingConfig  # noqa: E402
from model.onnx_export import export_onnx  # noqa: E402
from model.onnx_runtime import load_onnx_model  # noqa: E402
from model.recognizer import Recognizer  # noqa: E402

ENGINES = ("torch", "onnxruntime-fp32", "onnxruntime-int8", "sherpa-onnx-fp32", "sherpa-onnx-int8")


def load_audio(data: Path, utts: int) -> tuple[list[str], list[np.ndarray]]:
    """The first ``utts`` sentences of the demo corpus's test split, spoken (cached in ``data``)."""
    import demo as demo_job
    from lhotse import CutSet

    manifest = demo_job.ensure_data(data, utts)
    cuts = list(CutSet.from_file(str(manifest)))[:utts]
    return [c.supervisions[0].text for c in cuts], [c.load_audio()[0].astype(np.float32) for c in cuts]


def zipscribe_engine(rec: Recognizer, stages: dict[str, float]) -> Callable[[list[np.ndarray]], list[str]]:
    """Waveforms -> texts with a Recognizer (fbank, encoder, decoding); adds its stage seconds to ``stages``."""
    def run(batch: list[np.ndarray]) -> list[str]:
        transcripts, times = rec.transcribe(batch)
        for stage, seconds in times.as_dict().items():
            stages[stage] = stages.get(stage, 0.0) + seconds
        return [t.text for t in transcripts]
    return run


def sherpa_engine(model: Path, tokens: Path, threads: int) -> Callable[[list[np.ndarray]], list[str]]:
    """Waveforms -> texts with sherpa-onnx's offline Zipformer CTC recognizer (one decode_streams per batch)."""
    import sherpa_onnx

    recognizer = sherpa_onnx.OfflineRecognizer.from_zipformer_ctc(model=str(model), tokens=str(tokens), num_threads=threads)

    def run(batch: list[np.ndarray]) -> list[str]:
        streams = []
        for wave in batch:
            stream = recognizer.create_stream()
            stream.accept_waveform(16000, wave)
            streams.append(stream)
        recognizer.decode_streams(streams)
        return [s.result.text for s in streams]
    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(REPO / "model" / "assets" / "demo"), help="model directory with a CTC head")
    p.add_argument("--utts", type=int, default=40, help="utterances (default 40, ~125 s of audio)")
    p.add_argument("--repeats", type=int, default=3, help="timed passes per engine (default 3)")
    p.add_argument("--batch", type=int, default=8, help="utterances per batch, duration-sorted (default 8)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads of every engine (default 2)")
    p.add_argument("--method", default="ctc-greedy", help="zipscribe engines' decoding method (default ctc-greedy)")
    p.add_argument("--engines", default=",".join(ENGINES), help=f"comma-separated subset of {','.join(ENGINES)}")
    p.add_argument("--data", default=str(Path(tempfile.gettempdir()) / "zipscribe-bench-engines"),
                   help="where the spoken sentences are cached")
    args = p.parse_args()
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = sorted(set(engines) - set(ENGINES))
    if unknown:
        p.error(f"unknown engines {unknown}; choose from {ENGINES}")
    torch.set_num_threads(args.threads)

    refs, waves = load_audio(Path(args.data), args.utts)
    rec = Recognizer.from_dir(args.model)
    cfg = replace(rec.decoding, method=args.method)
    with tempfile.TemporaryDirectory(prefix="zipscribe-engines-") as tmp:
        bench(args, engines, rec, cfg, Path(tmp), refs, waves)


def bench(args: argparse.Namespace, engines: list[str], rec: Recognizer, cfg: DecodingConfig, out_dir: Path, refs: list[str],
          waves: list[np.ndarray]) -> None:
    """Export into ``out_dir``, time every engine in turn, print the table and the JSON."""
    from pipeline.report.wer import corpus_wer

    audio_s = sum(len(w) for w in waves) / 16000
    order = sorted(range(len(waves)), key=lambda i: len(waves[i]))
    batches = [order[i:i + args.batch] for i in range(0, len(order), args.batch)]
    export = export_onnx(rec.model, rec.tokenizer, out_dir, heads="ctc", int8=True, checkpoint_sha256=rec.info.sha256)
    print(f"{audio_s:.1f} s of audio in {len(waves)} utterances, batches of {args.batch}, {args.threads} threads; "
          f"export (fp32 + int8, sherpa + backend) {export.seconds:.1f} s", flush=True)

    runners: dict[str, Callable[[list[np.ndarray]], list[str]]] = {}
    stages: dict[str, dict[str, float]] = {name: {} for name in engines}
    for name in engines:
        if name == "torch":
            runners[name] = zipscribe_engine(Recognizer(rec.model, rec.tokenizer, decoding=replace(cfg), lm=rec.lm), stages[name])
        elif name.startswith("onnxruntime"):
            om = load_onnx_model(out_dir, int8=name.endswith("int8"), num_threads=args.threads)
            runners[name] = zipscribe_engine(Recognizer(om, rec.tokenizer, decoding=replace(cfg), lm=rec.lm), stages[name])
        else:
            runners[name] = sherpa_engine(export.path("sherpa", "ctc", int8=name.endswith("int8")),
                                          export.path("sherpa", "tokens"), args.threads)
    for run in runners.values():  # warm-up: first-call allocations, thread pools
        run([waves[order[-1]]])
    for per_engine in stages.values():
        per_engine.clear()

    times: dict[str, list[float]] = {name: [] for name in engines}
    texts: dict[str, list[str]] = {}
    for r in range(args.repeats):
        turn = engines[r % len(engines):] + engines[: r % len(engines)]
        for name in turn:
            hyps = [""] * len(waves)
            start = time.perf_counter()
            for batch in batches:
                for i, text in zip(batch, runners[name]([waves[i] for i in batch])):
                    hyps[i] = text
            times[name].append(time.perf_counter() - start)
            texts[name] = hyps

    base = "sherpa-onnx-fp32" if "sherpa-onnx-fp32" in engines else engines[0]
    base_speed = audio_s / statistics.median(times[base])
    rows = []
    for name in engines:
        speeds = [audio_s / t for t in times[name]]
        median = statistics.median(speeds)
        rows.append({"engine": name, "audio_s_per_s": round(median, 1), "min": round(min(speeds), 1),
                     "max": round(max(speeds), 1), f"x_{base}": round(median / base_speed, 2),
                     "wer": round(corpus_wer(refs, texts[name]), 2),
                     "decoding": cfg.method if not name.startswith("sherpa") else "greedy (sherpa-onnx)"})
        if stages[name]:  # share of each stage, summed over all passes
            total = sum(stages[name].values())
            rows[-1]["stages"] = {k: round(v / total, 3) for k, v in stages[name].items()}
    print(f"\n{'engine':18s} {'audio s/s':>10s} {'spread':>14s} {'x ' + base:>22s} {'WER %':>7s}  decoding")
    for row in rows:
        split = ", ".join(f"{k} {100 * v:.0f} %" for k, v in row.get("stages", {}).items())
        print(f"{row['engine']:18s} {row['audio_s_per_s']:10.1f} {row['min']:6.1f} - {row['max']:<6.1f}"
              f"{row[f'x_{base}']:22.2f} {row['wer']:7.2f}  {row['decoding']}" + (f" ({split})" if split else ""))
    print(json.dumps({"audio_seconds": round(audio_s, 1), "utterances": len(waves), "batch": args.batch,
                      "threads": args.threads, "repeats": args.repeats, "export_seconds": round(export.seconds, 1),
                      "model": args.model, "results": rows}))


if __name__ == "__main__":
    main()
