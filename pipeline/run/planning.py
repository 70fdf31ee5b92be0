"""Planning on Ray: the units of a run's inputs planned in Ray tasks, and the durations of plain
audio files probed in Ray tasks, not on the driver.

:func:`ray_planner` is a :data:`pipeline.plan.units.Planner`: each unit (a manifest file, a Shar
shard, a list, a prefix) is planned by a task (:func:`pipeline.plan.units.plan_unit`) that writes
its shards' items files itself and sends back one small row per shard; a bounded number of units
are in flight, and the driver takes their plans in input order.

:func:`ray_prober` is a :data:`pipeline.inputs.durations.Prober` for such a task: the sources of a
bucket prefix or URI list go out in chunks to small Ray tasks (each reads its chunk's headers on a
few threads, :func:`pipeline.inputs.durations.probe_claim`), a bounded number of chunks at a time,
and the durations come back in input order.

Both kinds of task measure their own hold on their node's resources
(:func:`pipeline.run.usage.held_since`) and hand it back with their result; a planner given a
``held`` list appends them there (the run's resources, :mod:`pipeline.run.usage`).
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable, Iterator, Optional, Sequence

from pipeline.inputs.durations import Probe, Prober, probe_claim
from pipeline.inputs.items import ManifestError
from pipeline.inputs.sources import InputUnit
from pipeline.io.storage import StorageError
from pipeline.output.paths import RunPaths
from pipeline.plan.units import Batching, PlanOptions, Planner, UnitPlan, in_order, plan_unit

from .usage import held_since

__all__ = ["ray_planner", "ray_prober"]


def _probe_chunk(sources: list[str], threads: int) -> tuple[list[Probe], dict[str, Any]]:
    started = time.time()
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(sources)))) as pool:
        probes = list(pool.map(probe_claim, sources))
    return probes, held_since("probe task", started).to_dict()


def ray_prober(chunk: int = 64, in_flight: int = 16, threads: int = 8, num_cpus: float = 0.25,
               runtime_env: Optional[dict[str, Any]] = None, held: Optional[list[dict[str, Any]]] = None) -> Prober:
    """A prober that runs chunks of ``chunk`` sources as Ray tasks of ``num_cpus`` CPUs, at most
    ``in_flight`` chunks at once (needs a connected Ray); each task's hold is appended to ``held``."""
    import ray

    remote = ray.remote(num_cpus=num_cpus, max_retries=3, runtime_env=runtime_env)(_probe_chunk)
    holds = held if held is not None else []

    def results(ref: Any) -> list[Probe]:
        probes, hold = ray.get(ref)
        holds.append(hold)
        return probes

    def probe(pairs: Iterable[tuple[Any, str]]) -> Iterator[tuple[Any, Probe]]:
        pending: deque[tuple[list[Any], Any]] = deque()
        payloads: list[Any] = []
        sources: list[str] = []

        def submit() -> None:
            pending.append((list(payloads), remote.remote(list(sources), threads)))
            payloads.clear()
            sources.clear()

        for payload, source in pairs:
            payloads.append(payload)
            sources.append(source)
            if len(sources) >= chunk:
                submit()
            while len(pending) >= in_flight:
                done, ref = pending.popleft()
                yield from zip(done, results(ref))
        if sources:
            submit()
        while pending:
            done, ref = pending.popleft()
            yield from zip(done, results(ref))

    return probe


def _plan_unit_task(unit: InputUnit, options: PlanOptions, paths: Optional[RunPaths],
                    batching: Optional[Batching]) -> tuple[Optional[UnitPlan], Optional[Exception], list[dict[str, Any]]]:
    """One unit planned in a Ray task; a bad input comes back as its error (the driver raises it as
    it is, one line), not as a task failure with a traceback. Last: the holds of this task and of
    its probe tasks."""
    started = time.time()
    held: list[dict[str, Any]] = []
    try:
        plan, error = plan_unit(unit, options, paths, batching, prober=ray_prober(held=held)), None
    except (ManifestError, StorageError) as exc:
        plan, error = None, exc
    return plan, error, held + [held_since("planning task", started).to_dict()]


def ray_planner(num_cpus: float = 1.0, in_flight: Optional[int] = None,
                runtime_env: Optional[dict[str, Any]] = None, held: Optional[list[dict[str, Any]]] = None) -> Planner:
    """A planner that plans each unit in a Ray task of ``num_cpus`` CPUs, at most ``in_flight``
    units at once (default: twice the cluster's CPUs), retried if its worker dies (a unit's plan is
    the same each time, its files rewritten alike); needs a connected Ray. The tasks' holds (and
    their probe tasks') are appended to ``held``."""
    import ray

    remote = ray.remote(num_cpus=num_cpus, max_retries=3, runtime_env=runtime_env)(_plan_unit_task)
    holds = held if held is not None else []

    def plan(units: Sequence[InputUnit], options: PlanOptions, paths: Optional[RunPaths] = None,
             batching: Optional[Batching] = None) -> Iterator[UnitPlan]:
        flight = in_flight or max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
        refs = (remote.remote(unit, options, paths, batching) for unit in units)
        for unit_plan, error, unit_held in in_order(refs, flight, ray.get):
            holds.extend(unit_held)
            if error is not None:
                raise error
            yield unit_plan

    return plan
