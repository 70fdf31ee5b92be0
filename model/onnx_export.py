"""Export a loaded :class:`model.asr_model.AsrModel` to ONNX: files sherpa-onnx runs as they are,
and the graphs zipscribe's own onnxruntime backend (:mod:`model.onnx_runtime`) runs.

One export directory holds two groups of files (either may be left out) and a manifest:

**sherpa-onnx** (``sherpa=True``), the layout and metadata of icefall's ``export-onnx*.py``:

* CTC: ``model.onnx`` -- inputs ``x`` (N, T, 80) float fbank padded with log(1e-10) and
  ``x_lens`` (N,) int64; outputs ``log_probs`` (N, T', vocab) and ``log_probs_len`` (N,) int64;
  metadata ``model_type=zipformer2_ctc``. ``OfflineRecognizer.from_zipformer_ctc(model=, tokens=)``.
  sherpa-onnx reads the vocabulary size from the output's last dimension, which is static.
* transducer: ``encoder.onnx`` (``x``, ``x_lens`` -> ``encoder_out`` (N, T', joiner_dim) *after*
  the joiner's encoder projection, ``encoder_out_lens``; metadata ``model_type=zipformer2``),
  ``decoder.onnx`` (``y`` (N, context_size) int64, -1 = no token -> ``decoder_out`` (N, joiner_dim)
  after the joiner's decoder projection; metadata ``vocab_size``, ``context_size``) and
  ``joiner.onnx`` (``encoder_out``, ``decoder_out`` (N, joiner_dim) -> ``logit`` (N, vocab);
  metadata ``joiner_dim``). ``OfflineRecognizer.from_transducer(encoder=, decoder=, joiner=, tokens=)``.
* ``tokens.txt``: ``<piece> <id>`` per line, from the model's tokenizer.

**zipscribe backend** (``backend=True``): the encoder once, without any head, and each head as
its own small graph, so that every decoding method (CTC greedy / prefix beam, attention
rescoring on the encoder output, transducer searches) runs on one encoder pass:

* ``zipscribe_encoder.onnx``: ``x``, ``x_lens`` -> ``encoder_out`` (N, T', C), ``encoder_out_lens``;
* ``ctc_output.onnx``: ``encoder_out`` -> ``log_probs`` (the CTC head, log-softmax included);
* ``joiner_encoder_proj.onnx``: ``encoder_out`` -> ``encoder_proj`` (N, T', joiner_dim); the
  transducer then reuses sherpa's ``decoder.onnx`` and ``joiner.onnx`` (written for the
  backend too);
* ``attention_decoder.onnx``: ``tokens`` (N, U) int64, ``positions`` (N, U) int64,
  ``self_attn_mask`` (N, U, U) bool (True = masked), ``memory`` (N, S, C), ``memory_lens`` (N,)
  -> ``logits`` (N, U, vocab). The mask and positions are inputs so that both the causal
  left-to-right pass and the prefix-trie pass of
  :meth:`model.attention_decoder.AttentionDecoderModel.score_nbest` run on the same graph.

``zipscribe_onnx.json`` (:data:`MANIFEST_NAME`) says what was exported: the heads, the files
of each group, the source checkpoint's SHA-256, the model's config, whether int8 copies exist,
opset and versions. With ``int8=True`` every graph also gets a ``*.int8.onnx`` copy, its MatMul
weights dynamically quantised to int8 (onnxruntime ``quantize_dynamic``, as icefall does).

How the graphs are made: the TorchScript-based exporter (``torch.onnx.export(...,
dynamo=False)``, opset :data:`OPSET`) traces the model with batch and time as dynamic axes.
Three encoder pieces would freeze a traced length, so while exporting they are swapped for
equivalents with the same arithmetic (same values, checked by the tests): the relative-position
shift (a strided view -> a gather), the positional-embedding table (a cache sized on first use
-> computed for the input's length) and the downsampling's pad (a Python ``if`` -> always
padding, possibly by zero frames). A fourth swap is for speed: the Swoosh activations' softplus
becomes Exp / Log1p / Max (onnxruntime's Softplus kernel is scalar and took half the encoder's
time; the values agree to float32 rounding). Streaming-trained (causal) models are refused: their
chunked convolution is shaped by Python branches on the length.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import torch
from torch import nn

from . import layers as _layers
from . import subsampling as _subsampling
from . import zipformer as _zipformer
from .asr_model import AsrModel
from .tokenizer import Tokenizer

__all__ = [
    "BACKEND_FILES",
    "EXPORT_FORMAT",
    "HEADS",
    "MANIFEST_NAME",
    "OPSET",
    "SHERPA_FILES",
    "OnnxExport",
    "OnnxExportError",
    "cache_root",
    "export_cached",
    "export_onnx",
    "int8_name",
    "read_manifest",
]

#: ONNX opset of every graph (onnxruntime >= 1.13 runs it; LayerNorm is a native op from 17)
OPSET = 17
#: version of the directory layout and manifest; a cache made by another version is not reused
EXPORT_FORMAT = 1
MANIFEST_NAME = "zipscribe_onnx.json"
#: ``--heads`` choices: ``all`` = every head the model has
HEADS = ("ctc", "transducer", "all")
#: file names sherpa-onnx users expect
SHERPA_FILES = {"ctc": "model.onnx", "encoder": "encoder.onnx", "decoder": "decoder.onnx",
                "joiner": "joiner.onnx", "tokens": "tokens.txt"}
#: file names of the backend's graphs (decoder / joiner are shared with sherpa's)
BACKEND_FILES = {"encoder": "zipscribe_encoder.onnx", "ctc_output": "ctc_output.onnx",
                 "joiner_encoder_proj": "joiner_encoder_proj.onnx", "decoder": "decoder.onnx",
                 "joiner": "joiner.onnx", "attention_decoder": "attention_decoder.onnx"}

#: feature frames of the tracing input: odd after the front end's subsampling ((T-7)//2 = 101), so
#: no traced shape happens to be a multiple of a downsampling factor
_TRACE_FRAMES = 209
_AUTHOR = "zipscribe"


class OnnxExportError(ValueError):
    """The model cannot be exported as asked (a head it lacks, a causal model, ...)."""


@dataclass
class OnnxExport:
    """What :func:`export_onnx` wrote."""

    directory: Path
    #: heads exported: ``ctc``, ``attention-decoder``, ``transducer``
    heads: list[str]
    #: role -> file name, per group: ``{"sherpa": {...}, "backend": {...}}``
    files: dict[str, dict[str, str]]
    int8: bool
    seconds: float
    manifest: dict[str, Any] = field(default_factory=dict)

    def path(self, group: str, role: str, int8: bool = False) -> Path:
        """Path of one file, e.g. ``path("sherpa", "ctc")`` -> ``.../model.onnx``."""
        name = self.files[group][role]
        return self.directory / (int8_name(name) if int8 and name.endswith(".onnx") else name)


def int8_name(name: str) -> str:
    """``model.onnx`` -> ``model.int8.onnx`` (sherpa-onnx's naming of quantised copies)."""
    return name[: -len(".onnx")] + ".int8.onnx" if name.endswith(".onnx") else name


# --------------------------------------------------------------------------- export-time swaps

def _rel_shift_gather(pos_scores: torch.Tensor) -> torch.Tensor:
    """Same result as :func:`model.zipformer._rel_shift` (``out[..., i, j] = in[..., i, T-1-i+j]``)
    as a gather whose indices follow the traced length."""
    h, n, t, _ = pos_scores.shape
    rows = torch.arange(t - 1, -1, -1, device=pos_scores.device).unsqueeze(1)
    cols = torch.arange(t, device=pos_scores.device).unsqueeze(0)
    index = (rows + cols).view(1, 1, t, t).expand(h, n, t, t)
    return torch.gather(pos_scores, 3, index)


def _rel_pos_forward(self: _zipformer.CompactRelPositionalEncoding, x: torch.Tensor) -> torch.Tensor:
    """:class:`model.zipformer.CompactRelPositionalEncoding` computed for ``x``'s length (the
    same float32 arithmetic as its cached table, rows -(T-1) .. T-1)."""
    t = x.size(0)
    offsets = torch.arange(-(t - 1), t, device=x.device).to(torch.float32).unsqueeze(1)
    freqs = 1 + torch.arange(self.embed_dim // 2, device=x.device)
    compression = self.embed_dim ** 0.5
    compressed = compression * offsets.sign() * ((offsets.abs() + compression).log() - math.log(compression))
    length_scale = self.length_factor * self.embed_dim / (2.0 * math.pi)
    angle = (compressed / length_scale).atan() * freqs
    table = torch.stack((angle.cos(), angle.sin()), dim=-1).reshape(2 * t - 1, self.embed_dim)
    table = torch.cat((table[:, :-1], torch.ones_like(table[:, :1])), dim=1)  # the constant bias channel
    return table.unsqueeze(0).to(x.dtype)


def _downsample_forward(self: _zipformer.SimpleDownsample, src: torch.Tensor) -> torch.Tensor:
    """:class:`model.zipformer.SimpleDownsample` that always appends its (possibly empty) pad."""
    t, n, c = src.shape
    ds = self.downsample
    t_out = (t + ds - 1) // ds
    src = torch.cat((src, src[-1:].expand(t_out * ds - t, n, c)), dim=0)
    weights = self.bias.softmax(dim=0).to(src.dtype)
    return torch.einsum("tdnc,d->tnc", src.reshape(t_out, ds, n, c), weights)


def _swoosh_core_onnx(v_shifted: torch.Tensor) -> torch.Tensor:
    """:func:`model.layers.shifted_swoosh_core` (``softplus(v) - 0.08 v``) from Exp / Log / Max:
    onnxruntime's Softplus kernel is scalar code that took half the encoder's time, these are
    vectorised. ``softplus(v) = max(log1p(exp(min(v, 20))), v)``: exact to float32 rounding
    (for v > 20 softplus(v) rounds to v)."""
    return torch.maximum(torch.log1p(torch.exp(torch.clamp(v_shifted, max=20.0))), v_shifted).add(v_shifted, alpha=-0.08)


_SWAP_LOCK = threading.Lock()


@contextlib.contextmanager
def _traceable_encoder() -> Iterator[None]:
    """Swap in the trace-friendly equivalents above while exporting (restored afterwards).

    They compute the same values as the originals (to float32 rounding), so a model used by
    another thread meanwhile gives the same results."""
    with _SWAP_LOCK:
        saved = (_zipformer._rel_shift, _zipformer.CompactRelPositionalEncoding.forward,
                 _zipformer.SimpleDownsample.forward, _layers.shifted_swoosh_core, _subsampling.shifted_swoosh_core)
        _zipformer._rel_shift = _rel_shift_gather
        _zipformer.CompactRelPositionalEncoding.forward = _rel_pos_forward  # type: ignore[method-assign]
        _zipformer.SimpleDownsample.forward = _downsample_forward  # type: ignore[method-assign]
        _layers.shifted_swoosh_core = _subsampling.shifted_swoosh_core = _swoosh_core_onnx
        try:
            yield
        finally:
            (_zipformer._rel_shift, _zipformer.CompactRelPositionalEncoding.forward, _zipformer.SimpleDownsample.forward,
             _layers.shifted_swoosh_core, _subsampling.shifted_swoosh_core) = saved


# --------------------------------------------------------------------------- graph wrappers

class _EncoderGraph(nn.Module):
    """fbank (N, T, 80) + lengths -> encoder output (optionally through a head) + lengths."""

    def __init__(self, model: AsrModel, head: Optional[nn.Module] = None):
        super().__init__()
        self.encoder_embed = model.encoder_embed
        self.encoder = model.encoder
        self.head = head

    def forward(self, x: torch.Tensor, x_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, lens = self.encoder_embed(x, x_lens)
        # the pad mask from the traced length (make_pad_mask would freeze max(lengths))
        mask = torch.arange(x.size(1), device=x.device).unsqueeze(0) >= lens.unsqueeze(1)
        out, out_lens = self.encoder(x.permute(1, 0, 2), lens, mask)
        out = out.permute(1, 0, 2)
        if self.head is not None:
            out = self.head(out)
        return out, out_lens


class _TransducerDecoderGraph(nn.Module):
    """(N, context_size) ids (-1 = none) -> the joiner's projection of the decoder output (N, J)."""

    def __init__(self, model: AsrModel):
        super().__init__()
        assert model.decoder is not None and model.joiner is not None
        self.decoder = model.decoder
        self.decoder_proj = model.joiner.decoder_proj

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.decoder_proj(self.decoder(y, need_pad=False).squeeze(1))


class _JoinerGraph(nn.Module):
    """Projected encoder and decoder outputs (N, J) -> logits (N, vocab)."""

    def __init__(self, model: AsrModel):
        super().__init__()
        assert model.joiner is not None
        self.output_linear = model.joiner.output_linear

    def forward(self, encoder_out: torch.Tensor, decoder_out: torch.Tensor) -> torch.Tensor:
        return self.output_linear(torch.tanh(encoder_out + decoder_out))


class _AttentionDecoderGraph(nn.Module):
    """:class:`model.attention_decoder.TransformerDecoder` with its self-attention mask and token
    positions as inputs; the sinusoidal position encoding is computed from ``positions`` (the
    torch model's table has a traced size)."""

    def __init__(self, model: AsrModel):
        super().__init__()
        assert model.attention_decoder is not None
        self.decoder = model.attention_decoder.decoder
        d = self.decoder.d_model
        self.register_buffer("div_term", torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * -(math.log(10000.0) / d)),
                             persistent=False)

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, self_attn_mask: torch.Tensor,
                memory: torch.Tensor, memory_lens: torch.Tensor) -> torch.Tensor:
        dec = self.decoder
        angle = positions.to(torch.float32).unsqueeze(-1) * self.div_term  # (N, U, d/2)
        pos = torch.stack((angle.sin(), angle.cos()), dim=-1).flatten(2)  # even channels sin, odd cos
        h = (dec.embed(tokens) * math.sqrt(dec.d_model) + pos).permute(1, 0, 2)
        mem = memory.permute(1, 0, 2)
        memory_mask = (torch.arange(memory.size(1), device=memory.device).unsqueeze(0)
                       >= memory_lens.unsqueeze(1)).unsqueeze(1)
        for layer in dec.layers:
            h = layer(h, attn_mask=self_attn_mask, memory=mem, memory_attn_mask=memory_mask)
        return dec.output_layer(h.permute(1, 0, 2))


# --------------------------------------------------------------------------- writing

def _export_graph(module: nn.Module, args: tuple, path: Path, input_names: Sequence[str],
                  output_names: Sequence[str], dynamic_axes: dict[str, dict[int, str]], opset: int) -> None:
    module = module.eval()
    with warnings.catch_warnings():
        # the TorchScript exporter's deprecation notice and tracer warnings about Python values
        # (sizes) that the swaps above make safe
        warnings.simplefilter("ignore")
        with torch.no_grad():
            torch.onnx.export(module, args, str(path), dynamo=False, opset_version=opset,
                              input_names=list(input_names), output_names=list(output_names),
                              dynamic_axes=dynamic_axes, do_constant_folding=True)


def _add_metadata(path: Path, metadata: dict[str, Any]) -> None:
    import onnx

    graph = onnx.load(str(path))
    existing = {p.key: p for p in graph.metadata_props}
    for key, value in metadata.items():
        prop = existing.get(key) or graph.metadata_props.add()
        prop.key, prop.value = key, str(value)
    onnx.save(graph, str(path))


def _quantize(path: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = path.with_name(int8_name(path.name))
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # the quantizer's advice (on the root logger) to pre-process first
    try:
        quantize_dynamic(model_input=str(path), model_output=str(out), op_types_to_quantize=["MatMul"],
                         weight_type=QuantType.QInt8)
    finally:
        logging.disable(previous)
    return out


def _fbank_example(model: AsrModel) -> tuple[torch.Tensor, torch.Tensor]:
    feature_dim = int(model.config.get("feature_dim", 80)) if hasattr(model, "config") else 80
    x = torch.randn(2, _TRACE_FRAMES, feature_dim)
    x_lens = torch.tensor([_TRACE_FRAMES, _TRACE_FRAMES - 40], dtype=torch.int64)
    x[1, _TRACE_FRAMES - 40:] = math.log(1e-10)
    return x, x_lens


def _heads_of(model: AsrModel, heads: str) -> list[str]:
    if heads not in HEADS:
        raise OnnxExportError(f"heads must be one of {HEADS}, got {heads!r}")
    has = {"ctc": model.ctc_output is not None,
           "transducer": model.decoder is not None and model.joiner is not None,
           "attention-decoder": model.attention_decoder is not None}
    if heads != "all" and not has[heads]:
        present = [h for h, ok in has.items() if ok]
        raise OnnxExportError(f"the model has no {heads} head (it has: {', '.join(present)})")
    chosen = [h for h in ("ctc", "transducer") if has[h] and heads in (h, "all")]
    if has["attention-decoder"] and "ctc" in chosen:  # the rescoring needs the CTC n-best
        chosen.append("attention-decoder")
    return chosen


def _config_of(model: AsrModel) -> dict[str, Any]:
    return dict(getattr(model, "config", {}) or {})


def _config_digest(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def export_onnx(
    model: AsrModel,
    tokenizer: Optional[Tokenizer],
    out_dir: Union[str, Path],
    heads: str = "all",
    int8: bool = False,
    sherpa: bool = True,
    backend: bool = True,
    checkpoint_sha256: str = "",
    opset: int = OPSET,
) -> OnnxExport:
    """Write ONNX graphs of ``model`` (and ``tokens.txt`` and the manifest) into ``out_dir``.

    Args:
      model: a loaded, non-causal :class:`AsrModel` (any device; exported from a CPU copy).
      tokenizer: the model's tokenizer (its vocabulary must match the model's); needed for
        sherpa-onnx's ``tokens.txt``, may be None with ``sherpa=False``.
      out_dir: created if missing; files of the same names are replaced.
      heads: ``ctc`` (with the attention decoder when the model has one), ``transducer`` or
        ``all`` (every head the model has).
      int8: also write ``*.int8.onnx`` copies with int8 MatMul weights.
      sherpa: write the files sherpa-onnx loads (``model.onnx``; ``encoder/decoder/joiner.onnx``).
      backend: write the graphs :func:`model.onnx_runtime.load_onnx_model` loads.
      checkpoint_sha256: the source weights' digest, recorded in the manifest.
      opset: ONNX opset.

    Raises :class:`OnnxExportError` for a head the model lacks, a causal model or a tokenizer
    of another vocabulary size."""
    if not (sherpa or backend):
        raise OnnxExportError("nothing to export: both sherpa and backend are off")
    if model.encoder.causal:
        raise OnnxExportError("streaming-trained (causal) models are not supported by the ONNX export yet")
    if tokenizer is None and sherpa:
        raise OnnxExportError("sherpa-onnx needs tokens.txt: pass the model's tokenizer")
    if tokenizer is not None and tokenizer.vocab_size != model.vocab_size:
        raise OnnxExportError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model {model.vocab_size}")
    chosen = _heads_of(model, heads)
    start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = _config_of(model)
    cpu_model = model if next(model.parameters()).device.type == "cpu" else _cpu_copy(model)
    cpu_model.eval()
    x, x_lens = _fbank_example(cpu_model)
    with torch.no_grad():
        # fills the caches of parameter-derived tensors (folded biases), so that every trace
        # sees them as constants rather than recomputing them from the weights
        cpu_model.forward_encoder(x, x_lens)
    files: dict[str, dict[str, str]] = {"sherpa": {}, "backend": {}}
    written: list[Path] = []
    common = {"model_author": _AUTHOR, "version": "1", "zipscribe_checkpoint_sha256": checkpoint_sha256,
              "vocab_size": model.vocab_size}
    fbank_axes = {"x": {0: "N", 1: "T"}, "x_lens": {0: "N"}}

    def encoder_graph(head: Optional[nn.Module], path: Path, outputs: Sequence[str], meta: dict[str, Any]) -> None:
        axes = {**fbank_axes, outputs[0]: {0: "N", 1: "T_out"}, outputs[1]: {0: "N"}}
        with _traceable_encoder():
            _export_graph(_EncoderGraph(cpu_model, head), (x, x_lens), path, ["x", "x_lens"], outputs, axes, opset)
        _add_metadata(path, {**common, **meta})
        written.append(path)

    enc_dim = cpu_model.encoder_out_dim
    if sherpa:
        assert tokenizer is not None
        tokens = out / SHERPA_FILES["tokens"]
        tokenizer.write_tokens_txt(tokens)
        files["sherpa"]["tokens"] = tokens.name
        if "ctc" in chosen:
            path = out / SHERPA_FILES["ctc"]
            encoder_graph(cpu_model.ctc_output, path, ["log_probs", "log_probs_len"],
                          {"model_type": "zipformer2_ctc", "comment": "non-streaming zipformer2 CTC, exported by zipscribe",
                           "subsampling_factor": 4})
            files["sherpa"]["ctc"] = path.name
        if "transducer" in chosen:
            path = out / SHERPA_FILES["encoder"]
            assert cpu_model.joiner is not None
            encoder_graph(cpu_model.joiner.encoder_proj, path, ["encoder_out", "encoder_out_lens"],
                          {"model_type": "zipformer2", "comment": "non-streaming zipformer2, exported by zipscribe"})
            files["sherpa"]["encoder"] = path.name
    if backend:
        path = out / BACKEND_FILES["encoder"]
        encoder_graph(None, path, ["encoder_out", "encoder_out_lens"],
                      {"model_type": "zipscribe_encoder", "comment": "zipformer encoder without heads, exported by zipscribe"})
        files["backend"]["encoder"] = path.name
        memory = torch.randn(2, 23, enc_dim)
        if "ctc" in chosen:
            path = out / BACKEND_FILES["ctc_output"]
            _export_graph(cpu_model.ctc_output, (memory,), path, ["encoder_out"], ["log_probs"],
                          {"encoder_out": {0: "N", 1: "T"}, "log_probs": {0: "N", 1: "T"}}, opset)
            _add_metadata(path, {**common, "model_type": "zipscribe_ctc_output"})
            written.append(path)
            files["backend"]["ctc_output"] = path.name
        if "transducer" in chosen:
            assert cpu_model.joiner is not None
            path = out / BACKEND_FILES["joiner_encoder_proj"]
            _export_graph(cpu_model.joiner.encoder_proj, (memory,), path, ["encoder_out"], ["encoder_proj"],
                          {"encoder_out": {0: "N", 1: "T"}, "encoder_proj": {0: "N", 1: "T"}}, opset)
            _add_metadata(path, {**common, "model_type": "zipscribe_joiner_encoder_proj"})
            written.append(path)
            files["backend"]["joiner_encoder_proj"] = path.name
        if "attention-decoder" in chosen:
            path = out / BACKEND_FILES["attention_decoder"]
            u = 7
            tokens_in = torch.randint(0, model.vocab_size, (3, u))
            positions = torch.arange(u).expand(3, u).contiguous()
            mask = torch.ones(u, u, dtype=torch.bool).triu(1).expand(3, u, u).contiguous()
            memory_lens = torch.tensor([23, 17, 11], dtype=torch.int64)
            _export_graph(_AttentionDecoderGraph(cpu_model), (tokens_in, positions, mask, torch.randn(3, 23, enc_dim), memory_lens),
                          path, ["tokens", "positions", "self_attn_mask", "memory", "memory_lens"], ["logits"],
                          {"tokens": {0: "N", 1: "U"}, "positions": {0: "N", 1: "U"}, "self_attn_mask": {0: "N", 1: "U", 2: "U"},
                           "memory": {0: "N", 1: "S"}, "memory_lens": {0: "N"}, "logits": {0: "N", 1: "U"}}, opset)
            assert cpu_model.attention_decoder is not None
            att = cpu_model.attention_decoder
            _add_metadata(path, {**common, "model_type": "zipscribe_attention_decoder", "sos_id": att.sos_id,
                                 "eos_id": att.eos_id, "ignore_id": att.ignore_id})
            written.append(path)
            files["backend"]["attention_decoder"] = path.name
    if "transducer" in chosen:  # decoder and joiner: the same files for sherpa-onnx and the backend
        assert cpu_model.decoder is not None and cpu_model.joiner is not None
        context_size = cpu_model.decoder.context_size
        joiner_dim = cpu_model.joiner.output_linear.in_features
        path = out / SHERPA_FILES["decoder"]
        y = torch.tensor([[-1] * (context_size - 1) + [0]] * 3, dtype=torch.int64)
        _export_graph(_TransducerDecoderGraph(cpu_model), (y,), path, ["y"], ["decoder_out"],
                      {"y": {0: "N"}, "decoder_out": {0: "N"}}, opset)
        _add_metadata(path, {**common, "context_size": context_size, "model_type": "zipscribe_transducer_decoder"})
        written.append(path)
        path_j = out / SHERPA_FILES["joiner"]
        _export_graph(_JoinerGraph(cpu_model), (torch.randn(5, joiner_dim), torch.randn(5, joiner_dim)), path_j,
                      ["encoder_out", "decoder_out"], ["logit"],
                      {"encoder_out": {0: "N"}, "decoder_out": {0: "N"}, "logit": {0: "N"}}, opset)
        _add_metadata(path_j, {**common, "joiner_dim": joiner_dim, "model_type": "zipscribe_transducer_joiner"})
        written.append(path_j)
        for group in [g for g, on in (("sherpa", sherpa), ("backend", backend)) if on]:
            files[group]["decoder"], files[group]["joiner"] = path.name, path_j.name
    if int8:
        for path in written:
            _quantize(path)
    seconds = time.perf_counter() - start
    manifest = _manifest(cpu_model, config, chosen, files, int8, checkpoint_sha256, opset, seconds)
    (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1) + "\n")
    return OnnxExport(directory=out, heads=chosen, files={g: f for g, f in files.items() if f}, int8=int8,
                      seconds=seconds, manifest=manifest)


def _cpu_copy(model: AsrModel) -> AsrModel:
    import copy

    clone = copy.deepcopy(model).to("cpu").float()
    clone.config = _config_of(model)  # type: ignore[attr-defined]
    return clone


def _manifest(model: AsrModel, config: dict[str, Any], heads: list[str], files: dict[str, dict[str, str]], int8: bool,
              checkpoint_sha256: str, opset: int, seconds: float) -> dict[str, Any]:
    import onnx

    att = model.attention_decoder
    info: dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "heads": heads,
        "files": {g: f for g, f in files.items() if f},
        "int8": int8,
        "checkpoint_sha256": checkpoint_sha256,
        "config_sha256": _config_digest(config),
        "opset": opset,
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__},
        "export_seconds": round(seconds, 2),
        "vocab_size": model.vocab_size,
        "blank_id": model.blank_id,
        "encoder_out_dim": model.encoder_out_dim,
        "subsampling_factor": 4,
        "feature_dim": int(config.get("feature_dim", 80)),
        "model_config": config,
    }
    if att is not None and "attention-decoder" in heads:
        info.update(sos_id=att.sos_id, eos_id=att.eos_id, ignore_id=att.ignore_id)
    if model.decoder is not None and model.joiner is not None and "transducer" in heads:
        info.update(context_size=model.decoder.context_size, joiner_dim=model.joiner.output_linear.in_features)
    return info


