"""An onnxruntime-backed stand-in for :class:`model.asr_model.AsrModel`.

:func:`load_onnx_model` opens an export directory written by :func:`model.onnx_export.export_onnx`
(its backend graphs) and returns an :class:`OnnxAsrModel`: the attributes and calls that
:class:`model.recognizer.Recognizer` and :func:`model.decoding.decode` use, with every network
evaluated by onnxruntime and torch tensors in and out, so the decoding code runs unchanged:

* ``forward_encoder(x, x_lens)`` -> ``(encoder_out, encoder_out_lens)`` (``zipscribe_encoder.onnx``);
* ``ctc_output(encoder_out)`` -> CTC log-probs (``ctc_output.onnx``);
* ``attention_decoder``: ``score_nbest`` and ``nll`` of
  :class:`model.attention_decoder.AttentionDecoderModel` (the same bookkeeping, borrowed from it)
  over ``attention_decoder.onnx``;
* ``decoder(ctx, need_pad=False)`` and ``joiner(enc, dec, project_input=False)`` with
  ``joiner.encoder_proj`` / ``joiner.decoder_proj``, the calls of the transducer searches. The
  decoder graph already applies the joiner's decoder projection (as sherpa-onnx's
  ``decoder.onnx`` does), so ``joiner.decoder_proj`` is the identity here and ``decoder``'s output
  is (N, 1, joiner_dim);
* ``vocab_size``, ``blank_id``, ``config``, ``encoder`` (``causal`` / ``chunk_size`` /
  ``left_context_frames``, read and set by :func:`model.recognizer.apply_chunking`), ``to()``,
  ``eval()``, ``parameters()`` (none).

Execution providers: CUDA when the device is ``cuda`` and onnxruntime offers
``CUDAExecutionProvider`` (the ``onnxruntime-gpu`` wheel; then CPU as its fallback), else CPU with
a warning; :attr:`OnnxAsrModel.providers` says which were taken. Threads: ``num_threads``
(default ``torch.get_num_threads()``) for each session's intra-op pool, without spin-waiting (torch
runs between the sessions' calls in the same process). Inputs travel as NumPy
arrays (host memory) and outputs come back as torch tensors on the model's :attr:`device`
(the one asked for, wherever the graphs ran), so callers keep one device throughout.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np
import torch

from .attention_decoder import AttentionDecoderModel
from .onnx_export import OnnxExportError, int8_name, read_manifest

__all__ = ["OnnxAsrModel", "load_onnx_model", "providers_for"]

log = logging.getLogger(__name__)

Device = Union[str, torch.device]


def providers_for(device: Device) -> list[str]:
    """onnxruntime execution providers for ``device``: CUDA first when asked for and present."""
    import onnxruntime as ort

    device = torch.device(device)
    available = ort.get_available_providers()
    if device.type == "cuda":
        if "CUDAExecutionProvider" in available:
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        log.warning("device %s asked for but onnxruntime has no CUDAExecutionProvider (it has %s): running on CPU",
                    device, ", ".join(available))
    return ["CPUExecutionProvider"]


def _numpy(t: torch.Tensor, dtype: Any) -> np.ndarray:
    return t.detach().to("cpu", dtype).contiguous().numpy()


class _Session:
    """One onnxruntime session: torch tensors in (by input name), torch tensors out on ``device``."""

    def __init__(self, path: Path, providers: Sequence[str], num_threads: int, device: torch.device,
                 provider_options: Optional[Sequence[dict[str, Any]]] = None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = num_threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        # no busy-waiting after a run: the torch steps between runs (fbank, decoding) need the cores,
        # and spinning workers doubled their time on 2 cores
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.path = path
        self.device = device
        self.session = ort.InferenceSession(str(path), opts, providers=list(providers),
                                            provider_options=list(provider_options) if provider_options else None)
        self.input_names = [i.name for i in self.session.get_inputs()]

    def run(self, **inputs: np.ndarray) -> list[torch.Tensor]:
        outs = self.session.run(None, inputs)
        return [torch.from_numpy(np.ascontiguousarray(o)).to(self.device) for o in outs]


class _EncoderInfo:
    """What :func:`model.recognizer.apply_chunking` reads and sets on ``model.encoder``. The export
    is of a non-causal model: full context only."""

    def __init__(self) -> None:
        self.causal = False
        self.chunk_size: tuple[int, ...] = (-1,)
        self.left_context_frames: tuple[int, ...] = (-1,)


class _CtcHead:
    """``ctc_output(encoder_out)`` -> (N, T, vocab) log-probs."""

    def __init__(self, session: _Session):
        self.session = session

    def __call__(self, encoder_out: torch.Tensor) -> torch.Tensor:
        return self.session.run(encoder_out=_numpy(encoder_out, torch.float32))[0]


class _OnnxTransformerDecoder:
    """``decoder(x, x_lens, memory, memory_lens, memory_index, self_attn_mask, positions)`` of
    :class:`model.attention_decoder.TransformerDecoder`, on ``attention_decoder.onnx``."""

    def __init__(self, session: _Session):
        self.session = session

    def __call__(self, x: torch.Tensor, x_lens: Optional[torch.Tensor], memory: torch.Tensor, memory_lens: torch.Tensor,
                 memory_index: Optional[torch.Tensor] = None, self_attn_mask: Optional[torch.Tensor] = None,
                 positions: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Token ids ``x`` (N, U), memory (N_mem, S, C) -> logits (N, U, vocab); the arguments of
        ``TransformerDecoder.forward`` (causal mask from ``x_lens`` unless ``self_attn_mask``)."""
        n, u = x.shape
        if memory_index is not None:
            memory, memory_lens = memory.index_select(0, memory_index), memory_lens.index_select(0, memory_index)
        if positions is None:
            positions = torch.arange(u).expand(n, u)
        if self_attn_mask is None:
            causal = torch.ones(u, u, dtype=torch.bool).triu(1)
            assert x_lens is not None, "x_lens or self_attn_mask is needed"
            pad = torch.arange(u).unsqueeze(0) >= x_lens.to("cpu").unsqueeze(1)
            self_attn_mask = pad.unsqueeze(1) | causal.unsqueeze(0)
        return self.session.run(
            tokens=_numpy(x, torch.int64), positions=_numpy(positions, torch.int64),
            self_attn_mask=_numpy(self_attn_mask, torch.bool), memory=_numpy(memory, torch.float32),
            memory_lens=_numpy(memory_lens, torch.int64))[0]


