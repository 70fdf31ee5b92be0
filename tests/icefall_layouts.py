"""Model directories as icefall writes them, built with zipscribe's own model code.

* :func:`training_checkpoint`: what icefall's ``save_checkpoint`` writes for
  ``epoch-N.pt`` / ``checkpoint-N.pt``: ``model``, ``model_avg`` (float32),
  ``optimizer`` (a real Adam state after one step), ``scheduler``,
  ``grad_scaler``, ``sampler`` and the training parameters as top-level entries,
  with ``exp_dir`` / ``lang_dir`` as ``pathlib.PosixPath`` and ``env_info`` as
  a dict, as icefall's ``params`` holds them.
* :func:`training_run`: an icefall recipe folder: ``zipformer/exp/epoch-{1..n}.pt``
  (and ``checkpoint-*.pt``) beside ``data/lang_bpe_V/{bpe.model,tokens.txt}``.
* :func:`hf_repo`: a Hugging Face icefall repo: ``exp/pretrained.pt``,
  ``exp/jit_script.pt`` (TorchScript) and ``data/lang_bpe_V/``.
* :func:`write_tokens_txt`: an icefall ``tokens.txt`` with ``#0``/``#1``.
"""

from __future__ import annotations

import json
from pathlib import Path, PosixPath
from typing import Any, Optional

import torch

from model import AsrModel
from model.tokenizer import Tokenizer

from helpers import CORPUS, TINY_CONFIG

CAUSAL = dict(TINY_CONFIG, causal=True, chunk_size="16,32,64,-1", left_context_frames="64,128,256,-1")


def train_bpe_dir(directory: Path, vocab_size: int) -> int:
    """``bpe.model`` + ``tokens.txt`` (with ``#0 #1``) in ``directory``; returns the real vocab size."""
    from model.tokenizer import train_bpe

    directory.mkdir(parents=True, exist_ok=True)
    bpe = train_bpe(CORPUS * 20, directory, vocab_size, hard_vocab_limit=False)
    tok = Tokenizer.from_file(bpe)
    write_tokens_txt(tok, directory / "tokens.txt")
    return tok.vocab_size


def write_tokens_txt(tok: Tokenizer, path: Path, disambig: int = 2) -> None:
    lines = [f"{tok.id_to_piece(i)} {i}" for i in range(tok.vocab_size)]
    lines += [f"#{k} {tok.vocab_size + k}" for k in range(disambig)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def random_model(config: dict[str, Any], seed: int) -> AsrModel:
    torch.manual_seed(seed)
    model = AsrModel(**config)
    with torch.no_grad():  # move every tensor off its init so averages are distinguishable
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def training_checkpoint(model: AsrModel, model_avg: AsrModel, *, epoch: int, batch_idx_train: int,
                        exp_dir: Path) -> dict[str, Any]:
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss = sum((p.float() ** 2).sum() for p in model.parameters() if p.dim() > 0)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": {"base_lrs": [0.045], "epoch": epoch, "batch": batch_idx_train, "verbose": False},
        "grad_scaler": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                        "_growth_tracker": 17},
        "sampler": {"epoch": epoch, "world_size": 1, "rank": 0, "seed": 42, "shuffle": True, "drop_last": True,
                    "diagnostics": {"num_kept_batches": 120, "num_discarded_batches": 0}},
        "model_avg": model_avg.to(torch.float32).state_dict(),
        # icefall's params, saved as top-level entries
        "best_train_loss": 0.31, "best_valid_loss": 0.35, "best_train_epoch": epoch, "best_valid_epoch": epoch,
        "batch_idx_train": batch_idx_train, "cur_epoch": epoch, "log_interval": 50, "reset_interval": 200,
        "valid_interval": 3000, "feature_dim": 80, "subsampling_factor": 4, "warm_step": 2000,
        "average_period": 200, "exp_dir": PosixPath(exp_dir), "lang_dir": PosixPath("data/lang_bpe_500"),
        "bpe_model": "data/lang_bpe_500/bpe.model", "use_fp16": True, "world_size": 1,
        "env_info": {"k2-version": "1.24.4", "torch-version": "2.1.0", "icefall-git-branch": "master",
                     "hostname": "trainer-0", "IP address": "10.0.0.7"},
    }


def training_run(root: Path, config: dict[str, Any], epochs: int = 4, vocab_size: int = 60,
                 iters: tuple[int, ...] = ()) -> dict[str, Any]:
    """An icefall recipe folder under ``root``; returns what the test needs to check averages:
    ``exp`` (the exp folder), per epoch ``models`` / ``avgs`` state dicts and ``batches``."""
    vocab = train_bpe_dir(root / "data" / "lang_bpe_60", vocab_size)
    config = dict(config, vocab_size=vocab)
    exp = root / "zipformer" / "exp"
    exp.mkdir(parents=True)
    models, avgs, batches = {}, {}, {}
    for epoch in range(1, epochs + 1):
        model = random_model(config, seed=100 + epoch)
        avg = random_model(config, seed=200 + epoch)
        batches[epoch] = 1000 * epoch + 37 * epoch * epoch  # uneven epochs
        ckpt = training_checkpoint(model, avg, epoch=epoch, batch_idx_train=batches[epoch], exp_dir=exp)
        models[epoch] = {k: v.clone() for k, v in ckpt["model"].items()}
        avgs[epoch] = {k: v.clone() for k, v in ckpt["model_avg"].items()}
        torch.save(ckpt, exp / f"epoch-{epoch}.pt")
    for it in iters:
        model = random_model(config, seed=300 + it)
        torch.save(training_checkpoint(model, random_model(config, seed=400 + it), epoch=1, batch_idx_train=it,
                                       exp_dir=exp), exp / f"checkpoint-{it}.pt")
    return {"exp": exp, "models": models, "avgs": avgs, "batches": batches, "config": config}


class _Scripted(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2


def save_torchscript(path: Path) -> None:
    torch.jit.save(torch.jit.script(_Scripted()), str(path))


def hf_repo(root: Path, config: Optional[dict[str, Any]] = None, vocab_size: int = 60, seed: int = 5) -> Path:
    """A Hugging Face icefall repo tree under ``root`` (pretrained + TorchScript export + lang dir)."""
    vocab = train_bpe_dir(root / "data" / f"lang_bpe_{vocab_size}", vocab_size)
    (root / "exp").mkdir(parents=True)
    model = random_model(dict(config or TINY_CONFIG, vocab_size=vocab), seed=seed)
    torch.save({"model": model.state_dict()}, root / "exp" / "pretrained.pt")
    save_torchscript(root / "exp" / "jit_script.pt")
    (root / "decoding_results").mkdir()
    (root / "decoding_results" / "wer-summary.txt").write_text("settings\tWER\ngreedy_search\t2.21\n")
    (root / "README.md").write_text("# icefall-asr-zipformer (test copy)\n")
    return root


def write_config(directory: Path, config: dict[str, Any], **extra: Any) -> None:
    (directory / "config.json").write_text(json.dumps({**extra, **config}, indent=1))
