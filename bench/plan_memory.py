"""Driver memory and time of planning large manifests (no audio, no model, no Ray).

Writes synthetic lhotse CutSet manifests of 10k, 100k and 1M cuts (durations
drawn like a read-speech corpus: 1-20 s, mean ~7 s) and, on each, in fresh
processes:

* ``plan``: what a run does first: streams the manifest into content-defined
  shards and writes the frozen plan (``pipeline.plan.frozen.write_plan``: one
  items file per shard, the index, the summary) to a local output directory;
* ``plan_only``: ``jobs/transcribe.py --plan-only``, which also packs every
  shard's batches (the padding ratio) and writes nothing.

Prints peak RSS, seconds, shards and padding as JSON.

    python bench/plan_memory.py [--sizes 10000,100000,1000000] [--workdir /tmp/zipscribe-plan]
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# the planning a run does, in a fresh process: peak RSS of that process and the plan's facts
PLAN = """
import json, resource, shutil, sys, time
sys.path.insert(0, sys.argv[1])
from pipeline.output.paths import RunPaths
from pipeline.plan.frozen import PlanOptions, write_plan
from pipeline.plan.items import plan_items
manifest, out, shard_size = sys.argv[2], sys.argv[3], int(sys.argv[4])
shutil.rmtree(out, ignore_errors=True)
options = PlanOptions(manifests=(manifest,), shard_size=shard_size)
started = time.perf_counter()
plan = write_plan(RunPaths(out, "bench"), options, plan_items(options.manifests))
print(json.dumps({"cuts": plan.cuts, "shards": plan.shards, "seconds": round(time.perf_counter() - started, 2),
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))
shutil.rmtree(out, ignore_errors=True)
"""


def write_manifest(path: Path, n: int, seed: int = 0) -> None:
    """A CutSet jsonl.gz of ``n`` mono cuts with one supervision each (built as dicts: fast)."""
    rng = random.Random(seed)
    with gzip.open(path, "wt", compresslevel=1) as f:
        for i in range(n):
            dur = round(min(20.0, max(1.0, rng.gammavariate(3.0, 2.4))), 2)
            samples = int(dur * 16000)
            rid = f"rec-{i:08d}"
            cut = {
                "id": f"cut-{i:08d}", "start": 0.0, "duration": dur, "channel": 0, "type": "MonoCut",
                "supervisions": [{"id": f"sup-{i:08d}", "recording_id": rid, "start": 0.0, "duration": dur,
                                  "channel": 0, "text": "some words here", "speaker": f"spk-{i % 997}"}],
                "recording": {"id": rid, "sources": [{"type": "url", "channels": [0], "source": f"s3://bucket/audio/{rid}.flac"}],
                              "sampling_rate": 16000, "num_samples": samples, "duration": dur, "channel_ids": [0]},
            }
            f.write(json.dumps(cut) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--workdir", default="/tmp/zipscribe-plan")
    parser.add_argument("--max-batch-seconds", type=float, default=160.0)
    parser.add_argument("--shard-size", type=int, default=1000)
    args = parser.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    results = []
    for n in (int(x) for x in args.sizes.split(",")):
        manifest = work / f"cuts-{n}.jsonl.gz"
        if not manifest.exists():
            t = time.perf_counter()
            write_manifest(manifest, n)
            print(f"wrote {manifest} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        written = subprocess.run([sys.executable, "-c", PLAN, str(REPO), str(manifest), str(work / f"out-{n}"),
                                  str(args.shard_size)], capture_output=True, text=True, check=True)
        out = subprocess.run(
            [sys.executable, str(REPO / "jobs" / "transcribe.py"), "--plan-only", "--manifest", str(manifest),
             "--max-batch-seconds", str(args.max_batch_seconds), "--shard-size", str(args.shard_size)],
            capture_output=True, text=True, check=True,
        )
        preview = json.loads(out.stdout)
        results.append({"cuts": n, "plan": json.loads(written.stdout),
                        "plan_only": {k: preview[k] for k in ("shards", "batches", "padding_ratio", "peak_rss_mb",
                                                              "wall_seconds")}})
        print(json.dumps(results[-1]), file=sys.stderr)
    print(json.dumps({"max_batch_seconds": args.max_batch_seconds, "shard_size": args.shard_size, "results": results}, indent=1))


if __name__ == "__main__":
    main()
