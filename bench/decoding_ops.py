"""What the decoding searches would cost on a GPU, measured on the CPU (issue 32; not a test).

    python bench/decoding_ops.py                  # everything, 7 repeats, 2 threads
    python bench/decoding_ops.py --repeats 11 --threads 1 --json

Prints, side by side in one run, "before" (the searches of commit c704743, frozen in
tests/legacy_decoding.py) and "now":

1. **Kernel-launching operations per frame** of each search, counted with the torch profiler on
   the CPU (model/decoding/opcount.py). Counting rule: every ``aten::`` operation that does
   device work counts once -- views, metadata, allocations and no-op conversions are not
   counted; a composite operation counts as the operations it runs (``masked_fill`` = a copy
   and a fill); sorts, reductions, lookups, matrix products and convolutions count once
   whatever they call inside; a Python number made a 0-dim tensor for an operation is not
   device work. Per frame = (count at 14 frames - count at 6 frames) / 8, so set-up and
   read-back are left out. Inputs: 4 utterances, the demo model's vocabulary (256), beam 8;
   the fused search with the demo model's word LM; the transducer searches on a random
   two-stack model (their count includes its decoder and joiner).
2. **Launches per batch on a GPU, estimated**: the shipped decoding (6 s segments: 150 frames
   per search, prefix search with the fused LM, then the Viterbi alignment) at 5-10 us per
   eager launch; and with the CUDA-graph frame loop (model/decoding/frames.py: captured per call,
   one replay per block of frames; the frames before the first whole block, the warm-up block and
   the captured block are dispatched on the host). Estimates, not measurements: no GPU measured
   them, and graph instantiation is not counted.
3. **Rescoring host work** for 40 segments x beam 32 x about 20 tokens (the n-best of the
   prefix search on synthetic posteriors): building the n-best trie and masks (until the
   attention decoder is called; the decoder is a stub returning fixed logits), and all the
   work around the decoder call; median, min and max over the repeats, before and now
   interleaved. Also the word LM's scoring of those 1,280 entries (``Recognizer.lm_scores``).
4. **CPU time of the searches**, before and now interleaved: beam 32, 40 utterances x 150
   frames, plain and fused.

The machine may be shared and noisy: compare the two columns of one run, not runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

DEMO = REPO / "model" / "assets" / "demo"
#: a small random transducer model (the searches' per-frame count includes its decoder and joiner)
TRANSDUCER = dict(
    downsampling_factor="1,2", num_encoder_layers="1,1", encoder_dim="32,48", encoder_unmasked_dim="32,32",
    num_heads="2,2", query_head_dim=8, value_head_dim=4, pos_head_dim=4, pos_dim=16, feedforward_dim="64,96",
    cnn_module_kernel="7,5", use_ctc=True, use_transducer=True, use_attention_decoder=False, decoder_dim=32,
    joiner_dim=32, context_size=2, vocab_size=256,
)
#: what issue 32 asked for (kernel-launching operations per frame)
TARGETS = {"prefix search, fused LM": 25, "prefix search": 15, "Viterbi alignment": 10}
SEGMENT_FRAMES = 150  # 6 s segments at 40 ms per encoder frame


def spread(values: list[float], scale: float = 1e3) -> dict:
    return {"median": round(statistics.median(values) * scale, 2), "min": round(min(values) * scale, 2),
            "max": round(max(values) * scale, 2), "runs": len(values)}


def ops_table(lm) -> dict:
    from legacy_decoding import (legacy_ctc_prefix_beam_search, legacy_ctc_viterbi_align,
                                 legacy_transducer_greedy_search, legacy_transducer_modified_beam_search)
    from model import AsrModel
    from model.decoding import (ctc_prefix_beam_search, ctc_viterbi_align, transducer_greedy_search,
                                transducer_modified_beam_search)
    from model.decoding.opcount import ops_per_frame

    g = torch.Generator().manual_seed(0)
    lp = (torch.randn(4, 20, 256, generator=g) * 3).log_softmax(-1)

    def lens(frames):
        return torch.tensor([frames, frames - 1, frames - 3, frames - 2])

    tokens, token_lens = torch.randint(1, 256, (4, 5), generator=g), torch.tensor([5, 4, 3, 5])
    torch.manual_seed(0)
    model = AsrModel(**TRANSDUCER).eval()
    enc = torch.randn(4, 20, model.joiner.encoder_proj.in_features, generator=g)
    searches = {
        "prefix search": lambda f, s: s(lp[:, :f], lens(f), beam=8),
        "prefix search, fused LM": lambda f, s: s(lp[:, :f], lens(f), beam=8, lm=lm, lm_scale=0.5, word_bonus=2.0),
        "Viterbi alignment": lambda f, s: s(lp[:, :f], lens(f), tokens, token_lens),
        "transducer greedy": lambda f, s: s(model, enc[:, :f], lens(f)),
        "transducer beam 4": lambda f, s: s(model, enc[:, :f], lens(f), beam=4),
    }
    functions = {
        "prefix search": (legacy_ctc_prefix_beam_search, ctc_prefix_beam_search),
        "prefix search, fused LM": (legacy_ctc_prefix_beam_search, ctc_prefix_beam_search),
        "Viterbi alignment": (legacy_ctc_viterbi_align, ctc_viterbi_align),
        "transducer greedy": (legacy_transducer_greedy_search, transducer_greedy_search),
        "transducer beam 4": (legacy_transducer_modified_beam_search, transducer_modified_beam_search),
    }
    table = {}
    for name, run in searches.items():
        old, new = functions[name]
        before, _ = ops_per_frame(lambda f: run(f, old), 6, 14)
        now, by_op = ops_per_frame(lambda f: run(f, new), 6, 14)
        table[name] = {"before": before, "now": now, "target": TARGETS.get(name),
                       "now_by_op": dict(sorted(by_op.items(), key=lambda kv: -kv[1]))}
    return table


def gpu_estimate(table: dict) -> dict:
    """Launches per batch of the shipped decoding's searches, and what they cost at 5-10 us each."""
    try:
        from model.decoding.frames import BLOCK
    except ImportError:  # a checkout from before the frame runner (the bench run at the base commit)
        BLOCK = 16
    out = {}
    for column in ("before", "now"):
        ops = table["prefix search, fused LM"][column] + table["Viterbi alignment"][column]
        launches = ops * SEGMENT_FRAMES
        out[f"eager, {column}"] = {"launches": round(launches), "ms_at_5us": round(launches * 5e-3, 1),
                                   "ms_at_10us": round(launches * 1e-2, 1)}
    # graphs (per loop: prefix search, Viterbi forward, Viterbi backtrack): the frames before the
    # first whole block eager, the warm-up block eager, the capture of one block (dispatched on the
    # host like eager frames, recorded instead of launched), then one replay per remaining block;
    # the replays' kernels still run on the GPU, back to back (about 1-2 us each there)
    dispatched_frames = SEGMENT_FRAMES % BLOCK + 2 * BLOCK
    replays = SEGMENT_FRAMES // BLOCK - 1
    now = table["prefix search, fused LM"]["now"] + table["Viterbi alignment"]["now"]
    host_ops = dispatched_frames * now + 3 * replays
    out["CUDA graphs, now"] = {"host dispatches": round(host_ops), "graph replays": 3 * replays,
                               "ms_host_at_5us": round(host_ops * 5e-3, 1),
                               "ms_host_at_10us": round(host_ops * 1e-2, 1),
                               "kernels_run_from_graphs": round(now * BLOCK * replays)}
    return out


