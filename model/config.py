"""Model configurations: named presets of icefall's published shapes, and
inference of the whole architecture from a checkpoint's state dict.

A configuration is a plain ``dict`` of ``AsrModel`` keyword arguments, with
per-stack values written as comma-separated strings exactly like icefall's
command line (``"2,2,3,4,3,2"``), so it round-trips through ``config.json``.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import torch

# Fields shared by icefall's zipformer recipes (egs/librispeech/ASR/zipformer).
_COMMON: dict[str, Any] = {
    "feature_dim": 80,
    "downsampling_factor": "1,2,4,8,4,2",
    "num_heads": "4,4,4,8,4,4",
    "query_head_dim": "32",
    "pos_head_dim": "4",
    "value_head_dim": "12",
    "pos_dim": 48,
    "cnn_module_kernel": "31,31,15,15,15,31",
    "causal": False,
    "chunk_size": "-1",
    "left_context_frames": "-1",
    "vocab_size": 500,
    "blank_id": 0,
    "sos_id": 1,
    "eos_id": 1,
    "ignore_id": -1,
    "label_smoothing": 0.1,
}

_SIZES: dict[str, dict[str, Any]] = {
    "small": {
        "num_encoder_layers": "2,2,2,2,2,2",
        "feedforward_dim": "512,768,768,768,768,768",
        "encoder_dim": "192,256,256,256,256,256",
        "encoder_unmasked_dim": "192,192,192,192,192,192",
    },
    "medium": {
        "num_encoder_layers": "2,2,3,4,3,2",
        "feedforward_dim": "512,768,1024,1536,1024,768",
        "encoder_dim": "192,256,384,512,384,256",
        "encoder_unmasked_dim": "192,192,256,256,256,192",
    },
    "large": {
        "num_encoder_layers": "2,2,4,5,4,2",
        "feedforward_dim": "512,768,1536,2048,1536,768",
        "encoder_dim": "192,256,512,768,512,256",
        "encoder_unmasked_dim": "192,192,256,320,256,192",
    },
}

_HEADS: dict[str, dict[str, Any]] = {
    # pruned-transducer recipe (the icefall default)
    "transducer": {
        "use_transducer": True,
        "use_ctc": False,
        "use_attention_decoder": False,
        "decoder_dim": 512,
        "joiner_dim": 512,
        "context_size": 2,
    },
    # CTC + attention-decoder (CR-CTC / AED) recipe
    "ctc-aed": {
        "use_transducer": False,
        "use_ctc": True,
        "use_attention_decoder": True,
        "attention_decoder_dim": 512,
        "attention_decoder_num_layers": 6,
        "attention_decoder_attention_dim": 512,
        "attention_decoder_num_heads": 8,
        "attention_decoder_feedforward_dim": 2048,
    },
}

PRESETS: dict[str, dict[str, Any]] = {
    f"{size}-{head}": {**_COMMON, **_SIZES[size], **_HEADS[head]} for size in _SIZES for head in _HEADS
}


def preset(name: str) -> dict[str, Any]:
    """A copy of a named preset: ``{small,medium,large}-{transducer,ctc-aed}``."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; available: {', '.join(sorted(PRESETS))}")
    return dict(PRESETS[name])


# config.json may carry these beside the AsrModel kwargs: the model's name, default
# decoding settings (e.g. the attention scale tuned on dev) and a description.
CONFIG_METADATA_KEYS = ("name", "decoding", "description")


def split_config(raw: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A ``config.json``'s ``AsrModel`` kwargs and its metadata (:data:`CONFIG_METADATA_KEYS`)."""
    kwargs = {k: v for k, v in raw.items() if k not in CONFIG_METADATA_KEYS}
    meta = {k: raw[k] for k in CONFIG_METADATA_KEYS if k in raw}
    return kwargs, meta


def _csv(values: list[int]) -> str:
    return ",".join(str(v) for v in values)


def _count(prefix: str, keys: list[str]) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for k in keys if (m := pattern.match(k))}
    return max(found) + 1 if found else 0


