"""The word LM of attention rescoring: ARPA reading and back-off, the demo's bigram builder,
and the LM's place in decoding, model directories and run fingerprints."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import pytest
import torch

from helpers import make_tiny_model_dir
from model.training.word_lm import BigramCounts, bigram_arpa_lines
from model.word_lm import ArpaError, WordLM

LN10 = math.log(10.0)

#: a hand-written model: the expected scores below follow from the ARPA back-off rule alone
TINY_ARPA = """\\data\\
ngram 1=6
ngram 2=2

\\1-grams:
-99\t<s>\t-0.2
-1.0\ta\t-0.5
-0.7\tb
-0.5\t</s>
-3.0\t<unk>
-1.2\tc

\\2-grams:
-0.3\t<s> a
-0.1\ta b

\\end\\
"""


def write(path: Path, text: str) -> Path:
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


@pytest.mark.parametrize("name", ["lm.arpa", "lm.arpa.gz"])
def test_arpa_scores_follow_the_back_off_rule(tmp_path, name):
    lm = WordLM.from_arpa(write(tmp_path / name, TINY_ARPA))
    assert lm.order == 2
    # listed pairs: <s> a, a b; then </s> after b: b has no back-off weight -> P1(</s>)
    assert lm.score("a b") == pytest.approx((-0.3 - 0.1 - 0.5) * LN10)
    # b after <s>: bow(<s>) + P1(b); a word it does not list is <unk>; </s> after it: P1(</s>)
    assert lm.score("b zebra") == pytest.approx((-0.2 - 0.7 - 3.0 - 0.5) * LN10)
    # c after a: bow(a) + P1(c)
    assert lm.log10_prob("c", ("<s>", "a")) == pytest.approx(-0.5 - 1.2)
    assert lm.score("") == pytest.approx((-0.2 - 0.5) * LN10)


@pytest.mark.parametrize("broken, message", [
    (TINY_ARPA.replace("\\end\\\n", ""), "no \\end\\"),
    (TINY_ARPA.replace("ngram 2=2", "ngram 2=3"), "the header says 3 2-grams"),
    (TINY_ARPA.replace("-0.1\ta b", "x\ta b"), "not a number"),
    (TINY_ARPA.replace("-0.1\ta b", "-0.1\ta b c"), "expected a log-prob, 2 word(s)"),
])
def test_a_broken_arpa_file_is_one_clear_error(tmp_path, broken, message):
    with pytest.raises(ArpaError, match=message.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")):
        WordLM.from_arpa(write(tmp_path / "lm.arpa", broken))


SENTENCES = ["the cat sat", "the cat ran", "a dog sat", "the dog sat", "the cat sat", "a cat ran"]


def test_the_bigram_builder_gives_each_history_a_distribution(tmp_path):
    """Every history's probabilities over the vocabulary, </s> and <unk> sum to one, and only
    pairs seen min_count times are listed."""
    freqs = {"the": 0.05, "a": 0.04, "cat": 0.001, "dog": 0.002, "sat": 0.0005, "ran": 0.0007, "house": 0.0009}
    counts = BigramCounts.of(SENTENCES)
    lm = WordLM.from_arpa(write(tmp_path / "lm.arpa", "\n".join(bigram_arpa_lines(counts, freqs, min_count=2))))
    words = [w for (w,) in lm.probs[1] if w != "<s>"]
    assert set(words) == set(freqs) | {"</s>", "<unk>"}
    for history in ("<s>", "the", "cat", "a", "dog", "sat", "house"):
        total = sum(10 ** lm.log10_prob(w, (history,)) for w in words)
        assert total == pytest.approx(1.0, abs=1e-5), history
    listed = set(lm.probs[2])
    assert ("the", "cat") in listed and ("cat", "sat") in listed  # 3 and 2 times
    assert ("a", "dog") not in listed and ("dog", "sat") in listed  # once; twice
    # a seen pair beats the same word after a history that never had it
    assert lm.log10_prob("cat", ("the",)) > lm.log10_prob("cat", ("sat",))
    # a word of the vocabulary never in the text still gets its share; an unknown one <unk>'s
    assert lm.log10_prob("house", ("the",)) > lm.log10_prob("zebra", ("the",)) == lm.unk_log10 + lm.bows[1][("the",)]


def test_write_bigram_lm_is_reproducible_byte_for_byte(tmp_path):
    from model.training.word_lm import write_bigram_lm

    a = write_bigram_lm(tmp_path / "a.arpa.gz", SENTENCES * 3, vocabulary_size=500)
    b = write_bigram_lm(tmp_path / "b.arpa.gz", SENTENCES * 3, vocabulary_size=500)
    assert (tmp_path / "a.arpa.gz").read_bytes() == (tmp_path / "b.arpa.gz").read_bytes() and a == b
    assert a["sentences"] == 18 and a["unigrams"] >= 500 and a["bigrams"] > 0
    lm = WordLM.from_arpa(tmp_path / "a.arpa.gz")
    assert lm.score("the cat sat") > lm.score("sat cat the")  # the text's order is the likely one


def _encoded(model_dir: Path, seconds=(2.0, 3.1)):
    from model.recognizer import Recognizer

    rec = Recognizer.from_dir(model_dir)
    g = torch.Generator().manual_seed(0)
    waves = [0.1 * torch.randn(int(16000 * s), generator=g) for s in seconds]
    with torch.inference_mode():
        feats, lens = rec.features(waves)
        enc, enc_lens = rec.model.forward_encoder(feats, lens)
    return rec, enc, enc_lens


def test_the_lm_term_moves_the_rescoring_pick(tmp_path):
    """A scorer that favours one n-best entry by far makes it the pick; scale 0 leaves the
    pick as it was; lm_scale without a scorer is an error, not a silent no-op."""
    from dataclasses import replace

    from model.decoding import DecodingConfig, decode

    rec, enc, lens = _encoded(make_tiny_model_dir(tmp_path / "m"))
    base = DecodingConfig(method="attention-rescoring", beam=6, return_nbest=True)
    plain = decode(rec.model, enc, lens, base)
    assert all(len({tuple(e.token_ids) for e in h.nbest}) >= 2 for h in plain)
    targets = [next(e.token_ids for e in reversed(h.nbest) if e.token_ids != h.token_ids) for h in plain]  # not the pick

    def scorer(seqs):
        return [0.0 if list(s) in targets else -1e4 for s in seqs]

    picked = decode(rec.model, enc, lens, replace(base, lm_scale=1.0), lm_scorer=scorer)
    assert [h.token_ids for h in picked] == targets
    assert all(h.lm_score == 0.0 for h in picked)
    assert all(e.lm_score in (0.0, -1e4) for h in picked for e in h.nbest)
    unscaled = decode(rec.model, enc, lens, base, lm_scorer=scorer)
    assert [h.token_ids for h in unscaled] == [h.token_ids for h in plain] and unscaled[0].lm_score is None
    with pytest.raises(ValueError, match="needs a word LM"):
        decode(rec.model, enc, lens, replace(base, lm_scale=1.0))
    # segments (long windows) are rescored with the LM too; their LM scores add up
    seg = decode(rec.model, enc, lens, replace(base, lm_scale=0.5, max_segment_seconds=1.0, return_nbest=False),
                 lm_scorer=lambda seqs: [-float(len(s)) for s in seqs])
    assert all(h.lm_score == -float(len(h.token_ids)) for h in seg)


def test_a_model_directory_with_an_lm(tmp_path):
    """lm.arpa.gz beside the checkpoint: loaded, used with lm_scale, part of the files a remote
    model is staged with; lm_scale without it, or a broken one, is one line naming the problem."""
    import json

    from model.checkpoint import ModelLoadError
    from model.layout import find_layout
    from model.recognizer import Recognizer

    model_dir = make_tiny_model_dir(tmp_path / "m")
    cfg = json.loads((model_dir / "config.json").read_text())
    cfg["decoding"] = {"method": "attention-rescoring", "lm_scale": 0.5}
    (model_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="has none \\(lm.arpa.gz or lm.arpa\\)") as err:
        Recognizer.from_dir(model_dir)
    assert "\n" not in str(err.value)
    assert Recognizer.from_dir(model_dir, decoding={"lm_scale": 0.0}).lm is None

    write(model_dir / "lm.arpa.gz", TINY_ARPA)
    assert find_layout(model_dir).lm == "lm.arpa.gz"
    assert "lm.arpa.gz" in find_layout(model_dir).files(p.name for p in model_dir.iterdir())
    rec = Recognizer.from_dir(model_dir)
    assert rec.lm is not None and rec.decoding.label().endswith("lm=0.5")
    assert rec.info.lm.endswith("lm.arpa.gz") and len(rec.info.lm_sha256) == 64
    g = torch.Generator().manual_seed(1)
    (t,), _ = rec.transcribe([0.1 * torch.randn(32000, generator=g)])
    hyp_lm = rec.lm.score(t.text)
    # the pick's total includes the LM term: ctc + scale * attention + lm_scale * lm
    assert t.score == pytest.approx(t.ctc_score + rec.decoding.attention_scale * t.attention_score + 0.5 * hyp_lm, rel=1e-4)
    assert t.lm_score == pytest.approx(hyp_lm, rel=1e-4)  # what the rows' lm_score column carries
    (t0,), _ = Recognizer.from_dir(model_dir, decoding={"lm_scale": 0.0}).transcribe([torch.zeros(16000)])
    assert t0.lm_score is None  # the LM took no part in the choice

    write(model_dir / "lm.arpa.gz", TINY_ARPA.replace("\\end\\\n", ""))
    with pytest.raises(ModelLoadError, match="the word LM cannot be read") as err:
        Recognizer.from_dir(model_dir)
    assert "\n" not in str(err.value)


def test_the_lm_file_is_part_of_the_run_fingerprint(tmp_path):
    """Another LM gives other transcripts: a resumed run must redo its shards."""
    from pipeline.run.config import TranscribeConfig
    from pipeline.run.driver import fingerprint_parts, validate_inputs

    model_dir = make_tiny_model_dir(tmp_path / "m")
    manifest = tmp_path / "uris.txt"
    manifest.write_text("/nonexistent.wav\n")
    cfg = TranscribeConfig(manifest=[str(manifest)], model=str(model_dir), output=str(tmp_path / "out"))
    without = fingerprint_parts(cfg, validate_inputs(cfg))
    write(model_dir / "lm.arpa.gz", TINY_ARPA)
    first = fingerprint_parts(cfg, validate_inputs(cfg))
    write(model_dir / "lm.arpa.gz", TINY_ARPA.replace("-0.1\ta b", "-0.2\ta b"))
    second = fingerprint_parts(cfg, validate_inputs(cfg))
    assert len({without, first, second}) == 3
