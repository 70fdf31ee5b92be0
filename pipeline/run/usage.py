"""The resources a run held, measured from the lifetimes of its actors and tasks (not estimated).

Every actor and task of a run that holds Ray resources leaves one :class:`Held` interval: the
node it ran on, when it started and ended, and the CPUs and GPUs Ray gave it
(``get_assigned_resources``, so a fractional GPU counts as its fraction):

* **model actors**: from the start of the actor's process (``/proc``: it holds its resources
  from then on, through the model's loading and warm-up) to the end of that process as Ray's
  control store (GCS) records it (the worker's end, which its node's raylet reports when the
  process is gone and its resources are free again; seconds after the actor was marked dead);
  an actor that Ray restarted counts each process;
* **tasks** (audio stage, planning, duration probes, stitching): from the start to the end of the
  task's function, measured in the task; attempts that failed and were retried are not seen.

:func:`measure` adds them up per node type: **GPU-hours** and **CPU core-hours** are the sums
of interval x resources; **node-hours** are, per node, the time during which at least one of
the run's actors or tasks held resources on it (the union of their intervals), so a node that
two actors share counts once, and a node's time before the run's first actor reached it (boot,
the autoscaler's idle timeout after the run) does not count. The driver and the run's ledger hold
no resources and count nowhere.

A node's type is its ``ray.io/node-group`` label (KubeRay's worker group, the autoscaler's node
type); nodes without one are named by what they have: ``head``, ``cpu8``, ``gpu1-cpu8``,
``L4x1-cpu8`` (with an accelerator-type label).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping, Optional, Sequence

__all__ = ["Held", "ResourceUsage", "TypeUsage", "actor_intervals", "held_since", "measure", "node_type",
           "node_types", "process_ends", "process_started_at", "union_seconds"]

#: the node label naming a node's group (KubeRay worker group, autoscaler node type)
NODE_GROUP_LABEL = "ray.io/node-group"
ACCELERATOR_LABEL = "ray.io/accelerator-type"


@dataclass(frozen=True)
class Held:
    """One actor's or task's hold on a node's resources: ``what`` held them (``model actor``,
    ``audio task``, ...), on which Ray node, from ``start`` to ``end`` (Unix seconds)."""

    what: str
    node_id: str
    start: float
    end: float
    cpus: float = 0.0
    gpus: float = 0.0

    @property
    def seconds(self) -> float:
        return max(0.0, self.end - self.start)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Held":
        return cls(what=str(d["what"]), node_id=str(d["node_id"]), start=float(d["start"]), end=float(d["end"]),
                   cpus=float(d.get("cpus", 0.0)), gpus=float(d.get("gpus", 0.0)))


_first_hold = True  # no task of this process has measured its hold yet


def held_since(what: str, start: float) -> Held:
    """The calling Ray task's hold from ``start`` until now, on its node, with the resources Ray
    assigned to it (none outside Ray). The first task a worker process runs holds its resources
    from the process's start: the process was started for it (and imported what it runs)."""
    global _first_hold
    if _first_hold:
        _first_hold = False
        start = min(start, process_started_at())
    node, resources = "", {}
    try:
        import ray

        if ray.is_initialized():
            ctx = ray.get_runtime_context()
            node, resources = ctx.get_node_id() or "", ctx.get_assigned_resources()
    except Exception:  # noqa: BLE001 - not in a Ray worker: nothing held
        pass
    return Held(what=what, node_id=node, start=start, end=time.time(), cpus=float(resources.get("CPU", 0.0)),
                gpus=float(resources.get("GPU", 0.0)))


def process_started_at() -> float:
    """Unix time at which this process started (Linux ``/proc``, to about 10 ms); now elsewhere."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime, in clock ticks after boot
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.time()


def actor_intervals(processes: Sequence[Mapping[str, Any]], ends: Sequence[Optional[float]], now: float,
                    what: str = "model actor") -> list[Held]:
    """Holds of actor processes from their starts to their ends.

    ``processes``: one record per actor process, as each reported it (``actor_id``, ``node_id``,
    ``start``, ``cpus``, ``gpus``); ``ends``: each one's end as Ray recorded it (Unix seconds), or
    ``None`` when unknown: then the start of the same actor's next process (Ray restarted it),
    else ``now`` (still alive)."""
    next_start: dict[int, float] = {}
    by_actor: dict[str, list[int]] = {}
    for i, p in enumerate(processes):
        by_actor.setdefault(str(p["actor_id"]), []).append(i)
    for indices in by_actor.values():
        indices.sort(key=lambda i: float(processes[i]["start"]))
        for a, b in zip(indices, indices[1:]):
            next_start[a] = float(processes[b]["start"])
    held = []
    for i, p in enumerate(processes):
        start = float(p["start"])
        end = ends[i] if ends[i] is not None else next_start.get(i, now)
        held.append(Held(what=what, node_id=str(p["node_id"]), start=start, end=max(start, end),
                         cpus=float(p.get("cpus", 0.0)), gpus=float(p.get("gpus", 0.0))))
    return held


def process_ends(processes: Sequence[Mapping[str, Any]], wait: float = 15.0,
                 poll: float = 0.25) -> list[Optional[float]]:
    """The end (Unix seconds) of each actor process (``node_id``, ``pid``) as Ray's control store
    records it, read directly (no dashboard needed): its worker's end, which the node's raylet
    reports once the process is gone. Waits up to ``wait`` seconds while some are still alive (Ray
    Data ends its actor pool as the execution ends); ``None`` for one alive then."""
    from ray._private import state
    from ray.core.generated import gcs_pb2

    wanted = {(str(p["node_id"]), int(p["pid"])) for p in processes}
    deadline = time.monotonic() + wait
    while True:
        ended: dict[tuple[str, int], float] = {}
        for raw in state.state._connect_and_get_accessor().get_worker_table():
            w = gcs_pb2.WorkerTableData.FromString(raw)
            key = (w.worker_address.node_id.hex(), int(w.pid))
            if key in wanted and not w.is_alive and w.end_time_ms > 0:
                ended[key] = w.end_time_ms / 1000
        if len(ended) == len(wanted) or time.monotonic() >= deadline:
            return [ended.get((str(p["node_id"]), int(p["pid"]))) for p in processes]
        time.sleep(poll)


def union_seconds(intervals: Iterable[tuple[float, float]]) -> float:
    """Seconds covered by at least one of the ``(start, end)`` intervals."""
    total, current_start, current_end = 0.0, None, None
    for start, end in sorted((s, e) for s, e in intervals if e > s):
        if current_end is None or start > current_end:
            if current_end is not None:
                total += current_end - current_start
            current_start, current_end = start, end
        else:
            current_end = max(current_end, end)
    if current_end is not None:
        total += current_end - current_start
    return total


def node_type(node: Mapping[str, Any]) -> str:
    """A node's type (see the module docstring) from its ``ray.nodes()`` entry."""
    labels = node.get("Labels") or {}
    if labels.get(NODE_GROUP_LABEL):
        return str(labels[NODE_GROUP_LABEL])
    resources = node.get("Resources") or {}
    if "node:__internal_head__" in resources:
        return "head"
    cpus, gpus = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
    name = f"cpu{cpus:g}"
    if gpus:
        name = f"{labels[ACCELERATOR_LABEL]}x{gpus:g}-{name}" if labels.get(ACCELERATOR_LABEL) else f"gpu{gpus:g}-{name}"
    return name