def synthetic_nbest(n: int = 40, frames: int = SEGMENT_FRAMES, beam: int = 32, tokens: int = 20):
    """The n-best of the prefix search over posteriors that say ``tokens`` tokens per utterance
    (a peaked frame each, blank elsewhere) with some uncertainty about each."""
    from model.decoding import ctc_prefix_beam_search

    g = torch.Generator().manual_seed(3)
    logits = torch.randn(n, frames, 256, generator=g)
    logits[..., 1:3] -= 30.0  # sos/eos, <unk>
    spoken = torch.rand(n, frames, generator=g).argsort(dim=1)[:, :tokens]  # frames with a token
    said = torch.randint(3, 256, (n, tokens), generator=g)
    logits[..., 0] += 7.0
    rows = torch.arange(n).unsqueeze(1)
    logits[rows, spoken, 0] -= 8.0
    logits[rows, spoken, said] += 6.0
    lp = logits.log_softmax(-1)
    return lp, ctc_prefix_beam_search(lp, torch.full((n,), frames), beam=beam)


class StubDecoder:
    """Stands in for the attention decoder: notes when it is called, returns fixed logits."""

    def __init__(self, vocab: int):
        self.vocab, self.cache, self.called = vocab, {}, 0.0

    def __call__(self, x, x_lens, memory, memory_lens, memory_index=None, self_attn_mask=None, positions=None):
        self.called = time.perf_counter()
        shape = (x.shape[0], x.shape[1], self.vocab)
        if shape not in self.cache:
            self.cache[shape] = torch.zeros(shape)
        self.returned = time.perf_counter()
        return self.cache[shape]


