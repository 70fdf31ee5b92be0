"""Durations of audio files from a few byte ranges, without decoding them.

Long-form windows need each cut's duration before any audio is fetched. Manifests state it;
for plain audio files (a bucket prefix, a list, one file) :func:`probe_source` reads the first
64 KiB and, for compressed formats, at most one more range:

* **WAV** and **FLAC** state it in their headers (:mod:`pipeline.io.wav`; FLAC's STREAMINFO).
  Small files of any format libsndfile reads are probed whole (:func:`probe_duration`).
* **Ogg** (Opus, Vorbis): every page carries the granule position (samples so far) of the
  stream. The last page's granule, minus Opus's pre-skip, over the granule rate (48 kHz for
  Opus, the identification header's rate for Vorbis) is the exact duration. The last page
  starts within the last 65,307 bytes (the largest possible page), so one tail read finds it.
* **MP3**: a Xing/Info or VBRI header in the first frame states the frame count (exact, VBR or
  not; a LAME tag's encoder delay and padding are subtracted, as decoders drop them). Without one, a constant bitrate is verified over the first frames in the head (all
  chained frames share it) and the duration is the audio bytes over the byte rate. A file whose
  first frames differ in bitrate and has no frame count gives ``None``: a guessed duration
  could cut off the end of the recording, an unknown one only means it is transcribed whole.

Headers are claims (:func:`probe_claim`): a duration is never more than what the file's size can
hold (:func:`size_bound`): for WAV exactly (its samples are the bytes after the header; a streamed
header's duration comes from the size), for FLAC at 8 bytes per frame of STREAMINFO's largest
block, for MP3 at frames of the lowest bitrate its header allows, for Ogg at 4,096 samples per
byte. A header that claims more than that (a 60-byte WAV claiming 4 GB of samples, a truncated
file, a FLAC header over no frames) is reported with what it claimed, and the run makes the file
an error row: no window is planned and no audio decoded for a claim.

The format parsers take bytes already read plus a ``read(start, end)`` callback for the one
extra range a format needs (the Ogg tail, or the audio after a large ID3v2 tag).
"""

from __future__ import annotations

import io
import struct
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Iterable, Iterator, Optional, TypeVar

import soundfile as sf

from pipeline.io import storage
from pipeline.io.storage import S3Options
from pipeline.io.wav import parse_wav_header

ReadRange = Callable[[int, int], bytes]

#: The longest possible Ogg page: 27-byte header, 255 lacing values, 255 x 255 bytes of data.
OGG_MAX_PAGE = 27 + 255 + 255 * 255
#: MPEG frames that must chain with one bitrate before a file counts as constant-bitrate.
CBR_FRAMES_TO_CHECK = 8

