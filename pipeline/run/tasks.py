"""What the stages pass around: a shard's task (its outputs and fingerprint), its result, and the
run's settings every worker needs. Plain dataclasses, no torch: the CPU stages import this."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from pipeline.output.paths import RunPaths
from pipeline.plan.shards import Shard

__all__ = ["ShardResult", "ShardTask", "StageSettings", "shard_task"]


@dataclass
class ShardTask:
    """A shard with where its outputs go and the fingerprint they carry."""

    shard: Shard
    fingerprint: str
    part_uri: str
    windows_part_uri: Optional[str] = None  # where the rows of the shard's long-cut windows go
    words_part_uri: Optional[str] = None  # where the words of the shard's (short) cuts go


@dataclass
class ShardResult:
    """What transcribing a shard did (stored in its part's metadata; resume reads it back)."""

    shard_id: str
    part_uri: str
    cuts_ok: int = 0
    cuts_error: int = 0
    windows_ok: int = 0  # windows of long cuts (their cuts are counted when stitched)
    windows_error: int = 0
    audio_seconds: float = 0.0
    model_input_seconds: float = 0.0  # audio_seconds less the silences cut out between pieces
    padded_seconds: float = 0.0
    batches: int = 0
    load_seconds: float = 0.0  # fetching and decoding the shard's audio (the audio stage, or process_shard)
    load_cpu_seconds: float = 0.0  # CPU seconds of that loading (its process and its ffmpeg children)
    bytes_fetched: int = 0  # bytes of audio objects read from storage for the shard
    bytes_needed: float = 0.0  # bytes the shard's audio takes in its objects (pipeline.io.ranges.ReadStats)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    wall_seconds: float = 0.0  # the model's time on the shard (decode_shard)
    write_seconds: float = 0.0  # scoring and writing its parts (write_shard, on the writer thread in a run)
    worker: str = ""
    device: str = ""
    precision: str = ""  # the encoder's, and why (model.precision)
    oom_splits: int = 0  # batches split in halves after running out of memory
    batch_budget_seconds: float = 0.0  # the actor's padded seconds per batch at the end of the shard
    hotword_cuts: int = 0  # cuts decoded with a hotword list (the run's, their own, or both merged)
    hotword_phrases: int = 0  # the phrases of those lists, summed over the cuts
    hotword_max_phrases: int = 0  # the longest of those lists

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class StageSettings:
    """What the workers of every stage need to know of the run (small, picklable)."""

    run_id: str
    output: str
    fingerprint_parts: tuple[str, ...]
    resume: bool = True
    audio_threads: int = 4
    write_attempts: int = 3
    max_audio_seconds: Optional[float] = 24 * 3600.0  # audio of unknown duration is not decoded past this
    metrics: bool = False  # record the run's live metrics (pipeline.run.metrics) in the stages' workers


def shard_task(shard: Shard, settings: StageSettings, fingerprint: Optional[str] = None) -> ShardTask:
    """Where a shard's outputs go, with its fingerprint."""
    paths = RunPaths(settings.output, settings.run_id)
    fp = fingerprint or shard.fingerprint(*settings.fingerprint_parts)
    windows = paths.windows_part(shard.shard_id) if any(i.is_window for i in shard.items) else None
    part = paths.part(shard.shard_id)
    return ShardTask(shard=shard, fingerprint=fp, part_uri=part, windows_part_uri=windows,
                     words_part_uri=paths.words_part(part))
