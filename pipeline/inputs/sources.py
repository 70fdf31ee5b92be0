"""A run's inputs as units of planning: every ``--manifest`` value expanded into the files that one
planning task each reads.

* a **glob** (``s3://bucket/cuts/cuts.*.jsonl.gz``, ``/data/**/*.jsonl.gz``): one unit per matching
  file, in key order (:func:`pipeline.io.storage.glob`);
* a **lhotse Shar directory** (local or S3): one unit per Shar shard, its ``cuts.NNNNNN.jsonl[.gz]``
  with the ``recording.NNNNNN.tar`` of the same number (the audio is read from the tar's members
  by range; no other Shar field is read);
* anything else (a manifest, a list of URIs, a directory or prefix of audio files, one file): one
  unit.

Units keep the order of the inputs and, within one, the sorted order of its files: the plan follows
that order, so it is the same whatever order the units' tasks finish in. An input matching nothing,
or a file reached twice, is a :class:`~pipeline.inputs.items.ManifestError`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Sequence

from pipeline.io import storage
from pipeline.io.storage import S3Options

from .items import ManifestError
from .manifests import InputKind, detect_input_kind

__all__ = ["InputUnit", "dataset_name", "expand_inputs", "shar_shards"]

_SHAR_CUTS = re.compile(r"cuts\.(\d+)\.jsonl(\.gz)?")
_SHAR_RECORDING = re.compile(r"recording\.(\d+)\.tar(\.gz)?")


@dataclass(frozen=True)
class InputUnit:
    """One piece of a run's inputs, planned by one task.

    Attributes:
        position: its place in the run's inputs (the plan keeps this order).
        uri: the manifest file, URI list, directory / prefix or audio file.
        kind: how to read it (:func:`pipeline.inputs.manifests.detect_input_kind`); a Shar shard is
            ``"lhotse"`` with ``tar`` set.
        given: the ``--manifest`` value it came from.
        tar: for a Shar shard, its recording tar (the cuts' audio is read from its members).
    """

    position: int
    uri: str
    kind: InputKind
    given: str
    tar: Optional[str] = None


_SUFFIXES = (".jsonl.gz", ".jsonl", ".txt.gz", ".txt", ".lst.gz", ".lst", ".wav", ".flac", ".mp3", ".opus", ".ogg",
             ".m4a")


def dataset_name(given: str) -> str:
    """The ``dataset`` of an input's rows when ``--dataset`` is not given: the name of what was
    given, less its suffix: ``data/cuts_test.jsonl.gz`` -> ``cuts_test``, a directory, prefix or
    Shar directory ``s3://b/libriheavy-shar/`` -> ``libriheavy-shar``, and for a glob the folder
    it looks in (``s3://b/gigaspeech/cuts_XL.*.jsonl.gz`` -> ``gigaspeech``)."""
    parts = [p for p in given.rstrip("/").split("/") if p and not p.endswith(":")]
    while parts and storage.has_glob(parts[-1]):
        parts.pop()
    name = parts[-1] if parts else given
    for suffix in _SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def shar_shards(uri: str, options: Optional[S3Options] = None) -> list[tuple[str, str]]:
    """``(cuts file, recording tar)`` of every shard of the lhotse Shar directory ``uri``, in shard
    order; a shard without its recording tar is a :class:`ManifestError`."""
    names = {path.rsplit("/", 1)[-1]: path for path in storage.glob(storage.join(uri, "*"), options=options)}
    cuts: dict[int, str] = {}
    tars: dict[int, str] = {}
    for name, path in names.items():
        if (m := _SHAR_CUTS.fullmatch(name)) is not None:
            cuts[int(m.group(1))] = path
        elif (m := _SHAR_RECORDING.fullmatch(name)) is not None:
            if m.group(2):
                raise ManifestError(path, "a gzip-compressed Shar tar cannot be read by range: write the Shar with "
                                          "plain .tar files (lhotse's default)")
            tars[int(m.group(1))] = path
    if not cuts:
        raise ManifestError(uri, "no Shar cuts files (cuts.NNNNNN.jsonl.gz) in this directory")
    if not tars:
        raise ManifestError(uri, "this Shar directory has no recording field (recording.NNNNNN.tar): zipscribe "
                                 "transcribes audio")
    missing = sorted(set(cuts) - set(tars))
    if missing:
        raise ManifestError(cuts[missing[0]], f"no recording.{missing[0]:06d}.tar beside it: the Shar directory "
                                              f"lacks the audio of {len(missing)} shard(s)")
    return [(cuts[k], tars[k]) for k in sorted(cuts)]


def expand_inputs(manifests: Sequence[str], options: Optional[S3Options] = None) -> list[InputUnit]:
    """The run's units of planning, in order (see the module docstring)."""
    units: list[InputUnit] = []
    seen: dict[str, str] = {}

    def add(uri: str, kind: InputKind, given: str, tar: Optional[str] = None) -> None:
        if uri in seen:
            raise ManifestError(uri, f"reached twice: by {seen[uri]!r} and by {given!r} (its cuts would be "
                                     "transcribed twice)")
        seen[uri] = given
        units.append(InputUnit(len(units), uri, kind, given, tar))

    for given in manifests:
        if storage.has_glob(given):
            files = storage.glob(given, options=options)
            if not files:
                raise ManifestError(given, "no file matches this pattern")
            for uri in files:
                kind = detect_input_kind(uri, options)
                if kind not in ("lhotse", "uri_list", "audio_file"):
                    raise ManifestError(uri, "a pattern must match manifests (.jsonl[.gz]), URI lists (.txt, .lst) or "
                                             "audio files")
                add(uri, kind, given)
            continue
        kind = detect_input_kind(given, options)
        if kind == "shar":
            for cuts, tar in shar_shards(given, options):
                add(cuts, "lhotse", given, tar)
        else:
            add(given, kind, given)
    return units
