"""How many padded seconds of audio one model batch may hold on a GPU, and how much of a shared
GPU one actor's process may take: the policies as pure functions of the device's numbers (so
they are tested without a GPU), and :func:`read_device_memory`, which reads those numbers from
CUDA.

On a CPU the budget is :data:`CPU_BATCH_SECONDS` (or ``--max-batch-seconds``). On a GPU the
actor measures what its model costs: it runs a probe batch of the longest cuts the run can
produce and takes the rise of the allocator's peak over what was allocated before, divided by
the probe's padded seconds (:func:`cost_per_padded_second`). Cost per padded second grows with
the cut length (attention is quadratic in it), so a probe at the longest length over-estimates
shorter cuts' cost. The budget is then the memory this process may still use, less
:data:`HEADROOM`, over that cost (:func:`batch_budget`): it may come out above or below the
probe's size, and a second probe at the new size checks it (an out-of-memory there halves it).

With fractional GPUs (``--gpus-per-actor 0.5``) every actor's caching allocator is capped at its
share (:func:`allocator_fraction`), less :data:`CONTEXT_BYTES` for what lives outside the
allocator (the CUDA context, cuBLAS / cuDNN workspaces), so two actors on one GPU cannot starve
each other into out-of-memory errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

__all__ = ["CONTEXT_BYTES", "CPU_BATCH_SECONDS", "HEADROOM", "DeviceMemory", "allocator_fraction", "batch_budget",
           "cost_per_padded_second", "read_device_memory", "room_bytes"]

#: padded seconds per batch on a CPU (and the first memory probe's size on a GPU)
CPU_BATCH_SECONDS = 160.0
#: share of the room a batch leaves unused: a probe on noise decodes shorter hypotheses than speech
#: (the attention rescoring's memory grows with them), and the allocator fragments
HEADROOM = 0.2
#: memory a CUDA process holds outside torch's caching allocator (context, library workspaces)
CONTEXT_BYTES = 1 << 30
#: smallest budget: one 1-second cut
MIN_BATCH_SECONDS = 1.0


@dataclass(frozen=True)
class DeviceMemory:
    """What a GPU's memory looks like to one process, in bytes."""

    free: int  # free on the whole device (every process's use counted): cudaMemGetInfo
    total: int  # the device's memory
    reserved: int  # held by this process's caching allocator (in use or cached)
    allocated: int  # in use by this process's tensors


def read_device_memory(device: torch.device) -> DeviceMemory:
    """The current :class:`DeviceMemory` of CUDA ``device`` for this process."""
    free, total = torch.cuda.mem_get_info(device)
    return DeviceMemory(free=int(free), total=int(total), reserved=int(torch.cuda.memory_reserved(device)),
                        allocated=int(torch.cuda.memory_allocated(device)))


def allocator_fraction(gpu_share: Optional[float], total: int, context: int = CONTEXT_BYTES) -> Optional[float]:
    """The fraction of a GPU's memory for ``torch.cuda.set_per_process_memory_fraction`` of an actor
    given ``gpu_share`` of the GPU (Ray's ``num_gpus``): its share less the memory its process holds
    outside the allocator. None for a whole GPU (or more, or none): no cap."""
    if gpu_share is None or gpu_share <= 0 or gpu_share >= 1:
        return None
    if total <= 0:
        raise ValueError(f"total memory must be > 0, got {total}")
    return max(0.01, gpu_share - context / total)


def room_bytes(memory: DeviceMemory, fraction: Optional[float] = None) -> int:
    """Bytes a batch may still take: the device's free memory plus what this process's allocator
    holds cached but unused; with an allocator ``fraction``, no more than that share of the device
    less what this process's tensors hold."""
    room = memory.free + max(0, memory.reserved - memory.allocated)
    if fraction is not None:
        room = min(room, int(fraction * memory.total) - memory.allocated)
    return max(0, room)


def cost_per_padded_second(allocated_before: int, peak: int, padded_seconds: float) -> float:
    """Bytes one padded second of a batch took: the rise of the allocator's peak over what was
    allocated before the batch, divided by its padded seconds."""
    if padded_seconds <= 0:
        raise ValueError(f"padded seconds must be > 0, got {padded_seconds}")
    return max(0, peak - allocated_before) / padded_seconds


def batch_budget(room: int, cost: float, cap: Optional[float] = None, headroom: float = HEADROOM) -> float:
    """Padded seconds per batch: ``room`` bytes less ``headroom`` over ``cost`` bytes per padded
    second, at most ``cap`` (``--max-batch-seconds`` when given), at least
    :data:`MIN_BATCH_SECONDS`. A cost of 0 (nothing measurable) gives ``cap`` or, without one,
    :data:`CPU_BATCH_SECONDS`."""
    if not 0 <= headroom < 1:
        raise ValueError(f"headroom must be in [0, 1), got {headroom}")
    if cost <= 0:
        budget = cap if cap is not None else CPU_BATCH_SECONDS
    else:
        budget = room * (1 - headroom) / cost
        if cap is not None:
            budget = min(budget, cap)
    return max(MIN_BATCH_SECONDS, float(budget))
