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

Per frame: the joiner, the argmax and its logit and log-prob (written straight into
(T, N) tables), the emission mask, the two running sums (path log-prob, blank
probability; kept frame by frame so that the float sums are the same), and the
decoder update -- no allocation of outputs, no host tensors; what the frame
emitted is masked and packed once after the loop (26 kernel-launching operations per
frame with a two-layer decoder / joiner, 39 before issue 32). On CUDA the loop is replayed from
CUDA graphs (:mod:`model.decoding.frames`).
"""

from __future__ import annotations

from typing import Optional

import torch

from .frames import run_frames
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
    frame_loop: Optional[str] = None,
) -> TransducerResult:
    """Greedy transducer search of a batch; ``frame_loop``: see
    :func:`model.decoding.frames.run_frames` (the results are the same in every mode)."""
    decoder, joiner = model.decoder, model.joiner
    if decoder is None or joiner is None:
        raise ValueError("the model has no transducer head (decoder/joiner)")
    device = encoder_out.device
    n, t_max, _ = encoder_out.shape
    lens = encoder_out_lens.to(device)
    cs = decoder.context_size

    enc_proj = joiner.encoder_proj(encoder_out).transpose(0, 1)  # (T, N, J), frame slices
    active = torch.arange(t_max, device=device).unsqueeze(1) < lens.unsqueeze(0)  # (T, N)
    ctx = initial_context(n, cs, blank_id, device)
    dec_proj = joiner.decoder_proj(decoder(ctx, need_pad=False))[:, 0]  # (N, J)
    logit_dtype = joiner(enc_proj[0, :1], dec_proj[:1], project_input=False).dtype if t_max else encoder_out.dtype
    tok = torch.empty((t_max, n), dtype=torch.long, device=device)  # argmax of every frame
    tok_logit = torch.empty((t_max, n), dtype=logit_dtype, device=device)
    tok_lp = torch.empty((t_max, n), dtype=torch.float32, device=device)
    emitted = torch.empty((t_max, n), dtype=torch.bool, device=device)
    path = torch.zeros(n, dtype=torch.float32, device=device)
    blank_sum = torch.zeros(n, dtype=torch.float32, device=device)

    def step(parity: int, inputs, outputs) -> None:
        enc_t, act = inputs
        y, best, y_lp, emit = outputs
        logits = joiner(enc_t, dec_proj, project_input=False)  # (N, V)
        torch.argmax(logits, dim=-1, out=y)  # first maximum on ties, like the reference
        torch.gather(logits, 1, y.unsqueeze(1), out=best.unsqueeze(1))
        lsm = logits.float().log_softmax(dim=-1)
        torch.gather(lsm, 1, y.unsqueeze(1), out=y_lp.unsqueeze(1))
        torch.logical_and(act, y != blank_id, out=emit)
        path.add_(torch.where(act, y_lp, 0.0))
        blank_sum.add_(torch.where(act ^ emit, lsm[:, blank_id].exp(), 0.0))  # active, blank
        torch.where(emit.unsqueeze(1), torch.cat([ctx[:, 1:], y.unsqueeze(1)], dim=1), ctx, out=ctx)
        new_dec = joiner.decoder_proj(decoder(ctx, need_pad=False))[:, 0]
        torch.where(emit.unsqueeze(1), new_dec, dec_proj, out=dec_proj)

    run_frames(step, [enc_proj, active], [tok, tok_logit, tok_lp, emitted], t_max, frame_loop)

    mask = emitted.t()
    tok = torch.where(mask, tok.t(), -1)
    frame_idx = torch.arange(t_max, device=device).expand(n, t_max)
    tokens, frames, out_lens = pack_by_mask(tok, frame_idx, mask)
    pos = torch.cumsum(mask.long(), dim=1) - 1
    l_max = tokens.shape[1]

    def _pack_float(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        out = torch.zeros((n, l_max + 1), dtype=dtype, device=device)
        out.scatter_(1, torch.where(mask, pos, torch.full_like(pos, l_max)), torch.where(mask, x, 0.0).to(dtype))
        return out[:, :l_max]

    return TransducerResult(
        tokens=tokens,
        lens=out_lens,
        frames=frames,
        token_log_probs=_pack_float(tok_lp.t(), torch.float32),
        scores=path,
        blank_prob_sum=blank_sum,
        token_logits=_pack_float(tok_logit.t(), encoder_out.dtype),
    )
