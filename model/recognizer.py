"""The model's one entry point: waveforms in, transcripts out.

``Recognizer`` holds an ``AsrModel``, its tokenizer and a feature extractor on
one device and runs, for a batch: fbank -> encoder -> decoding -> text, under
``torch.inference_mode()`` (bf16/fp16 autocast for the encoder on CUDA when
asked). It times each stage so callers can report per-stage seconds (CUDA events
on a GPU: no host-device sync per stage). On CUDA, :meth:`Recognizer.prepare`
starts a batch's host-to-device copy and features on a side stream, so the
caller can queue the next batch while the current one runs.

A *model directory* holds a checkpoint (``pretrained.pt``, else the highest
``epoch-N.pt``, else the only ``*.pt``: :func:`model.checkpoint.pick_checkpoint`), ``bpe.model`` or ``tokens.txt``, and
optionally ``config.json`` (``AsrModel`` kwargs, possibly with a ``"name"``
and ``"decoding"`` section); without ``config.json`` the architecture is
inferred from the checkpoint. It may also be an icefall / Hugging Face repo
root or an ``exp/`` folder (:mod:`model.layout`), and the weights may be
icefall's checkpoint averages (:mod:`model.weights`).

Everything is checked at load, before any audio: the checkpoint against the
architecture, the tokenizer's vocabulary and special ids against the model's,
the decoding method and chunking against the model's heads and causality. Any
failure is one :class:`model.checkpoint.ModelLoadError` naming the files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections import OrderedDict
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch

from .asr_model import AsrModel
from .checkpoint import ModelLoadError, build_model, file_sha256
from .config import split_config
from .decoding import (
    BIASING_METHODS,
    DecodingConfig,
    Hypothesis,
    SearchLM,
    decode,
    resolve_method,
)
from .decoding.hotwords import HotwordGraph, HotwordList
from .features import FeatureExtractor
from .layout import TokenizerMismatchError, choose_tokenizer, find_layout
from .onnx_export import OnnxExportError
from .precision import Precision, resolve_precision
from .tokenizer import BLANK_SYMBOL, SOS_EOS_SYMBOL, Tokenizer
from .weights import WeightsSelection, load_weights
from .word_lm import ArpaError, WordLM

log = logging.getLogger(__name__)



@dataclass
class ModelInfo:
    """What identifies a loaded model in outputs."""

    name: str
    checkpoint: str
    sha256: str
    config: dict[str, Any] = field(default_factory=dict)
    #: SHA-256 of each checkpoint file read (same order as ``checkpoint``)
    file_sha256s: tuple[str, ...] = ()
    #: the weights used, e.g. ``pretrained.pt (model)`` or ``model_avg over the batches between ...``
    weights: str = ""
    #: the tokenizer file
    tokenizer: str = ""
    #: what loading decided on its own (full context for a training chunk list, ...)
    notes: tuple[str, ...] = ()
    #: which layout the directory has (model.layout), where the architecture came from
    #: ("config.json" or "inferred from the checkpoint"), what the checkpoint file holds
    layout: str = ""
    config_source: str = ""
    checkpoint_kind: str = ""
    checkpoint_entries: tuple[str, ...] = ()
    checkpoint_position: dict[str, int] = field(default_factory=dict)
    #: the word LM file (``lm.arpa.gz``) and its SHA-256, when the directory has one
    lm: str = ""
    lm_sha256: str = ""


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
    #: the word LM's log-probability of the text, when it took part in the choice (``lm_scale`` > 0)
    lm_score: Optional[float] = None
    #: per token: the probability the model gave it where it was emitted (CTC: at its frame of
    #: the best alignment; transducer: at its emission), same order as ``token_ids``
    token_confidences: list[float] = field(default_factory=list)
    #: contextual biasing: the bonus of the completed hotword phrases that took part in the
    #: choice; None when the utterance had no hotword list
    hotword_score: Optional[float] = None


#: hotword automata a Recognizer keeps (by list content), least recently used dropped first
HOTWORD_CACHE_SIZE = 64

#: a hotword list as :meth:`Recognizer.hotword_graph` takes it: (phrase text, bonus per token) pairs
PhraseList = Sequence[tuple[str, float]]


@dataclass
class StageTimes:
    """Seconds per stage, accumulated over calls: on CUDA the stream's times between CUDA events
    (features: on the side stream, overlapping the previous batch, when :meth:`Recognizer.prepare`
    started them), elsewhere the host's wall time."""

    features: float = 0.0
    encoder: float = 0.0
    decoding: float = 0.0

    def add(self, other: "StageTimes") -> None:
        self.features += other.features
        self.encoder += other.encoder
        self.decoding += other.decoding

    def as_dict(self) -> dict[str, float]:
        return {"features": self.features, "encoder": self.encoder, "decoding": self.decoding}


