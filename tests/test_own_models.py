"""Users' own icefall checkpoints: training checkpoints load safely, icefall's averaging, layouts,
tokenizer checks, decoding defaults per head, causal chunking, TorchScript refused, inspection."""

from __future__ import annotations

import pickle
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from model import ModelLoadError, TorchScriptOnlyError, load_checkpoint, read_checkpoint
from model.decoding import DecodingConfig
from model.inspection import format_report, inspect_model
from model.layout import TokenizerMismatchError, find_layout
from model.recognizer import Recognizer
from model.tokenizer import Tokenizer
from model.weights import WeightsSelection, select_weights

from helpers import TINY_CONFIG
from icefall_layouts import (CAUSAL, hf_repo, random_model, save_torchscript, train_bpe_dir,
                             training_run, write_config, write_tokens_txt)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipe")
    return training_run(root, CAUSAL, epochs=4, iters=(800, 1600, 2400))


def waves(n: int = 2, seconds: float = 1.6):
    rng = np.random.default_rng(3)
    return [(0.1 * rng.standard_normal(int(16000 * seconds * (1 + 0.3 * i)))).astype(np.float32) for i in range(n)]


def close(a: dict, b: dict, atol: float = 1e-6) -> bool:
    return set(a) == set(b) and all(torch.allclose(a[k].float(), b[k].float(), atol=atol) for k in a)


# ---------------------------------------------------------------- safe loading of training checkpoints

def test_training_checkpoint_needs_the_allow_list_and_loads_with_it(run_dir):
    path = run_dir["exp"] / "epoch-2.pt"
    with pytest.raises(pickle.UnpicklingError, match="PosixPath"):  # what a plain weights_only load says
        torch.load(path, weights_only=True)
    obj = read_checkpoint(path)
    assert isinstance(obj["exp_dir"], Path) and obj["exp_dir"] == run_dir["exp"]
    assert obj["batch_idx_train"] == run_dir["batches"][2] and obj["optimizer"]["state"]
    model = load_checkpoint(path)
    assert close(model.state_dict(), run_dir["models"][2])
    assert close(load_checkpoint(path, use_averaged=True).state_dict(), run_dir["avgs"][2])


def test_unknown_classes_become_inert_placeholders(tmp_path):
    """A recipe that pickled its own classes (a dict subclass and a plain object) still yields its
    tensors; the classes' code is never imported or run."""
    import types

    mod = types.ModuleType("my_recipe_utils")

    class AttributeDict(dict):
        def __getattr__(self, key):
            return self[key]

    class Tracker:
        def __init__(self):
            self.best = 0.3

        def __setstate__(self, state):  # would run on a real unpickle
            raise AssertionError("the class's own code ran")

    for cls in (AttributeDict, Tracker):
        cls.__module__, cls.__qualname__ = "my_recipe_utils", cls.__name__
        setattr(mod, cls.__name__, cls)
    sys.modules["my_recipe_utils"] = mod
    try:
        model = random_model(dict(TINY_CONFIG, vocab_size=40), seed=1)
        torch.save({"model": model.state_dict(), "params": AttributeDict(lr=0.045, exp_dir=Path("exp")),
                    "tracker": Tracker()}, tmp_path / "epoch-1.pt")
    finally:
        del sys.modules["my_recipe_utils"]
    obj = read_checkpoint(tmp_path / "epoch-1.pt")
    assert type(obj["params"]) is dict and obj["params"] == {"lr": 0.045, "exp_dir": Path("exp")}
    assert "opaque my_recipe_utils.Tracker" in repr(obj["tracker"])
    assert close(load_checkpoint(tmp_path / "epoch-1.pt").state_dict(), model.state_dict())


@pytest.mark.parametrize("content,match", [(b"", "empty file"), (b"not a checkpoint at all", "not a readable torch checkpoint")])
def test_corrupt_files_are_one_clear_error(tmp_path, content, match):
    (tmp_path / "pretrained.pt").write_bytes(content)
    with pytest.raises(ModelLoadError, match=match):
        read_checkpoint(tmp_path / "pretrained.pt")


# ---------------------------------------------------------------- icefall's averaging

def test_epoch_avg_is_the_mean_of_the_models(run_dir):
    exp = run_dir["exp"]
    sel = select_weights([p.name for p in exp.iterdir()], WeightsSelection(epoch=4, avg=3))
    assert sel.files == ("epoch-2.pt", "epoch-3.pt", "epoch-4.pt") and sel.method == "mean"
    rec = Recognizer.from_dir(exp, weights=WeightsSelection(epoch=4, avg=3))
    by_hand = {k: (run_dir["models"][2][k] + run_dir["models"][3][k] + run_dir["models"][4][k]) / 3
               for k in run_dir["models"][4]}
    assert close(rec.model.state_dict(), by_hand, atol=1e-6)
    assert rec.info.name.endswith("@epoch-4-avg-3") and "mean of 3 checkpoints" in rec.info.weights