def rescoring_host(nbest, repeats: int) -> dict:
    from legacy_decoding import legacy_attention_scores_for_nbest, legacy_score_nbest
    from model.attention_decoder import AttentionDecoderModel
    from model.decoding import attention_scores_for_nbest

    stub = StubDecoder(256)

    class Decoder:
        sos_id = eos_id = 1
        decoder = stub
        score_nbest_tensors = AttentionDecoderModel.score_nbest_tensors

    class LegacyDecoder:  # what the legacy attention_scores_for_nbest saw: a decoder with score_nbest
        sos_id = eos_id = 1
        decoder = stub
        score_nbest = legacy_score_nbest

    n = nbest.scores.shape[0]
    enc, lens = torch.zeros(n, 8, 8), torch.full((n,), 8)
    width = nbest.lens[nbest.valid].float()
    timings = {k: [] for k in ("trie before", "trie now", "around before", "around now")}
    for i in range(repeats + 1):
        for column, fn, dec in (("before", legacy_attention_scores_for_nbest, LegacyDecoder()),
                                ("now", attention_scores_for_nbest, Decoder())):
            t0 = time.perf_counter()
            scores = fn(dec, enc, lens, nbest)
            end = time.perf_counter()
            if i:  # the first round warms up
                timings[f"trie {column}"].append(stub.called - t0)
                timings[f"around {column}"].append(end - t0 - (stub.returned - stub.called))
            if column == "before":
                reference = scores
            else:
                assert torch.equal(scores, reference), "the trie scores changed"
    return {"entries": int(nbest.valid.sum()), "tokens_mean": round(float(width.mean()), 1),
            "trie_and_masks_ms": {"before": spread(timings["trie before"]), "now": spread(timings["trie now"])},
            "all_host_work_ms": {"before": spread(timings["around before"]), "now": spread(timings["around now"])}}


def lm_scoring(nbest, repeats: int) -> dict:
    from model.recognizer import Recognizer

    rec = Recognizer.from_dir(DEMO)
    entries = [y for row in nbest.to_lists() for y in row]
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        rec.lm_scores(entries)
        if i:
            times.append(time.perf_counter() - t0)
    return {"entries": len(entries), "ms": spread(times)}


def search_times(lp, lm, repeats: int) -> dict:
    from legacy_decoding import legacy_ctc_prefix_beam_search
    from model.decoding import ctc_prefix_beam_search

    lens = torch.full((lp.shape[0],), lp.shape[1])
    out = {}
    for name, kwargs in (("prefix search", {}), ("prefix search, fused LM", dict(lm=lm, lm_scale=0.5, word_bonus=2.0))):
        times = {"before": [], "now": []}
        for i in range(repeats + 1):
            for column, fn in (("before", legacy_ctc_prefix_beam_search), ("now", ctc_prefix_beam_search)):
                t0 = time.perf_counter()
                fn(lp, lens, beam=32, **kwargs)
                if i:
                    times[column].append(time.perf_counter() - t0)
        out[name] = {k: spread(v, 1.0) for k, v in times.items()}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", action="store_true", help="one JSON object only")
    p.add_argument("--skip-times", action="store_true", help="only the operation counts and estimates")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from model.decoding import SearchLM
    from model.tokenizer import Tokenizer
    from model.word_lm import WordLM

    tok = Tokenizer.from_dir(DEMO)
    lm = SearchLM.build(WordLM.from_arpa(DEMO / "lm.arpa.gz"), [tok.id_to_piece(i) for i in range(tok.vocab_size)],
                        special_ids=[tok.blank_id, tok.sos_id])
    result = {"torch": torch.__version__, "threads": args.threads, "ops_per_frame": ops_table(lm)}
    result["gpu_estimate_per_batch"] = gpu_estimate(result["ops_per_frame"])
    if not args.skip_times:
        lp, nbest = synthetic_nbest()
        result["rescoring_host"] = rescoring_host(nbest, args.repeats)
        result["lm_scoring"] = lm_scoring(nbest, args.repeats)
        result["search_cpu_seconds"] = search_times(lp, lm, max(3, args.repeats // 2))
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print("kernel-launching operations per frame (CPU profiler; rule in the docstring)")
    print(f"  {'search':26} {'before':>7} {'now':>7} {'issue 32 target':>16}")
    for name, row in result["ops_per_frame"].items():
        target = f"<= {row['target']}" if row["target"] else "-"
        print(f"  {name:26} {row['before']:7.0f} {row['now']:7.0f} {target:>16}")
    print(f"estimated per batch on a GPU, shipped decoding ({SEGMENT_FRAMES} frames: fused prefix search + alignment):")
    for name, row in result["gpu_estimate_per_batch"].items():
        print(f"  {name:18} {row}")
    if not args.skip_times:
        r = result["rescoring_host"]
        print(f"rescoring host work, {r['entries']} n-best entries of {r['tokens_mean']} tokens on average (ms):")
        for what in ("trie_and_masks_ms", "all_host_work_ms"):
            print(f"  {what:18} before {r[what]['before']}  now {r[what]['now']}")
        print(f"word-LM scoring of {result['lm_scoring']['entries']} entries (ms): {result['lm_scoring']['ms']}")
        print("search CPU time, beam 32, 40 x 150 frames (s):")
        for name, row in result["search_cpu_seconds"].items():
            print(f"  {name:26} before {row['before']}  now {row['now']}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
