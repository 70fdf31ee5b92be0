"""Peak memory and speed of transcribing one long recording in windows.

Speaks a few held-out sentences with espeak-ng, writes them (with pauses, repeated) into one
16 kHz WAV of --minutes (streamed to disk, so building it costs no memory), then runs the
pipeline's own flow in this process (pipeline.run.driver.run_in_process: windows -> shards ->
Transcriber with range reads -> stitching) and prints the process's peak RSS.

  python bench/longform_memory.py --minutes 60            # the README's figure
  python bench/longform_memory.py --minutes 2 --json      # one JSON line (tests)
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build_recording(path: Path, minutes: float, work: Path, seed: int = 0) -> float:
    sys.path.insert(0, str(REPO / "jobs"))
    from demo import held_out_sentences
    from model.training.corpus import speak_plain

    sentences = held_out_sentences(20)
    clips = [speak_plain(text, work / f"s{k}.wav") for k, text in enumerate(sentences)]
    rng = random.Random(seed)
    target = int(minutes * 60 * 16000)
    written = 0
    with sf.SoundFile(str(path), "w", samplerate=16000, channels=1, subtype="PCM_16") as f:
        while written < target:
            chunk = np.concatenate([np.zeros(int(rng.uniform(0.2, 0.8) * 16000), dtype=np.float32), rng.choice(clips)])
            chunk = chunk[: target - written]
            f.write(chunk)
            written += chunk.size
    return written / 16000


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=60.0)
    p.add_argument("--model", default=str(REPO / "model" / "assets" / "demo"))
    p.add_argument("--max-cut-seconds", type=float, default=30.0)
    p.add_argument("--window-overlap-seconds", type=float, default=4.0)
    p.add_argument("--max-batch-seconds", type=float, default=160.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work-dir", default=None)
    p.add_argument("--json", action="store_true", help="print one JSON line")
    args = p.parse_args(argv)

    import torch
    from pipeline.run.config import TranscribeConfig
    from pipeline.run.driver import run_in_process
    from model.training.corpus import recording_manifest

    torch.set_num_threads(args.threads)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="zipscribe-longform-"))
    work.mkdir(parents=True, exist_ok=True)
    wav = work / "long.wav"
    seconds = build_recording(wav, args.minutes, work)
    manifest = recording_manifest(work / "cuts.jsonl.gz", wav, "long")
    before = peak_rss_mb()
    cfg = TranscribeConfig(manifest=[str(manifest)], model=args.model, output=str(work / "out"),
                           max_batch_seconds=args.max_batch_seconds, max_cut_seconds=args.max_cut_seconds,
                           window_overlap_seconds=args.window_overlap_seconds, resume=False)
    start = time.perf_counter()
    done = run_in_process(cfg, "bench", num_threads=args.threads)
    wall = time.perf_counter() - start
    stitched = done["stitched"]
    result = {
        "minutes": round(seconds / 60, 2), "windows": stitched.windows, "seams_aligned": stitched.seams_aligned,
        "peak_rss_mb": round(peak_rss_mb(), 1), "peak_rss_before_run_mb": round(before, 1),
        "wall_s": round(wall, 1), "rtfx": round(seconds / wall, 1),
        "wav_mb": round(wav.stat().st_size / 1e6, 1),
        "bytes_fetched_mb": round(done["actor"]._ranges.bytes_fetched / 1e6, 1),
    }
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:24s} {v}")
    return result


if __name__ == "__main__":
    main()
