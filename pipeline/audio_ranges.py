"""Reading a time range of a long audio file without fetching or decoding all of it.

Long recordings are transcribed window by window (``pipeline.longform``); each window needs
tens of seconds of a file that may hold hours. :class:`RangeReader` gets them cheaply:

* **PCM WAV** (and WAVE_FORMAT_EXTENSIBLE / IEEE float WAV): the header (first 64 KiB, read
  once per file) tells where the samples are, so exactly the window's bytes are fetched (an HTTP ``Range`` request
  on S3, a seek on local files) and decoded.
* **Anything else** (FLAC, Ogg/Opus, MP3, M4A, ...): the object is streamed once to a local
  temporary file (never held in memory) and the window is decoded from it with a seek
  (libsndfile) or ``ffmpeg -ss``. The last few copies are kept, so the next windows of the
  same file on this actor reuse them; the copies live in a private temporary directory that
  is removed when the reader is closed or collected.

Either way the memory of one window is its own samples, whatever the file's length.
"""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional

from . import storage
from .audio import AudioDecodeError, DecodedAudio, decode_audio

HEAD_BYTES = 64 * 1024
_PCM, _FLOAT, _EXTENSIBLE = 1, 3, 0xFFFE


@dataclass(frozen=True)
class WavLayout:
    fmt_chunk: bytes  # the whole 'fmt ' chunk, header included
    data_offset: int  # first sample byte
    data_size: int  # sample bytes (clipped to the object's size)
    sample_rate: int
    block_align: int


def wav_layout(head: bytes, object_size: int) -> Optional[WavLayout]:
    """Where the samples of a PCM / float WAV are, from its first bytes; ``None`` when the
    file is not such a WAV or its ``data`` chunk does not start within ``head``."""
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    pos, fmt = 12, None
    while pos + 8 <= len(head):
        cid, size = head[pos:pos + 4], struct.unpack_from("<I", head, pos + 4)[0]
        if cid == b"fmt ":
            if pos + 8 + size > len(head) or size < 16:
                return None
            fmt = head[pos:pos + 8 + size]
        elif cid == b"data":
            if fmt is None:
                return None
            tag, channels, rate, _, align, bits = struct.unpack_from("<HHIIHH", fmt, 8)
            if tag == _EXTENSIBLE and len(fmt) >= 8 + 26:
                tag = struct.unpack_from("<H", fmt, 8 + 24)[0]
            if tag not in (_PCM, _FLOAT) or channels < 1 or rate < 1 or align < 1 or bits not in (8, 16, 24, 32, 64):
                return None
            start = pos + 8
            available = max(0, object_size - start)
            # streamed writers leave 0 or 0xFFFFFFFF as the size: the samples run to the end
            data_size = available if size in (0, 0xFFFFFFFF) else min(size, available)
            return WavLayout(fmt, start, data_size - data_size % align, rate, align)
        pos += 8 + size + (size & 1)
    return None


def _wav_bytes(layout: WavLayout, body: bytes) -> bytes:
    """A complete little WAV file: the original 'fmt ' chunk and ``body`` as its samples."""
    riff_size = 4 + len(layout.fmt_chunk) + 8 + len(body)
    return b"".join([b"RIFF", struct.pack("<I", riff_size), b"WAVE", layout.fmt_chunk,
                     b"data", struct.pack("<I", len(body)), body])


class RangeReader:
    """Decodes ``[start, start + duration)`` of audio objects; see the module docstring."""

    def __init__(self, keep_copies: int = 2, tmp_dir: Optional[str] = None):
        self.keep_copies = max(1, keep_copies)
        self._dir = tempfile.mkdtemp(prefix="zipscribe-ranges-", dir=tmp_dir)
        self._copies: OrderedDict[str, str] = OrderedDict()
        self._layouts: OrderedDict[str, Optional[WavLayout]] = OrderedDict()
        self._lock = threading.Lock()
        self.bytes_fetched = 0
        self._made = 0

    def _layout(self, source: str) -> Optional[WavLayout]:
        """The WAV layout of ``source`` (``None``: not a PCM / float WAV), from one size request and
        one header read per file; kept for the file's next windows."""
        with self._lock:
            if source in self._layouts:
                self._layouts.move_to_end(source)
                return self._layouts[source]
        object_size = storage.size(source)
        if object_size == 0:
            raise AudioDecodeError(source, "empty file (0 bytes)")
        head = storage.read_range(source, 0, min(HEAD_BYTES, object_size))
        layout = wav_layout(head, object_size)
        with self._lock:
            self.bytes_fetched += len(head)
            self._layouts[source] = layout
            while len(self._layouts) > 64:
                self._layouts.popitem(last=False)
        return layout

    def read(self, source: str, start: float, duration: float, *, target_sr: int, channel: Optional[int]) -> DecodedAudio:
        layout = self._layout(source)
        if layout is not None:
            first = int(round(start * layout.sample_rate))
            count = max(1, int(round(duration * layout.sample_rate)))
            lo = layout.data_offset + first * layout.block_align
            end = layout.data_offset + layout.data_size
            if lo >= end:
                raise AudioDecodeError(source, f"range beyond end of audio (start {start:.3f} s, "
                                               f"audio is {layout.data_size / layout.block_align / layout.sample_rate:.3f} s)")
            hi = min(end, lo + count * layout.block_align)
            body = storage.read_range(source, lo, hi)
            self.bytes_fetched += len(body)
            return decode_audio(_wav_bytes(layout, body), source=source, target_sr=target_sr, channel=channel)
        path = self._local_copy(source)
        return decode_audio(path, source=source, target_sr=target_sr, channel=channel, start=start, duration=duration)

    def _local_copy(self, source: str) -> str:
        with self._lock:
            if source in self._copies:
                self._copies.move_to_end(source)
                return self._copies[source]
            self._made += 1
            path = os.path.join(self._dir, f"copy-{self._made}")
            with storage.open_binary(source) as src, open(path, "wb") as dst:
                shutil.copyfileobj(src, dst, length=1 << 20)
            self.bytes_fetched += os.path.getsize(path)
            self._copies[source] = path
            while len(self._copies) > self.keep_copies:
                _, old = self._copies.popitem(last=False)
                try:
                    os.unlink(old)
                except OSError:
                    pass
            return path

    def close(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)
        self._copies.clear()

    def __del__(self) -> None:  # pragma: no cover - best effort at interpreter exit
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass
