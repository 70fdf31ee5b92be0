"""The model's one entry point: waveforms in, transcripts out.

``Recognizer`` holds an ``AsrModel``, its tokenizer and a feature extractor on
one device and runs, for a batch: fbank -> encoder -> decoding -> text, under
``torch.inference_mode()`` (bf16/fp16 autocast for the encoder on CUDA when
asked). It times each stage so callers can report per-stage seconds.

A *model directory* holds a checkpoint (``pretrained.pt``, else the highest
``epoch-N.pt``, else the only ``*.pt``: :func:`model.checkpoint.pick_checkpoint`), ``bpe.model`` or ``tokens.txt``, and
optionally ``config.json`` (``AsrModel`` kwargs, possibly with a ``"name"``
and ``"decoding"`` section); without ``config.json`` the architecture is
inferred from the checkpoint.
"""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch

from .asr_model import AsrModel
from .checkpoint import file_sha256, find_checkpoint, load_checkpoint
from .config import split_config
from .decoding import DecodingConfig, Hypothesis, decode, resolve_method
from .features import FeatureExtractor
from .tokenizer import Tokenizer

_AMP_DTYPES = {"float32": None, "fp32": None, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


@dataclass
class ModelInfo:
    """What identifies a loaded model in outputs."""

    name: str
    checkpoint: str
    sha256: str
    config: dict[str, Any] = field(default_factory=dict)


@dataclass
class Transcript:
    """One utterance's result."""

    text: str
    token_ids: list[int]
    token_times: list[float]
    score: float
    confidence: float
    ctc_score: Optional[float] = None
    attention_score: Optional[float] = None


@dataclass
class StageTimes:
    """Wall seconds per stage, accumulated over calls."""

    features: float = 0.0
    encoder: float = 0.0
    decoding: float = 0.0

    def add(self, other: "StageTimes") -> None:
        self.features += other.features
        self.encoder += other.encoder
        self.decoding += other.decoding

    def as_dict(self) -> dict[str, float]:
        return {"features": self.features, "encoder": self.encoder, "decoding": self.decoding}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Recognizer:
    """Batched speech recognition with one resident model."""

    def __init__(
        self,
        model: AsrModel,
        tokenizer: Tokenizer,
        decoding: Optional[DecodingConfig] = None,
        device: Union[str, torch.device] = "cpu",
        amp_dtype: str = "auto",
        info: Optional[ModelInfo] = None,
        rescoring_dtype: str = "auto",
    ):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.decoding = decoding or DecodingConfig()
        self.decoding.method = resolve_method(self.model, self.decoding.method)
        if amp_dtype == "auto":
            amp_dtype = "bfloat16" if self.device.type == "cuda" else "float32"
        if amp_dtype not in _AMP_DTYPES:
            raise ValueError(f"amp_dtype must be one of {sorted(_AMP_DTYPES)} or 'auto', got {amp_dtype!r}")
        self.amp_dtype = _AMP_DTYPES[amp_dtype]
        if rescoring_dtype == "auto":
            rescoring_dtype = amp_dtype
        if rescoring_dtype not in _AMP_DTYPES:
            raise ValueError(f"rescoring_dtype must be one of {sorted(_AMP_DTYPES)} or 'auto', got {rescoring_dtype!r}")
        self.rescoring_dtype = _AMP_DTYPES[rescoring_dtype]
        self.features = FeatureExtractor().to(self.device)
        self.info = info or ModelInfo(name="unnamed", checkpoint="", sha256="")

    @classmethod
    def from_dir(
        cls,
        model_dir: Union[str, Path],
        decoding: Union[DecodingConfig, dict[str, Any], None] = None,
        device: Union[str, torch.device] = "cpu",
        amp_dtype: str = "auto",
        rescoring_dtype: str = "auto",
        checkpoint_sha256: Optional[str] = None,
    ) -> "Recognizer":
        """Load checkpoint, tokenizer and optional ``config.json`` from a directory.

        ``decoding``: a :class:`DecodingConfig`, or a dict of fields that override the model's
        defaults (``config.json``'s ``"decoding"`` section), or None for those defaults.
        ``checkpoint_sha256``: the checkpoint's known digest (skips hashing it again)."""
        model_dir = Path(model_dir)
        checkpoint = find_checkpoint(model_dir)
        config_path = model_dir / "config.json"
        config, extra = split_config(json.loads(config_path.read_text())) if config_path.is_file() else (None, {})
        model = load_checkpoint(checkpoint, config=config, device=device)
        if not isinstance(decoding, DecodingConfig):
            decoding = DecodingConfig(**{**extra.get("decoding", {}), **(decoding or {})})
        info = ModelInfo(
            name=str(extra.get("name") or model_dir.resolve().name),
            checkpoint=str(checkpoint),
            sha256=checkpoint_sha256 or file_sha256(checkpoint),
            config=dict(model.config),
        )
        return cls(model, Tokenizer.from_dir(model_dir), decoding=decoding, device=device, amp_dtype=amp_dtype,
                   info=info, rescoring_dtype=rescoring_dtype)

    def _autocast(self, dtype: Optional[torch.dtype]):
        if dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def transcribe(self, waveforms: Sequence[Union[np.ndarray, torch.Tensor]]) -> tuple[list[Transcript], StageTimes]:
        """Transcribe a batch of mono 16 kHz float waveforms (any lengths >= ~0.1 s)."""
        times = StageTimes()
        if not waveforms:
            return [], times
        with torch.inference_mode():
            t0 = time.perf_counter()
            feats, feat_lens = self.features(list(waveforms), device=self.device)
            _sync(self.device)
            t1 = time.perf_counter()
            with self._autocast(self.amp_dtype):
                encoder_out, encoder_out_lens = self.model.forward_encoder(feats, feat_lens)
            encoder_out = encoder_out.float()
            _sync(self.device)
            t2 = time.perf_counter()
            with self._autocast(self.rescoring_dtype):  # the attention decoder's n-best pass
                hyps = decode(self.model, encoder_out, encoder_out_lens, self.decoding)
            _sync(self.device)
            t3 = time.perf_counter()
        times.features, times.encoder, times.decoding = t1 - t0, t2 - t1, t3 - t2
        return [self._to_transcript(h) for h in hyps], times

    def _to_transcript(self, hyp: Hypothesis) -> Transcript:
        return Transcript(
            text=self.tokenizer.decode(hyp.token_ids),
            token_ids=list(hyp.token_ids),
            token_times=[round(t, 3) for t in hyp.token_times],
            score=float(hyp.score),
            confidence=float(hyp.confidence),
            ctc_score=hyp.ctc_score,
            attention_score=hyp.attention_score,
        )

    def warm_up(self, seconds: float = 2.0) -> None:
        """Run one small batch so lazy allocations and caches happen before timing."""
        rng = np.random.default_rng(0)
        self.transcribe([(0.01 * rng.standard_normal(int(16000 * seconds))).astype(np.float32)])
