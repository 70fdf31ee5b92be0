"""Train the demo CTC + attention-decoder Zipformer on a synthetic corpus and write a model dir.

Example (the real run; corpus from jobs/make_synthetic_corpus.py):
  python jobs/train_demo.py --corpus data/everyday12 --out model/assets/demo --minutes 87 --threads 2

Writes to --out:
  pretrained.pt    {"model": state_dict} (averaged over the last --average-last checkpoints)
  bpe.model        sentencepiece BPE trained on the TRAIN text only (<blk>=0, <sos/eos>=1, <unk>=2)
  config.json      AsrModel kwargs + "name" + "decoding" (attention_scale chosen on dev)
  MODEL_CARD.md    data, command, training time, dev / test / everyday-English WER per decoding method
  train_log.json   loss history and the numbers of the model card
Checkpoints during training go to --work-dir (default: <out>/../<name>-work) and are not shipped.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = {
    # 6.1 M parameters with 256 BPE pieces: pretrained.pt about 24.5 MB (float32)
    # 4 stacks at frame rates 50/25/12.5/25 Hz (after the 2x embed), final 4x subsampled output
    "feature_dim": 80,
    "downsampling_factor": "1,2,4,2",
    "num_encoder_layers": "2,2,2,2",
    "encoder_dim": "128,144,160,144",
    "encoder_unmasked_dim": "128,128,128,128",
    "feedforward_dim": "320,384,448,384",
    "num_heads": "4,4,4,4",
    "query_head_dim": "24",
    "pos_head_dim": "4",
    "value_head_dim": "12",
    "pos_dim": 48,
    "cnn_module_kernel": "31,15,15,15",
    "causal": False,
    "chunk_size": "-1",
    "left_context_frames": "-1",
    "use_transducer": False,
    "use_ctc": True,
    "use_attention_decoder": True,
    "attention_decoder_dim": 160,
    "attention_decoder_num_layers": 2,
    "attention_decoder_attention_dim": 160,
    "attention_decoder_num_heads": 4,
    "attention_decoder_feedforward_dim": 640,
    "blank_id": 0,
    "sos_id": 1,
    "eos_id": 1,
    "ignore_id": -1,
    "label_smoothing": 0.1,
}
CONFIGS = {"demo-ctc-aed": DEMO_CONFIG}


def resolve_config(spec: str) -> dict:
    from model.config import PRESETS

    if spec in CONFIGS:
        return dict(CONFIGS[spec])
    if spec in PRESETS:
        return dict(PRESETS[spec])
    if spec.lstrip().startswith("{"):
        return json.loads(spec)
    return json.loads(Path(spec).read_text())


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", required=True, help="directory with cuts_{train,dev,test}.jsonl.gz")
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--work-dir", default=None, help="checkpoints during training (default <out>-work)")
    p.add_argument("--config", default="demo-ctc-aed", help="demo-ctc-aed, a preset name, a JSON file or a JSON string")
    p.add_argument("--name", default="zipscribe-demo-synthetic")
    p.add_argument("--minutes", type=float, default=None, help="training time budget (wall minutes of training steps)")
    p.add_argument("--steps", type=int, default=100000, help="maximum training steps")
    p.add_argument("--batch-seconds", type=float, default=60.0, help="padded audio seconds per batch")
    p.add_argument("--lr", type=float, default=2.5e-3, help="peak learning rate (AdamW)")
    p.add_argument("--warmup-steps", type=int, default=200)
    p.add_argument("--ctc-scale", type=float, default=0.4)
    p.add_argument("--att-scale", type=float, default=0.6)
    p.add_argument("--no-spec-augment", action="store_true")
    p.add_argument("--spec-augment-after", type=int, default=600, help="steps before SpecAugment starts")
    p.add_argument("--vocab-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", choices=("auto", "bfloat16-embed", "float32", "bfloat16"), default="auto",
                   help="auto (default): bfloat16-embed where the CPU computes bfloat16 natively (AVX-512 BF16 / "
                        "AMX), else float32 (emulated bf16 makes steps ~5x slower on AVX2-only CPUs); "
                        "bfloat16-embed: the convolutional front end under bfloat16 autocast, the rest float32 "
                        "(fastest on a CPU with AMX; what the shipped demo model was trained with); bfloat16: the "
                        "whole forward (for a GPU); float32. Weights, optimizer and losses are float32 in every case")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=150)
    p.add_argument("--average-last", type=int, default=4)
    p.add_argument("--max-train-utts", type=int, default=None, help="use only the first N train cuts")
    p.add_argument("--max-eval-utts", type=int, default=None, help="evaluate on only the first N dev / test cuts")
    p.add_argument("--beam", type=int, default=8)
    p.add_argument("--log-every", type=int, default=20)
    p.add_argument("--skip-eval", action="store_true", help="no dev/test decoding (tests)")
    p.add_argument("--everyday", default=None, metavar="FILE",
                   help="a held-out list of sentences (one per line, # comments) spoken with espeak-ng in "
                        "--everyday-styles of the corpus's speech styles and scored like dev and test (default: "
                        "tests/data/everyday_en.txt, the everyday-English check; 'none' to skip)")
    p.add_argument("--everyday-styles", type=int, default=3)
    p.add_argument("--rewrite-card", action="store_true",
                   help="no training: score the model already in --out on the --everyday list (dev and test scores "
                        "are kept from its train_log.json) and write MODEL_CARD.md again; pass the training run's "
                        "other options so that the card states them")
    p.add_argument("--beam-sweep", default=None, metavar="B1,B2,...",
                   help="with --rewrite-card: score dev with attention rescoring at each of these n-best sizes (the "
                        "attention_scale of config.json), keep the best in config.json's decoding, and score dev and "
                        "test again with it; the list bounds the decoding cost, which grows with the beam")
    p.add_argument("--lm-scales", default=None, metavar="S1,S2,...",
                   help="with --rewrite-card: write the word LM lm.arpa.gz into --out (a bigram over the corpus's "
                        "train text and every WordNet / fortune sentence not in dev, test or a held-out list; "
                        "model/training/word_lm.py), score dev with attention rescoring at each LM scale, keep the best "
                        "as config.json's lm_scale, and score dev, test and the everyday list with it")
    p.add_argument("--search-lm-grid", default=None, metavar="S1,S2,..:B1,B2,..",
                   help="with --rewrite-card, for a directory with a word LM: score dev with the LM also fused into the "
                        "CTC prefix search at every (search_lm_scale, word_bonus) pair of the two lists, keep the best "
                        "in config.json's decoding, and score dev, test and the everyday list with it (the rows "
                        "without fusion stay as 'attention-rescoring, LM in rescoring only')")
    p.add_argument("--curve-checkpoints", default=None, metavar="DIR",
                   help="with --rewrite-card: a directory of checkpoint-<step>.pt files kept during training; up to 8 "
                        "of them, evenly spaced, are scored on the first 100 dev sentences and the card gets the curve")
    args = p.parse_args(argv)
    if args.everyday is None:
        from model.training.corpus import EVERYDAY_LIST

        args.everyday = str(EVERYDAY_LIST) if EVERYDAY_LIST.is_file() else "none"
    return args


def score_everyday(out: Path, args, scorer, decoding: dict) -> dict:
    """WER per decoding method on the --everyday list spoken in --everyday-styles styles, with the
    ``decoding`` settings; {} when skipped (with a word LM, attention rescoring is also scored
    without it, ``attention-rescoring, no LM``, and with a fused search also with the LM in the
    rescoring only, ``attention-rescoring, LM in rescoring only``)."""
    import tempfile

    from model.training.corpus import read_sentence_list
    from model.training.evaluation import evaluate, spoken_sentences

    if args.everyday == "none":
        return {}
    texts = read_sentence_list(Path(args.everyday))
    with tempfile.TemporaryDirectory(prefix="everyday-") as tmp:
        utts = spoken_sentences(texts, tmp, styles=args.everyday_styles, seed=0)
        beam, attention_scale = decoding["beam"], decoding["attention_scale"]
        lm_scale, fusion = decoding.get("lm_scale", 0.0), decoding.get("search_lm_scale", 0.0)
        wer = evaluate(out, utts, scorer, attention_scale=attention_scale, beam=beam, lm_scale=lm_scale,
                       search_lm_scale=fusion, word_bonus=decoding.get("word_bonus", 0.0))
        if lm_scale:
            wer[NO_LM] = evaluate(out, utts, scorer, methods=("attention-rescoring",), attention_scale=attention_scale,
                                  beam=beam)["attention-rescoring"]
        if fusion:
            wer[NO_FUSION] = evaluate(out, utts, scorer, methods=("attention-rescoring",), lm_scale=lm_scale,
                                      attention_scale=attention_scale, beam=beam)["attention-rescoring"]
    listed = Path(args.everyday).resolve()
    name = str(listed.relative_to(REPO)) if listed.is_relative_to(REPO) else str(listed)
    return {"list": name, "sentences": len(texts), "styles": args.everyday_styles, "wer": wer}


def score_curve(out: Path, checkpoints: Path, utts, scorer, beam: int, attention_scale: float) -> list[dict]:
    """Dev WER (ctc-greedy, attention-rescoring) of up to 8 evenly spaced single checkpoints."""
    import shutil
    import tempfile

    from model.training.evaluation import evaluate

    found = sorted(checkpoints.glob("checkpoint-*.pt"), key=lambda p: int(p.stem.split("-")[1]))
    if len(found) > 8:
        found = [found[round(i * (len(found) - 1) / 7)] for i in range(8)]
    curve = []
    for ckpt in found:
        with tempfile.TemporaryDirectory(prefix="curve-") as tmp:
            for name in ("config.json", "bpe.model"):
                shutil.copy(out / name, Path(tmp) / name)
            (Path(tmp) / "pretrained.pt").symlink_to(ckpt.resolve())
            wer = evaluate(tmp, utts, scorer, methods=("ctc-greedy", "attention-rescoring"),
                           attention_scale=attention_scale, beam=beam)
        curve.append({"step": int(ckpt.stem.split("-")[1]), **wer})
        print(f"curve: {curve[-1]}", file=sys.stderr, flush=True)
    return curve


#: the WER tables' row for attention rescoring without the word LM (the default row has it)
NO_LM = "attention-rescoring, no LM"
NO_FUSION = "attention-rescoring, LM in rescoring only"


def lm_sentences(corpus: Path, held_out: list[str]) -> list[str]:
    """The word LM's text: the corpus's train sentences and the natural sources' sentences, less
    every dev and test sentence and every sentence of the held-out lists (the LM scale is chosen
    on dev, and test and the everyday list measure it)."""
    from model.training.corpus import read_sentence_list
    from model.training.text_sources import load_natural_text

    banned = set()
    for split in ("dev", "test"):
        banned |= set((corpus / f"text_{split}.txt").read_text().splitlines())
    for listed in held_out:
        banned |= set(read_sentence_list(Path(listed)))
    train = [s for s in (corpus / "text_train.txt").read_text().splitlines() if s.strip()]
    natural = load_natural_text(30_000).all
    return [s for s in (*train, *natural) if s not in banned]


def add_word_lm(out: Path, corpus: Path, args, dev_utts, decoding: dict, results: dict) -> None:
    """--lm-scales: lm.arpa.gz written into ``out``, its scale chosen on dev (config.json's lm_scale)."""
    from model.training.evaluation import sweep_lm_scale
    from model.training.word_lm import write_bigram_lm
    from pipeline.report.wer import corpus_wer

    held = [args.everyday] if args.everyday != "none" else []
    info = json.loads((corpus / "corpus.json").read_text()).get("options", {}) if (corpus / "corpus.json").is_file() else {}
    held += [h if Path(h).is_absolute() else str(REPO / h) for h in info.get("held_out") or []]
    held = sorted({str(Path(h).resolve()) for h in held})
    facts = write_bigram_lm(out / "lm.arpa.gz", lm_sentences(corpus, held))
    print(f"word LM: {facts}", file=sys.stderr, flush=True)
    scales = sorted({float(x) for x in args.lm_scales.split(",")} | {0.0})
    best, table = sweep_lm_scale(out, dev_utts, corpus_wer, scales, decoding["attention_scale"], beam=decoding["beam"])
    print(f"lm_scale sweep on dev: {table} -> {best}", file=sys.stderr, flush=True)
    decoding["lm_scale"] = best
    results["lm"] = {**facts, "held_out": [Path(h).name for h in held]}
    results["lm_sweep"] = {f"{k:g}": round(v, 2) for k, v in table.items()}


def parse_grid(spec: str) -> list[tuple[float, float]]:
    """``"0.1,0.3:1,2"`` -> every (scale, bonus) pair of the two lists."""
    scales, sep, bonuses = spec.partition(":")
    try:
        pairs = [(float(a), float(b)) for a in scales.split(",") for b in (bonuses.split(",") if sep else ["0"])]
    except ValueError:
        raise SystemExit(f"--search-lm-grid: expected S1,S2,..:B1,B2,.. (numbers), got {spec!r}") from None
    if not pairs or any(a < 0 for a, _ in pairs):
        raise SystemExit(f"--search-lm-grid: scales must be >= 0, got {spec!r}")
    return pairs


def add_search_lm(out: Path, corpus: Path, args, dev_utts, config: dict, results: dict) -> None:
    """--search-lm-grid: the fused search's (scale, bonus) chosen on dev into config.json; dev and test
    scored again with it (the previous rescoring figures kept as ``NO_FUSION``)."""
    from model.training.data import load_manifest
    from model.training.evaluation import evaluate, sweep_search_lm
    from pipeline.report.wer import corpus_wer

    decoding = config["decoding"]
    (scale, bonus), table = sweep_search_lm(out, dev_utts, corpus_wer, parse_grid(args.search_lm_grid), decoding)
    print(f"search LM sweep on dev: {table} -> {scale:g}/{bonus:g}", file=sys.stderr, flush=True)
    decoding["search_lm_scale"], decoding["word_bonus"] = scale, bonus
    (out / "config.json").write_text(json.dumps(config, indent=1))
    results["search_lm_sweep"] = table
    test = load_manifest(corpus / "cuts_test.jsonl.gz")[: args.max_eval_utts]
    for split, utts in (("dev", dev_utts), ("test", test)):
        before = results[split].get(NO_FUSION, results[split]["attention-rescoring"])
        fused = evaluate(out, utts, corpus_wer, methods=("attention-rescoring",), beam=decoding["beam"],
                         attention_scale=decoding["attention_scale"], lm_scale=decoding.get("lm_scale", 0.0),
                         search_lm_scale=scale, word_bonus=bonus)
        results[split] = {**{k: v for k, v in results[split].items() if k != NO_FUSION}, **fused, NO_FUSION: before}


def rewrite_card(args, argv) -> dict:
    """--rewrite-card: the everyday score of a trained model directory, and its card written again."""
    from model.training.data import load_manifest
    from pipeline.report.wer import corpus_wer

    out, corpus = Path(args.out), Path(args.corpus)
    logged = json.loads((out / "train_log.json").read_text())
    config = json.loads((out / "config.json").read_text())
    decoding = config["decoding"]
    results = {k: v for k, v in logged.items() if k != "log"}
    all_dev = load_manifest(corpus / "cuts_dev.jsonl.gz")
    if args.beam_sweep:
        from model.training.evaluation import evaluate

        if results.get("curve"):
            results.setdefault("curve_beam", decoding["beam"])  # the curve stays as it was scored
        beams = sorted({int(b) for b in args.beam_sweep.split(",")})
        dev_utts, scale, sweep, rescored = all_dev[: args.max_eval_utts], decoding["attention_scale"], {}, {}
        for beam in beams:
            started = time.perf_counter()
            rescored[beam] = evaluate(out, dev_utts, corpus_wer, methods=("attention-rescoring",),
                                      attention_scale=scale, beam=beam)["attention-rescoring"]
            sweep[str(beam)] = {"wer": round(rescored[beam], 2), "seconds": round(time.perf_counter() - started, 1)}
            print(f"beam {beam}: dev WER {rescored[beam]:.2f} ({sweep[str(beam)]['seconds']} s)", file=sys.stderr,
                  flush=True)
        decoding["beam"] = min(beams, key=lambda b: (sweep[str(b)]["wer"], b))
        (out / "config.json").write_text(json.dumps(config, indent=1))
        results["beam_sweep"] = sweep
        # dev's rescoring score at the chosen beam is the sweep's; the CTC methods are scored again
        results["dev"] = {**evaluate(out, dev_utts, corpus_wer, methods=("ctc-greedy", "ctc-beam"),
                                     attention_scale=scale, beam=decoding["beam"]),
                          "attention-rescoring": rescored[decoding["beam"]]}
        test = load_manifest(corpus / "cuts_test.jsonl.gz")[: args.max_eval_utts]
        results["test"] = evaluate(out, test, corpus_wer, attention_scale=scale, beam=decoding["beam"])
    if args.lm_scales:
        from model.training.evaluation import evaluate

        dev_utts = all_dev[: args.max_eval_utts]
        add_word_lm(out, corpus, args, dev_utts, decoding, results)
        for key in ("search_lm_scale", "word_bonus"):  # tuned against the old LM scale: --search-lm-grid again
            decoding.pop(key, None)
        (out / "config.json").write_text(json.dumps(config, indent=1))
        test = load_manifest(corpus / "cuts_test.jsonl.gz")[: args.max_eval_utts]
        for split, utts in (("dev", dev_utts), ("test", test)):
            before = results[split].get(NO_LM, results[split]["attention-rescoring"])
            with_lm = evaluate(out, utts, corpus_wer, methods=("attention-rescoring",), beam=decoding["beam"],
                               attention_scale=decoding["attention_scale"], lm_scale=decoding["lm_scale"])
            # rescoring without fusion was just scored: a fused run's figures are redone by --search-lm-grid
            results[split] = {**{k: v for k, v in results[split].items() if k not in (NO_LM, NO_FUSION)}, **with_lm,
                              NO_LM: before}
    if args.search_lm_grid:
        add_search_lm(out, corpus, args, all_dev[: args.max_eval_utts], config, results)
    results["everyday"] = score_everyday(out, args, corpus_wer, decoding)
    if args.beam_sweep or args.lm_scales or args.search_lm_grid:
        results["decoding_command"] = "python jobs/train_demo.py " + " ".join(
            shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    if args.curve_checkpoints:
        results["curve"] = score_curve(out, Path(args.curve_checkpoints), all_dev[:100], corpus_wer, decoding["beam"],
                                       decoding["attention_scale"])
    (out / "train_log.json").write_text(json.dumps({"log": logged.get("log", []), **results}, indent=1))
    train_utts = load_manifest(corpus / "cuts_train.jsonl.gz")[: args.max_train_utts]
    dev_utts = all_dev[: args.max_eval_utts]
    test_utts = load_manifest(corpus / "cuts_test.jsonl.gz")[: args.max_eval_utts]
    if args.precision == "auto":
        from model.training.trainer import default_cpu_precision

        args.precision = default_cpu_precision()  # as the training run resolved it on this machine
    train_argv, skip = [], False
    for a in argv if argv is not None else sys.argv[1:]:  # the training command, less the rewrite's own options
        if skip or a == "--rewrite-card":
            skip = False
            continue
        if a in ("--curve-checkpoints", "--beam-sweep", "--lm-scales", "--search-lm-grid"):
            skip = True
            continue
        if not a.startswith(("--curve-checkpoints=", "--beam-sweep=", "--lm-scales=", "--search-lm-grid=")):
            train_argv.append(a)
    write_model_card(out, args, corpus, train_utts, dev_utts, test_utts, results["parameters"], results, decoding,
                     train_argv)
    return results


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.rewrite_card:
        return rewrite_card(args, argv)

    from model import AsrModel
    from model.tokenizer import Tokenizer, train_bpe
    from model.training.data import CutDataset, load_manifest
    from model.training.evaluation import evaluate, sweep_attention_scale
    from model.training.trainer import TrainConfig, Trainer, default_cpu_precision, init_for_training
    from pipeline.report.wer import corpus_wer  # WER scored exactly as transcript rows and reports score it

    if args.precision == "auto":
        args.precision = default_cpu_precision()

    torch.set_num_threads(args.threads)
    # Subnormal floats appear in the activations and gradients within a few hundred steps and
    # make every step ~30 % slower on x86 CPUs (measured at step 300); flush them to zero.
    torch.set_flush_denormal(True)
    torch.manual_seed(args.seed)
    corpus = Path(args.corpus)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work_dir) if args.work_dir else out.parent / (out.name + "-work")
    log_lines: list[str] = []

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)
        log_lines.append(msg)

    t_start = time.time()
    train_utts = load_manifest(corpus / "cuts_train.jsonl.gz")[: args.max_train_utts]
    dev_utts = load_manifest(corpus / "cuts_dev.jsonl.gz")[: args.max_eval_utts]
    test_utts = load_manifest(corpus / "cuts_test.jsonl.gz")[: args.max_eval_utts]
    train_texts = {u.text for u in train_utts}
    overlap = sum(u.text in train_texts for u in test_utts)
    log(f"train {len(train_utts)} cuts ({sum(u.duration for u in train_utts) / 3600:.2f} h), dev {len(dev_utts)}, "
        f"test {len(test_utts)}; test sentences also in train: {overlap}")

    train_bpe([u.text for u in train_utts], out, args.vocab_size)
    tokenizer = Tokenizer.from_dir(out)
    config = resolve_config(args.config)
    config["vocab_size"] = tokenizer.vocab_size
    config["blank_id"], config["sos_id"], config["eos_id"] = tokenizer.blank_id, tokenizer.sos_id, tokenizer.eos_id
    model = AsrModel(**config)
    touched = init_for_training(model, seed=args.seed)
    log(f"initialised {touched} encoder projections with the reference's small initial scales")
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {n_params / 1e6:.2f} M parameters, vocab {tokenizer.vocab_size}")

    train_set = CutDataset(train_utts, tokenizer)
    train_set.precompute(log=log)
    cfg = TrainConfig(
        max_steps=args.steps, time_budget_s=args.minutes * 60 if args.minutes else None, batch_seconds=args.batch_seconds,
        lr=args.lr, warmup_steps=args.warmup_steps, ctc_scale=args.ctc_scale, att_scale=args.att_scale,
        spec_augment=not args.no_spec_augment, spec_augment_after=args.spec_augment_after, seed=args.seed,
        log_every=args.log_every, checkpoint_every=args.checkpoint_every, average_last=args.average_last,
        precision=args.precision,
    )
    trainer = Trainer(model, train_set, cfg, work, log=log)
    state = trainer.run()
    final = trainer.final_state_dict()
    torch.save({"model": final}, out / "pretrained.pt")
    frames_per_s = state.frames / max(state.elapsed_s, 1e-9)
    log(f"trained {state.step} steps ({state.epoch} full epochs) in {state.elapsed_s / 60:.1f} min: "
        f"{frames_per_s:.0f} frames/s = {frames_per_s / 100:.1f} audio s/s")

    # max_segment_seconds: long inputs (windows of long recordings) are searched and rescored in
    # pieces of at most 6 s, about the longest training sentence (model.decoding.segments)
    decoding = {"method": "attention-rescoring", "beam": args.beam, "attention_scale": 1.0, "max_segment_seconds": 6.0}
    (out / "config.json").write_text(json.dumps({"name": args.name, **config, "decoding": decoding}, indent=1))
    results: dict = {"steps": state.step, "epochs": state.epoch, "train_minutes": round(state.elapsed_s / 60, 2),
                     "frames_per_second": round(frames_per_s, 1), "parameters": n_params,
                     "history": state.history[-50:]}
    if not args.skip_eval and dev_utts:
        scale, table = sweep_attention_scale(out, dev_utts, corpus_wer, beam=args.beam)
        decoding["attention_scale"] = scale
        (out / "config.json").write_text(json.dumps({"name": args.name, **config, "decoding": decoding}, indent=1))
        log(f"attention_scale sweep on dev: {table} -> {scale}")
        results["scale_sweep"] = {str(k): v for k, v in table.items()}
        results["dev"] = evaluate(out, dev_utts, corpus_wer, attention_scale=scale, beam=args.beam)
        results["test"] = evaluate(out, test_utts, corpus_wer, attention_scale=scale, beam=args.beam) if test_utts else {}
        log(f"dev WER {results['dev']}  test WER {results['test']}")
        results["everyday"] = score_everyday(out, args, corpus_wer, {**decoding, "beam": args.beam})
        if results["everyday"]:
            log(f"everyday WER {results['everyday']['wer']}")
    results["total_minutes"] = round((time.time() - t_start) / 60, 2)
    (out / "train_log.json").write_text(json.dumps({"log": log_lines, **results}, indent=1))
    write_model_card(out, args, corpus, train_utts, dev_utts, test_utts, n_params, results, decoding, argv)
    return results