def node_types(nodes: Optional[Sequence[Mapping[str, Any]]] = None) -> dict[str, str]:
    """Node id -> node type, for every node Ray knows of (alive or not; from ``ray.nodes()``
    unless ``nodes`` is given)."""
    if nodes is None:
        import ray

        nodes = ray.nodes()
    return {str(n["NodeID"]): node_type(n) for n in nodes}


@dataclass(frozen=True)
class TypeUsage:
    """What the run held on the nodes of one type."""

    nodes: int
    node_hours: float
    gpu_hours: float
    cpu_core_hours: float


@dataclass(frozen=True)
class ResourceUsage:
    """The resources a run held (see the module docstring), in total, per node type and per kind
    of holder, with the run's idle time waiting for nodes and its time stitching apart."""

    node_hours: float
    gpu_hours: float
    cpu_core_hours: float
    by_node_type: dict[str, TypeUsage] = field(default_factory=dict)
    #: per kind of holder (model actor, audio task, ...): ``holds``, ``gpu_hours``, ``cpu_core_hours``
    by_holder: dict[str, dict[str, float]] = field(default_factory=dict)
    #: seconds the run waited for a node a model actor fits on (an autoscaler adding nodes), holding nothing
    waiting_seconds: float = 0.0
    #: wall seconds of the stitching of long recordings after the shards (its tasks are in by_holder)
    stitch_seconds: float = 0.0
    notes: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure(held: Sequence[Held], types: Mapping[str, str], *, waiting_seconds: float = 0.0,
            stitch_seconds: float = 0.0, notes: Sequence[str] = ()) -> ResourceUsage:
    """Add up holds into a :class:`ResourceUsage`; ``types`` maps node ids to node types (a node
    it does not know is of type ``unknown``). Holds of no resources count nowhere."""
    holding = [h for h in held if h.cpus > 0 or h.gpus > 0]
    per_node: dict[str, list[Held]] = {}
    for h in holding:
        per_node.setdefault(h.node_id, []).append(h)
    by_type: dict[str, dict[str, float]] = {}
    for node, hs in per_node.items():
        t = by_type.setdefault(types.get(node, "unknown"), {"nodes": 0, "node_s": 0.0, "gpu_s": 0.0, "cpu_s": 0.0})
        t["nodes"] += 1
        t["node_s"] += union_seconds((h.start, h.end) for h in hs)
        t["gpu_s"] += sum(h.seconds * h.gpus for h in hs)
        t["cpu_s"] += sum(h.seconds * h.cpus for h in hs)
    by_holder: dict[str, dict[str, float]] = {}
    for h in holding:
        k = by_holder.setdefault(h.what, {"holds": 0, "gpu_hours": 0.0, "cpu_core_hours": 0.0})
        k["holds"] += 1
        k["gpu_hours"] += h.seconds * h.gpus / 3600
        k["cpu_core_hours"] += h.seconds * h.cpus / 3600
    types_out = {name: TypeUsage(nodes=int(t["nodes"]), node_hours=t["node_s"] / 3600, gpu_hours=t["gpu_s"] / 3600,
                                 cpu_core_hours=t["cpu_s"] / 3600) for name, t in sorted(by_type.items())}
    return ResourceUsage(node_hours=sum(t.node_hours for t in types_out.values()),
                         gpu_hours=sum(t.gpu_hours for t in types_out.values()),
                         cpu_core_hours=sum(t.cpu_core_hours for t in types_out.values()),
                         by_node_type=types_out, by_holder=dict(sorted(by_holder.items())),
                         waiting_seconds=waiting_seconds, stitch_seconds=stitch_seconds, notes=tuple(notes))
