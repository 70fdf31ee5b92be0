"""Long-form WER against transcribing the same sentences one by one, with the demo model.

For each trial, held-out demo sentences (never in training) are spoken with espeak-ng into one
recording, with random pauses of digital silence between them (or none). The recording then
goes through the pipeline's own flow in this process (pipeline.run.driver.run_in_process: 30 s
windows overlapping by 4 s, pieces cut at pauses, segmented rescoring, stitching), once per
configuration; the reference is the same sentences transcribed one at a time.

Configurations:
  pieces+segments  the defaults: windows cut at pauses, search and rescoring in <= 6 s segments
  segments-only    --no-pause-split: windows transcribed whole, segmented rescoring
  whole-windows    --no-pause-split --max-segment-seconds 0: what the pipeline did before both

  python bench/longform_wer.py                      # the README's table (3 trials x 3 pause ranges)
  python bench/longform_wer.py --trials 1 --json    # quicker; one JSON object
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "jobs"))

CONFIGS = ("pieces+segments", "segments-only", "whole-windows")
PAUSES = {"0.3-0.9 s": (0.3, 0.9), "0.1-0.4 s": (0.1, 0.4), "none": (0.0, 0.0)}


def transcribe_one_by_one(model_dir: Path, waves) -> list[str]:
    from model.recognizer import Recognizer

    rec = Recognizer.from_dir(model_dir)
    texts = []
    for k in range(0, len(waves), 8):
        texts += [t.text for t in rec.transcribe(waves[k:k + 8])[0]]
    return texts


def long_form(manifest: Path, model_dir: Path, out: Path, config: str, split) -> tuple[str, int, int]:
    """The stitched text of the recording, its window count and aligned seams."""
    import pyarrow.parquet as pq

    from pipeline.run.config import TranscribeConfig
    from pipeline.run.driver import run_in_process

    cfg = TranscribeConfig(manifest=[str(manifest)], model=str(model_dir), output=str(out), max_batch_seconds=120.0,
                           max_cut_seconds=30.0, window_overlap_seconds=4.0, pause_split=split)
    if config != "pieces+segments":
        cfg.pause_split = None
    if config == "whole-windows":
        cfg.decoding = {"max_segment_seconds": None}
    run_id = config.replace("+", "-and-")
    done = run_in_process(cfg, run_id, num_threads=2)
    (row,) = [r for p in (out / "transcripts" / f"run_id={run_id}").glob("*.parquet") for r in pq.read_table(p).to_pylist()]
    return row["text"], done["stitched"].windows, done["stitched"].seams_aligned


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=REPO / "model" / "assets" / "demo")
    p.add_argument("--sentences", type=int, default=60, help="sentences per recording (default 60, ~3.5 min)")
    p.add_argument("--trials", type=int, default=3, help="recordings per pause range, each other sentences")
    p.add_argument("--min-pause-seconds", type=float, default=None, help="the pause split's (default: its default)")
    p.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS))
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = p.parse_args(argv)

    import soundfile as sf

    from demo import held_out_sentences
    from pipeline.report.wer import corpus_wer
    from pipeline.longform.pauses import PauseSplit
    from model.training.corpus import long_recording, recording_manifest

    split = PauseSplit() if args.min_pause_seconds is None else PauseSplit(min_pause_seconds=args.min_pause_seconds)

    results = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name, pauses in PAUSES.items():
            for trial in range(args.trials):
                work = Path(tmp) / f"{name}-{trial}".replace(" ", "")
                work.mkdir()
                sentences = held_out_sentences(args.sentences, offset=60 + trial * args.sentences)
                waves, _ = long_recording(work / "long.wav", sentences, pauses, seed=trial)
                reference = " ".join(sentences)
                recording_manifest(work / "cuts.jsonl.gz", work / "long.wav", "long", reference)
                row = {"pauses": name, "trial": trial, "minutes": round(sf.info(str(work / "long.wav")).duration / 60, 2),
                       "one_by_one": round(corpus_wer(sentences, transcribe_one_by_one(args.model, waves)), 2)}
                for config in args.configs:
                    text, windows, aligned = long_form(work / "cuts.jsonl.gz", args.model, work / "out", config, split)
                    row[config] = round(corpus_wer([reference], [text]), 2)
                    row[f"{config}_seams"] = f"{aligned}/{windows - 1}"
                results.append(row)
                if not args.json:
                    print(row, flush=True)
    summary = {"rows": results, "seconds": round(time.perf_counter() - started, 1)}
    for name in PAUSES:
        rows = [r for r in results if r["pauses"] == name]
        summary[name] = {k: round(sum(r[k] for r in rows) / len(rows), 2) for k in ("one_by_one", *args.configs)}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"\nmean WER % over {args.trials} recording(s) of {args.sentences} sentences each "
              f"({summary['seconds']:.0f} s):")
        print(f"{'pauses':<12}{'one by one':>12}" + "".join(f"{c:>17}" for c in args.configs))
        for name in PAUSES:
            m = summary[name]
            print(f"{name:<12}{m['one_by_one']:>12.2f}" + "".join(f"{m[c]:>17.2f}" for c in args.configs))
    return summary


if __name__ == "__main__":
    main()
