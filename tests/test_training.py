"""Synthetic corpus generator, sentence generator and demo training (jobs/train_demo.py) at tiny scale."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from model.training.corpus import SentenceGenerator, load_word_list, ordinal_words, time_words, year_words

REPO = Path(__file__).resolve().parent.parent
needs_words = pytest.mark.needs_tools(word_list=True)
needs_audio = pytest.mark.needs_tools("espeak-ng", "sox")

TINY_TRAIN_CONFIG = {
    "downsampling_factor": "1,2", "num_encoder_layers": "1,1", "encoder_dim": "64,96", "encoder_unmasked_dim": "48,48",
    "num_heads": "2,2", "query_head_dim": 16, "value_head_dim": 8, "pos_head_dim": 4, "pos_dim": 16,
    "feedforward_dim": "128,192", "cnn_module_kernel": "15,15", "use_ctc": True, "use_transducer": False,
    "use_attention_decoder": True, "attention_decoder_dim": 64, "attention_decoder_num_layers": 1,
    "attention_decoder_attention_dim": 64, "attention_decoder_num_heads": 2, "attention_decoder_feedforward_dim": 128,
}

NUMBER_WORDS = {"one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "twenty", "thirty",
                "hundred", "thousand", "first", "second", "third"}


def test_number_helpers():
    assert ordinal_words(3) == "third"
    assert ordinal_words(21) == "twenty first"
    assert ordinal_words(40) == "fortieth"
    assert year_words(1984) == "nineteen eighty four"
    assert year_words(2005) == "two thousand five"
    assert year_words(1906) == "nineteen oh six"
    assert time_words(7, 5) == "seven oh five in the morning"
    assert time_words(19, 30) == "seven thirty in the evening"


@needs_words
def test_sentence_generator_vocabulary_and_determinism():
    words = load_word_list()
    assert len(words) > 20000 and all(re.fullmatch(r"[a-z]+", w) for w in words[:1000])
    a = SentenceGenerator(seed=7, words=words).unique_sentences(20000)
    b = SentenceGenerator(seed=7, words=words).unique_sentences(20000)
    c = SentenceGenerator(seed=8, words=words).unique_sentences(200)
    assert a == b
    assert a[:200] != c
    assert len(set(a)) == 20000
    assert all(re.fullmatch(r"[a-z]+( [a-z]+)*", s) for s in a), "lowercase words and single spaces only"
    vocab = {w for s in a for w in s.split()}
    # the default bounded vocabulary: thousands of distinct words, all of them said many times
    assert 2000 <= len(vocab) <= 3000, len(vocab)
    wide = {w for s in SentenceGenerator(seed=7, words=words, open_words=None).unique_sentences(20000) for w in s.split()}
    assert len(wide) >= 10000, len(wide)
    with_numbers = [s for s in a if NUMBER_WORDS & set(s.split())]
    assert len(with_numbers) > 1000
    assert not any(ch.isdigit() for s in a for ch in s)
    lengths = [len(s.split()) for s in a]
    assert 3 <= np.mean(lengths) <= 14 and max(lengths) <= 30
    questions = [s for s in a if s.split()[0] in ("did", "where", "why", "when", "how", "is")]
    assert len(questions) > 500


@needs_words
def test_held_out_words_are_heard_in_train():
    """The corpus recipe's promise: test sentences are new, their words are not."""
    from collections import Counter

    from model.training.corpus import select_open_words

    words = load_word_list()
    chosen = select_open_words(words, 1500, seed=0)
    assert chosen == select_open_words(words, 1500, seed=0)
    assert chosen != select_open_words(words, 1500, seed=1)
    assert set(chosen) <= set(words) and 1500 <= len(chosen) <= 1900  # + the core words the list has
    gen = SentenceGenerator(seed=0, words=words)
    held_out = gen.unique_sentences(500)
    train = gen.unique_sentences(9000, exclude=held_out)
    assert not set(train) & set(held_out)
    counts = Counter(w for s in train for w in s.split())
    test_words = [w for s in held_out for w in s.split()]
    rare = sum(counts[w] <= 5 for w in test_words) / len(test_words)
    assert rare < 0.03, rare  # about 1.8 % at 9,000 train sentences
    assert sum(counts[w] == 0 for w in test_words) / len(test_words) < 0.005


