"""A run's options (:class:`TranscribeConfig`) and run ids."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Optional, Sequence

from pipeline.longform.pauses import PauseSplit
from pipeline.output.paths import check_run_id

from .cost import Prices

__all__ = ["TranscribeConfig", "check_run_id", "decoding_list", "long_audio_label", "new_run_id"]


@dataclass
class TranscribeConfig:
    """Everything a run needs; ``jobs/transcribe.py`` fills it from the command line."""

    manifest: list[str]
    model: str
    output: str
    run_id: Optional[str] = None
    dataset: Optional[str] = None
    #: decoding options (``model.decoding.DecodingConfig`` fields); ``method`` is the first method
    decoding: dict[str, Any] = field(default_factory=dict)
    #: further methods decoded from the same encoder output of every batch (``--decoding`` given
    #: several times): each cut gets one row per method, all in the shard's one part
    extra_methods: tuple[str, ...] = ()
    #: icefall's choice of weights: epoch / iter / avg / use_averaged_model (model.weights.WeightsSelection)
    weights: dict[str, Any] = field(default_factory=dict)
    num_actors: Optional[str] = None  # "N" or "MIN:MAX"; None: from the cluster (pipeline.run.resources)
    gpus_per_actor: Optional[float] = None
    cpus_per_actor: Optional[float] = None
    audio_cpus: Optional[float] = None  # CPUs of one audio-stage task
    device: str = "auto"  # auto | cuda | cpu
    resource_timeout: float = 600.0  # seconds to wait for an autoscaler to add a node an actor fits on
    #: padded seconds per model batch; None: automatic (on CUDA from the GPU's memory and the model's
    #: measured cost, else 160: pipeline.run.device_memory); on CUDA a given value caps the automatic one
    max_batch_seconds: Optional[float] = None
    max_batch_size: Optional[int] = None
    shard_size: int = 1000
    max_attempts: int = 3  # tries per shard (actor deaths, failed writes); restarts per actor
    resume: bool = True
    replan: bool = False
    eta: bool = True
    amp_dtype: str = "auto"
    rescoring_dtype: str = "auto"
    backend: str = "torch"  # model.recognizer.BACKENDS: torch, onnxruntime, onnxruntime-int8
    normalizer: str = "english"
    progress: bool = True
    ray_address: Optional[str] = None
    max_cut_seconds: float = 30.0  # longer cuts are split into overlapping windows; <= 0: never
    window_overlap_seconds: float = 4.0
    segments: str = "cuts"  # or "supervisions": one row per supervision segment
    #: cuts longer than this (manifest durations, probed headers) are error rows; audio of unknown
    #: duration is not decoded past it
    max_recording_hours: float = 24.0
    #: windows of long cuts are transcribed as the speech between their pauses; None: whole
    pause_split: Optional[PauseSplit] = field(default_factory=PauseSplit)
    #: live metrics through Ray (pipeline.run.metrics): on, off, or auto (on when the run joins a
    #: cluster, whose nodes export them; off in a private local Ray)
    metrics: str = "auto"
    #: prices of the run's cost (pipeline.run.cost); None: no cost in the summary
    prices: Optional[Prices] = None
    #: contextual biasing: the run-level hotword list (a file or s3:// object, one phrase a line,
    #: optionally ``phrase :score``; :mod:`pipeline.inputs.hotwords`), merged with each cut's own
    hotwords: Optional[str] = None
    #: the bonus per matched token of phrases that do not give their own score; None: the model's
    #: (its config.json ``decoding.hotwords_score``, else 1.5)
    hotwords_score: Optional[float] = None

    def __post_init__(self) -> None:
        if self.metrics not in METRICS_MODES:
            raise ValueError(f"metrics must be one of {', '.join(METRICS_MODES)}, got {self.metrics!r}")


METRICS_MODES = ("auto", "on", "off")


def decoding_list(decoding: dict[str, Any], extra_methods: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The decodings of a run: ``decoding`` itself, then one copy per extra method."""
    return [dict(decoding)] + [{**decoding, "method": method} for method in extra_methods]


def new_run_id(prefix: str = "run") -> str:
    """A fresh run id: ``prefix``, the UTC time and a random suffix (``run-20261201T120000Z-1a2b3c``;
    run ids start with a letter)."""
    return f"{prefix}-" + datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def long_audio_label(cfg: TranscribeConfig) -> str:
    """How long audio is cut up, for fingerprints: a change redoes the shards it affects."""
    p = cfg.pause_split
    pauses = "off" if p is None else f"{p.min_pause_seconds}/{p.pad_seconds}/{p.threshold_db}"
    return f"windows={cfg.max_cut_seconds}/{cfg.window_overlap_seconds} pauses={pauses}"
