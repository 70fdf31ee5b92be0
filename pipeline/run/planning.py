"""Probing the durations of plain audio files in Ray tasks, not on the driver.

:func:`ray_prober` is a :data:`pipeline.inputs.durations.Prober` for the planning pass: the
sources of a bucket prefix or URI list go out in chunks to small Ray tasks (each reads its
chunk's headers on a few threads, :func:`pipeline.inputs.durations.probe_source`), a bounded
number of chunks at a time, and the durations come back in input order.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable, Iterator, Optional

from pipeline.inputs.durations import Prober, probe_source

__all__ = ["ray_prober"]


def _probe_chunk(sources: list[str], threads: int) -> list[Optional[float]]:
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(sources)))) as pool:
        return list(pool.map(probe_source, sources))


def ray_prober(chunk: int = 64, in_flight: int = 16, threads: int = 8, num_cpus: float = 0.25,
               runtime_env: Optional[dict[str, Any]] = None) -> Prober:
    """A prober that runs chunks of ``chunk`` sources as Ray tasks of ``num_cpus`` CPUs, at most
    ``in_flight`` chunks at once (needs a connected Ray)."""
    import ray

    remote = ray.remote(num_cpus=num_cpus, max_retries=3, runtime_env=runtime_env)(_probe_chunk)

    def probe(pairs: Iterable[tuple[Any, str]]) -> Iterator[tuple[Any, Optional[float]]]:
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
                yield from zip(done, ray.get(ref))
        if sources:
            submit()
        while pending:
            done, ref = pending.popleft()
            yield from zip(done, ray.get(ref))

    return probe
