"""Reading a time range of a long audio file without fetching or decoding all of it.

Long recordings are transcribed window by window (:mod:`pipeline.plan.windows`); each window needs
tens of seconds of a file that may hold hours. :class:`RangeReader` gets them cheaply:

* **PCM WAV** (and WAVE_FORMAT_EXTENSIBLE / IEEE float WAV): the header (first 64 KiB, read
  once per file, parsed by :mod:`pipeline.io.wav`) tells where the samples are, so exactly the window's bytes are fetched (an HTTP ``Range`` request
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
from .wav import WavHeader, parse_wav_header

HEAD_BYTES = 64 * 1024


@dataclass(frozen=True)
class _Samples:
    """Where the samples of a PCM / float WAV object lie (from its header and its size)."""

    header: WavHeader
    data_size: int


def _wav_bytes(header: WavHeader, body: bytes) -> bytes:
    """A complete little WAV file: the original 'fmt ' chunk and ``body`` as its samples."""
    riff_size = 4 + len(header.fmt_chunk) + 8 + len(body)
    return b"".join([b"RIFF", struct.pack("<I", riff_size), b"WAVE", header.fmt_chunk,
                     b"data", struct.pack("<I", len(body)), body])


class RangeReader:
    """Decodes ``[start, start + duration)`` of audio objects; see the module docstring."""

    def __init__(self, keep_copies: int = 2, tmp_dir: Optional[str] = None):
        self.keep_copies = max(1, keep_copies)
        self._dir = tempfile.mkdtemp(prefix="zipscribe-ranges-", dir=tmp_dir)
        self._copies: OrderedDict[str, str] = OrderedDict()
        self._layouts: OrderedDict[str, Optional[_Samples]] = OrderedDict()
        self._lock = threading.Lock()
        self.bytes_fetched = 0
        self._made = 0

    def _layout(self, source: str) -> Optional[_Samples]:
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
        header = parse_wav_header(head)
        layout = _Samples(header, header.data_size(object_size)) if header is not None and header.plain_samples else None
        with self._lock:
            self.bytes_fetched += len(head)
            self._layouts[source] = layout
            while len(self._layouts) > 64:
                self._layouts.popitem(last=False)
        return layout

    def read(self, source: str, start: float, duration: float, *, target_sr: int, channel: Optional[int]) -> DecodedAudio:
        layout = self._layout(source)
        if layout is not None:
            h = layout.header
            first = int(round(start * h.sample_rate))
            count = max(1, int(round(duration * h.sample_rate)))
            lo = h.data_offset + first * h.block_align
            end = h.data_offset + layout.data_size
            if lo >= end:
                raise AudioDecodeError(source, f"range beyond end of audio (start {start:.3f} s, "
                                               f"audio is {layout.data_size / h.block_align / h.sample_rate:.3f} s)")
            hi = min(end, lo + count * h.block_align)
            body = storage.read_range(source, lo, hi)
            self.bytes_fetched += len(body)
            return decode_audio(_wav_bytes(h, body), source=source, target_sr=target_sr, channel=channel)
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