def read_manifest(onnx_dir: Union[str, Path]) -> dict[str, Any]:
    """The manifest of an export directory; :class:`OnnxExportError` if missing or unreadable."""
    path = Path(onnx_dir) / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise OnnxExportError(f"{path}: not a zipscribe ONNX export ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != EXPORT_FORMAT:
        raise OnnxExportError(f"{path}: export format {manifest.get('format') if isinstance(manifest, dict) else '?'}, "
                              f"this zipscribe reads format {EXPORT_FORMAT}; export again")
    return manifest


# --------------------------------------------------------------------------- cache

def cache_root() -> Path:
    """``$ZIPSCRIBE_CACHE/onnx`` (default ``~/.cache/zipscribe/onnx``)."""
    base = os.environ.get("ZIPSCRIBE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "zipscribe")
    return Path(base) / "onnx"


def export_cached(
    model: AsrModel,
    tokenizer: Optional[Tokenizer],
    checkpoint_sha256: str,
    heads: str = "all",
    int8: bool = False,
    root: Union[str, Path, None] = None,
) -> Path:
    """The backend's ONNX graphs of ``model`` in a cache directory, exported on first use.

    The directory is ``<root>/<sha256[:16]>-<key>`` where the key covers the model config, the
    heads, int8, the opset, the export format and the torch version; an existing complete export
    (its manifest present) is reused, a new one is written to a temporary sibling and renamed
    into place, so concurrent processes never see a half-written directory. ``root`` defaults to
    :func:`cache_root`. Returns the directory for :func:`model.onnx_runtime.load_onnx_model`."""
    if not checkpoint_sha256:
        raise OnnxExportError("export_cached needs the checkpoint's sha256 (Recognizer.info.sha256)")
    root = Path(root) if root is not None else cache_root()
    key = hashlib.sha256(json.dumps([_config_digest(_config_of(model)), heads, int8, OPSET, EXPORT_FORMAT,
                                     torch.__version__], sort_keys=True).encode()).hexdigest()[:12]
    final = root / f"{checkpoint_sha256[:16]}-{key}"
    if (final / MANIFEST_NAME).is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=root))
    try:
        export_onnx(model, tokenizer, tmp, heads=heads, int8=int8, sherpa=False, backend=True,
                    checkpoint_sha256=checkpoint_sha256)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / MANIFEST_NAME).is_file():  # not a concurrent writer's finished export
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final
