"""The host work a model actor moved off its model thread (not a test): per shard, scoring the rows
against their references (WER), building the words table and writing the words and transcripts
parts (``Transcriber.write_shard``, on the model stage's writer thread), and planning its batches
(``Transcriber.plan_shard``: duration packing, silence scans; on the calling thread).

A shard of ``--cuts`` cuts of the demo corpus's held-out sentences with references, each
transcribed as its reference with one word dropped (so scoring aligns real errors), token times
spread over ``--cut-seconds``; parts go to a local temp folder. Prints JSON: seconds per shard
(median of ``--repeats``) and per cut, and the audio seconds a GPU at ``--gpu-rtfx`` x real time
would decode in that time (what the model thread would have waited for when these ran on it).

    python bench/writer_cost.py [--cuts 1000] [--cut-seconds 10] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "jobs"))

import numpy as np  # noqa: E402

from pipeline.inputs.items import WorkItem  # noqa: E402
from pipeline.output.records import STATUS_OK, TranscriptRow  # noqa: E402
from pipeline.plan.shards import Shard  # noqa: E402
from pipeline.run.shard_audio import ShardAudio  # noqa: E402
from pipeline.run.tasks import ShardResult, StageSettings, shard_task  # noqa: E402
from pipeline.run.transcriber import ActorConfig, DecodedShard, Transcriber  # noqa: E402

DEMO = REPO / "model" / "assets" / "demo"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cuts", type=int, default=1000, help="cuts per shard (default 1000, the job's --shard-size)")
    p.add_argument("--cut-seconds", type=float, default=10.0)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--gpu-rtfx", type=float, default=5000.0)
    args = p.parse_args()

    from demo import held_out_sentences

    out = Path(tempfile.mkdtemp(prefix="writer-cost-"))
    t = Transcriber(ActorConfig(model_uri=str(DEMO), model_sha256="", output_uri=str(out), run_id="w", num_threads=1))
    tok = t.recognizer.tokenizer
    sentences = held_out_sentences(min(args.cuts, 200), offset=100)
    items = [WorkItem(cut_id=f"c{i:05d}", recording_id=f"r{i:05d}", source=f"/audio/{i}.wav", source_type="file",
                      duration=args.cut_seconds, reference=sentences[i % len(sentences)]) for i in range(args.cuts)]
    settings = StageSettings(run_id="w", output=str(out), fingerprint_parts=("w",))
    task = shard_task(Shard(shard_id="s", index=0, items=items), settings)
    label = t.decoding_labels()[0]

    def decoded() -> DecodedShard:
        rows = []
        for item in items:
            words = item.reference.split()
            hyp = " ".join(words[:1] + words[2:])  # one word dropped
            ids = tok.encode(hyp)
            times = np.linspace(0.2, args.cut_seconds - 0.2, num=max(1, len(ids))).round(3).tolist()[: len(ids)]
            rows.append(TranscriptRow(run_id="w", cut_id=item.cut_id, status=STATUS_OK, recording_id=item.recording_id,
                                      source=item.source, duration=item.duration, reference=item.reference, text=hyp,
                                      token_ids=ids, token_times=times, token_confidences=[0.9] * len(ids),
                                      confidence=0.9, decoding=label, shard_id="s", worker=t.worker))
        return DecodedShard(task=task, rows=rows, windows=[], result=ShardResult(shard_id="s", part_uri=task.part_uri))

    writes = []
    for _ in range(args.repeats):
        d = decoded()
        started = time.perf_counter()
        t.write_shard(d)
        writes.append(time.perf_counter() - started)
    rng = np.random.default_rng(0)
    audio = ShardAudio(samples=[(0.05 * rng.standard_normal(int(args.cut_seconds * 16000))).astype(np.float32)
                                for _ in items], errors=[None] * len(items), durations=[args.cut_seconds] * len(items))
    plans = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        t.plan_shard(task, audio)
        plans.append(time.perf_counter() - started)
    write, plan = statistics.median(writes), statistics.median(plans)
    shard_audio = args.cuts * args.cut_seconds
    print(json.dumps({
        "cuts": args.cuts, "cut_seconds": args.cut_seconds, "shard_audio_seconds": shard_audio,
        "write_seconds_per_shard": round(write, 3), "write_ms_per_cut": round(1000 * write / args.cuts, 3),
        "plan_seconds_per_shard": round(plan, 3), "plan_ms_per_cut": round(1000 * plan / args.cuts, 3),
        "gpu_rtfx": args.gpu_rtfx, "gpu_seconds_per_shard": round(shard_audio / args.gpu_rtfx, 3),
        "host_share_if_serial": round((write + plan) / (write + plan + shard_audio / args.gpu_rtfx), 3),
    }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