_MP3_BITRATES = {  # kbps by (MPEG-1?, layer); index 1..14
    (True, 1): (32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (True, 2): (32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (True, 3): (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (False, 1): (32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (False, 2): (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
    (False, 3): (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_MP3_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}  # by version bits


# ------------------------------------------------------------------ Ogg


def _ogg_page_at(data: bytes, pos: int) -> Optional[tuple[int, int, int, int]]:
    """(header_type, granule, serial, page_end) of a well-formed page header at ``pos``."""
    if pos + 27 > len(data) or data[pos : pos + 4] != b"OggS" or data[pos + 4] != 0:
        return None
    header_type, granule, serial = struct.unpack_from("<BqI", data, pos + 5)
    nsegs = data[pos + 26]
    if pos + 27 + nsegs > len(data):
        return None
    return header_type, granule, serial, pos + 27 + nsegs + sum(data[pos + 27 : pos + 27 + nsegs])


def _ogg_stream(head: bytes) -> Optional[tuple[int, int, int]]:
    """(serial, granule rate, pre-skip) of the Opus or Vorbis stream whose first page ``head`` begins
    with; ``None`` for other codecs or damaged framing."""
    first = _ogg_page_at(head, 0)
    if first is None:
        return None
    body = head[27 + head[26] :]
    if body.startswith(b"OpusHead") and len(body) >= 12:
        return first[2], 48000, struct.unpack_from("<H", body, 10)[0]
    if body.startswith(b"\x01vorbis") and len(body) >= 16:
        return first[2], struct.unpack_from("<I", body, 12)[0], 0
    return None


def ogg_duration(head: bytes, tail: bytes) -> Optional[float]:
    """Duration of an Ogg Opus or Vorbis file from its first bytes and its last
    :data:`OGG_MAX_PAGE` (or more) bytes; ``None`` for other codecs or damaged framing."""
    stream = _ogg_stream(head)
    if stream is None:
        return None
    serial, rate, pre_skip = stream
    if rate <= 0:
        return None
    # the last well-formed page of this stream with a granule position (-1: no packet ends there)
    pos = len(tail)
    while True:
        pos = tail.rfind(b"OggS", 0, pos)
        if pos < 0:
            return None
        page = _ogg_page_at(tail, pos)
        if page is not None and page[2] == serial and page[1] >= 0 and page[3] <= len(tail):
            return max(0, page[1] - pre_skip) / rate


# ------------------------------------------------------------------ MP3


def _id3v2_size(data: bytes) -> int:
    """Bytes taken by a leading ID3v2 tag (0 when there is none)."""
    if len(data) < 10 or data[:3] != b"ID3":
        return 0
    size = 0
    for b in data[6:10]:
        size = (size << 7) | (b & 0x7F)
    return 10 + size + (10 if data[5] & 0x10 else 0)


def _mp3_frame(data: bytes, pos: int) -> Optional[dict]:
    """The MPEG audio frame header at ``pos``: its fields and length, or ``None``."""
    if pos + 4 > len(data):
        return None
    b0, b1, b2, b3 = data[pos : pos + 4]
    version, layer_bits = (b1 >> 3) & 3, (b1 >> 1) & 3
    bitrate_index, rate_index = b2 >> 4, (b2 >> 2) & 3
    if b0 != 0xFF or (b1 & 0xE0) != 0xE0 or version == 1 or layer_bits == 0 or rate_index == 3:
        return None
    if bitrate_index in (0, 15):  # free format or invalid
        return None
    layer = 4 - layer_bits
    mpeg1 = version == 3
    bitrate = _MP3_BITRATES[(mpeg1, layer)][bitrate_index - 1] * 1000
    rate = _MP3_RATES[version][rate_index]
    padding = (b2 >> 1) & 1
    if layer == 1:
        samples, length = 384, (12 * bitrate // rate + padding) * 4
    else:
        samples = 1152 if (layer == 2 or mpeg1) else 576
        length = samples // 8 * bitrate // rate + padding
    return {"mpeg1": mpeg1, "layer": layer, "bitrate": bitrate, "rate": rate, "samples": samples,
            "length": length, "mono": (b3 >> 6) == 3, "version": version}


def _mp3_tag(data: bytes, pos: int, frame: dict) -> tuple[bool, Optional[int]]:
    """Whether the first frame holds a Xing/Info or VBRI tag (not audio), and the samples it
    states: frames x samples per frame, less the encoder delay and padding of a LAME tag (what
    decoders drop); ``None`` when it states no frame count."""
    side = (32 if not frame["mono"] else 17) if frame["mpeg1"] else (17 if not frame["mono"] else 9)
    x = pos + 4 + side
    if data[x : x + 4] in (b"Xing", b"Info") and x + 8 <= len(data):
        flags = struct.unpack_from(">I", data, x + 4)[0]
        if not flags & 1 or x + 12 > len(data):
            return True, None
        samples = struct.unpack_from(">I", data, x + 8)[0] * frame["samples"]
        lame = x + 8 + 4 * bool(flags & 1) + 4 * bool(flags & 2) + 100 * bool(flags & 4) + 4 * bool(flags & 8)
        if data[lame : lame + 4] in (b"LAME", b"Lavc", b"Lavf") and lame + 24 <= len(data):
            packed = int.from_bytes(data[lame + 21 : lame + 24], "big")
            samples -= (packed >> 12) + (packed & 0xFFF)  # encoder delay + end padding
        return True, max(0, samples)
    v = pos + 36
    if data[v : v + 4] == b"VBRI" and v + 18 <= len(data):
        return True, struct.unpack_from(">I", data, v + 14)[0] * frame["samples"]
    return False, None


def _first_mp3_frame(data: bytes) -> tuple[int, Optional[dict]]:
    """The first MPEG audio frame in ``data``'s first 8 KiB: a header whose successor sits where its
    length says; ``(-1, None)`` when there is none."""
    for pos in range(0, min(len(data), 8192)):
        frame = _mp3_frame(data, pos)
        if frame is None:
            continue
        nxt = _mp3_frame(data, pos + frame["length"])
        if nxt is not None and (nxt["version"], nxt["layer"], nxt["rate"]) == (frame["version"], frame["layer"], frame["rate"]):
            return pos, frame
    return -1, None


def mp3_duration(head: bytes, size: int, read: Optional[ReadRange] = None) -> Optional[float]:
    """Duration of an MP3 (MPEG-1/2/2.5 layer I-III) file of ``size`` bytes from its first bytes;
    ``read(start, end)`` fetches the frames after an ID3v2 tag longer than ``head``."""
    start = _id3v2_size(head)
    if start:
        if start + 4096 > len(head):
            if read is None:
                return None
            head, base = read(start, start + 16384), start
        else:
            head, base = head[start:], start
    else:
        base = 0
    pos, frame = _first_mp3_frame(head)
    if frame is None:
        return None
    is_tag, samples = _mp3_tag(head, pos, frame)
    if samples:
        return samples / frame["rate"]
    if is_tag:
        pos += frame["length"]  # a tag frame without a count: audio starts at the next frame
        frame = _mp3_frame(head, pos)
        if frame is None:
            return None
    # constant bitrate only if the first frames all agree
    p, checked = pos, 0
    while checked < CBR_FRAMES_TO_CHECK:
        f = _mp3_frame(head, p)
        if f is None:
            if p + 4 > len(head) and checked >= 2:
                break  # the head ends here; the frames so far agreed
            return None
        if f["bitrate"] != frame["bitrate"] or f["rate"] != frame["rate"]:
            return None
        p += f["length"]
        checked += 1
    audio_bytes = size - base - pos
    return max(0.0, audio_bytes * 8 / frame["bitrate"])


# ------------------------------------------------------------------ entry point


def compressed_duration(head: bytes, size: int, read: ReadRange) -> Optional[float]:
    """Duration of an Ogg (Opus, Vorbis) or MP3 file from its first bytes (``head``), its
    ``size`` and at most one more range read; ``None`` when the format is neither or the
    duration cannot be told safely."""
    if head[:4] == b"OggS":
        tail = head if size <= len(head) else read(max(0, size - OGG_MAX_PAGE - 1024), size)
        return ogg_duration(head, tail)
    return mp3_duration(head, size, read)


# ------------------------------------------------------------------ headers (WAV, FLAC, small files)


def _flac_duration(head: bytes) -> Optional[float]:
    """Duration from FLAC's STREAMINFO block (always the first metadata block)."""
    if len(head) < 8 + 34 or head[:4] != b"fLaC" or (head[4] & 0x7F) != 0:
        return None
    info = head[8 : 8 + 34]
    bits = int.from_bytes(info[10:18], "big")
    rate = bits >> 44
    total = bits & ((1 << 36) - 1)
    if not rate or not total:
        return None
    return total / rate


def _wav_duration(head: bytes) -> Optional[float]:
    header = parse_wav_header(head)
    return None if header is None else header.duration()


def probe_duration(data_or_header_bytes: bytes, *, complete: bool = True) -> Optional[float]:
    """Audio duration in seconds without decoding, or ``None`` when it cannot be told.

    WAV and FLAC durations come from their headers, so the first few KiB of the file suffice
    (pass ``complete=False`` with a header-only prefix). Other formats (MP3, Ogg/Opus, ...)
    need the whole file, read through ``soundfile.info``; for a prefix (``complete=False``)
    they give ``None`` -- libsndfile would otherwise report the length of the prefix.
    Formats libsndfile cannot read (M4A/AAC) give ``None``.
    """
    data = data_or_header_bytes
    if not data:
        return None
    for parse in (_wav_duration, _flac_duration):
        value = parse(data)
        if value is not None:
            return value
    if not complete:
        return None
    try:
        info = sf.info(io.BytesIO(data))
    except Exception:  # noqa: BLE001 -- unreadable: unknown duration
        return None
    if info.samplerate <= 0 or info.frames <= 0:
        return 0.0 if info.samplerate > 0 else None
    return info.frames / info.samplerate


# ------------------------------------------------------------------ what a size can hold

#: the fewest bytes a FLAC frame takes: a header of 6 bytes at least, a subframe header and value
#: per channel, a CRC-16 (8 is below every real frame: the bound never cuts real audio)
FLAC_MIN_FRAME_BYTES = 8
#: the most samples one byte of Ogg can hold: a 1-byte packet decodes to at most 120 ms of Opus
#: (5,760 samples at 48 kHz) or half of Vorbis's 8,192-sample block, and a page of 255 such
#: packets takes 537 bytes with its header: under 2,800 samples per byte either way
OGG_MAX_SAMPLES_PER_BYTE = 4096


def _flac_bound(head: bytes, size: int) -> Optional[float]:
    if len(head) < 8 + 34 or head[:4] != b"fLaC":
        return None
    info = head[8 : 8 + 34]
    max_block = int.from_bytes(info[2:4], "big") or 65535
    rate = int.from_bytes(info[10:18], "big") >> 44
    if not rate:
        return None
    pos = 4  # the frames begin after the last metadata block
    while pos + 4 <= len(head):
        last, length = head[pos] & 0x80, int.from_bytes(head[pos + 1 : pos + 4], "big")
        pos += 4 + length
        if last:
            break
    return max(0, size - pos) // FLAC_MIN_FRAME_BYTES * max_block / rate


def _ogg_bound(head: bytes, size: int) -> Optional[float]:
    stream = _ogg_stream(head)
    if stream is None or not stream[1]:
        return None
    return size * OGG_MAX_SAMPLES_PER_BYTE / stream[1]


def _mp3_bound(head: bytes, size: int) -> Optional[float]:
    start = _id3v2_size(head)
    pos, frame = _first_mp3_frame(head[start:])
    if frame is None:
        return None
    bitrate = _MP3_BITRATES[(frame["mpeg1"], frame["layer"])][0] * 1000  # the lowest
    lowest = (12 * bitrate // frame["rate"] * 4) if frame["layer"] == 1 else frame["samples"] // 8 * bitrate // frame["rate"]
    return max(0, size - start - pos) // max(1, lowest) * frame["samples"] / frame["rate"]


def size_bound(head: bytes, size: int) -> Optional[float]:
    """The most seconds of audio a file of ``size`` bytes that begins with ``head`` can hold, by its
    format (see the module docstring); ``None`` when the format is none of WAV, FLAC, Ogg, MP3."""
    header = parse_wav_header(head)
    if header is not None:
        if not header.sample_rate or not header.block_align:
            return None
        return header.data_size(size) // header.block_align / header.sample_rate
    for bound in (_flac_bound, _ogg_bound, _mp3_bound):
        value = bound(head, size)
        if value is not None:
            return value
    return None


#: a claim this far above what the file holds (beyond 1 %) is a lie or a truncated file
CLAIM_TOLERANCE_S = 0.05

#: what probing a file gives: its duration in seconds (``None``: cannot be told) and, when its
#: header claims more than its size can hold, what it claimed (the duration is then the bound)
Probe = tuple[Optional[float], Optional[str]]


def judge_claim(claimed: Optional[float], bound: Optional[float], size: int) -> Probe:
    """A header's ``claimed`` duration against the ``bound`` its file's ``size`` sets."""
    if claimed is None:
        return bound, None  # e.g. a streamed WAV header: its samples run to the end of the file
    if bound is None or claimed <= bound + max(CLAIM_TOLERANCE_S, 0.01 * bound):
        return claimed if bound is None else min(claimed, bound), None
    return bound, (f"its header claims {claimed:.6g} s of audio, but its {size} bytes hold at most {bound:.6g} s "
                   "(a truncated or damaged file)")


#: enough for WAV/FLAC headers and the first MP3 frames; smaller files are probed whole
PROBE_BYTES = 64 * 1024


def probe_claim(source: str, options: Optional[S3Options] = None) -> Probe:
    """The duration of the audio object at ``source`` (local or ``s3://``) from its first
    :data:`PROBE_BYTES` (and its size, in the same request) and, for MP3 / Ogg, at most one more
    range, judged against what its size can hold (:func:`judge_claim`). ``(None, None)`` when it
    cannot be told or the object cannot be read now (the audio stage reports that per cut)."""
    try:
        head, size = storage.read_head(source, PROBE_BYTES, options=options)
        complete = len(head) >= size
        claimed = probe_duration(head, complete=complete)
        if claimed is None and not complete:
            # MP3 / Ogg: from the frame headers and one more range (the Ogg tail), not a download
            claimed = compressed_duration(head, size, lambda a, b: storage.read_range(source, a, b, options=options))
        if claimed is None and parse_wav_header(head) is None:
            return None, None  # not a header we can bound (M4A, ...)
        return judge_claim(claimed, size_bound(head, size), size)
    except storage.StorageError:
        return None, None


def probe_source(source: str, options: Optional[S3Options] = None) -> Optional[float]:
    """:func:`probe_claim`'s duration."""
    return probe_claim(source, options)[0]


P = TypeVar("P")
#: ``prober(pairs)``: for ``(payload, source URI)`` pairs, yields ``(payload, probe)`` (a
#: :data:`Probe`: duration or None, and what a lying header claimed) in the same order, lazily.
#: The payload is anything the caller needs back (e.g. the cut's id).
Prober = Callable[[Iterable[tuple[Any, str]]], Iterator[tuple[Any, Probe]]]


def threaded_prober(workers: int = 8, options: Optional[S3Options] = None) -> Prober:
    """A :data:`Prober` that reads headers on ``workers`` threads of this process, at most
    ``2 * workers`` sources ahead of the consumer."""

    def probe(pairs: Iterable[tuple[P, str]]) -> Iterator[tuple[P, Probe]]:
        if workers <= 1:
            for payload, source in pairs:
                yield payload, probe_claim(source, options)
            return
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="probe")
        pending: deque[tuple[P, Future]] = deque()
        try:
            for payload, source in pairs:
                pending.append((payload, pool.submit(probe_claim, source, options)))
                if len(pending) >= 2 * workers:
                    head, fut = pending.popleft()
                    yield head, fut.result()
            while pending:
                head, fut = pending.popleft()
                yield head, fut.result()
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    return probe
