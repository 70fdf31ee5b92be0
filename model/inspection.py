"""What a model directory holds, as a user checks it before a long run.

:func:`inspect_model` loads the directory exactly as the jobs do
(:meth:`model.recognizer.Recognizer.from_dir`, so every check at load runs) and
reports: the layout and files (with SHA-256), the checkpoint kind and the
weights used, the architecture (from ``config.json`` or inferred, and which
fields were guessed by convention rather than read from shapes), parameters per
part, the heads and the decoding methods they allow, vocabulary and tokenizer
agreement, causality and chunking. :func:`format_report` renders it for people.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

from .config import GUESSED_FIELDS
from .decoding import available_methods, resolve_method
from .recognizer import Recognizer
from .tokenizer import BLANK_SYMBOL, SOS_EOS_SYMBOL, UNK_SYMBOL
from .weights import WeightsSelection

_PARTS = ("encoder_embed", "encoder", "ctc_output", "decoder", "joiner", "simple_am_proj", "simple_lm_proj",
          "attention_decoder")


def inspect_model(model_dir: Union[str, Path], weights: Optional[WeightsSelection] = None,
                  decoding: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """A JSON-ready description of the model at ``model_dir`` (a local directory).

    Raises :class:`model.checkpoint.ModelLoadError` when the jobs would refuse it."""
    model_dir = Path(model_dir)
    rec = Recognizer.from_dir(model_dir, decoding=decoding, weights=weights)
    info, model, tok = rec.info, rec.model, rec.tokenizer
    cfg = dict(model.config)
    files = [Path(f.strip()) for f in info.checkpoint.split(",")]
    params = {part: sum(p.numel() for p in getattr(model, part).parameters())
              for part in _PARTS if getattr(model, part, None) is not None}
    guessed = {} if info.config_source.endswith("config.json") else {k: GUESSED_FIELDS[k] for k in GUESSED_FIELDS if k in cfg}
    extra = len(tok.disambiguation_symbols)
    heads = [name for name, present in (("ctc", model.ctc_output is not None),
                                        ("transducer", model.decoder is not None),
                                        ("attention-decoder", model.attention_decoder is not None)) if present]
    enc = model.encoder
    return {
        "model_dir": str(model_dir),
        "model_id": info.name,
        "layout": info.layout,
        "checkpoint": {
            "kind": info.checkpoint_kind,
            "entries": list(info.checkpoint_entries),
            "position": info.checkpoint_position,
            "weights": info.weights,
            "files": [{"path": str(f), "bytes": f.stat().st_size, "sha256": sha}
                      for f, sha in zip(files, info.file_sha256s)],
            "weights_sha256": info.sha256,
        },
        "architecture": {
            "source": info.config_source,
            "guessed_fields": guessed,
            "config": cfg,
        },
        "parameters": {"total": sum(params.values()), **params},
        "heads": heads,
        "decoding_methods": available_methods(model),
        "default_decoding": resolve_method(model, "auto"),
        "decoding": rec.decoding.label(),
        "vocabulary": {
            "model": model.vocab_size,
            "tokenizer": tok.vocab_size,
            "tokenizer_file": info.tokenizer,
            "tokenizer_kind": "sentencepiece" if tok.is_sentencepiece else "symbol table",
            "disambiguation_symbols_ignored": extra,
            "agree": model.vocab_size == tok.vocab_size,
            "special_ids": {sym: (tok.piece_to_id(sym) if sym in tok else None)
                            for sym in (BLANK_SYMBOL, SOS_EOS_SYMBOL, UNK_SYMBOL)},
            "model_ids": {k: cfg.get(k) for k in ("blank_id", "sos_id", "eos_id")},
        },
        "causal": {
            "causal": bool(enc.causal),
            "config_chunk_size": cfg.get("chunk_size"),
            "config_left_context_frames": cfg.get("left_context_frames"),
            "decode_chunk_size": rec.decoding.chunk_size,
            "decode_left_context_frames": rec.decoding.left_context_frames,
        },
        "notes": list(info.notes),
    }


def _millions(n: int) -> str:
    return f"{n / 1e6:.2f} M"


def format_report(report: dict[str, Any]) -> str:
    """The human-readable form of :func:`inspect_model`'s result."""
    ck, arch, voc, cz = report["checkpoint"], report["architecture"], report["vocabulary"], report["causal"]
    cfg = arch["config"]
    pos = ", ".join(f"{k} {v}" for k, v in ck["position"].items())
    lines = [
        f"model {report['model_id']}  ({report['model_dir']})",
        f"  layout:       {report['layout']}",
        f"  checkpoint:   {ck['kind']}" + (f" ({pos})" if pos else "")
        + (f"; holds {', '.join(ck['entries'])}" if ck["entries"] else ""),
        f"  weights:      {ck['weights']}",
        *[f"  file:         {f['path']}  {f['bytes'] / 1e6:.1f} MB  sha256 {f['sha256']}" for f in ck["files"]],
        *([f"  weights sha256 {ck['weights_sha256']} (of the files and the selection)"] if len(ck["files"]) > 1 else []),
        f"  architecture: {arch['source']}: {len(str(cfg['num_encoder_layers']).split(','))} stacks, layers "
        f"{cfg['num_encoder_layers']}, dims {cfg['encoder_dim']}, downsampling {cfg['downsampling_factor']}, "
        f"vocab {cfg['vocab_size']}",
        *(["    guessed, not read from shapes: " + "; ".join(f"{k} ({why})" for k, why in arch["guessed_fields"].items())]
          if arch["guessed_fields"] else []),
        "  parameters:   " + _millions(report["parameters"]["total"]) + " ("
        + ", ".join(f"{k} {_millions(v)}" for k, v in report["parameters"].items() if k != "total") + ")",
        f"  heads:        {', '.join(report['heads'])}; decoding methods: {', '.join(report['decoding_methods'])} "
        f"(auto = {report['default_decoding']}; this run: {report['decoding']})",
        f"  vocabulary:   model {voc['model']}, tokenizer {voc['tokenizer']} ({voc['tokenizer_kind']}, {voc['tokenizer_file']}"
        + (f"; {voc['disambiguation_symbols_ignored']} disambiguation symbols ignored" if voc["disambiguation_symbols_ignored"] else "")
        + f"): {'agree' if voc['agree'] else 'DISAGREE'}",
        "  special ids:  " + ", ".join(f"{k} {v}" for k, v in voc["special_ids"].items())
        + "; model " + ", ".join(f"{k} {v}" for k, v in voc["model_ids"].items() if v is not None),
        "  causal:       " + ("yes" if cz["causal"] else "no (full context)")
        + (f"; config chunk_size {cz['config_chunk_size']}, left_context_frames {cz['config_left_context_frames']}; "
           f"decoding with " + ("full context" if cz["decode_chunk_size"] < 0 else
                                f"chunks of {cz['decode_chunk_size']} frames, left context "
                                + ("all" if cz["decode_left_context_frames"] < 0 else str(cz["decode_left_context_frames"])))
           if cz["causal"] else ""),
        *[f"  note:         {n}" for n in report["notes"]],
    ]
    return "\n".join(lines)