class ConfigInferenceError(ValueError):
    """The state dict does not look like an icefall Zipformer AsrModel."""


def infer_config(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Infer ``AsrModel`` kwargs from a state dict.

    Determined exactly by parameter shapes: feature-frontend channels, stack
    count, layers per stack, ``encoder_dim``, ``downsampling_factor``,
    ``feedforward_dim``, ``cnn_module_kernel``, ``pos_dim``, causality, which
    heads exist, ``vocab_size``, transducer ``decoder_dim``/``joiner_dim``/
    ``context_size`` and the attention decoder's dims and layer count.

    Not determined by shapes, so documented defaults are used:

    * ``pos_head_dim`` = 4 (every icefall recipe); ``num_heads``,
      ``query_head_dim`` and ``value_head_dim`` then follow from the projections.
    * ``feature_dim`` = 80 when consistent with the subsampling output width.
    * ``encoder_unmasked_dim`` only matters in training: ``min(encoder_dim, 256)``.
    * ``attention_decoder_num_heads``: 8 when attention_dim >= 512, else
      attention_dim // 32 (head dim 32).
    * ``sos_id = eos_id = 1``, ``blank_id = 0``, ``ignore_id = -1`` (icefall's BPE convention).
    """
    keys = list(state_dict)
    shape = {k: tuple(v.shape) for k, v in state_dict.items()}
    if "encoder_embed.out.weight" not in shape:
        raise ConfigInferenceError("no 'encoder_embed.out.weight': not a Zipformer AsrModel state dict")

    l1, l2, l3 = (shape[f"encoder_embed.conv.{i}.weight"][0] for i in (0, 4, 7))
    embed_out, embed_in = shape["encoder_embed.out.weight"]
    out_width = embed_in // l3
    feature_dim = 80 if ((80 - 1) // 2 - 1) // 2 == out_width else 4 * out_width + 3

    num_stacks = _count("encoder.encoders.", keys)
    if num_stacks == 0:
        raise ConfigInferenceError("no 'encoder.encoders.N.*' keys")
    ds, layers, dims, ffs, kernels, heads, qdims, vdims = [], [], [], [], [], [], [], []
    pos_dim, causal, pos_head_dim = None, False, 4
    for i in range(num_stacks):
        stack = f"encoder.encoders.{i}."
        if f"{stack}downsample.bias" in shape:
            ds.append(shape[f"{stack}downsample.bias"][0])
            stack += "encoder."
        else:
            ds.append(1)
        n_layers = _count(f"{stack}layers.", keys)
        layers.append(n_layers)
        layer = f"{stack}layers.0."
        dim = shape[f"{layer}norm.bias"][0]
        dims.append(dim)
        ffs.append(shape[f"{layer}feed_forward2.in_proj.weight"][0])
        if f"{layer}conv_module1.depthwise_conv.chunkwise_conv.weight" in shape:
            causal = True
            kernels.append(shape[f"{layer}conv_module1.depthwise_conv.chunkwise_conv.weight"][-1])
        else:
            kernels.append(shape[f"{layer}conv_module1.depthwise_conv.weight"][-1])
        pos_out, pos_dim = shape[f"{layer}self_attn_weights.linear_pos.weight"]
        if pos_out % pos_head_dim:
            raise ConfigInferenceError(f"stack {i}: linear_pos has {pos_out} outputs, not a multiple of pos_head_dim=4")
        h = pos_out // pos_head_dim
        heads.append(h)
        qkp = shape[f"{layer}self_attn_weights.in_proj.weight"][0]
        qdims.append((qkp // h - pos_head_dim) // 2)
        vdims.append(shape[f"{layer}self_attn1.in_proj.weight"][0] // h)

    def per_stack(values: list[int]) -> str:
        return _csv(values[:1]) if len(set(values)) == 1 else _csv(values)

    config: dict[str, Any] = {
        "feature_dim": feature_dim,
        "subsampling_channels": _csv([l1, l2, l3]),
        "downsampling_factor": _csv(ds),
        "num_encoder_layers": _csv(layers),
        "encoder_dim": _csv(dims),
        "encoder_unmasked_dim": _csv([min(d, 256) for d in dims]),
        "query_head_dim": per_stack(qdims),
        "pos_head_dim": str(pos_head_dim),
        "value_head_dim": per_stack(vdims),
        "num_heads": _csv(heads),
        "feedforward_dim": _csv(ffs),
        "cnn_module_kernel": _csv(kernels),
        "pos_dim": pos_dim,
        "causal": causal,
        "chunk_size": "-1",
        "left_context_frames": "-1",
        "blank_id": 0,
        "sos_id": 1,
        "eos_id": 1,
        "ignore_id": -1,
        "label_smoothing": 0.1,
    }
    if embed_out != dims[0]:
        raise ConfigInferenceError(f"encoder_embed.out has {embed_out} outputs but stack 0 has dim {dims[0]}")

    vocab_sizes = []
    config["use_ctc"] = "ctc_output.1.weight" in shape
    if config["use_ctc"]:
        vocab_sizes.append(shape["ctc_output.1.weight"][0])
    config["use_transducer"] = "decoder.embedding.weight" in shape
    if config["use_transducer"]:
        vocab, decoder_dim = shape["decoder.embedding.weight"]
        vocab_sizes.append(vocab)
        config["decoder_dim"] = decoder_dim
        config["context_size"] = shape["decoder.conv.weight"][-1] if "decoder.conv.weight" in shape else 1
        config["joiner_dim"] = shape["joiner.encoder_proj.weight"][0]
    config["use_attention_decoder"] = "attention_decoder.decoder.embed.weight" in shape
    if config["use_attention_decoder"]:
        vocab, adim = shape["attention_decoder.decoder.embed.weight"]
        vocab_sizes.append(vocab)
        att = shape["attention_decoder.decoder.layers.0.self_attn.linear_q.weight"][0]
        config.update(
            attention_decoder_dim=adim,
            attention_decoder_num_layers=_count("attention_decoder.decoder.layers.", keys),
            attention_decoder_attention_dim=att,
            attention_decoder_num_heads=8 if att >= 512 else max(att // 32, 1),
            attention_decoder_feedforward_dim=shape["attention_decoder.decoder.layers.0.feed_forward.0.weight"][0],
        )
    if not (config["use_ctc"] or config["use_transducer"]):
        raise ConfigInferenceError("the state dict has neither a CTC head ('ctc_output.1.weight') nor a transducer ('decoder.embedding.weight')")
    if len(set(vocab_sizes)) != 1:
        raise ConfigInferenceError(f"heads disagree on vocab size: {vocab_sizes}")
    config["vocab_size"] = vocab_sizes[0]
    return config


# Fields infer_config cannot read from shapes and fills by icefall's conventions (with why).
GUESSED_FIELDS: dict[str, str] = {
    "pos_head_dim": "4 in every icefall recipe",
    "num_heads": "from the projections, given pos_head_dim",
    "query_head_dim": "from the projections, given pos_head_dim",
    "value_head_dim": "from the projections, given pos_head_dim",
    "encoder_unmasked_dim": "min(encoder_dim, 256); only used in training",
    "attention_decoder_num_heads": "8 for attention dim >= 512, else dim // 32",
    "blank_id": "0 (icefall's BPE convention)",
    "sos_id": "1 (icefall's BPE convention)",
    "eos_id": "1 (icefall's BPE convention)",
    "chunk_size": "-1: full context at decode time",
    "left_context_frames": "-1: all left context",
}


# Fields whose value the state dict's shapes fix (compared by tests and shown in errors).
SHAPE_DETERMINED_FIELDS = (
    "feature_dim",
    "downsampling_factor",
    "num_encoder_layers",
    "encoder_dim",
    "feedforward_dim",
    "cnn_module_kernel",
    "pos_dim",
    "causal",
    "use_ctc",
    "use_transducer",
    "use_attention_decoder",
    "vocab_size",
)
