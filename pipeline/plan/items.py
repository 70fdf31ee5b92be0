"""The work items of a run: every input's cuts (or supervision segments), long ones as windows."""

from __future__ import annotations

from typing import Iterator, Sequence

from pipeline.inputs.durations import Prober
from pipeline.inputs.items import WorkItem
from pipeline.inputs.manifests import iter_work_items

from .windows import expand_windows

__all__ = ["plan_items"]


def plan_items(manifests: Sequence[str], *, dataset: str | None = None, segments: str = "cuts",
               max_cut_seconds: float = 30.0, overlap_seconds: float = 4.0,
               prober: Prober | None = None) -> Iterator[WorkItem]:
    """Stream the work items of ``manifests`` in order: each input's items
    (:func:`pipeline.inputs.manifests.iter_work_items`, durations of plain audio files probed by
    ``prober``, else on threads here), every cut longer than ``max_cut_seconds`` replaced by its
    windows (:func:`pipeline.plan.windows.expand_windows`)."""
    for uri in manifests:
        items = iter_work_items(uri, dataset=dataset, segments=segments, prober=prober)
        yield from expand_windows(items, max_cut_seconds, overlap_seconds)
