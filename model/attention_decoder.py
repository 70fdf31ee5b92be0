"""Transformer attention decoder used for n-best rescoring (icefall's
``attention_decoder.py`` layout: pre-norm layers, no final norm)."""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
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
        """Log-probability (tokens + eos) of every hypothesis of every utterance's n-best list.

        Equals ``-nll(...).sum(-1)`` per hypothesis, but the decoder runs once over
        the union of each utterance's hypotheses arranged as a prefix trie: a node
        (a token after a given prefix) attends only to its ancestors, so a prefix
        shared by several hypotheses is computed once, and the utterance's memory
        is projected once for all of them.
        """
        device = encoder_out.device
        tries = []
        for hyps in nbest:
            tokens, depth, parent, paths = [self.sos_id], [0], [-1], []
            child: dict[tuple[int, int], int] = {}
            for hyp in hyps:
                node, path = 0, [0]
                for tok in hyp:
                    nxt = child.get((node, tok))
                    if nxt is None:
                        nxt = child[(node, tok)] = len(tokens)
                        tokens.append(tok)
                        depth.append(depth[node] + 1)
                        parent.append(node)
                    node = nxt
                    path.append(node)
                paths.append(path)
            tries.append((tokens, depth, parent, paths))
        n, m = len(tries), max(len(t[0]) for t in tries)
        x = np.full((n, m), self.eos_id, dtype=np.int64)
        pos = np.zeros((n, m), dtype=np.int64)
        allowed = np.zeros((n, m, m), dtype=bool)
        allowed[:, :, 0] = True  # every node (and padding row) sees the root
        rows, nodes, next_tokens, owners = [], [], [], []
        hyp_id = 0
        for u, (tokens, depth, parent, paths) in enumerate(tries):
            k = len(tokens)
            x[u, :k], pos[u, :k] = tokens, depth
            for i in range(1, k):  # parents come before children
                allowed[u, i] = allowed[u, parent[i]]
                allowed[u, i, i] = True
            for path, hyp in zip(paths, nbest[u]):
                targets = list(hyp) + [self.eos_id]
                rows += [u] * len(path)
                nodes += path
                next_tokens += targets
                owners += [hyp_id] * len(path)
                hyp_id += 1
        logits = self.decoder(
            x=torch.from_numpy(x).to(device), x_lens=None, memory=encoder_out, memory_lens=encoder_out_lens,
            self_attn_mask=torch.from_numpy(~allowed).to(device), positions=torch.from_numpy(pos).to(device),
        )
        log_probs = logits.float().log_softmax(dim=-1)
        idx = [torch.tensor(v, dtype=torch.int64, device=device) for v in (rows, nodes, next_tokens, owners)]
        picked = log_probs[idx[0], idx[1], idx[2]]
        totals = torch.zeros(hyp_id, device=device).index_add_(0, idx[3], picked).tolist()
        out, start = [], 0
        for hyps in nbest:
            out.append(totals[start : start + len(hyps)])
            start += len(hyps)
        return out

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
