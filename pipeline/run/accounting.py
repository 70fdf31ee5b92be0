"""A run's account: the resources it held (:mod:`pipeline.run.usage`) and what they cost
(:mod:`pipeline.run.cost`), as the run summary carries them (``resources``, ``cost``)."""

from __future__ import annotations

import logging
import time
from typing import Any, Optional, Sequence

from .cost import Prices, compute_cost
from .usage import Held, actor_intervals, measure, node_types, process_ends

__all__ = ["account"]

log = logging.getLogger("zipscribe.accounting")


def account(task_holds: Sequence[dict[str, Any]], actor_processes: Sequence[dict[str, Any]], *,
            waiting_seconds: float, stitch_seconds: float, transcribed_seconds: float,
            prices: Optional[Prices]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The summary's ``resources`` and ``cost`` of a run (needs its Ray connection).

    ``task_holds``: the :class:`~pipeline.run.usage.Held` dicts its tasks measured;
    ``actor_processes``: the model actors' process records (``RunLedger.actor_up``), whose ends
    are read from Ray's control store (waiting some seconds for the pool's processes to end);
    ``transcribed_seconds``: audio this run transcribed (not shards skipped); ``prices``: none
    means no cost (``cost`` is then empty)."""
    notes = []
    ends = process_ends(actor_processes) if actor_processes else []
    alive = sum(end is None for end in ends)
    if alive:
        notes.append(f"{alive} model actor process(es) with no recorded end when the run ended: counted until the "
                     "next process of the same actor, or until then")
    holds = [Held.from_dict(d) for d in task_holds] + actor_intervals(actor_processes, ends, time.time())
    try:
        types = node_types()
    except Exception as exc:  # noqa: BLE001 - the totals stand without the names
        log.warning("could not read the cluster's node types: %s", exc)
        types = {}
    usage = measure(holds, types, waiting_seconds=waiting_seconds, stitch_seconds=stitch_seconds, notes=notes)
    cost = compute_cost(usage, prices, transcribed_seconds / 3600).as_dict() if prices is not None else {}
    return usage.as_dict(), cost