def test_use_averaged_model_averages_between_two_checkpoints(run_dir):
    """--epoch 4 --avg 2 --use-averaged-model: the model averaged over the batches after epoch 2
    up to epoch 4, from the two running averages: (A4 * b4 - A2 * b2) / (b4 - b2)."""
    exp, b, a = run_dir["exp"], run_dir["batches"], run_dir["avgs"]
    rec = Recognizer.from_dir(exp, weights=WeightsSelection(epoch=4, avg=2, use_averaged_model=True))
    by_hand = {k: (a[4][k].double() * b[4] - a[2][k].double() * b[2]) / (b[4] - b[2]) for k in a[4]}
    assert close(rec.model.state_dict(), by_hand, atol=1e-5)
    assert not close(rec.model.state_dict(), a[4], atol=1e-3)  # really a different model
    assert rec.info.name.endswith("@epoch-4-avg-2-use-averaged-model")
    assert f"between epoch-2.pt (excluded) and epoch-4.pt (batches {b[2] + 1}..{b[4]})" in rec.info.weights
    assert rec.info.checkpoint_kind == "training checkpoint" and rec.info.checkpoint_position["batch_idx_train"] == b[4]
    # the digest covers the selection: another selection over the same files is another model
    other = Recognizer.from_dir(exp, weights=WeightsSelection(epoch=4, avg=3, use_averaged_model=True))
    assert other.info.sha256 != rec.info.sha256


def test_iter_selections_pick_checkpoints_as_icefall(run_dir):
    names = [p.name for p in run_dir["exp"].iterdir()]
    assert select_weights(names, WeightsSelection(iter=2400, avg=2)).files == ("checkpoint-1600.pt", "checkpoint-2400.pt")
    assert select_weights(names, WeightsSelection(iter=2000, avg=1, use_averaged_model=True)).files == \
        ("checkpoint-800.pt", "checkpoint-1600.pt")
    with pytest.raises(FileNotFoundError, match="needs 3 checkpoint-N.pt files with N <= 1600; found 2"):
        select_weights(names, WeightsSelection(iter=1600, avg=2, use_averaged_model=True))


def test_single_file_model_avg_and_default(run_dir):
    exp = run_dir["exp"]
    default = Recognizer.from_dir(exp)  # the highest epoch's model
    assert close(default.model.state_dict(), run_dir["models"][4])
    avg = Recognizer.from_dir(exp, weights=WeightsSelection(use_averaged_model=True))
    assert close(avg.model.state_dict(), run_dir["avgs"][4]) and "model_avg" in avg.info.weights


@pytest.mark.parametrize("kwargs,match", [
    (dict(epoch=9, avg=2), r"needs epoch-8.pt, epoch-9.pt; found: epoch-1.pt, epoch-2.pt"),
    (dict(epoch=2, avg=2, use_averaged_model=True), "--avg must be smaller than --epoch"),
    (dict(avg=3), "--avg needs --epoch or --iter"),
    (dict(epoch=3, iter=100), "not both"),
])
def test_bad_selections_say_what_is_wrong(run_dir, kwargs, match):
    with pytest.raises((ValueError, ModelLoadError), match=match):
        Recognizer.from_dir(run_dir["exp"], weights=WeightsSelection(**kwargs))


# ---------------------------------------------------------------- layouts

def test_hf_repo_root_and_its_exp_folder_load_the_same_model(tmp_path):
    repo = hf_repo(tmp_path / "icefall-asr-zipformer")
    root, exp = Recognizer.from_dir(repo), Recognizer.from_dir(repo / "exp")
    assert root.info.layout.startswith("icefall repo") and exp.info.layout.startswith("icefall exp folder")
    assert root.info.sha256 == exp.info.sha256 and root.info.name == exp.info.name == "icefall-asr-zipformer"
    assert root.info.tokenizer.endswith("data/lang_bpe_60/bpe.model")
    w = waves()
    assert [t.text for t in root.transcribe(w)[0]] == [t.text for t in exp.transcribe(w)[0]]


