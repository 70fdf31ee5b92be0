"""``AsrModel``: Zipformer encoder with CTC, transducer and attention-decoder heads.

Constructor keyword arguments and defaults are those of the reference
``AsrModel`` (icefall / PyPI ``zipformer``), including per-stack values given as
comma-separated strings (``"2,2,3,4,3,2"``). Training-only arguments
(``dropout``, ``warmup_batches``, ``label_smoothing``) are accepted; dropout is
never applied because this implementation only runs inference, except that the
attention decoder keeps ``label_smoothing`` for its training loss.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import torch
from torch import nn

from .attention_decoder import AttentionDecoderModel
from .layers import make_pad_mask
from .subsampling import Conv2dSubsampling
from .transducer import Decoder, Joiner
from .zipformer import Zipformer

IntOrTuple = Union[int, str, Sequence[int]]


def to_int_tuple(value: IntOrTuple) -> tuple[int, ...]:
    """``3`` -> ``(3,)``; ``"1,2,4"`` -> ``(1, 2, 4)``; sequences -> tuple of ints."""
    if isinstance(value, str):
        return tuple(int(v) for v in value.split(",") if v.strip())
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)


class AsrModel(nn.Module):
    def __init__(
        self,
        feature_dim: int = 80,
        downsampling_factor: IntOrTuple = (2, 4),
        encoder_dim: IntOrTuple = 384,
        num_encoder_layers: IntOrTuple = 4,
        encoder_unmasked_dim: IntOrTuple = 256,
        query_head_dim: IntOrTuple = 24,
        pos_head_dim: IntOrTuple = 4,
        value_head_dim: IntOrTuple = 12,
        num_heads: IntOrTuple = 8,
        feedforward_dim: IntOrTuple = 1536,
        cnn_module_kernel: IntOrTuple = 31,
        pos_dim: int = 192,
        dropout: Any = None,
        warmup_batches: float = 4000.0,
        causal: bool = False,
        chunk_size: IntOrTuple = (-1,),
        left_context_frames: IntOrTuple = (-1,),
        use_ctc: bool = False,
        blank_id: int = 0,
        vocab_size: int = 500,
        use_transducer: bool = True,
        decoder_dim: int = 512,
        context_size: int = 2,
        joiner_dim: int = 512,
        use_attention_decoder: bool = False,
        attention_decoder_dim: int = 512,
        attention_decoder_num_layers: int = 2,
        attention_decoder_attention_dim: int = 512,
        attention_decoder_num_heads: int = 8,
        attention_decoder_feedforward_dim: int = 2048,
        sos_id: int = 1,
        eos_id: int = 2,
        ignore_id: int = -100,
        label_smoothing: float = 0.0,
        subsampling_channels: IntOrTuple = (8, 32, 128),
    ):
        super().__init__()
        if not (use_transducer or use_ctc):
            raise ValueError("at least one of use_transducer and use_ctc must be True")
        encoder_dim_t = to_int_tuple(encoder_dim)
        l1, l2, l3 = to_int_tuple(subsampling_channels)
        self.blank_id = blank_id
        self.vocab_size = vocab_size
        self.encoder_embed = Conv2dSubsampling(feature_dim, encoder_dim_t[0], l1, l2, l3)
        self.encoder = Zipformer(
            output_downsampling_factor=2,
            downsampling_factor=to_int_tuple(downsampling_factor),
            num_encoder_layers=to_int_tuple(num_encoder_layers),
            encoder_dim=encoder_dim_t,
            encoder_unmasked_dim=to_int_tuple(encoder_unmasked_dim),
            query_head_dim=to_int_tuple(query_head_dim),
            pos_head_dim=to_int_tuple(pos_head_dim),
            value_head_dim=to_int_tuple(value_head_dim),
            pos_dim=pos_dim,
            num_heads=to_int_tuple(num_heads),
            feedforward_dim=to_int_tuple(feedforward_dim),
            cnn_module_kernel=to_int_tuple(cnn_module_kernel),
            causal=causal,
            chunk_size=to_int_tuple(chunk_size),
            left_context_frames=to_int_tuple(left_context_frames),
        )
        self.encoder_out_dim = max(encoder_dim_t)

        self.use_transducer = use_transducer
        self.decoder: Optional[Decoder] = None
        self.joiner: Optional[Joiner] = None
        if use_transducer:
            self.decoder = Decoder(vocab_size, decoder_dim, blank_id, context_size)
            self.joiner = Joiner(self.encoder_out_dim, decoder_dim, joiner_dim, vocab_size)
            # only used by the pruned RNN-T training loss; kept so checkpoints load strictly
            self.simple_am_proj = nn.Linear(self.encoder_out_dim, vocab_size)
            self.simple_lm_proj = nn.Linear(decoder_dim, vocab_size)

        self.use_ctc = use_ctc
        self.ctc_output: Optional[nn.Sequential] = None
        if use_ctc:
            # Sequential(Dropout, Linear, LogSoftmax) in the reference: keys ctc_output.1.*
            self.ctc_output = nn.Sequential(nn.Identity(), nn.Linear(self.encoder_out_dim, vocab_size), nn.LogSoftmax(dim=-1))

        self.use_attention_decoder = use_attention_decoder
        self.attention_decoder: Optional[AttentionDecoderModel] = None
        if use_attention_decoder:
            self.attention_decoder = AttentionDecoderModel(
                vocab_size=vocab_size,
                decoder_dim=attention_decoder_dim,
                num_decoder_layers=attention_decoder_num_layers,
                attention_dim=attention_decoder_attention_dim,
                num_heads=attention_decoder_num_heads,
                feedforward_dim=attention_decoder_feedforward_dim,
                memory_dim=self.encoder_out_dim,
                sos_id=sos_id,
                eos_id=eos_id,
                ignore_id=ignore_id,
                label_smoothing=label_smoothing,
            )

    def forward_encoder(self, x: torch.Tensor, x_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Fbank ``x`` (N, T, 80) padded with log(1e-10), lengths (N,) ->
        ``encoder_out`` (N, T', C) and ``encoder_out_lens`` (N,), T' = ((T-7)//2 + 1)//2."""
        x, x_lens = self.encoder_embed(x, x_lens)
        mask = make_pad_mask(x_lens, x.size(1))
        out, out_lens = self.encoder(x.permute(1, 0, 2), x_lens, mask)
        if not bool(torch.all(out_lens > 0)):
            raise ValueError(f"input too short for the encoder: output lengths {out_lens.tolist()}")
        return out.permute(1, 0, 2), out_lens