def _text_description(info: dict) -> str:
    if info.get("text", "templates") == "natural":
        return ("natural English text: WordNet example sentences and definitions and fortune-file sentences (65 % of the "
                "sentences; every word among the 30,000 most frequent English words), the rest the template grammar and "
                f"random sequences of the {info.get('vocabulary', 10000):,} most frequent English words (wordfreq; every "
                "one of them dealt once before any repeats)")
    return "template-grammar and random-word English sentences over a bounded word list"


def _corpus_command(info: dict) -> str:
    cmd = (f"python jobs/make_synthetic_corpus.py --out {info.get('out', 'data/synth')} --seed {info.get('seed', 0)} "
           f"--train-hours {info.get('train_hours', '?')} --dev-utts {info.get('dev_utts', '?')} "
           f"--test-utts {info.get('test_utts', '?')}")
    if info.get("text", "templates") == "natural":
        cmd += f" --text natural --vocabulary {info.get('vocabulary', 10000)}"
    else:
        cmd += f" --text templates --open-words {info.get('open_words', '?')}"
    return cmd + (f" --random-fraction {info.get('random_fraction', 0.2)} "
                  f"--multi-sentence-fraction {info.get('multi_sentence_fraction', 0)}")


def write_model_card(out: Path, args, corpus: Path, train_utts, dev_utts, test_utts, n_params: int, results: dict,
                     decoding: dict, argv) -> None:
    info = {}
    if (corpus / "corpus.json").is_file():
        info = json.loads((corpus / "corpus.json").read_text()).get("options", {})
    cmd = "python jobs/train_demo.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    size_mb = (out / "pretrained.pt").stat().st_size / 1e6
    lines = [
        f"# {args.name}",
        "",
        "A small Zipformer CTC + attention-decoder model trained from scratch on **synthetic** English speech "
        "(espeak-ng voices). It is a demo of the zipscribe pipeline, not a general-purpose recogniser: "
        "expect high error rates on natural human speech.",
        "",
        "## Model",
        f"- `model.AsrModel` (config.json), {n_params / 1e6:.2f} M parameters, checkpoint {size_mb:.1f} MB",
        f"- BPE vocabulary {args.vocab_size} pieces (sentencepiece, trained on the train text only; `<blk>`=0, `<sos/eos>`=1, `<unk>`=2)",
        f"- default decoding: {decoding['method']}, beam {decoding['beam']}, attention_scale {decoding['attention_scale']} (chosen on dev"
        + ("" if not results.get("beam_sweep") else "; rescoring WER on dev by beam: " + ", ".join(
            f"{b}: {v['wer']:.2f} % in {v['seconds']:g} s" for b, v in results["beam_sweep"].items())) + "); "
        f"inputs over {decoding['max_segment_seconds']:g} s are searched and rescored in segments of at most that "
        "(`max_segment_seconds`, for windows of long recordings; the WER below decodes every sentence whole)",
    ]
    if results.get("decoding_command"):
        lines.append(f"- decoding settings chosen on dev after training: `{results['decoding_command']}`")
    lm = results.get("lm")
    if lm and decoding.get("lm_scale"):
        lines.append(
            f"- word LM `lm.arpa.gz` ({lm['bytes'] / 1e6:.2f} MB): a bigram (absolute discounting, D {lm['discount']}, "
            f"pairs seen >= {lm['min_count']} times) over {lm['sentences']:,} sentences ({lm['words']:,} words: the train "
            "text and every WordNet example / definition and fortune sentence not in dev, test or "
            f"{', '.join(lm['held_out']) or 'a held-out list'}), backed by the {lm['vocabulary_size']:,} most frequent "
            f"English words' frequencies (wordfreq); {lm['unigrams']:,} unigrams, {lm['bigrams']:,} bigrams "
            "(`model/training/word_lm.py`). Attention rescoring adds `lm_scale` x its log-probability to each "
            f"n-best entry; lm_scale {decoding['lm_scale']:g} chosen on dev (rescoring WER by scale: "
            + ", ".join(f"{k}: {v:.2f} %" for k, v in results["lm_sweep"].items()) + ")")
    if lm and decoding.get("search_lm_scale") and results.get("search_lm_sweep"):
        lines.append(
            f"- the same LM inside the CTC prefix search (shallow fusion, `model/decoding/lm_fusion.py`): prefixes are "
            f"ranked by CTC log-prob + search_lm_scale x LM log-prob of their words + word_bonus per word, and while a "
            "word is being spelled + search_lm_scale x its look-ahead (the best unigram of an LM word with that "
            f"beginning), so the n-best that rescoring chooses from holds what the LM finds likely; search_lm_scale "
            f"{decoding['search_lm_scale']:g}, word_bonus {decoding['word_bonus']:g} chosen on dev (rescoring WER and "
            "decoding seconds by scale/bonus: "
            + ", ".join(f"{k}: {v['wer']:.2f} % in {v['seconds']:.1f} s" for k, v in results["search_lm_sweep"].items())
            + ")")
    lines += [
        "",
        "## Data",
        f"- generated by `jobs/make_synthetic_corpus.py` (seed {info.get('seed', '?')}): {_text_description(info)}; "
        "numbers, dates and times as words; espeak-ng English voices and variants, random rate / pitch, light noise and "
        "gain changes; a fraction of the train utterances say 2-4 sentences in a row (dev and test: one sentence each)",
        f"- corpus command: `{_corpus_command(info)}` "
        f"({len(set(w for u in train_utts for w in u.text.split()))} distinct words in train)",
        f"- train: {len(train_utts)} utterances, {sum(u.duration for u in train_utts) / 3600:.2f} h; dev: {len(dev_utts)}; "
        f"test: {len(test_utts)} (test sentences never occur in train; no split says a sentence of the held-out lists "
        f"{', '.join(Path(p).name for p in info.get('held_out') or []) or '(none)'})",
        "",
        "## Training",
        f"- command: `{cmd}`",
        f"- {results['steps']} steps ({results['epochs']} full epochs), {results['train_minutes']} min of training "
        f"({results['frames_per_second']} feature frames/s), {results['total_minutes']} min in all, "
        f"{args.threads} CPU threads, {args.precision} forward pass",
        "- encoder residual-branch projections initialised small as in the reference (`model.training.trainer.init_for_training`)",
        f"- loss: {args.ctc_scale} x CTC + {args.att_scale} x attention (label smoothing {0.1}), AdamW lr {args.lr}, "
        f"warmup {args.warmup_steps} steps then cosine decay, "
        f"{'no SpecAugment' if args.no_spec_augment else f'SpecAugment after step {args.spec_augment_after}'}, clip 5, average of the last {args.average_last} checkpoints",
        "",
    ]
    everyday = results.get("everyday") or {}
    if "dev" in results:
        lines += ["## WER (%)", ""]
        if everyday:
            lines += ["| decoding | dev | test | everyday |", "|---|---|---|---|"]
        else:
            lines += ["| decoding | dev | test |", "|---|---|---|"]
        for m in results["dev"]:
            row = f"| {m} | {results['dev'][m]:.2f} | {results['test'].get(m, float('nan')):.2f} |"
            if everyday:
                row += f" {everyday['wer'].get(m, float('nan')):.2f} |"
            lines.append(row)
        lines += ["", "Measured with `model.recognizer.Recognizer.from_dir` on this directory, scored as the pipeline's reports "
                  "score (english normaliser, jiwer alignment; `pipeline.report.wer.corpus_wer`)."]
        if everyday:
            vocab = {w for u in train_utts for w in u.text.split()}
            from model.training.corpus import read_sentence_list

            listed = Path(everyday["list"])
            listed = listed if listed.is_absolute() else REPO / listed
            words = [w for t in read_sentence_list(listed) for w in t.split()]
            unseen = 100.0 * sum(w not in vocab for w in words) / max(1, len(words))
            lines += ["", f"everyday: `{Path(everyday['list']).name}`, {everyday['sentences']} sentences written by hand "
                      f"for this check (home, work, travel, weather, food, health, numbers), never in any split, each spoken "
                      f"in {everyday['styles']} speech styles of the corpus (`model.training.evaluation.spoken_sentences`, "
                      f"seed 0); {unseen:.1f} % of its words never occur in the train text. Reproduce with "
                      f"`python bench/everyday_wer.py --styles {everyday['styles']}`."]
    if results.get("curve"):
        beam = results.get("curve_beam", decoding["beam"])
        lines += ["", "## Curve", "", f"Single checkpoints (not averaged) on the first 100 dev sentences, beam {beam}, WER %:", "",
                  "| step | ctc-greedy | attention-rescoring |", "|---|---|---|"]
        lines += [f"| {c['step']} | {c['ctc-greedy']:.2f} | {c['attention-rescoring']:.2f} |" for c in results["curve"]]
    (out / "MODEL_CARD.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
