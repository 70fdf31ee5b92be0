"""How much decoded audio waits in Ray's object store during a run (not a test).

A run whose model stage is slower than its audio stage: a stand-in model sleeps
``--model-seconds`` per shard (the audio stage decodes real WAV files, shards of
``--cuts-per-shard`` cuts of ``--cut-seconds``). While it runs, the driver samples the object
store's use (``ray.available_resources()`` against ``ray.cluster_resources()``) every 0.2 s.
Without backpressure the audio stage would decode every shard ahead of the slow model and the
store would hold the whole corpus; Ray Data's streaming executor should keep it to a few shards.

    python bench/object_store.py [--shards 60] [--model-seconds 0.5]

Prints JSON: the peak use in MB and in shards' worth of audio, against the whole run's audio.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from orchestration import StandInModel, corpus, tiny_model  # noqa: E402


class SlowModel(StandInModel):
    """The stand-in model, slower than the audio stage: ``delay`` seconds per shard on its model thread."""

    delay = 0.5

    def __init__(self, actor_config, settings, ledger=None):
        super().__init__(actor_config, settings, ledger)
        self.transcriber.delay = self.delay


def main() -> int:
    p = argparse.ArgumentParser(prog="bench/object_store.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", type=int, default=60)
    p.add_argument("--cuts-per-shard", type=int, default=10)
    p.add_argument("--cut-seconds", type=float, default=10.0)
    p.add_argument("--model-seconds", type=float, default=0.5, help="the stand-in model's time per shard")
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "zipscribe-bench" / "object_store")
    args = p.parse_args()

    import ray

    from pipeline.run.config import TranscribeConfig
    from pipeline.run.driver import run

    model = tiny_model(args.workdir)
    manifest = corpus(args.workdir / f"audio-{args.cut_seconds:g}", args.shards, args.cuts_per_shard, args.cut_seconds)
    ray.init(include_dashboard=False, logging_level=logging.WARNING)
    total = ray.cluster_resources()["object_store_memory"]
    samples: list[float] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append(total - ray.available_resources().get("object_store_memory", total))
            time.sleep(0.2)

    SlowModel.delay = args.model_seconds
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    cfg = TranscribeConfig(manifest=[str(manifest)], model=str(model), output=tempfile.mkdtemp(dir=args.workdir),
                           run_id="store", shard_size=args.cuts_per_shard, num_actors="1", progress=False)
    started = time.perf_counter()
    summary = run(cfg, model_stage=SlowModel)
    done.set()
    sampler.join()
    shard_mb = args.cuts_per_shard * args.cut_seconds * 16000 * 4 / 1e6
    peak_mb = max(samples) / 1e6
    result = {
        "shards": summary.shards_done, "wall_seconds": round(time.perf_counter() - started, 1),
        "shard_audio_mb": round(shard_mb, 1), "run_audio_mb": round(shard_mb * summary.shards_done, 1),
        "object_store_peak_mb": round(peak_mb, 1), "object_store_peak_shards": round(peak_mb / shard_mb, 1),
        "object_store_median_mb": round(sorted(samples)[len(samples) // 2] / 1e6, 1),
        "object_store_capacity_mb": round(total / 1e6, 1), "samples": len(samples),
    }
    print(json.dumps(result, indent=1))
    print(f"peak object store use {peak_mb:.0f} MB = {peak_mb / shard_mb:.1f} shards' audio, of "
          f"{shard_mb * summary.shards_done:.0f} MB decoded in the run", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