class OnnxAttentionDecoder:
    """The attention decoder's scoring calls (:meth:`score_nbest`, :meth:`nll`), exactly those of
    :class:`model.attention_decoder.AttentionDecoderModel`, over the ONNX graph."""

    prepare_targets = AttentionDecoderModel.prepare_targets
    nll = AttentionDecoderModel.nll
    score_nbest = AttentionDecoderModel.score_nbest
    score_nbest_tensors = AttentionDecoderModel.score_nbest_tensors

    def __init__(self, session: _Session, sos_id: int, eos_id: int, ignore_id: int):
        self.decoder = _OnnxTransformerDecoder(session)
        self.sos_id, self.eos_id, self.ignore_id = sos_id, eos_id, ignore_id


class OnnxTransducerDecoder:
    """Stateless transducer decoder: ``decoder(ctx, need_pad=False)`` -> (N, 1, joiner_dim), the
    joiner's decoder projection already applied (``decoder.onnx``)."""

    def __init__(self, session: _Session, context_size: int, vocab_size: int, blank_id: int):
        self.session = session
        self.context_size = context_size
        self.vocab_size = vocab_size
        self.blank_id = blank_id

    def __call__(self, y: torch.Tensor, need_pad: bool = True) -> torch.Tensor:
        if need_pad:
            raise ValueError("the ONNX transducer decoder takes exactly context_size ids per row (need_pad=False)")
        if y.shape[-1] != self.context_size:
            raise ValueError(f"need_pad=False expects {self.context_size} context tokens, got {y.shape[-1]}")
        return self.session.run(y=_numpy(y, torch.int64))[0].unsqueeze(1)