def _combined_sha256(files: Sequence[Path], digests: Sequence[str], label: str) -> str:
    """One digest for weights computed from several files: the selection and each file's digest."""
    digest = hashlib.sha256(label.encode())
    for f, file_digest in zip(files, digests):
        digest.update(f"\n{f.name} {file_digest}".encode())
    return digest.hexdigest()


def check_special_ids(model: AsrModel, tokenizer: Tokenizer, decoding: DecodingConfig, tokenizer_path: Path) -> None:
    """The blank and sos/eos ids must mean the same in the model, the tokenizer and the decoding.

    Raises :class:`model.layout.TokenizerMismatchError` naming the ids and the file."""
    problems = []
    cfg = getattr(model, "config", {})
    blank = int(cfg.get("blank_id", model.blank_id))
    if BLANK_SYMBOL in tokenizer and tokenizer.piece_to_id(BLANK_SYMBOL) != blank:
        problems.append(f"blank is id {blank} in the model but {BLANK_SYMBOL} is {tokenizer.piece_to_id(BLANK_SYMBOL)}")
    if decoding.blank_id != blank:
        problems.append(f"the decoding's blank_id is {decoding.blank_id} but the model's is {blank}")
    if model.attention_decoder is not None and SOS_EOS_SYMBOL in tokenizer:
        sos_eos = tokenizer.piece_to_id(SOS_EOS_SYMBOL)
        for field_name in ("sos_id", "eos_id"):
            value = cfg.get(field_name)
            if value is not None and int(value) != sos_eos:
                problems.append(f"{field_name} is {value} in the model config but {SOS_EOS_SYMBOL} is {sos_eos}")
    if problems:
        raise TokenizerMismatchError(f"{tokenizer_path} does not fit the model: {'; '.join(problems)}")


def apply_chunking(model: AsrModel, decoding: DecodingConfig) -> list[str]:
    """Set the encoder's decode-time chunking from ``decoding`` (see :class:`DecodingConfig`) and
    write the resolved values back into it; returns notes on what was decided.

    A training list in the model config (``chunk_size "16,32,64,-1"``) means full context unless
    ``decoding.chunk_size`` asks otherwise; chunking a non-causal model is an error."""
    encoder = model.encoder
    notes = []
    chunk, left = decoding.chunk_size, decoding.left_context_frames
    if not encoder.causal:
        if chunk is not None and chunk > 0:
            raise ModelLoadError(f"chunk_size {chunk} needs a causal (streaming-trained) model; this one was trained "
                                 "with full context (causal=False), so it always decodes with full context")
        chunk, left = -1, -1
    else:
        if chunk is None:
            if len(encoder.chunk_size) == 1:
                chunk = encoder.chunk_size[0]
            else:
                chunk = -1
                notes.append(f"causal model whose config lists the training chunk sizes {_csv(encoder.chunk_size)}: "
                             "decoding with full context (ask for chunked decoding with --chunk-size)")
        if left is None:
            if chunk > 0 and len(encoder.left_context_frames) > 1:
                notes.append(f"config lists the training left contexts {_csv(encoder.left_context_frames)}: "
                             "decoding with all left context (ask with --left-context-frames)")
            left = encoder.left_context_frames[0] if len(encoder.left_context_frames) == 1 else -1
    if chunk == 0 or chunk < -1 or (left is not None and left < -1):
        raise ModelLoadError(f"chunk_size must be -1 (full context) or > 0 and left_context_frames >= -1; "
                             f"got {chunk} and {left}")
    if chunk < 0:
        left = -1
    encoder.chunk_size, encoder.left_context_frames = (int(chunk),), (int(left),)
    decoding.chunk_size, decoding.left_context_frames = int(chunk), int(left)
    return notes


