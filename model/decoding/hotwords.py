"""Contextual biasing: a token-level Aho-Corasick automaton over hotword phrases, as tensors.

A hotword list is a set of phrases, each a sequence of token ids (the tokenizer's pieces of the
normalised phrase) with a bonus per token. A search carries, for every hypothesis, the state of
the automaton after its tokens and its *hotword total*:

* appending a token moves the state along the automaton (goto, following failure links when the
  trie has no such child: the longest suffix of the hypothesis that is a prefix of a phrase);
* the total changes by ``acc[new] - acc[old] + out[new]``, where ``acc[s]`` is the sum of the
  per-token bonuses on the trie path to ``s`` (the *partial* bonus of the match in progress) and
  ``out[s]`` the whole bonus of the longest phrase that ends at ``s`` (itself or a suffix, via the
  output links), 0 where none does. So each matched token adds its bonus; a match that fails
  gives its partial bonus back (the new state is shallower); a completed phrase keeps its bonus
  (``out``), whatever follows;
* :meth:`HotwordBatch.final` is what a hypothesis keeps at its end: the total less the partial
  bonus of an unfinished match, i.e. the sum of the completed phrases' bonuses. That is the
  bonus the attention rescoring adds (:func:`model.decoding.decode`), so that rescoring does not
  undo what the search preferred.

Tables (:class:`HotwordGraph`, one per list, built once per distinct list; :class:`HotwordBatch`,
the lists of one batch side by side with per-list state offsets): the automaton is stored as a
sparse deterministic transition table -- every transition that does not lead to where the
list's root leads with the same token, as a sorted int64 key ``state * V + token`` and its target
-- plus one dense (lists, V) row of the roots' transitions. A step for any number of
hypotheses of any lists is one ``searchsorted``, two gathers and a ``where``, on any device,
without host synchronisation. The sparse table holds, for each state, the trie children of the
states on its failure chain (the root excluded): a few per state, not V.

This module depends on torch only (no tokenizer, no text normaliser): the pipeline normalises
and tokenises phrases (``pipeline.inputs.hotwords`` parses the lists, ``model.recognizer`` tokenises them) and hands :class:`HotwordList` here.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

__all__ = ["MAX_STATES", "HotwordBatch", "HotwordGraph", "HotwordList"]

#: a batch whose automata have at most this many (state, token) pairs also gets dense transition
#: and gain tables (:meth:`HotwordBatch.step`: two gathers a step instead of a sparse lookup);
#: 2**22 pairs: 32 MiB of int64 targets + 16 MiB of float32 gains (1000 five-token phrases over a
#: 500-piece vocabulary are 2.5 M pairs)
DENSE_PAIRS = 1 << 22

#: the most automaton states one list may have (the sum of its phrases' token counts, at most;
#: 20 000 five-token phrases): a longer list is refused with a clear error
MAX_STATES = 100_000


@dataclass(frozen=True)
class HotwordList:
    """A tokenised hotword list: ``phrases[i]`` (token ids) gets ``scores[i]`` per matched token.

    Validated at construction: every phrase non-empty, token ids in ``[0, vocab_size)`` when
    ``vocab_size`` is given, scores finite and > 0. Duplicate phrases keep their highest score.
    """

    phrases: tuple[tuple[int, ...], ...]
    scores: tuple[float, ...]
    #: the phrases' text, for reports (same order as ``phrases``; optional)
    texts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if len(self.phrases) != len(self.scores):
            raise ValueError(f"{len(self.phrases)} phrases but {len(self.scores)} scores")
        if self.texts and len(self.texts) != len(self.phrases):
            raise ValueError(f"{len(self.phrases)} phrases but {len(self.texts)} texts")
        for p, s in zip(self.phrases, self.scores):
            if not p:
                raise ValueError("a hotword phrase has no tokens")
            if any(t < 0 for t in p):
                raise ValueError(f"negative token id in hotword phrase {p}")
            if not (math.isfinite(s) and s > 0):
                raise ValueError(f"a hotword score must be finite and > 0, got {s}")

    @property
    def key(self) -> str:
        """A content hash of the list (phrases and scores): equal lists share one automaton."""
        h = hashlib.sha256()
        for p, s in sorted(zip(self.phrases, self.scores)):
            h.update(repr((p, float(s))).encode())
        return h.hexdigest()


@dataclass(frozen=True, eq=False)
class HotwordGraph:
    """One list's automaton (:meth:`build`): state 0 is the root; CPU tensors.

    * ``edge_keys`` (E,) sorted ``state * vocab_size + token`` of the transitions that do not go
      where the root goes with that token, ``edge_targets`` (E,) their target states;
    * ``root_goto`` (V,) the root's transition by token (0: stay at the root);
    * ``acc`` (S,) the partial bonus of each state, ``out`` (S,) the bonus of the longest phrase
      ending there (0: none), ``phrase`` (S,) that phrase's index (-1: none);
    * ``word_end`` (S,) a word of a phrase ends at the state: a phrase completes there, or (with
      ``word_start`` given to :meth:`build`) one of its trie children starts a new word. The fused
      LM spares only such words its ``<unk>`` penalty (not every beginning of a phrase).
    """

    vocab_size: int
    edge_keys: torch.Tensor
    edge_targets: torch.Tensor
    root_goto: torch.Tensor
    acc: torch.Tensor
    out: torch.Tensor
    phrase: torch.Tensor
    word_end: torch.Tensor

    @property
    def num_states(self) -> int:
        return int(self.acc.shape[0])

    @classmethod
    def build(cls, hotwords: HotwordList, vocab_size: int, word_start: Sequence[bool] | None = None) -> HotwordGraph:
        """The automaton of ``hotwords`` over a vocabulary of ``vocab_size`` tokens;
        ``word_start[t]``: token ``t`` begins a word (its piece starts with "▁"), for
        :attr:`word_end` inside multi-word phrases (None: words end only where phrases do).

        Raises ValueError for a token id outside the vocabulary or a list of more than
        :data:`MAX_STATES` states."""
        if vocab_size < 1:
            raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
        if sum(len(p) for p in hotwords.phrases) + 1 > MAX_STATES:
            raise ValueError(f"hotword list too large: more than {MAX_STATES} automaton states "
                             f"({len(hotwords.phrases)} phrases); split it or shorten it")
        # the trie: children[s] token -> state; per state its token bonus (the highest of the
        # phrases through it) and the phrase ending there (the highest score among duplicates)
        children: list[dict[int, int]] = [{}]
        tok_score: list[float] = [0.0]
        ends: list[int] = [-1]
        for i, (p, s) in enumerate(zip(hotwords.phrases, hotwords.scores)):
            node = 0
            for t in p:
                if t >= vocab_size:
                    raise ValueError(f"token id {t} of hotword phrase {i} is outside the vocabulary ({vocab_size})")
                nxt = children[node].get(t)
                if nxt is None:
                    nxt = len(children)
                    children[node][t] = nxt
                    children.append({})
                    tok_score.append(s)
                    ends.append(-1)
                else:
                    tok_score[nxt] = max(tok_score[nxt], s)
                node = nxt
            if ends[node] < 0 or hotwords.scores[ends[node]] < s:
                ends[node] = i
        n = len(children)
        acc = [0.0] * n
        fail = [0] * n
        out = [0.0] * n
        phrase = [-1] * n
        # rows[s]: the transitions of s that differ from the root's (its children, then those of
        # the states on its failure chain, nearest first), built breadth first
        rows: list[dict[int, int]] = [{}] * n
        root = children[0]
        queue = []
        for t, c in root.items():
            acc[c] = tok_score[c]
            queue.append(c)
        head = 0
        while head < len(queue):
            s = queue[head]
            head += 1
            if ends[s] >= 0:
                out[s], phrase[s] = acc[s], ends[s]
            elif fail[s]:
                out[s], phrase[s] = out[fail[s]], phrase[fail[s]]
            row = children[s]
            inherited = rows[fail[s]]
            if inherited:
                row = {**inherited, **row}
            rows[s] = row
            for t, c in children[s].items():
                acc[c] = acc[s] + tok_score[c]
                f = inherited.get(t, root.get(t, 0)) if s else 0
                fail[c] = f if f != c else 0
                queue.append(c)
        word_end = [o > 0 for o in out]
        if word_start is not None:
            for s in range(n):
                word_end[s] = word_end[s] or any(word_start[t] for t in children[s])
        word_end[0] = False
        keys: list[int] = []
        targets: list[int] = []
        for s in range(1, n):  # state order, then token order: sorted keys
            row = rows[s]
            for t in sorted(row):
                c = row[t]
                if root.get(t, 0) != c:
                    keys.append(s * vocab_size + t)
                    targets.append(c)
        root_goto = torch.zeros(vocab_size, dtype=torch.long)
        if root:
            root_goto[torch.tensor(list(root.keys()))] = torch.tensor(list(root.values()))
        return cls(
            vocab_size=vocab_size,
            edge_keys=torch.tensor(keys, dtype=torch.long),
            edge_targets=torch.tensor(targets, dtype=torch.long),
            root_goto=root_goto,
            acc=torch.tensor(acc, dtype=torch.float64),
            out=torch.tensor(out, dtype=torch.float64),
            phrase=torch.tensor(phrase, dtype=torch.long),
            word_end=torch.tensor(word_end, dtype=torch.bool),
        )

    def step_reference(self, state: int, token: int) -> int:
        """The transition from ``state`` on ``token`` (one at a time, for tests and checks)."""
        key = state * self.vocab_size + token
        pos = int(torch.searchsorted(self.edge_keys, torch.tensor(key)))
        if pos < self.edge_keys.numel() and int(self.edge_keys[pos]) == key:
            return int(self.edge_targets[pos])
        return int(self.root_goto[token])


@dataclass
class HotwordBatch:
    """The automata of one batch's utterances side by side, on one device (:meth:`build`).

    Global state ``g`` of utterance ``n`` is ``offset[n] + s`` for the list's state ``s``;
    utterances without a list get an empty automaton (a root that stays a root, bonus 0), so
    their totals stay 0. The step is :meth:`advance`; :meth:`final` the kept bonus.
    """

    vocab_size: int
    #: (E,) sorted global keys ``g * V + token`` and their global targets
    edge_keys: torch.Tensor
    edge_targets: torch.Tensor
    #: (L * V,) the roots' transitions (global states), list ``l``'s at ``l * V``
    root_goto: torch.Tensor
    #: (N,) each utterance's list index (into the roots) and its root's global state
    list_of: torch.Tensor
    root_state: torch.Tensor
    #: (G,) per global state: partial bonus, completion bonus (in the search's dtype)
    acc: torch.Tensor
    out: torch.Tensor
    #: (G,) per global state: the list's phrase completed there (-1: none), CPU
    phrase: torch.Tensor
    #: (G,) per global state: a word of a phrase ends there (:attr:`HotwordGraph.word_end`)
    word_end: torch.Tensor
    #: (G * V,) when G * V <= :data:`DENSE_PAIRS`: the target of every (state, token), and the gain
    #: of that move (in the search's dtype); None otherwise (the sparse lookup of :meth:`advance`)
    dense_next: torch.Tensor | None = None
    dense_gain: torch.Tensor | None = None
    #: the graphs, by list index
    graphs: list = field(default_factory=list, repr=False)

    @classmethod
    def build(cls, graphs: Sequence[HotwordGraph | None], device: torch.device,
              dtype: torch.dtype = torch.float32) -> HotwordBatch:
        """From one graph (or None: no list) per utterance; equal graph objects are stored once."""
        vocab = {g.vocab_size for g in graphs if g is not None}
        if len(vocab) > 1:
            raise ValueError(f"hotword graphs over different vocabularies: {sorted(vocab)}")
        if not vocab:
            raise ValueError("a HotwordBatch needs at least one utterance with a hotword list")
        v = vocab.pop()
        distinct: list[HotwordGraph] = []
        index: dict[int, int] = {}
        list_of = []
        for g in graphs:
            if g is None:
                list_of.append(-1)
                continue
            if id(g) not in index:
                index[id(g)] = len(distinct)
                distinct.append(g)
            list_of.append(index[id(g)])
        # list -1 (no list): one extra empty automaton at the end
        empty = HotwordGraph(vocab_size=v, edge_keys=torch.zeros(0, dtype=torch.long),
                             edge_targets=torch.zeros(0, dtype=torch.long),
                             root_goto=torch.zeros(v, dtype=torch.long), acc=torch.zeros(1, dtype=torch.float64),
                             out=torch.zeros(1, dtype=torch.float64), phrase=torch.full((1,), -1, dtype=torch.long),
                             word_end=torch.zeros(1, dtype=torch.bool))
        if -1 in list_of:
            list_of = [len(distinct) if i < 0 else i for i in list_of]
            distinct.append(empty)
        offsets = [0]
        for g in distinct:
            offsets.append(offsets[-1] + g.num_states)
        keys, targets, roots = [], [], []
        for off, g in zip(offsets, distinct):
            keys.append(g.edge_keys + off * v)  # (s + off) * V + t
            targets.append(g.edge_targets + off)
            roots.append(g.root_goto + off)
        lists = torch.tensor(list_of, dtype=torch.long)
        dense = {}
        if offsets[-1] * v <= DENSE_PAIRS:
            # every state starts from its list's root row; the sparse transitions overwrite theirs
            of_state = torch.repeat_interleave(torch.arange(len(distinct)), torch.tensor([g.num_states for g in distinct]))
            nxt = torch.cat(roots).view(len(distinct), v)[of_state].reshape(-1)
            nxt[torch.cat(keys)] = torch.cat(targets)
            acc = torch.cat([g.acc for g in distinct])
            out = torch.cat([g.out for g in distinct])
            gain = acc[nxt] - acc.repeat_interleave(v) + out[nxt]
            dense = {"dense_next": nxt.to(device), "dense_gain": gain.to(device=device, dtype=dtype)}
        return cls(
            vocab_size=v,
            edge_keys=torch.cat(keys).to(device),
            edge_targets=torch.cat(targets).to(device),
            root_goto=torch.cat(roots).to(device),
            list_of=lists.to(device),
            root_state=torch.tensor(offsets[:-1], dtype=torch.long)[lists].to(device),
            acc=torch.cat([g.acc for g in distinct]).to(device=device, dtype=dtype),
            out=torch.cat([g.out for g in distinct]).to(device=device, dtype=dtype),
            phrase=torch.cat([g.phrase for g in distinct]),
            word_end=torch.cat([g.word_end for g in distinct]).to(device),
            graphs=distinct,
            **dense,
        )

    def to(self, device: torch.device, dtype: torch.dtype) -> HotwordBatch:
        """These tables on ``device`` with bonuses in ``dtype`` (itself when they already are)."""
        device = torch.device(device)
        if self.acc.device == device and self.acc.dtype == dtype:
            return self
        moved = {k: v.to(device) if isinstance(v, torch.Tensor) and k != "phrase" else v
                 for k, v in self.__dict__.items()}
        for name in ("acc", "out", "dense_gain"):
            value = getattr(self, name)
            moved[name] = value.to(device=device, dtype=dtype) if value is not None else None
        return HotwordBatch(**moved)

    def step(self, state: torch.Tensor, tokens: torch.Tensor, lists: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`advance` and :meth:`gain` at once: the new global states and what the moves add
        (from the dense tables when the batch has them: two gathers)."""
        if self.dense_next is None:
            new = self.advance(state, tokens, lists)
            return new, self.gain(state, new)
        index = state * self.vocab_size + tokens
        return torch.take(self.dense_next, index), torch.take(self.dense_gain, index)

    def advance(self, state: torch.Tensor, tokens: torch.Tensor, lists: torch.Tensor) -> torch.Tensor:
        """The global states after ``tokens`` from global states ``state`` (broadcast together);
        ``lists``: each element's list index (:attr:`list_of` of its utterance, broadcastable)."""
        key = state * self.vocab_size + tokens
        root = self.root_goto[lists * self.vocab_size + tokens]
        if self.edge_keys.numel() == 0:
            return root
        pos = torch.searchsorted(self.edge_keys, key.contiguous()).clamp_(max=self.edge_keys.numel() - 1)
        return torch.where(self.edge_keys[pos] == key, self.edge_targets[pos], root)

    def gain(self, old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        """What moving from global states ``old`` to ``new`` adds to a hotword total."""
        return self.acc[new] - self.acc[old] + self.out[new]

    def final(self, total: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """The bonus a hypothesis keeps at its end: its total less its unfinished match's."""
        return total - self.acc[state]

    def run(self, tokens: Sequence[Sequence[int]], utterance: Sequence[int]) -> tuple[list[float], list[list[int]]]:
        """Runs token sequences through the automata on the host (attention rescoring's
        re-scoring and tests): per sequence, the kept bonus and the phrase indices completed
        (in order, a phrase again each time it completes). ``utterance[i]``: sequence i's utterance."""
        lists = self.list_of.cpu()
        roots = self.root_state.cpu()
        acc, out, phrase = self.acc.double().cpu(), self.out.double().cpu(), self.phrase
        bonuses, matched = [], []
        for seq, u in zip(tokens, utterance):
            lst = int(lists[u])
            g = self.graphs[lst]
            off = int(roots[u])
            s, total, found = 0, 0.0, []
            for t in seq:
                new = g.step_reference(s, int(t))
                total += float(acc[off + new] - acc[off + s] + out[off + new])
                if int(phrase[off + new]) >= 0:
                    found.append(int(phrase[off + new]))
                s = new
            bonuses.append(total - float(acc[off + s]))
            matched.append(found)
        return bonuses, matched