class _Identity:
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x


class OnnxJoiner:
    """``joiner(encoder_proj, decoder_proj, project_input=False)`` -> logits, broadcasting the two
    inputs like the torch joiner; ``encoder_proj`` runs ``joiner_encoder_proj.onnx``,
    ``decoder_proj`` is the identity (``decoder.onnx`` projects)."""

    def __init__(self, session: _Session, encoder_proj: _Session):
        self.session = session
        self._encoder_proj = encoder_proj
        self.decoder_proj = _Identity()

    def encoder_proj(self, encoder_out: torch.Tensor) -> torch.Tensor:
        """(N, T, C) encoder output -> (N, T, joiner_dim)."""
        return self._encoder_proj.run(encoder_out=_numpy(encoder_out, torch.float32))[0]

    def __call__(self, encoder_out: torch.Tensor, decoder_out: torch.Tensor, project_input: bool = True) -> torch.Tensor:
        if project_input:
            raise ValueError("the ONNX joiner takes projected inputs: call it with project_input=False "
                             "on joiner.encoder_proj(...) and the decoder's output")
        enc, dec = torch.broadcast_tensors(encoder_out, decoder_out)
        shape = enc.shape[:-1]
        logits = self.session.run(encoder_out=_numpy(enc.reshape(-1, enc.shape[-1]), torch.float32),
                                  decoder_out=_numpy(dec.reshape(-1, dec.shape[-1]), torch.float32))[0]
        return logits.reshape(*shape, logits.shape[-1])


