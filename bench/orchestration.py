"""Orchestration headroom: how many shards per second the pipeline itself can move (not a test).

The real run (``pipeline.run.driver.run``: the frozen plan, Ray Data, the audio stage decoding
real WAV files, result rows to the driver, one Parquet part per shard) with the model stage
replaced by a stand-in defined here, which turns every cut into an empty transcript at once
and writes the shard's part. What is left is the pipeline's own cost per shard: if it moves
``S`` shards/s, no cluster whose models consume fewer shards/s waits on it.

What a cluster needs: a GPU at ``--gpu-rtfx`` x real time consumes ``gpu_rtfx / shard_audio``
shards per second, where ``shard_audio`` is a default shard's audio (``--shard-size`` cuts of
``--cut-seconds``); ``--gpus`` of them need that many times more.

    python bench/orchestration.py [--shards 200] [--actors 4] [--repeats 2]

Prints JSON: steady shards/s per repeat (first part written to last; median, min, max), the same
with planning and start-up, and the verdict against the cluster's need.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.output import parquet  # noqa: E402
from pipeline.output.records import TranscriptRow, rows_to_table  # noqa: E402
from pipeline.run.model_stage import OverlappedShards, ShardTranscriber  # noqa: E402
from pipeline.run.shard_audio import ShardAudio  # noqa: E402
from pipeline.run.tasks import ShardResult, ShardTask  # noqa: E402
from pipeline.run.transcriber import DecodedShard  # noqa: E402


class StandInTranscriber:
    """In place of :class:`pipeline.run.transcriber.Transcriber`: every cut an empty transcript
    (after ``delay`` seconds on the model thread), the shard's part written as usual."""

    device = "cpu"
    delay = 0.0

    def __init__(self, run_id: str):
        self.run_id = run_id
        self.worker = f"stand-in:{os.getpid()}"

    def plan_shard(self, task: ShardTask, audio: ShardAudio) -> None:
        return None

    def decode_shard(self, task: ShardTask, audio: ShardAudio, plan: None = None) -> DecodedShard:
        if self.delay:
            time.sleep(self.delay)
        items = task.shard.items
        rows = [TranscriptRow(run_id=self.run_id, cut_id=i.cut_id, status="ok", text="", duration=i.duration)
                for i in items]
        result = ShardResult(shard_id=task.shard.shard_id, part_uri=task.part_uri, cuts_ok=len(rows),
                             audio_seconds=sum(i.duration or 0.0 for i in items), worker=self.worker,
                             device=self.device, load_seconds=audio.load_seconds)
        return DecodedShard(task=task, rows=rows, windows=[], result=result)

    def write_shard(self, decoded: DecodedShard) -> ShardResult:
        task = decoded.task
        parquet.write_part(task.part_uri, rows_to_table(decoded.rows), task.fingerprint, summary=decoded.result.as_dict())
        return decoded.result


class StandInModel(ShardTranscriber):
    """The model stage without a model: the product's own per-shard path (ledger, items, audio
    unpacking, model and writer threads, result rows) around a :class:`StandInTranscriber`."""

    def __init__(self, actor_config, settings, ledger=None):  # noqa: D107 - no model to load
        import ray

        self.settings, self.ledger = settings, ledger
        self.node = ray.get_runtime_context().get_node_id()
        self._model_thread = ThreadPoolExecutor(max_workers=1)
        self.transcriber = StandInTranscriber(settings.run_id)
        self.shards = OverlappedShards(self.transcriber, settings.write_attempts, self._model_thread, self._model_call)


def corpus(workdir: Path, shards: int, cuts_per_shard: int, cut_seconds: float) -> Path:
    """``shards * cuts_per_shard`` cuts over a handful of real WAV files, as a lhotse manifest."""
    workdir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    wavs = []
    for k in range(8):
        path = workdir / f"noise-{k}.wav"
        sf.write(str(path), (0.05 * rng.standard_normal(int(16000 * cut_seconds))).astype(np.float32), 16000,
                 subtype="PCM_16")
        wavs.append(path)
    manifest = workdir / f"cuts-{shards * cuts_per_shard}.jsonl"
    with manifest.open("w") as f:
        for i in range(shards * cuts_per_shard):
            wav = wavs[i % len(wavs)]
            rec = {"id": f"r{i}", "sources": [{"type": "file", "channels": [0], "source": str(wav)}],
                   "sampling_rate": 16000, "num_samples": int(16000 * cut_seconds), "duration": cut_seconds,
                   "channel_ids": [0]}
            f.write(json.dumps({"id": f"c{i:07d}", "start": 0, "duration": cut_seconds, "channel": 0,
                                "type": "MonoCut", "supervisions": [], "recording": rec}) + "\n")
    return manifest