def test_init_for_training_starts_branches_small():
    from model import AsrModel
    from model.training.trainer import BRANCH_OUT_SCALES, init_for_training

    cfg = dict(TINY_TRAIN_CONFIG, vocab_size=50)
    torch.manual_seed(0)
    model = AsrModel(**cfg)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    touched = init_for_training(model, seed=0)
    # per layer: out_proj of 3 feed-forward, 2 self-attention, 2 convolution and 1 non-linear attention
    # branch, plus linear_pos and the attention-weight in_proj = 10; two layers
    assert touched == 10 * 2
    after = {n: p.detach() for n, p in model.named_parameters()}
    ff = "encoder.encoders.0.layers.0.feed_forward1.out_proj.weight"
    attn = "encoder.encoders.0.layers.0.self_attn1.out_proj.weight"
    ratio_ff = float(after[ff].std() / before[ff].std())
    assert abs(ratio_ff - BRANCH_OUT_SCALES["feed_forward"]) < 0.03, ratio_ff
    assert abs(float(after[attn].std() / before[attn].std()) - BRANCH_OUT_SCALES["self_attn"]) < 0.02
    # modules that are not residual-branch outputs keep their initialisation
    for name in ("encoder.encoders.0.layers.0.feed_forward1.in_proj.weight", "ctc_output.1.weight",
                 "attention_decoder.decoder.output_layer.weight"):
        assert torch.equal(after[name], before[name]), name
    # a freshly initialised encoder is now close to its input path: branch outputs are small
    x = torch.randn(2, 120, 80)
    with torch.no_grad():
        ff_mod = model.encoder.encoders[0].layers[0].feed_forward1
        h = torch.randn(50, 2, ff_mod.in_proj.in_features)
        assert ff_mod(h).std() < 0.1 * h.std()
        out, lens = model.forward_encoder(x, torch.tensor([120, 100]))
    assert torch.isfinite(out).all() and lens.tolist() == [(120 - 7) // 2 // 2, (100 - 7) // 2 // 2]


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    cmd = [sys.executable, "jobs/make_synthetic_corpus.py", "--out", str(out), "--train-utts", "12", "--dev-utts", "3",
           "--test-utts", "3", "--jobs", "2", "--seed", "3", "--noise-prob", "0.5", "--gain-prob", "0.5",
           "--multi-sentence-fraction", "0.3"]
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, timeout=120)
    return out


@needs_audio
@needs_words
def test_corpus_manifests(tiny_corpus):
    from lhotse import CutSet

    texts = {}
    for split, n in (("train", None), ("dev", 3), ("test", 3)):
        cuts = CutSet.from_file(str(tiny_corpus / f"cuts_{split}.jsonl.gz")).to_eager()
        if n is None:  # 12 train sentences, some of them spoken several in a row
            n = len(cuts)
            assert 3 <= n < 12
        assert len(cuts) == n
        texts[split] = set()
        for cut in cuts:
            assert cut.sampling_rate == 16000 and cut.num_channels == 1
            assert 0.5 < cut.duration < (60 if split == "train" else 15)
            (sup,) = cut.supervisions
            assert sup.text and re.fullmatch(r"[a-z]+( [a-z]+)*", sup.text)
            assert sup.language == "English" and "+" in sup.speaker
            texts[split].add(sup.text)
            audio = cut.load_audio()
            assert audio.shape == (1, cut.num_samples) and np.abs(audio).max() > 0.01
            samples, sr = sf.read(cut.recording.sources[0].source)
            assert sr == 16000 and samples.ndim == 1
        assert len(texts[split]) == n
        lines = (tiny_corpus / f"text_{split}.txt").read_text().splitlines()
        assert set(lines) == texts[split]
    assert not texts["train"] & texts["test"]
    assert not texts["train"] & texts["dev"]
    assert not texts["dev"] & texts["test"]
    assert len({c.supervisions[0].speaker for c in CutSet.from_file(str(tiny_corpus / "cuts_train.jsonl.gz"))}) > 3