#: how a Recognizer runs its networks: torch, or onnxruntime over an ONNX export of the same model
BACKENDS = ("torch", "onnxruntime", "onnxruntime-int8")


def _onnxruntime_model(model: AsrModel, tokenizer: Tokenizer, sha256: str, device: torch.device, int8: bool) -> Any:
    """``model`` exported to ONNX (once per checkpoint, cached: :func:`model.onnx_export.export_cached`)
    and opened with onnxruntime (:func:`model.onnx_runtime.load_onnx_model`) on ``device``."""
    from .onnx_export import export_cached
    from .onnx_runtime import load_onnx_model

    if not sha256:  # a model built in memory: key the cache by its weights
        digest = hashlib.sha256()
        for name, tensor in sorted(model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        sha256 = digest.hexdigest()
    started = time.perf_counter()
    onnx_dir = export_cached(model.cpu(), tokenizer, sha256, int8=int8)
    log.info("onnxruntime backend: %s (%.1f s)", onnx_dir, time.perf_counter() - started)
    return load_onnx_model(onnx_dir, device=device, int8=int8, num_threads=torch.get_num_threads())


def _csv(values: Sequence[int]) -> str:
    return ",".join(str(v) for v in values)


class _StageClock:
    """Stage boundaries of one batch. On CUDA each mark records an event on the current stream,
    read once the batch is done (no host-device sync per stage, and the times are the stream's,
    not the host's that enqueued work and went on); elsewhere the host's clock."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list[Any] = []

    def mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def remark(self) -> None:
        """Move the last mark to now (a stage that was redone)."""
        self.marks.pop()
        self.mark()

    def seconds(self) -> list[float]:
        """Seconds between consecutive marks."""
        if not self.cuda:
            return [b - a for a, b in zip(self.marks, self.marks[1:])]
        self.marks[-1].synchronize()
        return [a.elapsed_time(b) / 1000 for a, b in zip(self.marks, self.marks[1:])]


@dataclass
class FeatureBatch:
    """A batch of waveforms whose features :meth:`Recognizer.prepare` has started: on CUDA they are
    being computed on the recognizer's side stream (``ready`` is recorded there when they are
    done); elsewhere ``feats`` stays None and they are computed when the batch runs."""

    waveforms: list[Union[np.ndarray, torch.Tensor]]
    feats: Optional[torch.Tensor] = None
    feat_lens: Optional[torch.Tensor] = None
    started: Optional[Any] = None  # torch.cuda.Event
    ready: Optional[Any] = None  # torch.cuda.Event

    def __len__(self) -> int:
        return len(self.waveforms)


class Recognizer:
    """Batched speech recognition with one resident model.

    ``decoding`` may be one :class:`DecodingConfig` or several: :meth:`transcribe` decodes with
    the first (:attr:`decoding`), :meth:`transcribe_all` encodes each batch once and decodes it
    with every one of :attr:`decodings` (the encoder dominates the cost, so comparing methods
    costs little more than one of them). Several decodings must share the encoder's chunking."""

    def __init__(
        self,
        model: AsrModel,
        tokenizer: Tokenizer,
        decoding: Union[DecodingConfig, Sequence[DecodingConfig], None] = None,
        device: Union[str, torch.device] = "cpu",
        amp_dtype: str = "auto",
        info: Optional[ModelInfo] = None,
        rescoring_dtype: str = "auto",
        backend: str = "torch",
        lm: Optional[WordLM] = None,
    ):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        self.device = torch.device(device)
        self.backend = backend
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        configs = [decoding or DecodingConfig()] if decoding is None or isinstance(decoding, DecodingConfig) \
            else list(decoding)
        if not configs:
            raise ValueError("at least one decoding is needed")
        for config in configs:
            config.method = resolve_method(self.model, config.method)
        #: every decoding a batch gets in :meth:`transcribe_all`, the first being :attr:`decoding`
        self.decodings: list[DecodingConfig] = configs
        for config in configs:
            if (config.lm_scale or config.search_lm_scale) and lm is None and config.method == "attention-rescoring":
                raise ValueError(f"lm_scale {config.lm_scale:g} / search_lm_scale {config.search_lm_scale:g} "
                                 "need a word LM (lm=WordLM...)")
        #: the word LM that attention rescoring adds with ``lm_scale`` (None: none)
        self.lm = lm
        #: the same LM in tensors for the fused prefix search (``search_lm_scale``): built once and
        #: moved to the device once, with the tables the search reads (fp32 CTC log-probs) and the
        #: lookup table of each fused decoding's scale, so that no call copies them again
        self.search_lm: Optional[SearchLM] = None
        if lm is not None and any(c.search_lm_scale for c in configs):
            self.search_lm = SearchLM.build(lm, [tokenizer.id_to_piece(i) for i in range(tokenizer.vocab_size)],
                                            special_ids=[tokenizer.blank_id, tokenizer.sos_id]).to(self.device)
            for config in configs:
                if config.search_lm_scale:
                    self.search_lm.tables(self.device, torch.float32).lookup(config.search_lm_scale)
        labels = [c.label() for c in configs]
        if len(set(labels)) != len(labels):
            raise ValueError(f"the same decoding is asked for twice: {labels}")
        self.notes = apply_chunking(self.model, configs[0])  # idempotent after from_dir's call
        for config in configs[1:]:
            apply_chunking(self.model, config)
        self.info = info or ModelInfo(name="unnamed", checkpoint="", sha256="")
        self.precision = resolve_precision(amp_dtype, self.device)
        self.rescoring_precision = (self.precision if str(rescoring_dtype).lower() == "auto"
                                    else resolve_precision(rescoring_dtype, self.device))
        if backend != "torch":
            self.model = _onnxruntime_model(self.model, tokenizer, self.info.sha256, self.device,
                                            int8=backend == "onnxruntime-int8")
            # onnxruntime runs the graphs as exported: fp32 (int8 weights for onnxruntime-int8)
            self.precision = self.rescoring_precision = Precision(
                "int8" if backend == "onnxruntime-int8" else "fp32", None,
                f"{backend} backend ({', '.join(self.model.providers)})")
        self.amp_dtype = self.precision.dtype
        self.rescoring_dtype = self.rescoring_precision.dtype
        self.fp16_fallbacks = 0  # batches redone in fp32 after fp16 overflowed (then fp32 for good)
        self.features = FeatureExtractor().to(self.device)
        #: hotword automata by the content hash of their list (:meth:`hotword_graph`)
        self._hotword_graphs: OrderedDict[str, tuple[Optional[HotwordGraph], tuple[str, ...]]] = OrderedDict()
        self._word_start: Optional[list[bool]] = None  # each piece starts a word (hotword automata)
        self._side_stream: Optional[Any] = None  # torch.cuda.Stream of prepare(), made on first use

    @property
    def decoding(self) -> DecodingConfig:
        """The first (primary) decoding: what :meth:`transcribe` uses."""
        return self.decodings[0]

    @classmethod
    def from_dir(
        cls,
        model_dir: Union[str, Path],
        decoding: Union[DecodingConfig, dict[str, Any], Sequence[Union[DecodingConfig, dict[str, Any]]], None] = None,
        device: Union[str, torch.device] = "cpu",
        amp_dtype: str = "auto",
        rescoring_dtype: str = "auto",
        checkpoint_sha256: Optional[str] = None,
        weights: Union[WeightsSelection, dict[str, Any], None] = None,
        backend: str = "torch",
    ) -> "Recognizer":
        """Load checkpoint(s), tokenizer and optional ``config.json`` from a model directory
        (a flat folder, an icefall / Hugging Face repo root or an ``exp/`` folder).

        ``decoding``: a :class:`DecodingConfig`, or a dict of fields that override the model's
        defaults (``config.json``'s ``"decoding"`` section), or None for those defaults; or a list
        of these for several decodings of each batch (:meth:`transcribe_all`).
        ``weights``: icefall's ``--epoch/--iter/--avg/--use-averaged-model`` choice
        (:class:`model.weights.WeightsSelection`); None: the directory's checkpoint as it is.
        ``checkpoint_sha256``: the digest the weights must have (:attr:`ModelInfo.sha256`, e.g.
        computed by a driver before its workers load the same directory); a different one is a
        :class:`ModelLoadError`.
        ``backend``: :data:`BACKENDS` (``torch``; ``onnxruntime`` / ``onnxruntime-int8`` export the
        loaded model to ONNX once per checkpoint into ``$ZIPSCRIBE_CACHE/onnx`` and run it there).

        Raises :class:`ModelLoadError` (one line, naming the files) for anything that keeps
        the model from loading or from decoding correctly."""
        model_dir = Path(model_dir)
        selection = weights if isinstance(weights, WeightsSelection) else WeightsSelection.from_dict(weights)
        try:
            layout = find_layout(model_dir, selection)
            config, extra = (None, {})
            if layout.config:
                config, extra = split_config(json.loads((model_dir / layout.config).read_text()))
            ckpt_dir = model_dir / layout.checkpoint_dir if layout.checkpoint_dir else model_dir
            state, used = load_weights(ckpt_dir, layout.weights)
            model = build_model(state, config=config, device=device)
            del state
            tokenizer, tokenizer_path = choose_tokenizer(model_dir, layout, model.vocab_size)
            given = list(decoding) if isinstance(decoding, (list, tuple)) else [decoding]
            configs = [d if isinstance(d, DecodingConfig) else DecodingConfig(**{**extra.get("decoding", {}), **(d or {})})
                       for d in given]
            for dc in configs:
                check_special_ids(model, tokenizer, dc, tokenizer_path)
            notes = apply_chunking(model, configs[0])
            for dc in configs[1:]:
                apply_chunking(model, dc)
            lm = WordLM.from_arpa(model_dir / layout.lm) if layout.lm else None
            for dc in configs:
                for name in ("lm_scale", "search_lm_scale"):  # the weights that read the word LM
                    value = getattr(dc, name)
                    if value and lm is None and resolve_method(model, dc.method) == "attention-rescoring":
                        raise ModelLoadError(f"{model_dir}: {name} {value:g} asks for a word LM, and the directory has "
                                             f"none (lm.arpa.gz or lm.arpa); set {name} 0 (--{name.replace('_', '-')} 0)")
            files = [ckpt_dir / f for f in layout.weights.files]
            digests = [file_sha256(f) for f in files]
            sha = digests[0] if len(files) == 1 else _combined_sha256(files, digests, layout.weights.label)
        except ModelLoadError:
            raise
        except ArpaError as exc:
            raise ModelLoadError(f"{model_dir}: the word LM cannot be read: {exc}") from None
        except (OSError, ValueError, KeyError, RuntimeError, TypeError) as exc:
            raise ModelLoadError(f"{model_dir}: {exc}") from None
        if checkpoint_sha256 and checkpoint_sha256 != sha:
            raise ModelLoadError(f"{model_dir}: the checkpoint changed since the run started "
                                 f"(sha256 {sha[:12]}, expected {checkpoint_sha256[:12]})")
        name = str(extra.get("name") or (model_dir.resolve().parent.name if model_dir.name == "exp" else model_dir.resolve().name))
        info = ModelInfo(
            name=f"{name}@{layout.weights.label}" if layout.weights.label else name,
            checkpoint=", ".join(str(f) for f in files),
            sha256=sha,
            config=dict(model.config),
            file_sha256s=tuple(digests),
            weights=used.describe(),
            tokenizer=str(tokenizer_path),
            notes=tuple(notes),
            layout=layout.kind,
            config_source=f"{layout.config}" if config is not None else "inferred from the checkpoint's shapes",
            checkpoint_kind=used.kind,
            checkpoint_entries=used.entries,
            checkpoint_position=dict(used.position),
            lm=str(model_dir / layout.lm) if layout.lm else "",
            lm_sha256=file_sha256(model_dir / layout.lm) if layout.lm else "",
        )
        for note in notes:
            log.info("%s: %s", model_dir, note)
        try:
            return cls(model, tokenizer, decoding=configs, device=device, amp_dtype=amp_dtype,
                       info=info, rescoring_dtype=rescoring_dtype, backend=backend, lm=lm)
        except OnnxExportError as exc:
            raise ModelLoadError(f"{model_dir}: {exc}") from None

    def _autocast(self, dtype: Optional[torch.dtype]):
        if dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def transcribe(self, waveforms: Union[Sequence[Union[np.ndarray, torch.Tensor]], FeatureBatch]
                   ) -> tuple[list[Transcript], StageTimes]:
        """Transcribe a batch of mono 16 kHz float waveforms (any lengths >= ~0.1 s), or a batch
        :meth:`prepare` started, with :attr:`decoding`."""
        results, times = self._run(waveforms, self.decodings[:1])
        return results[0], times

    def hotword_graph(self, phrases: Optional[PhraseList]) -> tuple[Optional[HotwordGraph], tuple[str, ...]]:
        """The automaton of a hotword list (phrases as the model's tokenizer spells them; each
        ``(text, bonus per token)``), built once per distinct list and kept
        (:data:`HOTWORD_CACHE_SIZE` lists), and the reasons any phrases were left out: a phrase the
        tokenizer cannot spell (an ``<unk>`` piece, nothing at all) can never be decoded and is
        ignored. ``None`` (and no reasons) for an empty list; ``None`` with reasons when nothing
        is left. Raises ValueError for a bad score or a list too large for an automaton."""
        if not phrases:
            return None, ()
        digest = hashlib.sha256(repr(sorted((str(t), float(s)) for t, s in phrases)).encode()).hexdigest()
        hit = self._hotword_graphs.get(digest)
        if hit is not None:
            self._hotword_graphs.move_to_end(digest)
            return hit
        specials = {self.tokenizer.blank_id, self.tokenizer.sos_id, self.tokenizer.unk_id}
        ids, scores, texts, ignored = [], [], [], []
        for text, score in phrases:
            tokens = tuple(self.tokenizer.encode(text))
            if not tokens or any(t in specials for t in tokens):
                ignored.append(f"hotword {text!r} ignored: the model's tokenizer cannot spell it")
                continue
            ids.append(tokens)
            scores.append(float(score))
            texts.append(text)
        if ids and self._word_start is None:
            self._word_start = [self.tokenizer.id_to_piece(i).startswith("\u2581")
                                for i in range(self.tokenizer.vocab_size)]
        graph = (HotwordGraph.build(HotwordList(tuple(ids), tuple(scores), tuple(texts)), self.tokenizer.vocab_size,
                                    self._word_start) if ids else None)
        if ignored:  # said once per distinct list (the result is kept)
            log.warning("%d of %d hotwords ignored, e.g. %s", len(ignored), len(ids) + len(ignored), ignored[0])
        self._hotword_graphs[digest] = (graph, tuple(ignored))
        if len(self._hotword_graphs) > HOTWORD_CACHE_SIZE:
            self._hotword_graphs.popitem(last=False)
        return graph, tuple(ignored)

    def transcribe_all(self, waveforms: Union[Sequence[Union[np.ndarray, torch.Tensor]], FeatureBatch],
                       overlap: Optional[Callable[[], None]] = None,
                       hotwords: Optional[Sequence[Optional[PhraseList]]] = None,
                       ) -> tuple[list[list[Transcript]], StageTimes]:
        """Encode a batch (waveforms, or a batch :meth:`prepare` started) once and decode it with
        each of :attr:`decodings`: one list of transcripts per decoding, in the order of
        :attr:`decodings`.

        ``hotwords``: one hotword list (or None) per waveform (contextual biasing,
        :meth:`hotword_graph`); decodings that cannot bias (the greedy methods,
        not in :data:`model.decoding.BIASING_METHODS`) decode without them (their transcripts'
        ``hotword_score`` stays None).

        ``overlap``: host work to do while the device encodes (called once the encoder's kernels
        are queued, before decoding starts): typically :meth:`prepare` of the next batch."""
        return self._run(waveforms, self.decodings, overlap, hotwords)

    def prepare(self, waveforms: Sequence[Union[np.ndarray, torch.Tensor]]) -> FeatureBatch:
        """Start a batch's features. On CUDA the samples are staged in pinned host memory, copied
        without blocking and turned into features on a side stream: this returns once the work is
        queued, and the copy and the features run while the default stream is busy (the previous
        batch's encoder or decoding). Elsewhere nothing is done until the batch runs."""
        batch = FeatureBatch(list(waveforms))
        if self.device.type != "cuda" or not batch.waveforms:
            return batch
        if self._side_stream is None:
            self._side_stream = torch.cuda.Stream(self.device)
        side = self._side_stream
        with torch.inference_mode(), torch.cuda.stream(side):
            batch.started = torch.cuda.Event(enable_timing=True)
            batch.started.record(side)
            batch.feats, batch.feat_lens = self.features(batch.waveforms, device=self.device)
            batch.ready = torch.cuda.Event(enable_timing=True)
            batch.ready.record(side)
        return batch

    def _features(self, batch: FeatureBatch) -> tuple[torch.Tensor, torch.Tensor, Optional[float]]:
        """The batch's features on the current stream, and the seconds the side stream took for
        them (None: computed here, now)."""
        if batch.feats is None:
            feats, feat_lens = self.features(batch.waveforms, device=self.device)
            return feats, feat_lens, None
        stream = torch.cuda.current_stream(self.device)
        stream.wait_event(batch.ready)
        # made on the side stream, used on this one: the allocator must not hand their memory to
        # the side stream again before this stream is done with them
        batch.feats.record_stream(stream)
        batch.feat_lens.record_stream(stream)
        batch.ready.synchronize()  # long done by the time this batch's turn comes
        return batch.feats, batch.feat_lens, batch.started.elapsed_time(batch.ready) / 1000

    def _run(self, waveforms: Union[Sequence[Union[np.ndarray, torch.Tensor]], FeatureBatch],
             configs: Sequence[DecodingConfig],
             overlap: Optional[Callable[[], None]] = None,
             hotwords: Optional[Sequence[Optional[PhraseList]]] = None) -> tuple[list[list[Transcript]], StageTimes]:
        times = StageTimes()
        batch = waveforms if isinstance(waveforms, FeatureBatch) else FeatureBatch(list(waveforms))
        if not batch.waveforms:
            return [[] for _ in configs], times
        graphs = None
        if hotwords is not None:
            if len(hotwords) != len(batch.waveforms):
                raise ValueError(f"{len(hotwords)} hotword lists for {len(batch.waveforms)} waveforms")
            graphs = [self.hotword_graph(h)[0] for h in hotwords]
            graphs = graphs if any(g is not None for g in graphs) else None
        clock = _StageClock(self.device)
        with torch.inference_mode():
            clock.mark()
            feats, feat_lens, side_seconds = self._features(batch)
            clock.mark()
            with self._autocast(self.amp_dtype):
                encoder_out, encoder_out_lens = self.model.forward_encoder(feats, feat_lens)
            encoder_out = encoder_out.float()
            clock.mark()
            if overlap is not None:
                overlap()
            if self.amp_dtype == torch.float16 and not bool(torch.isfinite(encoder_out).all()):
                self._fall_back_to_fp32("the encoder's output overflowed fp16 (non-finite values)")
                encoder_out, encoder_out_lens = self.model.forward_encoder(feats, feat_lens)
                clock.remark()
            # the CTC head's log-probs are shared by every CTC-based decoding of the batch
            ctc_log_probs = None
            if any(not c.method.startswith("transducer") for c in configs):
                with self._autocast(self.rescoring_dtype):  # as decode() would compute them
                    ctc_log_probs = self.model.ctc_output(encoder_out)
            results = []
            for config in configs:
                with self._autocast(self.rescoring_dtype):  # the attention decoder's n-best pass
                    hyps = decode(self.model, encoder_out, encoder_out_lens, config, ctc_log_probs=ctc_log_probs,
                                  lm_scorer=self.lm_scores if self.lm is not None else None,
                                  search_lm=self.search_lm, hotwords=graphs if config.method in BIASING_METHODS else None)
                if self.rescoring_dtype == torch.float16 and not all(math.isfinite(h.score) for h in hyps):
                    self._fall_back_to_fp32("attention rescoring overflowed fp16 (non-finite scores)", rescoring=True)
                    hyps = decode(self.model, encoder_out, encoder_out_lens, config, ctc_log_probs=ctc_log_probs,
                                  lm_scorer=self.lm_scores if self.lm is not None else None,
                                  search_lm=self.search_lm, hotwords=graphs if config.method in BIASING_METHODS else None)
                results.append([self._to_transcript(h) for h in hyps])
            clock.mark()
        features, times.encoder, times.decoding = clock.seconds()
        times.features = features if side_seconds is None else side_seconds
        return results, times

    def lm_scores(self, sequences: Sequence[Sequence[int]]) -> list[float]:
        """The word LM's natural-log probability of each token sequence's text: what
        :func:`model.decoding.decode` takes as ``lm_scorer`` (for code that calls ``decode`` on
        this recognizer's model itself)."""
        if self.lm is None:
            raise ValueError("this recognizer has no word LM")
        return self.lm.score_many(self.tokenizer.decode_many(sequences))

    def _fall_back_to_fp32(self, why: str, rescoring: bool = False) -> None:
        """fp16 has 5 exponent bits: a model whose activations exceed 65504 (one trained without
        icefall's activation limits, say) overflows. The batch is redone in fp32 and so is every
        later one (:attr:`precision` says so); bf16, with fp32's range, never needs this."""
        reason = f"fp32: fp16 fell back, {why}"
        log.warning("%s; fp32 from now on", why)
        if rescoring or self.rescoring_dtype == torch.float16:
            self.rescoring_precision = Precision("fp32", None, reason)
            self.rescoring_dtype = None
        if not rescoring:
            self.precision = Precision("fp32", None, reason)
            self.amp_dtype = None
        self.fp16_fallbacks += 1

    def _to_transcript(self, hyp: Hypothesis) -> Transcript:
        return Transcript(
            text=self.tokenizer.decode(hyp.token_ids),
            token_ids=list(hyp.token_ids),
            token_times=[round(t, 3) for t in hyp.token_times],
            score=float(hyp.score),
            confidence=float(hyp.confidence),
            ctc_score=hyp.ctc_score,
            attention_score=hyp.attention_score,
            lm_score=hyp.lm_score,
            token_confidences=[round(float(c), 4) for c in hyp.token_confidences],
            hotword_score=hyp.hotword_score,
        )

    def warm_up(self, seconds: float = 2.0) -> None:
        """Run one small batch so lazy allocations and caches happen before timing."""
        rng = np.random.default_rng(0)
        self.transcribe([(0.01 * rng.standard_normal(int(16000 * seconds))).astype(np.float32)])