def test_the_tokenizer_is_chosen_by_the_models_vocabulary(tmp_path):
    repo = hf_repo(tmp_path / "repo", vocab_size=60)
    other = train_bpe_dir(repo / "data" / "lang_bpe_90", 90)
    assert other != Recognizer.from_dir(repo).model.vocab_size
    assert "lang_bpe_60" in Recognizer.from_dir(repo).info.tokenizer


def test_training_run_exp_folder_finds_the_recipe_tokenizer(run_dir):
    layout = find_layout(run_dir["exp"], WeightsSelection(epoch=3, avg=1))
    assert layout.tokenizer_dirs == ("../../data/lang_bpe_60",) and layout.weights.files == ("epoch-3.pt",)


def test_torchscript_only_folder_is_refused_with_advice(tmp_path):
    save_torchscript(tmp_path / "jit_script.pt")
    train_bpe_dir(tmp_path, 60)
    with pytest.raises(TorchScriptOnlyError, match="only TorchScript exports \\(jit_script.pt\\).*cannot be loaded safely"
                                                  ".*exp/pretrained.pt"):
        Recognizer.from_dir(tmp_path)
    (tmp_path / "jit_script.pt").rename(tmp_path / "model.pt")  # a TorchScript file by another name
    with pytest.raises(TorchScriptOnlyError, match="model.pt is a TorchScript export"):
        Recognizer.from_dir(tmp_path)


# ---------------------------------------------------------------- tokenizer checks

def _flat(tmp_path: Path, vocab: int) -> Path:
    d = tmp_path / f"flat{vocab}"
    d.mkdir()
    real = train_bpe_dir(d, vocab)
    (d / "bpe.model").unlink()  # keep tokens.txt only
    torch.save({"model": random_model(dict(TINY_CONFIG, vocab_size=real), seed=2).state_dict()}, d / "pretrained.pt")
    return d


def test_librispeech_style_tokens_txt_with_disambiguation_symbols_loads(tmp_path):
    d = _flat(tmp_path, 60)
    lines = (d / "tokens.txt").read_text().splitlines()
    assert lines[-2].startswith("#0 ") and lines[-1].startswith("#1 ")
    rec = Recognizer.from_dir(d)
    assert rec.tokenizer.vocab_size == rec.model.vocab_size == len(lines) - 2


@pytest.mark.parametrize("other_vocab", [90, 40])
def test_vocab_mismatch_either_way_is_caught_at_load(tmp_path, other_vocab):
    d = _flat(tmp_path, 60)
    model_vocab = Recognizer.from_dir(d).model.vocab_size
    src = tmp_path / "other"
    n = train_bpe_dir(src, other_vocab)
    shutil.copy(src / "tokens.txt", d / "tokens.txt")
    with pytest.raises(TokenizerMismatchError, match=f"vocabulary has {model_vocab} tokens but .*tokens.txt has {n}"):
        Recognizer.from_dir(d)


def test_special_id_mismatch_is_caught(tmp_path):
    d = _flat(tmp_path, 60)
    tok = Tokenizer.from_file(d / "tokens.txt")
    pieces = [tok.id_to_piece(i) for i in range(tok.vocab_size)]
    pieces[0], pieces[3] = pieces[3], pieces[0]  # <blk> moved to id 3
    (d / "tokens.txt").write_text("".join(f"{p} {i}\n" for i, p in enumerate(pieces)))
    with pytest.raises(TokenizerMismatchError, match="blank is id 0 in the model but <blk> is 3"):
        Recognizer.from_dir(d)
    write_tokens_txt(tok, d / "tokens.txt")
    Recognizer.from_dir(d)  # and the original loads


# ---------------------------------------------------------------- decoding defaults per head

@pytest.mark.parametrize("heads,method", [
    (dict(use_ctc=True, use_transducer=False, use_attention_decoder=True), "attention-rescoring"),
    (dict(use_ctc=False, use_transducer=True, use_attention_decoder=False), "transducer-beam"),
    (dict(use_ctc=True, use_transducer=False, use_attention_decoder=False), "ctc-beam"),
])
def test_from_dir_defaults_work_for_every_head(tmp_path, heads, method):
    vocab = train_bpe_dir(tmp_path, 60)
    torch.save({"model": random_model(dict(TINY_CONFIG, vocab_size=vocab, **heads), seed=4).state_dict()},
               tmp_path / "pretrained.pt")
    rec = Recognizer.from_dir(tmp_path)  # no config.json, no decoding given
    assert rec.decoding.method == method
    assert len(rec.transcribe(waves(1))[0]) == 1


# ---------------------------------------------------------------- causal models