@needs_audio
@needs_words
def test_corpus_is_deterministic(tiny_corpus, tmp_path):
    sys.path.insert(0, str(REPO / "jobs"))
    try:
        import make_synthetic_corpus as msc
    finally:
        sys.path.remove(str(REPO / "jobs"))
    args = msc.parse_args(["--out", str(tmp_path), "--train-utts", "12", "--dev-utts", "3", "--test-utts", "3", "--seed", "3",
                           "--noise-prob", "0.5", "--gain-prob", "0.5", "--multi-sentence-fraction", "0.3"])
    plan = msc.plan(args)
    for split in ("train", "dev", "test"):
        assert [i["text"] for i in plan[split]] == (tiny_corpus / f"text_{split}.txt").read_text().splitlines()
    # the grouped train utterances say the 12 planned train sentences, each once, in order
    single = msc.plan(msc.parse_args(["--out", str(tmp_path), "--train-utts", "12", "--dev-utts", "3", "--test-utts", "3",
                                      "--seed", "3", "--multi-sentence-fraction", "0"]))
    assert len(single["train"]) == 12
    assert " ".join(i["text"] for i in plan["train"]) == " ".join(i["text"] for i in single["train"])
    assert [i["text"] for i in single["test"]] == [i["text"] for i in plan["test"]]
    other = msc.plan(msc.parse_args(["--out", str(tmp_path), "--train-utts", "12", "--seed", "4"]))
    assert [i["text"] for i in other["train"]] != [i["text"] for i in plan["train"]]


def test_sentence_groups_and_spoken_text():
    sys.path.insert(0, str(REPO / "jobs"))
    try:
        import make_synthetic_corpus as msc
    finally:
        sys.path.remove(str(REPO / "jobs"))
    sentences = [f"sentence number {i}" for i in range(200)]
    assert msc.group_sentences(sentences, 0.0, seed=1) == [[s] for s in sentences]
    groups = msc.group_sentences(sentences, 1.0, seed=1)
    assert [s for g in groups for s in g] == sentences
    assert all(2 <= len(g) <= 4 for g in groups[:-1])
    mixed = msc.group_sentences(sentences, 0.3, seed=1)
    assert [s for g in mixed for s in g] == sentences
    multi = sum(len(g) > 1 for g in mixed) / len(mixed)
    assert 0.15 < multi < 0.45, multi
    joiners = set()
    for k, g in enumerate(groups):
        spoken = msc.join_for_speech(g, seed=k)
        assert re.sub(r"[.,]", "", spoken) == " ".join(g)  # only punctuation is added
        joiners |= set(re.findall(r"\d([.,]?) sentence", spoken))
    assert joiners == {".", ",", ""}  # pauses, short pauses and sentences run together


def test_swoosh_training_gradient_is_exact():
    from model.layers import _SWOOSH_CONST, SWOOSH_SHIFT, shifted_swoosh_core, swoosh_l, swoosh_r

    v = torch.randn(64, dtype=torch.float64) * 4
    assert torch.autograd.gradcheck(shifted_swoosh_core, (v.clone().requires_grad_(),))
    # the custom backward gives the gradient of the plain formula, for both Swooshes
    for fn, name in ((swoosh_l, "SwooshL"), (swoosh_r, "SwooshR")):
        a = v.clone().requires_grad_()
        fn(a).sum().backward()
        b = v.clone().requires_grad_()
        out = shifted_swoosh_core(b - SWOOSH_SHIFT[name]) - _SWOOSH_CONST[name]
        out.sum().backward()
        assert torch.allclose(out, fn(v), atol=1e-12) and torch.allclose(a.grad, b.grad, atol=1e-12)