def tiny_model(workdir: Path) -> Path:
    """The test suite's tiny random model (built once under ``workdir``): the driver loads it
    once to check it; the stand-in model stage never does."""
    model = workdir / "model"
    if not (model / "pretrained.pt").exists():
        sys.path.insert(0, str(REPO / "tests"))
        from helpers import make_tiny_model_dir

        model.mkdir(parents=True, exist_ok=True)
        make_tiny_model_dir(model)
    return model


def main() -> int:
    p = argparse.ArgumentParser(prog="bench/orchestration.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", type=int, default=200, help="shards per run (default 200)")
    p.add_argument("--cuts-per-shard", type=int, default=4, help="cuts per shard in the bench (default 4: small, so "
                                                                  "decoding costs little and the per-shard cost shows)")
    p.add_argument("--actors", type=int, default=4, help="model-stage actors (default 4)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--gpu-rtfx", type=float, default=10000.0, help="real-time factor of one GPU (default 10000)")
    p.add_argument("--gpus", type=int, default=16)
    p.add_argument("--shard-size", type=int, default=1000, help="cuts of a default shard (default 1000, the job's)")
    p.add_argument("--cut-seconds", type=float, default=10.0, help="audio of a typical cut (default 10 s)")
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "zipscribe-bench" / "orchestration")
    args = p.parse_args()

    import ray

    from pipeline.run.config import TranscribeConfig
    from pipeline.run.driver import run

    model = tiny_model(args.workdir)
    manifest = corpus(args.workdir / "audio", args.shards, args.cuts_per_shard, 1.0)
    ray.init(include_dashboard=False, logging_level=logging.WARNING)
    cpus = ray.cluster_resources().get("CPU", 2)
    rates, whole = [], []
    for repeat in range(args.repeats):
        out = tempfile.mkdtemp(prefix="orch-", dir=args.workdir)
        # shard size 1 * cuts-per-shard on average; CPUs split so 4 actors and the audio stage fit
        cfg = TranscribeConfig(manifest=[str(manifest)], model=str(model), output=out, run_id=f"orch{repeat}",
                               shard_size=args.cuts_per_shard, num_actors=str(args.actors),
                               cpus_per_actor=cpus / (2 * args.actors), audio_cpus=cpus / (4 * args.actors),
                               progress=False)
        started = time.perf_counter()
        summary = run(cfg, model_stage=StandInModel)
        wall = time.perf_counter() - started
        assert summary.shards_done == summary.shards_total and not summary.shards_failed
        # steady state: from the first part written to the last (start-up and teardown excluded)
        written = sorted(p.stat().st_mtime for p in (Path(out) / "transcripts").rglob("part-*.parquet"))
        rates.append((len(written) - 1) / (written[-1] - written[0]))
        whole.append(summary.shards_done / wall)
        print(f"repeat {repeat}: {summary.shards_done} shards in {wall:.1f} s ({whole[-1]:.1f} shards/s with planning "
              f"and start-up), {rates[-1]:.1f} shards/s steady", file=sys.stderr)
    shard_audio = args.shard_size * args.cut_seconds
    need = args.gpus * args.gpu_rtfx / shard_audio
    measured = statistics.median(rates)
    result = {
        "shards_per_second": {"median": round(measured, 2), "min": round(min(rates), 2), "max": round(max(rates), 2),
                              "runs": [round(r, 2) for r in rates]},  # steady: first part to last
        "shards_per_second_with_startup": [round(r, 2) for r in whole],
        "actors": args.actors, "shards_per_run": args.shards, "cuts_per_shard": args.cuts_per_shard,
        "cpus": cpus,
        "cluster_need": {"gpus": args.gpus, "gpu_rtfx": args.gpu_rtfx, "shard_size": args.shard_size,
                         "cut_seconds": args.cut_seconds, "shard_audio_seconds": shard_audio,
                         "shards_per_second": round(need, 2)},
        "headroom": round(measured / need, 1),
        "verdict": (f"{'PASS' if measured >= need else 'FAIL'}: the pipeline moves {measured:.1f} shards/s through "
                    f"{args.actors} stand-in actors on {cpus:g} CPUs; {args.gpus} GPUs at {args.gpu_rtfx:g}x with "
                    f"{args.shard_size}-cut shards of {args.cut_seconds:g} s cuts need {need:.1f} shards/s"),
    }
    print(json.dumps(result, indent=1))
    print(result["verdict"], file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
