"""Sizing the actor pool from what the Ray cluster has."""

from __future__ import annotations

from .config import TranscribeConfig

__all__ = ["plan_resources"]


def plan_resources(cluster: dict[str, float], cfg: TranscribeConfig) -> tuple[int, dict[str, float]]:
    """Actor count and per-actor resources from what the cluster has.

    GPUs: one actor per GPU (``gpus_per_actor`` 1) with 1 CPU each for its
    loader threads. No GPUs: actors of ``cpus_per_actor`` CPUs (default: all
    CPUs up to 4, so a 2-CPU machine gets one 2-CPU actor, whose torch uses
    both cores). GPUs are never requested on a cluster without them.
    """
    total_cpus = float(cluster.get("CPU", 1))
    total_gpus = float(cluster.get("GPU", 0))
    gpus = cfg.gpus_per_actor
    if gpus is None:
        gpus = 1.0 if total_gpus >= 1 else 0.0
    if gpus > 0 and total_gpus <= 0:
        raise RuntimeError("--gpus-per-actor > 0 but the Ray cluster has no GPUs (set it to 0 to run on CPU)")
    if gpus > 0:
        cpus = cfg.cpus_per_actor or 1.0
        fit = int(total_gpus / gpus + 1e-9)
    else:
        cpus = cfg.cpus_per_actor or float(max(1, min(4, int(total_cpus))))
        fit = max(1, int(total_cpus / cpus + 1e-9))
    actors = cfg.num_actors or fit
    resources = {"num_cpus": cpus, "num_gpus": gpus}
    return actors, resources
