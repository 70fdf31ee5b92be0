"""Transformer attention decoder used for n-best rescoring (icefall's
``attention_decoder.py`` layout: pre-norm layers, no final norm)."""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn
import torch.nn.functional as F

from .layers import make_pad_mask


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention over time-major inputs; masks are True where masked."""

    def __init__(self, embed_dim: int, attention_dim: int, num_heads: int, memory_dim: Optional[int] = None):
        super().__init__()
        if attention_dim % num_heads:
            raise ValueError(f"attention_dim {attention_dim} not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = attention_dim // num_heads
        kv_dim = embed_dim if memory_dim is None else memory_dim
        self.linear_q = nn.Linear(embed_dim, attention_dim)
        self.linear_k = nn.Linear(kv_dim, attention_dim)
        self.linear_v = nn.Linear(kv_dim, attention_dim)
        self.out_proj = nn.Linear(attention_dim, embed_dim)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attn_mask: Optional[torch.Tensor] = None,
        kv_index: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """query (T, N, E), key/value (S, N_kv, M), attn_mask (N, 1|T, S) -> (T, N, E).

        ``kv_index`` (N,) maps each query row to its key/value row, so many
        hypotheses of one utterance share one projection of its memory.
        """
        t, n, _ = query.shape
        s, n_kv = key.size(0), key.size(1)
        h, d = self.num_heads, self.head_dim
        q = self.linear_q(query).reshape(t, n, h, d).permute(1, 2, 0, 3)
        k = self.linear_k(key).reshape(s, n_kv, h, d).permute(1, 2, 0, 3)
        v = self.linear_v(value).reshape(s, n_kv, h, d).permute(1, 2, 0, 3)
        if kv_index is not None:
            k, v = k.index_select(0, kv_index), v.index_select(0, kv_index)
        mask = None if attn_mask is None else ~attn_mask.unsqueeze(1)  # SDPA: True = attend
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(out.permute(2, 0, 1, 3).reshape(t, n, h * d))


class DecoderLayer(nn.Module):
    def __init__(self, d_model: int, attention_dim: int, num_heads: int, feedforward_dim: int, memory_dim: int):
        super().__init__()
        self.norm_self_attn = nn.LayerNorm(d_model)
        self.self_attn = MultiHeadAttention(d_model, attention_dim, num_heads)
        self.norm_src_attn = nn.LayerNorm(d_model)
        self.src_attn = MultiHeadAttention(d_model, attention_dim, num_heads, memory_dim=memory_dim)
        self.norm_ff = nn.LayerNorm(d_model)
        # indices 0 and 3 hold the Linears, as in the reference Sequential (Linear, Swish, Dropout, Linear)
        self.feed_forward = nn.Sequential(
            nn.Linear(d_model, feedforward_dim), nn.SiLU(), nn.Identity(), nn.Linear(feedforward_dim, d_model)
        )

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor,
        memory: torch.Tensor,
        memory_attn_mask: torch.Tensor,
        memory_index: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        q = self.norm_self_attn(x)
        x = x + self.self_attn(q, q, q, attn_mask=attn_mask)
        x = x + self.src_attn(self.norm_src_attn(x), memory, memory, attn_mask=memory_attn_mask, kv_index=memory_index)
        return x + self.feed_forward(self.norm_ff(x))


def sinusoidal_positions(num_positions: int, d_model: int, device: torch.device) -> torch.Tensor:
    """Absolute sin/cos table (num_positions, d_model): even channels sin, odd cos."""
    position = torch.arange(num_positions, dtype=torch.float32, device=device).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32, device=device) * -(math.log(10000.0) / d_model))
    table = torch.zeros(num_positions, d_model, device=device)
    table[:, 0::2] = torch.sin(position * div_term)
    table[:, 1::2] = torch.cos(position * div_term)
    return table


class TransformerDecoder(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        d_model: int = 512,
        num_decoder_layers: int = 6,
        attention_dim: int = 512,
        num_heads: int = 8,
        feedforward_dim: int = 2048,
        memory_dim: int = 512,
    ):
        super().__init__()
        self.d_model = d_model
        self.embed = nn.Embedding(vocab_size, d_model)
        self.num_layers = num_decoder_layers
        self.layers = nn.ModuleList(
            DecoderLayer(d_model, attention_dim, num_heads, feedforward_dim, memory_dim) for _ in range(num_decoder_layers)
        )
        self.output_layer = nn.Linear(d_model, vocab_size)
        self._pos: Optional[torch.Tensor] = None

    def _positions(self, length: int, device: torch.device) -> torch.Tensor:
        if self._pos is None or self._pos.size(0) < length or self._pos.device != device:
            self._pos = sinusoidal_positions(max(length, 512), self.d_model, device)
        return self._pos[:length]

    def forward(
        self,
        x: torch.Tensor,
        x_lens: torch.Tensor,
        memory: torch.Tensor,
        memory_lens: torch.Tensor,
        memory_index: Optional[torch.Tensor] = None,
        self_attn_mask: Optional[torch.Tensor] = None,
        positions: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """x (N, U) token ids with lengths; memory (N, S, M) -> logits (N, U, vocab).

        With ``memory_index`` (N,), memory is (N_utt, S, M) and row i of ``x``
        attends to ``memory[memory_index[i]]`` (n-best rescoring: keys and values
        are projected once per utterance, not once per hypothesis).

        ``self_attn_mask`` (N, U, U, True = masked) and ``positions`` (N, U)
        replace the causal mask and 0..U-1 positions: this decodes a prefix trie
        in which each node attends to its ancestors (see ``score_nbest``).
        """
        u = x.size(1)
        if positions is None:
            pos = self._positions(u, x.device)
        else:
            pos = self._positions(int(positions.max()) + 1, x.device)[positions]
        h = self.embed(x) * math.sqrt(self.d_model) + pos.to(self.embed.weight.dtype)
        h = h.permute(1, 0, 2)
        if self_attn_mask is not None:
            attn_mask = self_attn_mask
        else:
            causal = torch.ones(u, u, dtype=torch.bool, device=x.device).triu(1)
            attn_mask = make_pad_mask(x_lens, u).unsqueeze(1) | causal.unsqueeze(0)
        mem = memory.permute(1, 0, 2)
        memory_attn_mask = make_pad_mask(memory_lens, memory.size(1)).unsqueeze(1)
        if memory_index is not None:
            memory_attn_mask = memory_attn_mask.index_select(0, memory_index)
        for layer in self.layers:
            h = layer(h, attn_mask=attn_mask, memory=mem, memory_attn_mask=memory_attn_mask, memory_index=memory_index)
        return self.output_layer(h.permute(1, 0, 2))


def pad_token_lists(
    ys: Sequence[Sequence[int]],
    padding_value: int,
    sos_id: Optional[int] = None,
    eos_id: Optional[int] = None,
    device: Optional[torch.device] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists into (N, max_len) after optionally adding sos / eos."""
    seqs = [([sos_id] if sos_id is not None else []) + list(y) + ([eos_id] if eos_id is not None else []) for y in ys]
    lens = torch.tensor([len(s) for s in seqs], dtype=torch.int64)
    out = torch.full((len(seqs), int(lens.max()) if seqs else 0), padding_value, dtype=torch.int64)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s, dtype=torch.int64)
    return out.to(device), lens.to(device)


