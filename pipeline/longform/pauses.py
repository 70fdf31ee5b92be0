"""Pauses: the audio of a long-recording window is transcribed as the speech between its pauses.

A window of a long recording holds many sentences. Measured with the demo model on 26 s
multi-sentence chunks, the encoder loses 2-3 WER points against the same sentences one by
one (it was trained on single sentences), and more when the pauses between them are long.
So each window is cut at its pauses into *pieces*, each piece is transcribed on its own
(pieces are batched by duration like everything else), and the pieces' transcripts are
joined back into the window's transcript with their times moved to the window's clock;
the windows are then stitched as before (:mod:`pipeline.longform`).

Rule (:func:`speech_pieces`):

* Frame energy: RMS over 25 ms frames every 10 ms. A frame is *silent* when its RMS is more
  than ``threshold_db`` below the window's loud level (the 95th percentile of frame RMS),
  so the rule follows the recording's level; digital silence is always silent.
* A *pause* is a run of silent frames at least ``min_pause_seconds`` long with sound on both
  sides. Pieces are the stretches between pauses, each keeping up to ``pad_seconds`` of the
  silence on either side (never more than half of a pause, so pieces do not overlap).
  Silence before the first and after the last piece is dropped beyond ``pad_seconds``.
* A window with no sound above the threshold, or no pause, is one piece: itself.

Pieces carry no text across a pause; a sentence that runs through a window edge is still
handled by the windows' overlap and seam alignment.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from model.recognizer import Transcript

from .merge import SCORES

FRAME_S, HOP_S = 0.025, 0.010


@dataclass(frozen=True)
class PauseSplit:
    """How windows are cut at pauses (see the module docstring)."""

    min_pause_seconds: float = 0.3
    pad_seconds: float = 0.3
    threshold_db: float = 50.0

    def __post_init__(self) -> None:
        if self.min_pause_seconds <= 0 or self.pad_seconds < 0 or self.threshold_db <= 0:
            raise ValueError(f"bad pause split {self}: min pause and threshold must be > 0, pad >= 0")


def _frame_rms(samples: np.ndarray, frame: int, hop: int) -> np.ndarray:
    if samples.size <= frame:
        return np.array([np.sqrt(np.mean(np.square(samples, dtype=np.float64)))]) if samples.size else np.zeros(1)
    n = 1 + (samples.size - frame) // hop
    windows = np.lib.stride_tricks.as_strided(samples, shape=(n, frame),
                                              strides=(samples.strides[0] * hop, samples.strides[0]))
    return np.sqrt(np.mean(np.square(windows, dtype=np.float64), axis=1))


def speech_pieces(samples: np.ndarray, sample_rate: int = 16000, split: Optional[PauseSplit] = None) -> list[tuple[int, int]]:
    """``[start, end)`` sample ranges of the pieces of ``samples`` (mono), in order."""
    split = split or PauseSplit()
    samples = np.ascontiguousarray(samples, dtype=np.float32)
    frame, hop = int(FRAME_S * sample_rate), int(HOP_S * sample_rate)
    rms = _frame_rms(samples, frame, hop)
    loud = float(np.percentile(rms, 95))
    if loud <= 0.0:
        return [(0, samples.size)]
    silent = rms < loud * 10 ** (-split.threshold_db / 20)
    sound = np.flatnonzero(~silent)
    if sound.size == 0:
        return [(0, samples.size)]
    # sound frames separated by at least min_pause of silence start a new piece
    min_gap = max(1, int(round(split.min_pause_seconds / HOP_S)))
    gaps = np.flatnonzero(np.diff(sound) > min_gap)
    firsts = np.concatenate(([sound[0]], sound[gaps + 1]))
    lasts = np.concatenate((sound[gaps], [sound[-1]]))
    # in samples: a piece's sound runs from its first sound frame's start to its last one's end
    starts = firsts * hop
    ends = np.minimum(lasts * hop + frame, samples.size)
    pad = int(split.pad_seconds * sample_rate)
    pieces = []
    for k in range(len(starts)):
        lo = starts[k] - pad if k == 0 else max(starts[k] - pad, (ends[k - 1] + starts[k]) // 2)
        hi = ends[k] + pad if k == len(starts) - 1 else min(ends[k] + pad, (ends[k] + starts[k + 1]) // 2)
        pieces.append((int(max(0, lo)), int(min(samples.size, hi))))
    return pieces


def join_transcripts(parts: Sequence[tuple[float, float, Transcript]], decode_text,
                     word_start: Optional[Callable[[int], bool]] = None, word_mark_id: Optional[int] = None) -> Transcript:
    """One transcript from the pieces' ``(offset_seconds, duration_seconds, transcript)``, in order.

    Tokens and times are concatenated (times moved by each piece's offset); the text is
    ``decode_text(token_ids)`` of the joined tokens. A piece is speech after a pause, so its
    first token starts a word: where a model emitted it without the word marker (``word_start``
    says whether a token begins with ``▁``), the tokenizer's lone ``▁`` piece (``word_mark_id``)
    is put before it, at its time, so the last word before the pause and the first after it do
    not run together (``morning`` + ``one`` -> ``morningone``); ``score``, ``ctc_score``,
    ``attention_score``, ``lm_score`` and ``hotword_score`` are sums over pieces (``None`` if a piece has none);
    ``confidence`` is
    the token-weighted mean of the pieces' confidences, or their duration-weighted mean when
    no piece has tokens.
    """
    ids: list[int] = []
    times: list[float] = []
    confidences: list[float] = []
    for offset, _, tr in parts:
        piece_confidences = tr.token_confidences or [tr.confidence] * len(tr.token_ids)
        if ids and tr.token_ids and word_start is not None and word_mark_id is not None \
                and not word_start(tr.token_ids[0]):
            ids.append(word_mark_id)
            times.append(round(offset + tr.token_times[0], 3))
            confidences.append(piece_confidences[0])
        ids += tr.token_ids
        times += [round(offset + t, 3) for t in tr.token_times]
        confidences += piece_confidences
    n_tok = [len(tr.token_ids) for _, _, tr in parts]
    weights = n_tok if sum(n_tok) else [d for _, d, _ in parts]
    total = sum(weights)
    confidence = sum(w * tr.confidence for w, (_, _, tr) in zip(weights, parts)) / total if total > 0 else 0.0

    def total_of(name: str) -> Optional[float]:
        values = [getattr(tr, name) for _, _, tr in parts]
        return None if any(v is None for v in values) else float(sum(values))

    return Transcript(text=decode_text(ids), token_ids=ids, token_times=times, score=float(sum(tr.score for _, _, tr in parts)),
                      confidence=float(confidence), token_confidences=confidences,
                      hotword_score=total_of("hotword_score"), **{name: total_of(name) for name in SCORES})
