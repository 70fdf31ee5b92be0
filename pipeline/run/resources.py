"""Sizing the stages from what the Ray cluster's nodes have, and waiting for an autoscaler.

Sizes come from single nodes, not the cluster's total: an actor must fit on one node. Without
GPUs each core gets a model actor of one torch thread, and a node's actors together take its
CPUs less one audio task's share, so the audio stage always has room beside them: independent
single-thread models on a node's cores keep every core busy, where one model's threads wait for
each other at every operator and a slice stolen from one thread stalls them all
(``bench/pipeline_overhead.py`` on 2 cores: the model alone as 2 one-thread processes, RTFx 91,
against 77 as one two-thread process; the job's steady RTFx 81 with two one-thread actors,
against 63 with one two-thread actor). ``--cpus-per-actor`` gives fewer, multi-threaded actors
instead (torch uses that many threads: fewer model copies in memory). With GPUs each actor takes
``--gpus-per-actor`` and one CPU. ``--num-actors`` fixes the pool (``N``) or bounds its
autoscaling (``MIN:MAX``); by default the pool is as large as the cluster holds now (at least
one actor).

A cluster that cannot host the pool's largest size is asked for it (:class:`NodeRequest`: a
placement group, which every Ray autoscaler acts on, removed once placed); a cluster that cannot
host the pool's smallest size yet (an autoscaling GPU group that starts at zero) is waited for,
up to ``--resource-timeout`` seconds, saying so while it waits. Ray Data then grows the pool
within ``--num-actors MIN:MAX`` while work waits and the nodes have room.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from .config import TranscribeConfig

__all__ = ["NodeRequest", "ResourceTimeoutError", "StageResources", "alive_nodes", "capacity", "parse_num_actors",
           "plan_resources", "wait_for_resources"]

log = logging.getLogger("zipscribe.resources")


class ResourceTimeoutError(RuntimeError):
    """No node that can host a model actor appeared within the timeout."""


@dataclass(frozen=True)
class StageResources:
    """Resources of the model stage's actors and of the audio stage's tasks."""

    min_actors: int
    max_actors: int
    cpus_per_actor: float
    gpus_per_actor: float
    audio_cpus: float
    threads: int  # torch threads per model actor

    def actor_bundle(self) -> dict[str, float]:
        bundle = {"CPU": self.cpus_per_actor}
        if self.gpus_per_actor:
            bundle["GPU"] = self.gpus_per_actor
        return bundle


def parse_num_actors(text: Optional[str]) -> Optional[tuple[int, int]]:
    """``"4"`` -> ``(4, 4)``, ``"1:8"`` -> ``(1, 8)``; ``None`` stays ``None`` (size from the cluster)."""
    if text is None:
        return None
    low, sep, high = str(text).partition(":")
    try:
        lo, hi = int(low), int(high) if sep else int(low)
    except ValueError:
        raise ValueError(f"--num-actors must be N or MIN:MAX, got {text!r}") from None
    if lo < 1 or hi < lo:
        raise ValueError(f"--num-actors needs 1 <= MIN <= MAX, got {text!r}")
    return lo, hi


def plan_resources(nodes: Sequence[dict[str, float]], cfg: TranscribeConfig) -> StageResources:
    """Stage resources for a cluster whose alive nodes have ``nodes`` (their total resources)."""
    largest_cpus = max((float(n.get("CPU", 0)) for n in nodes), default=0.0)
    total_gpus = sum(float(n.get("GPU", 0)) for n in nodes)
    gpus = cfg.gpus_per_actor if cfg.gpus_per_actor is not None else (1.0 if total_gpus >= 1 else 0.0)
    audio = cfg.audio_cpus if cfg.audio_cpus is not None else (1.0 if gpus > 0 else 0.5)
    if gpus > 0:
        cpus = cfg.cpus_per_actor if cfg.cpus_per_actor is not None else 1.0
        fit = int(total_gpus / gpus + 1e-9)
        threads = max(1, int(cpus))
    else:
        if cfg.cpus_per_actor is not None:
            cpus = cfg.cpus_per_actor
        else:  # one single-thread actor per core of the largest node, beside one audio task
            cores = max(1, round(largest_cpus))
            cpus = max(0.25, (largest_cpus - audio) / cores)
        fit = sum(int(max(0.0, float(n.get("CPU", 0)) - audio) / cpus + 1e-9) for n in nodes)
        threads = max(1, math.ceil(cpus - 1e-9))
    # with GPUs the pool starts at one actor and grows to the GPUs there are; on CPUs it is as
    # large as the nodes hold now
    default = (1, max(1, fit)) if gpus > 0 else (max(1, fit), max(1, fit))
    bounds = parse_num_actors(cfg.num_actors) or default
    return StageResources(min_actors=bounds[0], max_actors=bounds[1], cpus_per_actor=cpus, gpus_per_actor=gpus,
                          audio_cpus=audio, threads=threads)


def alive_nodes() -> list[dict[str, float]]:
    """Total resources of each alive node of the connected Ray cluster."""
    import ray

    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]


def capacity(bundle: dict[str, float], nodes: Sequence[dict[str, Any]]) -> int:
    """How many ``bundle`` s the nodes can host at once (each within one node)."""
    total = 0
    for node in nodes:
        fits = [int(float(node.get(k, 0)) / v + 1e-9) for k, v in bundle.items() if v > 0]
        total += min(fits) if fits else 0
    return total


class NodeRequest:
    """Asks the cluster's autoscaler for nodes that host ``count`` bundles, the way every Ray
    autoscaler understands: a placement group of them. The group is removed as soon as it is
    placed (the nodes stay for the autoscaler's idle timeout, and the actors take them) or when
    the run ends. On a cluster without an autoscaler it just stays pending until then."""

    def __init__(self, bundle: dict[str, float], count: int):
        import ray
        from ray.util.placement_group import placement_group

        self.group = placement_group([dict(bundle) for _ in range(count)])
        self._removed = threading.Lock()
        self._done = False
        self._watcher = threading.Thread(target=self._release_when_placed, args=(ray,), daemon=True)
        self._watcher.start()

    def _release_when_placed(self, ray: Any) -> None:
        try:
            ray.get(self.group.ready())
        except Exception:  # noqa: BLE001 - removed meanwhile, or Ray shut down: nothing to release
            return
        self.release()

    def release(self) -> None:
        from ray.util.placement_group import remove_placement_group

        with self._removed:
            if self._done:
                return
            self._done = True
            try:
                remove_placement_group(self.group)
            except Exception:  # noqa: BLE001 - already gone with the cluster
                pass


def wait_for_resources(bundle: dict[str, float], min_count: int, max_count: int, timeout: float,
                       nodes: Callable[[], list[dict[str, float]]] = alive_nodes, poll: float = 2.0,
                       request: Callable[[dict[str, float], int], Any] = NodeRequest) -> tuple[float, Any]:
    """Make room for the model stage's pool: when the nodes cannot host ``max_count`` actor
    bundles, ask the autoscaler for that many (``request``); then wait until they host
    ``min_count`` (at most ``timeout`` seconds, :class:`ResourceTimeoutError` after), saying so.
    Returns the seconds waited and the request (``None`` when none was needed), which the run
    releases when it ends."""
    now = capacity(bundle, nodes())
    pending = request(bundle, max_count) if now < max_count else None
    if now >= min_count:
        return 0.0, pending
    what = ", ".join(f"{k} {v:g}" for k, v in bundle.items())
    log.warning("no node can host a model actor (%s) yet: asked the autoscaler for %d and waiting up to %.0f s "
                "(--resource-timeout)", what, max_count, timeout)
    started = time.monotonic()
    last_note = started
    while time.monotonic() - started < timeout:
        time.sleep(poll)
        if capacity(bundle, nodes()) >= min_count:
            waited = time.monotonic() - started
            log.warning("a node that can host a model actor joined after %.0f s", waited)
            return waited, pending
        if time.monotonic() - last_note >= 30:
            last_note = time.monotonic()
            log.warning("still waiting for a node with %s (%.0f of %.0f s)", what, last_note - started, timeout)
    if pending is not None:
        pending.release()
    raise ResourceTimeoutError(f"no node with {what} joined the cluster within {timeout:.0f} s (--resource-timeout): "
                               "check the cluster's autoscaler and node groups, or ask for fewer resources "
                               "(--gpus-per-actor / --cpus-per-actor)")