@pytest.fixture()
def causal_dir(tmp_path):
    repo = hf_repo(tmp_path / "streaming", config=CAUSAL)
    return repo


def test_training_chunk_lists_mean_full_context(causal_dir):
    write_config(causal_dir / "exp", dict(CAUSAL, vocab_size=Recognizer.from_dir(causal_dir).model.vocab_size))
    rec = Recognizer.from_dir(causal_dir)
    assert (rec.decoding.chunk_size, rec.decoding.left_context_frames) == (-1, -1)
    assert any("training chunk sizes 16,32,64,-1: decoding with full context" in n for n in rec.info.notes)
    assert "chunk=" not in rec.decoding.label()


def test_chunked_decoding_differs_and_matches_the_masked_computation(causal_dir):
    full = Recognizer.from_dir(causal_dir)
    chunked = Recognizer.from_dir(causal_dir, decoding={"chunk_size": 16, "left_context_frames": 32})
    assert chunked.decoding.label().endswith("chunk=16 left=32")
    x = torch.randn(1, 400, 80)
    lens = torch.tensor([400])
    # the same model configured for chunk 16 / left 32 in its config (the reference's way)
    cfg = dict(full.model.config, chunk_size="16", left_context_frames="32")
    configured = load_checkpoint(causal_dir / "exp" / "pretrained.pt", config=cfg)
    with torch.inference_mode():
        out_full = full.model.forward_encoder(x, lens)[0]
        out_chunk = chunked.model.forward_encoder(x, lens)[0]
        assert torch.equal(configured.forward_encoder(x, lens)[0], out_chunk)
        assert (out_full - out_chunk).abs().max() > 1e-3
        # chunked = causal at chunk granularity: input after 50 Hz frame 64 (+ the embedding's
        # look-ahead) leaves the outputs of the first four chunks (25 Hz frames < 32) bit-identical
        x2 = x.clone()
        x2[:, 2 * 64 + 20:] += torch.randn_like(x2[:, 2 * 64 + 20:])
        out2 = chunked.model.forward_encoder(x2, lens)[0]
        assert torch.equal(out2[:, :32], out_chunk[:, :32]) and not torch.equal(out2[:, 32:], out_chunk[:, 32:])
        assert not torch.equal(full.model.forward_encoder(x2, lens)[0][:, :32], out_full[:, :32])


def test_chunking_a_full_context_model_is_an_error(tmp_path):
    repo = hf_repo(tmp_path / "offline")
    with pytest.raises(ModelLoadError, match="chunk_size 16 needs a causal"):
        Recognizer.from_dir(repo, decoding=DecodingConfig(chunk_size=16))


# ---------------------------------------------------------------- inspection

def test_inspect_reports_what_was_loaded(run_dir):
    report = inspect_model(run_dir["exp"], weights=WeightsSelection(epoch=4, avg=2, use_averaged_model=True))
    ck, voc = report["checkpoint"], report["vocabulary"]
    assert ck["kind"] == "training checkpoint" and {"model", "model_avg", "optimizer"} <= set(ck["entries"])
    assert [Path(f["path"]).name for f in ck["files"]] == ["epoch-2.pt", "epoch-4.pt"]
    assert all(len(f["sha256"]) == 64 for f in ck["files"])
    assert report["architecture"]["source"].startswith("inferred") and "pos_head_dim" in report["architecture"]["guessed_fields"]
    assert report["parameters"]["total"] == sum(report["parameters"][k] for k in report["parameters"] if k != "total")
    assert report["heads"] == ["ctc", "transducer", "attention-decoder"] and report["default_decoding"] == "attention-rescoring"
    assert voc["agree"] and voc["model"] == voc["tokenizer"] and voc["disambiguation_symbols_ignored"] == 0
    assert report["causal"]["causal"] is True and report["causal"]["decode_chunk_size"] == -1
    text = format_report(report)
    assert "epoch-4-avg-2-use-averaged-model" in text and "guessed, not read from shapes" in text


def test_load_checkpoint_takes_a_folder_and_icefalls_selection(run_dir):
    from model import load_checkpoint as load

    sel = WeightsSelection(epoch=4, avg=2, use_averaged_model=True)
    model = load(run_dir["exp"], weights=sel)
    assert close(model.state_dict(), Recognizer.from_dir(run_dir["exp"], weights=sel).model.state_dict())
    assert close(load(run_dir["exp"]).state_dict(), run_dir["models"][4])  # default: the highest epoch
    with pytest.raises(ValueError, match="is one file"):
        load(run_dir["exp"] / "epoch-4.pt", weights=WeightsSelection(epoch=4, avg=2))
