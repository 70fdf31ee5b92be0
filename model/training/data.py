"""Training data: utterances of a lhotse manifest, their cached features and token ids,
duration-bucketed batches and SpecAugment.

* :class:`CutDataset`: a lhotse manifest (cuts with one supervision each) whose fbank features
  (:class:`model.features.FeatureExtractor`) are computed on first use and cached in memory as
  float16, with token ids from the tokenizer.
* :func:`bucketed_batches`: duration-sorted batches whose padded size (cuts x longest cut) stays
  under ``max_seconds``, shuffled per epoch.
* :func:`spec_augment`: time and frequency masking (filled with each utterance's mean).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from model.features import PADDING_VALUE, FeatureExtractor
from model.tokenizer import Tokenizer

__all__ = ["CutDataset", "Utterance", "bucketed_batches", "load_audio", "load_manifest", "spec_augment"]


@dataclass
class Utterance:
    id: str
    text: str
    duration: float
    audio_path: Optional[str] = None
    cut: Any = None


def load_manifest(path: str | Path) -> list[Utterance]:
    """Cuts of a lhotse CutSet manifest with their first supervision's text."""
    from lhotse import CutSet

    out = []
    for cut in CutSet.from_file(str(path)):
        text = " ".join(s.text for s in cut.supervisions if s.text)
        out.append(Utterance(id=cut.id, text=text, duration=float(cut.duration), cut=cut))
    return out


def load_audio(utt: Utterance) -> np.ndarray:
    if utt.cut is not None:
        return utt.cut.load_audio()[0].astype(np.float32)
    import soundfile as sf

    samples, sr = sf.read(str(utt.audio_path), dtype="float32", always_2d=True)
    if sr != 16000:
        raise ValueError(f"{utt.audio_path}: {sr} Hz, expected 16000")
    return samples[:, 0]


class CutDataset:
    """Utterances with cached fbank features and token ids."""

    def __init__(self, utterances: Sequence[Utterance], tokenizer: Tokenizer, min_frames: int = 40):
        self.utterances = [u for u in utterances if u.duration * 100 >= min_frames and u.text.strip()]
        self.tokenizer = tokenizer
        self.tokens = [tokenizer.encode(u.text) for u in self.utterances]
        self._feats: dict[int, torch.Tensor] = {}
        self._fe = FeatureExtractor()

    def __len__(self) -> int:
        return len(self.utterances)

    def precompute(self, batch: int = 32, log: Optional[Callable[[str], None]] = None) -> None:
        # in duration order, so that each batch of the feature extractor pads little
        todo = sorted((i for i in range(len(self)) if i not in self._feats), key=lambda i: self.utterances[i].duration)
        t0 = time.time()
        for k in range(0, len(todo), batch):
            self._compute(todo[k : k + batch])
        if log and todo:
            log(f"features of {len(todo)} utterances in {time.time() - t0:.1f} s")

    def _compute(self, idx: Sequence[int]) -> None:
        wavs = [load_audio(self.utterances[i]) for i in idx]
        feats, lens = self._fe(wavs)
        # one float16 block per batch, each utterance a view of it: thousands of small
        # per-utterance copies between large temporaries fragment the heap (2x the RSS)
        block = feats.to(torch.float16)
        for j, i in enumerate(idx):
            self._feats[i] = block[j, : int(lens[j])]

    def features(self, idx: Sequence[int]) -> list[torch.Tensor]:
        missing = [i for i in idx if i not in self._feats]
        if missing:
            self._compute(missing)
        return [self._feats[i].float() for i in idx]

    def collate(self, idx: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, list[list[int]]]:
        """Padded features (N, T, 80) with ``log(1e-10)`` padding, lengths, token lists."""
        feats = self.features(idx)
        lens = torch.tensor([f.shape[0] for f in feats], dtype=torch.int64)
        x = torch.full((len(feats), int(lens.max()), feats[0].shape[1]), PADDING_VALUE)
        for j, f in enumerate(feats):
            x[j, : f.shape[0]] = f
        return x, lens, [self.tokens[i] for i in idx]


def bucketed_batches(durations: Sequence[float], max_seconds: float, rng: Optional[random.Random] = None,
                     max_cuts: int = 256) -> list[list[int]]:
    """Indices grouped by duration: each batch's ``len * max(duration) <= max_seconds``
    (a single longer cut forms its own batch). Sorted, lightly jittered so that batches differ
    between epochs, and shuffled when ``rng`` is given."""
    order = list(range(len(durations)))
    if rng is not None:
        key = {i: durations[i] * (1.0 + 0.1 * rng.random()) for i in order}
        order.sort(key=lambda i: key[i])
    else:
        order.sort(key=lambda i: durations[i])
    batches: list[list[int]] = []
    cur: list[int] = []
    longest = 0.0
    for i in order:
        d = durations[i]
        if cur and (max(longest, d) * (len(cur) + 1) > max_seconds or len(cur) >= max_cuts):
            batches.append(cur)
            cur, longest = [], 0.0
        cur.append(i)
        longest = max(longest, d)
    if cur:
        batches.append(cur)
    if rng is not None:
        rng.shuffle(batches)
    return batches


def spec_augment(x: torch.Tensor, lens: torch.Tensor, gen: torch.Generator, num_freq_masks: int = 2,
                 max_freq_width: int = 15, time_mask_fraction: float = 0.12, max_time_width: int = 30) -> torch.Tensor:
    """Frequency and time masking in place on a padded batch (masked values = utterance mean)."""
    n, _, c = x.shape
    for i in range(n):
        t = int(lens[i])
        fill = x[i, :t].mean()
        for _ in range(num_freq_masks):
            w = int(torch.randint(0, max_freq_width + 1, (1,), generator=gen))
            f0 = int(torch.randint(0, max(1, c - w), (1,), generator=gen))
            x[i, :t, f0 : f0 + w] = fill
        budget = int(time_mask_fraction * t)
        num = max(1, t // 100 * 2) if budget > 0 else 0
        for _ in range(num):
            w = min(int(torch.randint(0, max_time_width + 1, (1,), generator=gen)), budget)
            if w <= 0:
                break
            t0 = int(torch.randint(0, max(1, t - w), (1,), generator=gen))
            x[i, t0 : t0 + w] = fill
            budget -= w
    return x