class OnnxAsrModel:
    """Duck-typed :class:`model.asr_model.AsrModel` over onnxruntime sessions (see the module doc).

    Build it with :func:`load_onnx_model`."""

    def __init__(self, onnx_dir: Union[str, Path], device: Device = "cpu", int8: bool = False,
                 num_threads: Optional[int] = None, providers: Optional[Sequence[str]] = None):
        self.onnx_dir = Path(onnx_dir)
        self.manifest = read_manifest(self.onnx_dir)
        if int8 and not self.manifest.get("int8"):
            raise OnnxExportError(f"{self.onnx_dir}: exported without --int8 (no *.int8.onnx files)")
        files = self.manifest.get("files", {}).get("backend")
        if not files or "encoder" not in files:
            raise OnnxExportError(f"{self.onnx_dir}: holds no zipscribe backend graphs (exported for sherpa-onnx only)")
        self.int8 = int8
        self.num_threads = int(num_threads or torch.get_num_threads())
        self._files: dict[str, str] = dict(files)
        self._fixed_providers = list(providers) if providers else None
        m = self.manifest
        self.config: dict[str, Any] = dict(m.get("model_config", {}))
        self.vocab_size: int = int(m["vocab_size"])
        self.blank_id: int = int(m.get("blank_id", 0))
        self.encoder_out_dim: int = int(m["encoder_out_dim"])
        self.checkpoint_sha256: str = str(m.get("checkpoint_sha256", ""))
        self.encoder = _EncoderInfo()
        self.training = False
        self.device = torch.device("cpu")
        self.providers: list[str] = []
        self._open(torch.device(device))

    # -- sessions
    def _path(self, role: str) -> Path:
        name = self._files[role]
        path = self.onnx_dir / (int8_name(name) if self.int8 else name)
        if not path.is_file():
            raise OnnxExportError(f"{path}: missing from the export (the manifest lists it)")
        return path

    def _open(self, device: torch.device) -> None:
        providers = self._fixed_providers or providers_for(device)
        self.device, self.providers = device, providers
        options = None
        if providers[0] == "CUDAExecutionProvider":
            options = [{"device_id": device.index or 0}] + [{} for _ in providers[1:]]

        def session(role: str) -> _Session:
            return _Session(self._path(role), providers, self.num_threads, device, options)

        m = self.manifest
        self._encoder = session("encoder")
        self.use_ctc = "ctc_output" in self._files
        self.ctc_output: Optional[_CtcHead] = _CtcHead(session("ctc_output")) if self.use_ctc else None
        self.use_attention_decoder = "attention_decoder" in self._files
        self.attention_decoder: Optional[OnnxAttentionDecoder] = None
        if self.use_attention_decoder:
            self.attention_decoder = OnnxAttentionDecoder(session("attention_decoder"), int(m["sos_id"]),
                                                          int(m["eos_id"]), int(m["ignore_id"]))
        self.use_transducer = all(r in self._files for r in ("decoder", "joiner", "joiner_encoder_proj"))
        self.decoder: Optional[OnnxTransducerDecoder] = None
        self.joiner: Optional[OnnxJoiner] = None
        if self.use_transducer:
            self.decoder = OnnxTransducerDecoder(session("decoder"), int(m["context_size"]), self.vocab_size, self.blank_id)
            self.joiner = OnnxJoiner(session("joiner"), session("joiner_encoder_proj"))

    # -- the AsrModel surface
    def forward_encoder(self, x: torch.Tensor, x_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Fbank ``x`` (N, T, 80) padded with log(1e-10), lengths (N,) -> ``encoder_out`` (N, T', C)
        float32 and ``encoder_out_lens`` (N,) int64 on :attr:`device` (as ``AsrModel.forward_encoder``)."""
        if x.size(1) < 9:
            raise ValueError(f"need at least 9 feature frames, got {x.size(1)}")
        out, out_lens = self._encoder.run(x=_numpy(x, torch.float32), x_lens=_numpy(x_lens, torch.int64))
        if not bool(torch.all(out_lens > 0)):
            raise ValueError(f"input too short for the encoder: output lengths {out_lens.tolist()}")
        return out, out_lens

    def to(self, device: Device) -> "OnnxAsrModel":
        """Re-open the sessions for ``device`` (providers as :func:`providers_for`) if it changes."""
        device = torch.device(device)
        if device != self.device:
            self._open(device)
        return self

    def eval(self) -> "OnnxAsrModel":
        """No-op (inference only); returns self like ``nn.Module.eval``."""
        return self

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        """No torch parameters: the weights live in the ONNX graphs."""
        return iter(())

    def __repr__(self) -> str:
        heads = ",".join(self.manifest.get("heads", []))
        return (f"OnnxAsrModel({self.onnx_dir}, heads={heads}, {'int8' if self.int8 else 'fp32'}, "
                f"providers={self.providers}, threads={self.num_threads})")


def load_onnx_model(onnx_dir: Union[str, Path], device: Device = "cpu", int8: bool = False,
                    num_threads: Optional[int] = None, providers: Optional[Sequence[str]] = None) -> OnnxAsrModel:
    """Open an export directory (:func:`model.onnx_export.export_onnx` with ``backend=True``).

    Args:
      onnx_dir: the directory holding ``zipscribe_onnx.json`` and the graphs.
      device: ``cpu`` or ``cuda[:i]``: the CUDA execution provider when onnxruntime has it
        (else CPU, with a warning); outputs are torch tensors on that device.
      int8: run the ``*.int8.onnx`` copies (the export must have been made with ``int8=True``).
      num_threads: intra-op threads per session (default ``torch.get_num_threads()``).
      providers: explicit onnxruntime providers, overriding the choice from ``device``.

    Raises :class:`model.onnx_export.OnnxExportError` (a ``ValueError``) for a directory that is
    not an export, lacks the backend graphs or the int8 copies asked for."""
    return OnnxAsrModel(onnx_dir, device=device, int8=int8, num_threads=num_threads, providers=providers)
