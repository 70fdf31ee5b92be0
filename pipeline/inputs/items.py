"""The record every input becomes: :class:`WorkItem`, one time range of one audio file to
transcribe, and :class:`ManifestError` for inputs that cannot become work items."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

__all__ = ["SEGMENT_MODES", "ManifestError", "WorkItem"]

#: how lhotse cuts become work items: whole cuts, or one item per supervision segment
SEGMENT_MODES = ("cuts", "supervisions")


class ManifestError(ValueError):
    """The input cannot be turned into work items. Names the input and, for line-based
    inputs, the 1-based line number."""

    def __init__(self, uri: str, reason: str, line: int | None = None) -> None:
        super().__init__(uri, reason, line)
        self.uri = uri
        self.reason = reason
        self.line = line

    def __str__(self) -> str:
        where = self.uri if self.line is None else f"{self.uri}, line {self.line}"
        return f"{where}: {self.reason}"


@dataclass
class WorkItem:
    """One unit of transcription: a time range of one channel (or the channel mix) of one file.

    Attributes:
        cut_id: unique id within the input (see :mod:`pipeline.inputs.manifests` for the rules).
        recording_id: id of the recording (lhotse) or the same as ``cut_id`` for plain files.
        source: where the audio bytes are: a local path, ``file://`` or ``s3://`` URI.
        source_type: lhotse's AudioSource type: ``"file"`` (local path) or ``"url"`` (URI).
        channel: channel index within the file to decode, ``None`` = the file is mono or all
            channels are averaged.
        start: offset in seconds into the file.
        duration: seconds to transcribe from ``start``; ``None`` when unknown (to the end).
        reference: reference transcript (the cut's supervision texts joined with single
            spaces in time order), ``None`` when there is none.
        speaker, language: from the supervisions; several distinct values are joined with
            ``","`` in order of first appearance.
        dataset: label set by the caller of :func:`pipeline.inputs.manifests.iter_work_items`.
        custom: the cut's ``custom`` fields with scalar values, as strings.
        hotwords: the cut's own hotword entries (``custom["hotwords"]`` of the cut and of its
            supervisions, ``"phrase"`` or ``"phrase :score"``, as written; parsed and normalised by
            the transcriber, :mod:`pipeline.inputs.hotwords`); ``None`` when it has none.
        member: the key of the item's audio inside the tar archive at ``source`` (lhotse Shar:
            the cut's id; the member is ``<key>.<format>``); ``None`` for a plain audio file.
        error: why the item cannot be transcribed, found while planning (a duration that is not
            a number, or longer than the run allows, ...): it becomes an error row and its audio
            is never fetched.
        window_index, window_count: set on the windows of a long cut
            (:func:`pipeline.plan.windows.expand_windows`): this item is window ``window_index``
            of ``window_count``; ``start`` / ``duration`` are then the window's range and
            ``cut_start`` / ``cut_duration`` the whole cut's.
    """

    cut_id: str
    recording_id: str
    source: str
    source_type: str
    channel: int | None = None
    start: float = 0.0
    duration: float | None = None
    reference: str | None = None
    speaker: str | None = None
    language: str | None = None
    dataset: str | None = None
    custom: dict[str, str] = field(default_factory=dict)
    hotwords: list[str] | None = None
    member: str | None = None
    error: str | None = None
    window_index: int | None = None
    window_count: int | None = None
    cut_start: float | None = None
    cut_duration: float | None = None

    @property
    def is_window(self) -> bool:
        return self.window_index is not None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able fields (what a frozen plan stores). Field by field: ``dataclasses.asdict``
        deep-copies recursively and was most of the time of planning a million cuts."""
        out = {name: getattr(self, name) for name in _FIELDS}
        out["custom"] = dict(self.custom)
        out["hotwords"] = list(self.hotwords) if self.hotwords is not None else None
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "WorkItem":
        return cls(**data)


_FIELDS = tuple(f.name for f in fields(WorkItem))
