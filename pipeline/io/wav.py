"""RIFF/WAVE headers: what a WAV file's samples are and where they start, from its first bytes.

The project's one WAV header parser. Duration probing (:mod:`pipeline.inputs.durations`) asks
it for a file's length; range reads of long files (:mod:`pipeline.io.ranges`) ask it where a
window's bytes are.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Optional

__all__ = ["FORMAT_FLOAT", "FORMAT_PCM", "WavHeader", "parse_wav_header"]

FORMAT_PCM, FORMAT_FLOAT, _FORMAT_EXTENSIBLE = 1, 3, 0xFFFE
_STREAMED_SIZES = (0, 0xFFFFFFFF)  # what writers that cannot seek back leave as the data size


@dataclass(frozen=True)
class WavHeader:
    """The parts of a RIFF/WAVE header that say what the samples are and where they lie.

    Attributes:
        fmt_chunk: the whole ``fmt `` chunk, its 8-byte chunk header included.
        format_tag: 1 = integer PCM, 3 = IEEE float, others as stored (WAVE_FORMAT_EXTENSIBLE
            is resolved to its sub-format).
        channels, sample_rate, block_align, bits_per_sample: from the ``fmt `` chunk.
        data_offset: the byte where the samples begin.
        declared_size: the ``data`` chunk's size field as written (0 or 0xFFFFFFFF when the
            writer streamed and never filled it in: see :attr:`streamed`).
    """

    fmt_chunk: bytes
    format_tag: int
    channels: int
    sample_rate: int
    block_align: int
    bits_per_sample: int
    data_offset: int
    declared_size: int

    @property
    def streamed(self) -> bool:
        """True when the header does not state the data size (the samples run to the end)."""
        return self.declared_size in _STREAMED_SIZES

    @property
    def plain_samples(self) -> bool:
        """Integer PCM or IEEE float samples of a usual width: bytes that can be cut by frame."""
        return (self.format_tag in (FORMAT_PCM, FORMAT_FLOAT) and self.channels >= 1 and self.sample_rate >= 1
                and self.block_align >= 1 and self.bits_per_sample in (8, 16, 24, 32, 64))

    def duration(self) -> Optional[float]:
        """Seconds of audio the header declares; ``None`` when it does not say (streamed) or
        the format fields are zero."""
        if self.streamed or not self.sample_rate or not self.block_align:
            return None
        return (self.declared_size // self.block_align) / self.sample_rate

    def data_size(self, object_size: int) -> int:
        """Sample bytes present in an object of ``object_size`` bytes: the declared size (all of
        the rest for a streamed header), clipped to the object and to whole frames."""
        available = max(0, object_size - self.data_offset)
        size = available if self.streamed else min(self.declared_size, available)
        return size - size % max(1, self.block_align)


def parse_wav_header(head: bytes) -> Optional[WavHeader]:
    """The header of a RIFF/WAVE file from its first bytes, or ``None`` when ``head`` is not
    the start of one, or its ``fmt `` chunk or the start of its ``data`` chunk is not within
    ``head`` (a few KiB are enough for every ordinary file)."""
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    pos, fmt = 12, None
    while pos + 8 <= len(head):
        chunk_id, size = head[pos:pos + 4], struct.unpack_from("<I", head, pos + 4)[0]
        if chunk_id == b"fmt ":
            if size < 16 or pos + 8 + size > len(head):
                return None
            fmt = head[pos:pos + 8 + size]
        elif chunk_id == b"data":
            if fmt is None:
                return None
            tag, channels, rate, _, align, bits = struct.unpack_from("<HHIIHH", fmt, 8)
            if tag == _FORMAT_EXTENSIBLE and len(fmt) >= 8 + 26:
                tag = struct.unpack_from("<H", fmt, 8 + 24)[0]
            return WavHeader(fmt_chunk=fmt, format_tag=tag, channels=channels, sample_rate=rate, block_align=align,
                             bits_per_sample=bits, data_offset=pos + 8, declared_size=size)
        pos += 8 + size + (size & 1)
    return None
