"""Live metrics of a run through Ray's metrics system (``ray.util.metrics``), for Prometheus.

Each Ray node's metrics agent serves what the processes on it record at
``http://<node>:<metrics-export-port>/metrics`` (``ray start --metrics-export-port``; KubeRay
names that port ``metrics``, 8080). Ray prefixes every name with ``ray_`` and exports a counter
as ``<name>_total``: :data:`METRICS` has the names as Prometheus sees them. Every metric carries
``run_id``; those about work done also ``node_type`` (:func:`pipeline.run.usage.node_type`: the
node group of the actor that did it; ``resumed`` for shards an earlier run did).

Who records what:

* the **driver**: the plan (audio seconds and shards planned), and, as each shard's result
  reaches it, audio seconds done, shards by status (done, skipped, failed) and cuts by status,
  the same numbers the run summary adds up, so at the end the counters equal the summary;
* the **audio stage's tasks**: shards whose audio is loaded;
* the **model actors**: shards started and finished, retries (a shard started again), the model's
  audio and busy seconds (RTFx = their rates' ratio), padded and model input seconds (padding),
  batches split after an out-of-memory, and a histogram of the model's seconds per shard.

Queue depths between stages are differences of these counters (loaded - started: shards whose
audio waits for a model actor; started - finished: shards in the actors), taken by the dashboard
(``infra/grafana/zipscribe.json``). Counters are kept by the node's agent after the process that
recorded them ended; gauges only while refreshed (Ray drops them after two report intervals).

With metrics off (``--metrics off``; a run's own private local Ray by default) nothing is
recorded: :func:`recorder` gives a :class:`NoMetrics`.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Mapping, Optional

__all__ = ["METRICS", "MetricSpec", "NoMetrics", "RunMetrics", "exported_name", "recorder"]

log = logging.getLogger("zipscribe.metrics")

#: histogram buckets of the model's seconds per shard
SHARD_SECONDS_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)


@dataclass(frozen=True)
class MetricSpec:
    """One metric: its name as recorded (Ray adds ``ray_`` and, to counters, ``_total``), kind
    (counter, gauge, histogram), tags and meaning."""

    name: str
    kind: str
    tags: tuple[str, ...]
    description: str


_RUN = ("run_id",)
_WORK = ("run_id", "node_type")
METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("zipscribe_audio_planned_seconds", "counter", _RUN, "Seconds of audio in the run's plan."),
    MetricSpec("zipscribe_shards_planned", "counter", _RUN, "Shards in the run's plan."),
    MetricSpec("zipscribe_audio_done_seconds", "counter", _WORK,
               "Seconds of audio of the shards finished (done now, or skipped: done by an earlier run)."),
    MetricSpec("zipscribe_shards", "counter", ("run_id", "node_type", "status"),
               "Shards finished, by status: done, skipped (an earlier run did it), failed."),
    MetricSpec("zipscribe_shards_retried", "counter", _WORK, "Shards started again after a failed attempt."),
    MetricSpec("zipscribe_cuts", "counter", ("run_id", "node_type", "status"),
               "Cuts written, by status (ok, error), as the run summary counts them."),
    MetricSpec("zipscribe_stage_shards", "counter", ("run_id", "node_type", "stage"),
               "Shards through each stage point: audio_loaded, model_started, model_finished."),
    MetricSpec("zipscribe_model_audio_seconds", "counter", _WORK, "Seconds of audio the model actors transcribed."),
    MetricSpec("zipscribe_model_busy_seconds", "counter", _WORK,
               "Seconds the model actors spent in features, encoder and decoding."),
    MetricSpec("zipscribe_model_input_seconds", "counter", _WORK, "Seconds of audio in the model's batches."),
    MetricSpec("zipscribe_model_padded_seconds", "counter", _WORK, "Padded seconds of the model's batches."),
    MetricSpec("zipscribe_oom_splits", "counter", _WORK, "Batches split in halves after running out of device memory."),
    MetricSpec("zipscribe_model_rtfx", "gauge", _WORK, "The last shard's model RTFx (audio seconds per busy second)."),
    MetricSpec("zipscribe_shard_model_seconds", "histogram", _WORK, "The model's seconds on one shard."),
)
_SPECS = {m.name: m for m in METRICS}


def exported_name(spec: MetricSpec) -> list[str]:
    """The series names Prometheus gets for ``spec`` from Ray."""
    base = f"ray_{spec.name}"
    if spec.kind == "counter":
        return [f"{base}_total"]
    if spec.kind == "histogram":
        return [f"{base}_bucket", f"{base}_sum", f"{base}_count"]
    return [base]


class NoMetrics:
    """Records nothing (metrics off)."""

    enabled = False

    def inc(self, name: str, value: float = 1.0, **tags: str) -> None:
        """Nothing."""

    def set(self, name: str, value: float, **tags: str) -> None:
        """Nothing."""

    def observe(self, name: str, value: float, **tags: str) -> None:
        """Nothing."""

    def zero(self, name: str, **tags: str) -> None:
        """Nothing."""

    def node_type(self, node_id: Optional[str]) -> str:
        return ""


class RunMetrics(NoMetrics):
    """Records the metrics of :data:`METRICS` for one run from this process (any Ray process:
    driver, task or actor); tags missing from a call are empty, ``run_id`` is always the run's."""

    enabled = True

    def __init__(self, run_id: str):
        from ray.util import metrics

        self.run_id = run_id
        self._metrics: dict[str, Any] = {}
        self._types: dict[str, str] = {}
        self._lock = threading.Lock()
        kinds = {"counter": metrics.Counter, "gauge": metrics.Gauge}
        for spec in METRICS:
            if spec.kind == "histogram":
                self._metrics[spec.name] = metrics.Histogram(spec.name, description=spec.description,
                                                             boundaries=list(SHARD_SECONDS_BUCKETS), tag_keys=spec.tags)
            else:
                self._metrics[spec.name] = kinds[spec.kind](spec.name, description=spec.description, tag_keys=spec.tags)

    def _tags(self, name: str, tags: Mapping[str, str]) -> dict[str, str]:
        out = {k: str(tags.get(k) or "") for k in _SPECS[name].tags}
        out["run_id"] = self.run_id
        return out

    def inc(self, name: str, value: float = 1.0, **tags: str) -> None:
        """Add ``value`` to counter ``name``."""
        if value > 0:
            self._metrics[name].inc(float(value), tags=self._tags(name, tags))

    def zero(self, name: str, **tags: str) -> None:
        """Make counter ``name``'s series exist at 0 (Ray's ``Counter.inc`` takes only positive
        values): a panel then shows 0 out-of-memory splits instead of no data."""
        record = getattr(self._metrics[name], "_record", None)
        if record is not None:
            record(0.0, tags=self._tags(name, tags))

    def set(self, name: str, value: float, **tags: str) -> None:
        """Set gauge ``name``."""
        self._metrics[name].set(float(value), tags=self._tags(name, tags))

    def observe(self, name: str, value: float, **tags: str) -> None:
        """Add ``value`` to histogram ``name``."""
        self._metrics[name].observe(float(value), tags=self._tags(name, tags))

    def node_type(self, node_id: Optional[str]) -> str:
        """The type of Ray node ``node_id`` (:func:`pipeline.run.usage.node_type`), looked up once
        per node; ``resumed`` for none (a shard an earlier run did)."""
        if not node_id:
            return "resumed"
        with self._lock:
            if node_id not in self._types:
                from .usage import node_types

                try:
                    self._types.update(node_types())
                except Exception:  # noqa: BLE001 - the tag only
                    log.debug("could not read the cluster's nodes", exc_info=True)
            return self._types.setdefault(node_id, "unknown")


def recorder(run_id: str, enabled: bool) -> NoMetrics:
    """The metrics of run ``run_id`` from this process: a :class:`RunMetrics`, or a
    :class:`NoMetrics` when ``enabled`` is false or Ray's metrics cannot be made here."""
    if not enabled:
        return NoMetrics()
    try:
        return RunMetrics(run_id)
    except Exception as exc:  # noqa: BLE001 - a run without metrics is still a run
        log.warning("metrics are off in this process: %s", exc)
        return NoMetrics()