class AttentionDecoderModel(nn.Module):
    """Wraps the TransformerDecoder with icefall's sos/eos conventions."""

    def __init__(
        self,
        vocab_size: int,
        decoder_dim: int = 512,
        num_decoder_layers: int = 6,
        attention_dim: int = 512,
        num_heads: int = 8,
        feedforward_dim: int = 2048,
        memory_dim: int = 512,
        sos_id: int = 1,
        eos_id: int = 1,
        ignore_id: int = -1,
        label_smoothing: float = 0.1,
    ):
        super().__init__()
        self.sos_id = sos_id
        self.eos_id = eos_id
        self.ignore_id = ignore_id
        self.label_smoothing = label_smoothing
        self.decoder = TransformerDecoder(
            vocab_size=vocab_size,
            d_model=decoder_dim,
            num_decoder_layers=num_decoder_layers,
            attention_dim=attention_dim,
            num_heads=num_heads,
            feedforward_dim=feedforward_dim,
            memory_dim=memory_dim,
        )

    def prepare_targets(self, ys: Sequence[Sequence[int]], device: Optional[torch.device] = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """ys -> (ys_in = [sos]+y padded with eos, ys_in_lens, ys_out = y+[eos] padded with ignore_id)."""
        ys_in, ys_in_lens = pad_token_lists(ys, self.eos_id, sos_id=self.sos_id, device=device)
        ys_out, _ = pad_token_lists(ys, self.ignore_id, eos_id=self.eos_id, device=device)
        return ys_in, ys_in_lens, ys_out

    def nll(
        self,
        encoder_out: torch.Tensor,
        encoder_out_lens: torch.Tensor,
        ys: Sequence[Sequence[int]],
        memory_index: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Per-position negative log-likelihood (N, max_len+1); 0 at ignored positions.

        ``memory_index`` (len(ys),): hypothesis i is scored against
        ``encoder_out[memory_index[i]]`` (default: row i).
        """
        ys_in, ys_in_lens, ys_out = self.prepare_targets(ys, device=encoder_out.device)
        logits = self.decoder(x=ys_in, x_lens=ys_in_lens, memory=encoder_out, memory_lens=encoder_out_lens, memory_index=memory_index)
        n, u, v = logits.shape
        nll = F.cross_entropy(logits.reshape(-1, v).float(), ys_out.reshape(-1), ignore_index=self.ignore_id, reduction="none")
        return nll.reshape(n, u)

    def score_nbest(
        self, encoder_out: torch.Tensor, encoder_out_lens: torch.Tensor, nbest: Sequence[Sequence[Sequence[int]]]
    ) -> list[list[float]]:
        """Log-probability (tokens + eos) of every hypothesis of every utterance's n-best list
        (lists of token lists, one list per row of ``encoder_out``): :meth:`score_nbest_tensors`
        on the lists padded into tensors."""
        device = encoder_out.device
        k = max((len(h) for h in nbest), default=0)
        width = max((len(y) for h in nbest for y in h), default=0)
        tokens = torch.full((len(nbest), k, width), -1, dtype=torch.int64)
        lens = torch.zeros((len(nbest), k), dtype=torch.int64)
        for u, hyps in enumerate(nbest):
            for i, y in enumerate(hyps):
                tokens[u, i, :len(y)] = torch.as_tensor(list(y), dtype=torch.int64)
                lens[u, i] = len(y)
        valid = torch.arange(k).unsqueeze(0) < torch.tensor([len(h) for h in nbest]).unsqueeze(1)
        scores = self.score_nbest_tensors(encoder_out, encoder_out_lens, tokens.to(device), lens.to(device),
                                          valid.to(device)).tolist()
        return [row[:len(h)] for row, h in zip(scores, nbest)]

    def score_nbest_tensors(self, encoder_out: torch.Tensor, encoder_out_lens: torch.Tensor, tokens: torch.Tensor,
                            lens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """(N, K) log-probability (tokens + eos) of the n-best entries ``tokens`` (N, K, L) with
        ``lens`` (N, K) of each row of ``encoder_out``; entries where ``valid`` (N, K) is False are
        not scored (0.0).

        Equals ``-nll(...).sum(-1)`` per hypothesis, but the decoder runs once over the union of
        each utterance's hypotheses arranged as a prefix trie: a node (a token after a given
        prefix) attends only to its ancestors, so a prefix shared by several hypotheses is
        computed once, and the utterance's memory is projected once for all of them.

        The trie is built with tensor operations, no Python loop over hypotheses: the node of
        hypothesis ``k`` at depth ``d`` belongs to the first hypothesis whose first ``d`` tokens are
        the same (from the first position where each pair of hypotheses differs, and a minimum over
        depths), the nodes are numbered in order of first appearance (hypothesis, then depth) as the
        Python trie of before numbered them, and each node's row of the attention mask is one
        scatter of the nodes on its path. One host synchronisation reads the largest trie's size.
        """
        device = encoder_out.device
        n, k, width = tokens.shape
        hyp = torch.arange(k, device=device)
        depth = torch.arange(width + 1, device=device)
        lens = torch.where(valid, lens, -1)  # an entry that is not scored is in no node, not even the root
        # reach[k, k']: how deep hypothesis k' follows k's path (the first position where their tokens
        # differ, at most len(k')); a sentinel column makes every pair differ at position L
        padded = torch.nn.functional.pad(torch.where(depth[1:] <= lens.unsqueeze(2), tokens, -1), (0, 1), value=-2)
        differ = padded.unsqueeze(2) != torch.nn.functional.pad(padded[..., :-1], (0, 1), value=-3).unsqueeze(1)
        reach = torch.minimum(differ.to(torch.uint8).argmax(dim=3), lens.unsqueeze(1))  # (N, K, K')
        # the node of hypothesis k at depth d is the first k' with reach >= d (k itself reaches len(k)):
        # the smallest k' reaching exactly r, then a minimum over r >= d
        at = torch.full((n, k, width + 2), k, dtype=torch.int64, device=device)
        at.scatter_reduce_(2, reach.clamp(min=-1) + 1, hyp.expand(n, k, k), reduce="amin")
        first = at.flip(2).cummin(dim=2).values.flip(2)[..., 1:]  # (N, K, L + 1)
        in_trie = depth <= lens.unsqueeze(2)  # (N, K, L + 1)
        new = in_trie & (first == hyp.view(1, k, 1))
        new[..., 0] = False  # the root is node 0
        # node ids in order of first appearance: by hypothesis, then depth
        ids = torch.cumsum(new.reshape(n, -1).long(), dim=1).view(n, k, width + 1) * new
        node = ids.gather(1, first.clamp(max=k - 1))  # (N, K, L + 1): the node on hypothesis k's path at depth d
        m = int(new.sum(dim=(1, 2)).max()) + 1 if n else 1
        x = torch.full((n, m + 1), self.eos_id, dtype=torch.int64, device=device)  # column m: dump
        pos = torch.zeros((n, m + 1), dtype=torch.int64, device=device)
        row = torch.where(new, ids, m)
        # (n, k, 1) spelled out: tokens[..., :1] has no column when every hypothesis is empty (L = 0)
        prev_tok = torch.cat([tokens.new_full((n, k, 1), self.sos_id), tokens], dim=2)  # token at depth d
        x.scatter_(1, row.view(n, -1), prev_tok.view(n, -1))
        x[:, 0] = self.sos_id
        pos.scatter_(1, row.view(n, -1), depth.expand(n, k, width + 1).reshape(n, -1))
        # node i attends to the nodes of its path: those of the hypothesis that made it, at depths up
        # to its own; padding rows (nothing made them: hypothesis 0, depth 0) to the root only
        maker = torch.zeros((n, m + 1), dtype=torch.int64, device=device)
        maker.scatter_(1, row.view(n, -1), hyp.view(1, k, 1).expand(n, k, width + 1).reshape(n, -1))
        path = node.gather(1, maker[:, :m].unsqueeze(2).expand(n, m, width + 1))  # (N, M, L + 1)
        path = torch.where(depth <= pos[:, :m].unsqueeze(2), path, m)
        masked = torch.ones((n, m, m + 1), dtype=torch.bool, device=device)  # True: masked; column m: spare
        masked.scatter_(2, path, torch.zeros((), dtype=torch.bool, device=device).expand(path.shape))
        logits = self.decoder(
            x=x[:, :m], x_lens=None, memory=encoder_out, memory_lens=encoder_out_lens,
            self_attn_mask=masked[:, :, :m], positions=pos[:, :m],
        )
        log_probs = logits.float().log_softmax(dim=-1)
        # hypothesis k's log-prob: its next token (eos after the last) at each node of its path
        target = torch.cat([tokens, tokens.new_full((n, k, 1), self.eos_id)], dim=2)
        target = torch.where(depth == lens.unsqueeze(2), self.eos_id, target).clamp(min=0)
        picked = log_probs[torch.arange(n, device=device).view(n, 1, 1), node, target]
        picked = torch.where(in_trie, picked, 0.0)
        # summed in path order, as the reference adds them
        totals = torch.zeros(n * k, dtype=torch.float32, device=device)
        totals.index_add_(0, torch.arange(n * k, device=device).repeat_interleave(width + 1), picked.view(-1))
        return torch.where(valid, totals.view(n, k), 0.0)

    def calc_att_loss(
        self, encoder_out: torch.Tensor, encoder_out_lens: torch.Tensor, ys: Sequence[Sequence[int]], reduction: str = "sum"
    ) -> torch.Tensor:
        """Label-smoothed cross entropy for training (sum or per position)."""
        ys_in, ys_in_lens, ys_out = self.prepare_targets(ys, device=encoder_out.device)
        logits = self.decoder(x=ys_in, x_lens=ys_in_lens, memory=encoder_out, memory_lens=encoder_out_lens)
        n, u, v = logits.shape
        loss = F.cross_entropy(
            logits.reshape(-1, v).float(),
            ys_out.reshape(-1),
            ignore_index=self.ignore_id,
            reduction="none",
            label_smoothing=self.label_smoothing,
        ).reshape(n, u)
        return loss.sum() if reduction == "sum" else loss
