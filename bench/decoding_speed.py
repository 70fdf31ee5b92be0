"""Decoding speed relative to the encoder (not a test).

Builds a random-weight ``AsrModel`` in icefall's "medium" Zipformer shape with
all three heads (CTC, transducer, attention decoder), runs the encoder on a
batch of random features (default 8 x 10 s) and times every decoding method
on its output.  Prints one JSON object; each method's time is also given as a
fraction of the encoder time (target for attention rescoring with beam 8 on
CPU: <= 0.20).

Two output-head variants are timed, because decoding cost depends on the
posteriors:

``random``
    the heads as initialised: near-uniform CTC / joiner posteriors.  Worst
    case for the beams -- CTC prefixes grow by about one token per frame, so the
    attention decoder scores n-best entries that are ~T tokens long.
``sharpened``
    CTC and joiner output layers recalibrated like a trained model: each class
    logit centred over the batch's frames, weights scaled up (peaky
    posteriors) and the blank bias set so that blank is the argmax on
    ``--blank-fraction`` of the frames (default 0.85, about 35-40 tokens per
    10 s, typical of BPE-500 models).  This is the meaningful number.

Timings are the minimum over ``--runs`` runs after one warm-up (the minimum is
robust to other load on shared machines).

    python bench/decoding_speed.py                 # CPU, 2 threads
    python bench/decoding_speed.py --threads 1 --runs 5
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model import AsrModel  # noqa: E402
from model.decoding import (  # noqa: E402
    METHODS,
    DecodingConfig,
    attention_scores_for_nbest,
    ctc_prefix_beam_search,
    ctc_viterbi_align,
    decode,
    transducer_greedy_search,
)

MEDIUM = dict(
    num_encoder_layers="2,2,3,4,3,2",
    feedforward_dim="512,768,1024,1536,1024,768",
    encoder_dim="192,256,384,512,384,256",
    encoder_unmasked_dim="192,192,256,256,256,192",
    num_heads="4,4,4,8,4,4",
    downsampling_factor="1,2,4,8,4,2",
    cnn_module_kernel="31,31,15,15,15,31",
    query_head_dim=32,
    pos_head_dim=4,
    value_head_dim=12,
    pos_dim=48,
    use_ctc=True,
    use_transducer=True,
    use_attention_decoder=True,
    vocab_size=500,
    sos_id=1,
    eos_id=1,
    decoder_dim=512,
    joiner_dim=512,
    attention_decoder_dim=512,
    attention_decoder_num_layers=6,
    attention_decoder_attention_dim=512,
    attention_decoder_num_heads=8,
    attention_decoder_feedforward_dim=2048,
)


def _best_time(fn, runs: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


@torch.inference_mode()
def _calibrate_linear(linear: torch.nn.Linear, hidden: torch.Tensor, blank_id: int, blank_fraction: float, target_top1: float) -> dict:
    """Centre every class logit over ``hidden`` (rows = frames), scale the
    weights until the median top-1 posterior reaches ``target_top1``, then shift
    the blank bias so blank is the argmax on ``blank_fraction`` of the rows."""
    h = hidden.reshape(-1, hidden.shape[-1])
    base = h @ linear.weight.T  # (F, V) without bias
    mean = base.mean(dim=0)
    scale = 1.0
    for scale in [2.0**i for i in range(16)]:
        logits = (base - mean) * scale
        top1 = logits.softmax(-1).max(-1).values.median().item()
        if top1 >= target_top1:
            break
    logits = (base - mean) * scale
    nonblank = logits.clone()
    nonblank[:, blank_id] = float("-inf")
    margin = nonblank.max(-1).values - logits[:, blank_id]
    offset = torch.quantile(margin, blank_fraction).item() + 1e-3
    linear.weight.mul_(scale)
    bias = -mean * scale
    bias[blank_id] += offset
    linear.bias.copy_(bias)
    return {"weight_scale": scale, "blank_offset": round(offset, 3)}


@torch.inference_mode()
def sharpen(model: AsrModel, enc: torch.Tensor, blank_fraction: float) -> dict:
    info = {"ctc": _calibrate_linear(model.ctc_output[1], enc, model.blank_id, blank_fraction, 0.9)}
    j = model.joiner
    # decoder states vary along a hypothesis: calibrate over random contexts
    n, t, _ = enc.shape
    gen = torch.Generator().manual_seed(1)
    ctx = torch.randint(1, model.vocab_size, (n * t, model.decoder.context_size), generator=gen)
    dec = j.decoder_proj(model.decoder(ctx, need_pad=False))[:, 0].view(n, t, -1)
    hidden = torch.tanh(j.encoder_proj(enc) + dec)
    info["joiner"] = _calibrate_linear(j.output_linear, hidden, model.blank_id, blank_fraction, 0.9)
    # the decoder states along real hypotheses differ from random contexts:
    # bisect the blank bias until greedy search emits on (1 - blank_fraction)
    # of the frames
    lens = torch.full((n,), t, dtype=torch.long)
    bias = j.output_linear.bias
    lo, hi = float(bias[model.blank_id]) - 100.0, float(bias[model.blank_id]) + 100.0
    for _ in range(30):
        mid = 0.5 * (lo + hi)
        bias[model.blank_id] = mid
        rate = float(transducer_greedy_search(model, enc, lens, model.blank_id).lens.sum()) / (n * t)
        if rate > 1.0 - blank_fraction:
            lo = mid
        else:
            hi = mid
    info["joiner"]["blank_bias"] = round(mid, 3)
    info["joiner"]["greedy_token_rate"] = round(rate, 3)
    return info


def run_variant(model, enc, lens, args) -> dict:
    enc_time = args.encoder_time
    out = {}
    for method in args.methods:
        cfg = DecodingConfig(method=method, beam=args.beam, transducer_beam=args.transducer_beam)
        with args.autocast():
            hyps = decode(model, enc, lens, cfg)
            t = _best_time(lambda: decode(model, enc, lens, cfg), args.runs)
        out[method] = {
            "time_s": round(t, 4),
            "fraction_of_encoder": round(t / enc_time, 4),
            "mean_tokens_per_utt": round(sum(len(h.token_ids) for h in hyps) / len(hyps), 1),
            "mean_confidence": round(sum(h.confidence for h in hyps) / len(hyps), 3),
        }
    # breakdown of attention rescoring
    if "attention-rescoring" in args.methods:
        with torch.inference_mode():
            lp = model.ctc_output(enc)
            nb = ctc_prefix_beam_search(lp, lens, beam=args.beam)
            best_tok, best_len = nb.tokens[:, 0], nb.lens[:, 0]
            parts = {
                "ctc_head_s": _best_time(lambda: model.ctc_output(enc), args.runs),
                "prefix_beam_s": _best_time(lambda: ctc_prefix_beam_search(lp, lens, beam=args.beam), args.runs),
                "attention_decoder_s": _best_time(
                    lambda: attention_scores_for_nbest(model.attention_decoder, enc, lens, nb), args.runs
                ),
                "viterbi_align_s": _best_time(lambda: ctc_viterbi_align(lp, lens, best_tok, best_len), args.runs),
            }
            valid = nb.valid
            parts["nbest_entries"] = int(valid.sum())
            parts["mean_nbest_tokens"] = round(float(nb.lens[valid].float().mean()), 1)
        out["attention-rescoring"]["breakdown"] = {
            k: (round(v, 4) if isinstance(v, float) else v) for k, v in parts.items()
        }
        out["attention-rescoring"]["breakdown"].update(
            {k.replace("_s", "_fraction_of_encoder"): round(v / enc_time, 4) for k, v in parts.items() if k.endswith("_s")}
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--beam", type=int, default=8)
    parser.add_argument("--transducer-beam", type=int, default=4)
    parser.add_argument("--blank-fraction", type=float, default=0.85)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--variants", default="random,sharpened")
    parser.add_argument("--precision", default="float32", choices=("float32", "bfloat16"),
                        help="autocast dtype for encoder and decoding, as Recognizer(amp_dtype=...) uses it")
    args = parser.parse_args()
    args.methods = [m for m in args.methods.split(",") if m]
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    model = AsrModel(**MEDIUM).eval()
    frames = int(args.seconds * 100)  # 10 ms fbank frames
    x = torch.randn(args.batch, frames, 80)
    x_lens = torch.full((args.batch,), frames, dtype=torch.int64)
    dtype = torch.bfloat16 if args.precision == "bfloat16" else None
    args.autocast = lambda: torch.autocast("cpu", dtype=dtype, enabled=dtype is not None)
    with torch.inference_mode(), args.autocast():
        enc, lens = model.forward_encoder(x, x_lens)
        args.encoder_time = _best_time(lambda: torch.inference_mode()(model.forward_encoder)(x, x_lens), args.runs)
    enc = enc.float()

    result = {
        "device": "cpu",
        "precision": args.precision,
        "threads": args.threads,
        "batch": args.batch,
        "seconds_per_utt": args.seconds,
        "encoder_frames": int(lens[0]),
        "beam": args.beam,
        "transducer_beam": args.transducer_beam,
        "runs": args.runs,
        "timing": "min over runs after one warm-up",
        "encoder_time_s": round(args.encoder_time, 4),
        "variants": {},
    }
    for variant in args.variants.split(","):
        if variant == "sharpened":
            result["sharpening"] = sharpen(model, enc, args.blank_fraction)
        elif variant != "random":
            raise SystemExit(f"unknown variant {variant}")
        result["variants"][variant] = run_variant(model, enc, lens, args)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
