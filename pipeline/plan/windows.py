"""Windows of long recordings: a cut longer than ``max_cut_seconds`` becomes equal-length
windows that overlap by at least ``overlap_seconds``.

A non-streaming Zipformer attends over its whole input, so an hour of audio cannot go through
it at once. :func:`expand_windows` replaces every long cut of the item stream by its windows
(:func:`plan_windows`); each window is an ordinary work item, sharded and batched with the
rest, and their transcripts are merged back by :mod:`pipeline.longform`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Iterable, Iterator

from pipeline.inputs.items import WorkItem

__all__ = ["Window", "expand_windows", "iter_windows", "plan_windows"]


@dataclass(frozen=True)
class Window:
    """One window of a long cut, in seconds relative to the cut's start.

    ``keep_from`` / ``keep_to`` are the middles of the overlaps with the previous / next
    window (0 and the cut's duration at the ends): the part of the cut this window is
    responsible for when the fallback rule applies.
    """

    index: int
    count: int
    start: float
    duration: float
    keep_from: float
    keep_to: float

    @property
    def end(self) -> float:
        return self.start + self.duration


def iter_windows(duration: float, max_cut_seconds: float, overlap_seconds: float) -> Iterator[Window]:
    """Equal-length windows covering ``[0, duration)``, consecutive ones overlapping by at least
    ``overlap_seconds``; a single window when ``duration <= max_cut_seconds``. Made one at a time:
    the memory of planning a cut does not grow with its length.

    The number of windows is the smallest that covers the cut with windows of
    ``max_cut_seconds`` and the requested overlap; they are then spread evenly, so every
    window has the same length (no short tail window with little context) and overlaps may
    come out slightly longer than requested.
    """
    if max_cut_seconds <= 0:
        raise ValueError(f"max_cut_seconds must be > 0, got {max_cut_seconds}")
    if not 0 <= overlap_seconds < max_cut_seconds / 2:
        raise ValueError(f"window overlap must be in [0, max_cut_seconds / 2), got {overlap_seconds}")
    if not (math.isfinite(duration) and duration >= 0):
        raise ValueError(f"a cut's duration must be a finite number >= 0, got {duration}")
    if duration <= max_cut_seconds:
        yield Window(0, 1, 0.0, duration, 0.0, duration)
        return
    stride = max_cut_seconds - overlap_seconds
    count = math.ceil((duration - overlap_seconds) / stride - 1e-9)
    step = (duration - max_cut_seconds) / (count - 1)
    for i in range(count):
        s = i * step
        keep_from = 0.0 if i == 0 else (s + (i - 1) * step + max_cut_seconds) / 2
        keep_to = duration if i == count - 1 else ((i + 1) * step + s + max_cut_seconds) / 2
        yield Window(i, count, s, max_cut_seconds, keep_from, keep_to)


def plan_windows(duration: float, max_cut_seconds: float, overlap_seconds: float) -> list[Window]:
    """:func:`iter_windows` as a list."""
    return list(iter_windows(duration, max_cut_seconds, overlap_seconds))


def expand_windows(items: Iterable[WorkItem], max_cut_seconds: float, overlap_seconds: float) -> Iterator[WorkItem]:
    """Items with every cut longer than ``max_cut_seconds`` replaced by its windows (in order).

    Windows are ordinary :class:`pipeline.inputs.items.WorkItem` s (same ``cut_id``; their
    ``start`` / ``duration`` the window's range in the file, ``window_index`` /
    ``window_count`` / ``cut_start`` / ``cut_duration`` set), so they are sharded and batched
    with everything else. Items of unknown duration, and error items, pass through whole.
    ``max_cut_seconds`` <= 0 turns windowing off.
    """
    for item in items:
        if max_cut_seconds <= 0 or item.duration is None or item.duration <= max_cut_seconds or item.error:
            yield item
            continue
        for w in iter_windows(item.duration, max_cut_seconds, overlap_seconds):
            yield dataclasses.replace(item, start=item.start + w.start, duration=w.duration, window_index=w.index,
                                      window_count=w.count, cut_start=item.start, cut_duration=item.duration,
                                      custom=dict(item.custom))
