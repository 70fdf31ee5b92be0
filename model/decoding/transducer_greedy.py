"""Batched transducer greedy search, at most one symbol per frame.

Same decisions as icefall's ``greedy_search_batch`` / the fixture reference:

* every hypothesis starts as ``[-1] * (context_size - 1) + [blank]`` (the -1
  entries embed to zero);
* on every valid frame the joiner argmax is taken; a non-blank argmax is
  appended and the frame is its emission frame;
* the decoder input is always the last ``context_size`` entries.

The joiner input projections are applied once for the whole ``encoder_out`` and
once per decoder update (``project_input=False`` in the frame loop).  The
decoder is re-run for all rows after every frame and kept only where a token
was emitted (``torch.where``), so the loop never synchronises with the device.
"""

from __future__ import annotations

import torch

from .types import TransducerResult
from .utils import pack_by_mask


def initial_context(n: int, context_size: int, blank_id: int, device) -> torch.Tensor:
    ctx = torch.full((n, context_size), -1, dtype=torch.long, device=device)
    ctx[:, -1] = blank_id
    return ctx


@torch.inference_mode()
def transducer_greedy_search(
    model,
    encoder_out: torch.Tensor,
    encoder_out_lens: torch.Tensor,
    blank_id: int = 0,
) -> TransducerResult:
    decoder, joiner = model.decoder, model.joiner
    if decoder is None or joiner is None:
        raise ValueError("the model has no transducer head (decoder/joiner)")
    device = encoder_out.device
    n, t_max, _ = encoder_out.shape
    lens = encoder_out_lens.to(device)
    cs = decoder.context_size

    enc_proj = joiner.encoder_proj(encoder_out)  # (N, T, J)
    ctx = initial_context(n, cs, blank_id, device)
    dec_proj = joiner.decoder_proj(decoder(ctx, need_pad=False))[:, 0]  # (N, J)

    tok = torch.full((n, t_max), -1, dtype=torch.long, device=device)
    tok_logit = torch.zeros((n, t_max), dtype=encoder_out.dtype, device=device)
    tok_lp = torch.zeros((n, t_max), dtype=torch.float32, device=device)
    path = torch.zeros(n, dtype=torch.float32, device=device)
    blank_sum = torch.zeros(n, dtype=torch.float32, device=device)
    for t in range(t_max):
        active = t < lens
        logits = joiner(enc_proj[:, t], dec_proj, project_input=False)  # (N, V)
        y = logits.argmax(dim=-1)  # first maximum on ties, like the reference
        best_logit = logits.gather(1, y.unsqueeze(1)).squeeze(1)
        lsm = logits.float().log_softmax(dim=-1)
        y_lp = lsm.gather(1, y.unsqueeze(1)).squeeze(1)
        emit = active & (y != blank_id)
        tok[:, t] = torch.where(emit, y, torch.full_like(y, -1))
        tok_logit[:, t] = torch.where(emit, best_logit, torch.zeros_like(best_logit))
        tok_lp[:, t] = torch.where(emit, y_lp, torch.zeros_like(y_lp))
        path = path + torch.where(active, y_lp, torch.zeros_like(y_lp))
        blank_sum = blank_sum + torch.where(active & ~emit, lsm[:, blank_id].exp(), torch.zeros_like(y_lp))
        new_ctx = torch.cat([ctx[:, 1:], y.unsqueeze(1)], dim=1)
        ctx = torch.where(emit.unsqueeze(1), new_ctx, ctx)
        new_dec = joiner.decoder_proj(decoder(ctx, need_pad=False))[:, 0]
        dec_proj = torch.where(emit.unsqueeze(1), new_dec, dec_proj)

    frame_idx = torch.arange(t_max, device=device).expand(n, t_max)
    mask = tok >= 0
    tokens, frames, out_lens = pack_by_mask(tok, frame_idx, mask)
    pos = torch.cumsum(mask.long(), dim=1) - 1
    l_max = tokens.shape[1]

    def _pack_float(x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros((n, l_max + 1), dtype=x.dtype, device=device)
        out.scatter_(1, torch.where(mask, pos, torch.full_like(pos, l_max)), torch.where(mask, x, torch.zeros_like(x)))
        return out[:, :l_max]

    return TransducerResult(
        tokens=tokens,
        lens=out_lens,
        frames=frames,
        token_log_probs=_pack_float(tok_lp),
        scores=path,
        blank_prob_sum=blank_sum,
        token_logits=_pack_float(tok_logit),
    )