def test_bf16_front_end_trains_close_to_float32(tmp_path):
    """precision="bfloat16-embed": the convolutions run in bf16, the encoder output and the
    gradients stay close to float32, and the flag is not part of the checkpoint."""
    from model import AsrModel
    from model.training.data import CutDataset
    from model.training.trainer import TrainConfig, Trainer, compute_loss

    torch.manual_seed(0)
    model = AsrModel(**TINY_TRAIN_CONFIG, vocab_size=50)
    model.train()
    x, lens = torch.randn(3, 160, 80), torch.tensor([160, 140, 100])
    ys = [[5, 6, 7], [8, 9], [10, 11, 12, 13]]
    grads = {}
    for dtype in (None, torch.bfloat16):
        model.encoder_embed.conv_autocast_dtype = dtype
        model.zero_grad()
        parts = compute_loss(model, x, lens, ys)
        parts.loss.backward()
        grads[dtype] = (float(parts.loss.detach()), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    (l32, g32), (l16, g16) = grads[None], grads[torch.bfloat16]
    assert l16 != l32 and abs(l16 - l32) < 0.02 * abs(l32)  # really ran in bf16, and close
    assert float((g16 - g32).norm() / g32.norm()) < 0.05
    assert float(torch.nn.functional.cosine_similarity(g16, g32, dim=0)) > 0.99

    model.encoder_embed.conv_autocast_dtype = None
    empty = CutDataset([], tokenizer=type("T", (), {"encode": staticmethod(lambda t: [])})())
    Trainer(model, empty, TrainConfig(precision="bfloat16-embed"), tmp_path)
    assert model.encoder_embed.conv_autocast_dtype == torch.bfloat16
    assert not any("autocast" in k for k in model.state_dict())
    with pytest.raises(ValueError, match="precision"):
        Trainer(model, empty, TrainConfig(precision="fp8"), tmp_path)


def test_bucketed_batches_respect_budget():
    import random

    from model.training.data import bucketed_batches

    durations = [1.0 + (i * 37 % 100) / 10 for i in range(200)]
    batches = bucketed_batches(durations, 40.0, random.Random(0))
    assert sorted(i for b in batches for i in b) == list(range(200))
    for b in batches:
        assert len(b) == 1 or len(b) * max(durations[i] for i in b) <= 40.0
    assert bucketed_batches(durations, 40.0, random.Random(0)) == batches


def test_checkpoint_averaging(tmp_path):
    from model.training.trainer import average_checkpoints

    for k, v in enumerate((1.0, 3.0)):
        torch.save({"model": {"w": torch.full((2,), v), "n": torch.tensor(k)}}, tmp_path / f"c{k}.pt")
    avg = average_checkpoints([tmp_path / "c0.pt", tmp_path / "c1.pt"])
    assert torch.equal(avg["w"], torch.full((2,), 2.0)) and int(avg["n"]) == 1


@needs_audio
@needs_words
def test_train_demo_overfits_and_ships_a_loadable_model(tiny_corpus, tmp_path):
    out = tmp_path / "demo"
    cmd = [sys.executable, "jobs/train_demo.py", "--corpus", str(tiny_corpus), "--out", str(out), "--work-dir", str(tmp_path / "work"),
           "--config", json.dumps(TINY_TRAIN_CONFIG), "--steps", "30", "--max-train-utts", "4", "--batch-seconds", "100",
           "--warmup-steps", "5", "--lr", "3e-3", "--no-spec-augment", "--vocab-size", "100", "--checkpoint-every", "10",
           "--average-last", "2", "--log-every", "10", "--beam", "4"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]

    log = json.loads((out / "train_log.json").read_text())
    losses = [h["loss"] for h in log["history"]]
    assert len(losses) == 30
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses
    assert all(np.isfinite(losses))

    cfg = json.loads((out / "config.json").read_text())
    assert cfg["name"] and cfg["decoding"]["method"] == "attention-rescoring"
    assert float(cfg["decoding"]["attention_scale"]) > 0
    assert cfg["use_ctc"] and cfg["use_attention_decoder"] and not cfg["use_transducer"]
    card = (out / "MODEL_CARD.md").read_text()
    for needle in ("ctc-greedy", "ctc-beam", "attention-rescoring", "train: 4 utterances", "jobs/train_demo.py"):
        assert needle in card

    # the BPE model follows icefall's conventions and only saw train text
    from model.tokenizer import Tokenizer

    tok = Tokenizer.from_dir(out)
    assert (tok.blank_id, tok.sos_id, tok.unk_id) == (0, 1, 2)
    assert tok.vocab_size == cfg["vocab_size"]

    from model import load_checkpoint
    from model.recognizer import Recognizer

    # config.json's "name" / "decoding" are metadata that load_checkpoint sets aside
    model = load_checkpoint(out / "pretrained.pt", config=out / "config.json")
    assert not model.training and model.ctc_output is not None
    raw = torch.load(out / "pretrained.pt", weights_only=True)
    assert set(raw) == {"model"}

    rec = Recognizer.from_dir(out)
    assert rec.info.name == cfg["name"] and rec.decoding.attention_scale == cfg["decoding"]["attention_scale"]
    from lhotse import CutSet

    cuts = list(CutSet.from_file(str(tiny_corpus / "cuts_train.jsonl.gz")))[:4]
    transcripts, _ = rec.transcribe([c.load_audio()[0] for c in cuts])
    assert len(transcripts) == 4 and all(isinstance(t.text, str) for t in transcripts)
    # 30 steps on 4 utterances: the attention-rescored output should already share words with the references
    from pipeline.report.wer import corpus_wer

    assert corpus_wer([c.supervisions[0].text for c in cuts], [t.text for t in transcripts]) < 100.0

    # --rewrite-card --beam-sweep: the n-best size is chosen on dev and dev / test are scored again with it;
    # --lm-scales: a word LM is written beside the model and its scale chosen on dev
    again = subprocess.run(cmd + ["--rewrite-card", "--beam-sweep", "1,4", "--lm-scales", "0.5,2", "--everyday", "none"],
                           cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    sweep = json.loads((out / "train_log.json").read_text())["beam_sweep"]
    assert set(sweep) == {"1", "4"} and all(v["seconds"] > 0 for v in sweep.values())
    chosen = json.loads((out / "config.json").read_text())["decoding"]["beam"]
    assert sweep[str(chosen)]["wer"] == min(v["wer"] for v in sweep.values())
    card = (out / "MODEL_CARD.md").read_text()
    assert f"beam {chosen}, attention_scale" in card and "rescoring WER on dev by beam: 1:" in card
    assert "- command: `python jobs/train_demo.py" in card and "--beam-sweep" not in card.split("- command:")[1]
    assert "--lm-scales 0.5,2" in card  # ... and the rewrite that chose the decoding, on its own line
    log = json.loads((out / "train_log.json").read_text())
    lm_sweep = {float(k): v for k, v in log["lm_sweep"].items()}
    assert set(lm_sweep) == {0.0, 0.5, 2.0}
    lm_scale = json.loads((out / "config.json").read_text())["decoding"]["lm_scale"]
    assert lm_sweep[lm_scale] == min(lm_sweep.values())
    assert Recognizer.from_dir(out).lm is not None and log["lm"]["bigrams"] > 0
    if lm_scale:  # both rows: with the LM (the default decoding) and without it
        assert log["dev"]["attention-rescoring"] == pytest.approx(lm_sweep[lm_scale], abs=0.01)
        assert log["dev"]["attention-rescoring, no LM"] == pytest.approx(lm_sweep[0.0], abs=0.01)
        assert "| attention-rescoring, no LM |" in card
    # --search-lm-grid: the same LM fused into the prefix search, (scale, bonus) chosen on dev; the
    # rows before it stay as 'LM in rescoring only'
    fused = subprocess.run(cmd + ["--rewrite-card", "--search-lm-grid", "0,0.5:1,3", "--everyday", "none"],
                           cwd=REPO, capture_output=True, text=True, timeout=300)
    assert fused.returncode == 0, fused.stderr[-3000:]
    log = json.loads((out / "train_log.json").read_text())
    grid = log["search_lm_sweep"]
    assert set(grid) == {"0/0", "0.5/1", "0.5/3"} and all(v["seconds"] > 0 for v in grid.values())
    decoding = json.loads((out / "config.json").read_text())["decoding"]
    chosen = f"{decoding['search_lm_scale']:g}/{decoding['word_bonus']:g}"
    assert grid[chosen]["wer"] == min(v["wer"] for v in grid.values())
    assert grid["0/0"]["wer"] == pytest.approx(lm_sweep[lm_scale], abs=0.01)  # no fusion: the LM-rescoring figure
    assert log["dev"]["attention-rescoring"] == pytest.approx(grid[chosen]["wer"], abs=0.01)
    assert log["dev"]["attention-rescoring, LM in rescoring only"] == pytest.approx(lm_sweep[lm_scale], abs=0.01)
    card = (out / "MODEL_CARD.md").read_text()
    assert "| attention-rescoring, LM in rescoring only |" in card and "--search-lm-grid 0,0.5:1,3" in card
    if decoding["search_lm_scale"]:
        assert f"search_lm_scale {decoding['search_lm_scale']:g}, word_bonus" in card
        assert f"fusion={decoding['search_lm_scale']:g}" in Recognizer.from_dir(out).decoding.label()

    # the LM's text never holds a dev or test sentence (the scale is chosen on dev, test measures it)
    sys.path.insert(0, str(REPO / "jobs"))
    from train_demo import lm_sentences

    text = set(lm_sentences(tiny_corpus, []))
    for split in ("dev", "test"):
        held = set((tiny_corpus / f"text_{split}.txt").read_text().splitlines())
        assert held and not (held & text)
    assert set((tiny_corpus / "text_train.txt").read_text().splitlines()) - {""} <= text
