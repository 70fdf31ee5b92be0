"""Where a model's files are: flat folders, icefall / Hugging Face repos, training folders.

A *model directory* can be laid out three ways; :func:`plan_layout` recognises
each from a listing of relative file names (so object storage is planned from
one listing and only the needed files are fetched), :func:`find_layout` lists
a local directory:

* **flat folder** (zipscribe's own): ``pretrained.pt`` (or ``epoch-N.pt``),
  ``bpe.model`` or ``tokens.txt``, optional ``config.json``;
* **icefall repo root** (how Hugging Face icefall models are published):
  ``exp/pretrained.pt`` or ``exp/epoch-*.pt`` beside
  ``data/lang_bpe_500/{bpe.model,tokens.txt}``;
* **an ``exp/`` folder**: the checkpoints, with the tokenizer in
  ``../data/lang_*`` (a repo's ``exp/``) or up to three levels higher (an icefall
  recipe's ``zipformer/exp`` with ``data/lang_bpe_500`` in the recipe folder).

Tokenizer folders found this way are candidates: the model's vocabulary picks
among several (``lang_bpe_500`` vs ``lang_bpe_5000``) and must match the one
used (:func:`choose_tokenizer`). TorchScript exports (``jit_script.pt``) are
never loaded: a folder with nothing else raises :class:`TorchScriptOnlyError`.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Iterable, Optional, Union

from .checkpoint import ModelLoadError, TorchScriptOnlyError, is_torchscript_name
from .tokenizer import Tokenizer
from .word_lm import LM_FILES
from .weights import SelectedWeights, WeightsSelection, select_weights

TOKENIZER_FILES = ("bpe.model", "tokens.txt")
CONFIG_FILE = "config.json"
#: Folders searched for checkpoints, in order: the directory itself, then its ``exp/``.
CHECKPOINT_DIRS = ("", "exp")
#: Ancestors searched for ``data/lang_*`` when the directory and its ``data/`` have no tokenizer.
ANCESTORS = ("..", "../..", "../../..")


class TokenizerMismatchError(ModelLoadError):
    """The tokenizer does not fit the model (vocabulary size or special-symbol ids)."""


@dataclass(frozen=True)
class ModelLayout:
    """The files of one model directory, relative to it (POSIX paths; ``..`` allowed).

    ``checkpoint_dir``: the folder holding the checkpoints (``""`` or ``"exp"``);
    ``weights``: the checkpoint files to read and how to combine them;
    ``tokenizer_dirs``: folders holding ``bpe.model`` / ``tokens.txt``, in order of preference;
    ``config``: the ``config.json``, if any; ``lm``: the word LM (:data:`model.word_lm.LM_FILES`
    beside the config or at the top), if any; ``kind``: which layout it is."""

    kind: str
    checkpoint_dir: str
    weights: SelectedWeights
    tokenizer_dirs: tuple[str, ...]
    config: Optional[str]
    lm: Optional[str] = None

    def checkpoint_files(self) -> list[str]:
        return [posixpath.join(self.checkpoint_dir, f) if self.checkpoint_dir else f for f in self.weights.files]

    def files(self, names: Iterable[str]) -> list[str]:
        """Every file the model needs, among the listing ``names`` it was planned from."""
        listed = set(names)
        wanted = self.checkpoint_files() + ([self.config] if self.config else []) + ([self.lm] if self.lm else [])
        for folder in self.tokenizer_dirs:
            wanted += [p for p in (_join(folder, t) for t in TOKENIZER_FILES) if p in listed]
        return wanted


def _join(folder: str, name: str) -> str:
    return posixpath.join(folder, name) if folder else name


def _in_folder(names: set[str], folder: str) -> list[str]:
    prefix = folder + "/" if folder else ""
    return sorted(n[len(prefix):] for n in names if n.startswith(prefix) and "/" not in n[len(prefix):])


def plan_layout(names: Iterable[str], selection: WeightsSelection = WeightsSelection(), where: str = "") -> ModelLayout:
    """The layout of a model directory from the relative paths of its files.

    ``names`` should cover the directory's files, those of ``exp/`` and of ``data/lang_*/``, and
    for tokenizers above it ``../data/lang_*/...`` (see :data:`ANCESTORS`). ``where`` names the
    directory in error messages. Raises :class:`ModelLoadError` (or its
    :class:`TorchScriptOnlyError`) saying what was found."""
    names = set(names)
    label = where or "model directory"
    checkpoint_dir = None
    for folder in CHECKPOINT_DIRS:
        pts = [n for n in _in_folder(names, folder) if n.endswith(".pt")]
        if any(not is_torchscript_name(n) for n in pts):
            checkpoint_dir = folder
            break
    if checkpoint_dir is None:
        jit = [_join(f, n) for f in CHECKPOINT_DIRS for n in _in_folder(names, f) if n.endswith(".pt")]
        if jit:
            raise TorchScriptOnlyError(
                f"{label}: only TorchScript exports ({', '.join(jit)}); TorchScript cannot be loaded safely (it runs "
                "code from the file). Download the checkpoint instead: exp/pretrained.pt (or exp/epoch-*.pt) and "
                "data/lang_bpe_*/bpe.model of the same repo")
        raise ModelLoadError(f"{label}: no checkpoint (*.pt) here or in exp/; expected pretrained.pt or epoch-N.pt, "
                             "beside bpe.model or tokens.txt (or an icefall repo: exp/ + data/lang_bpe_*/)")
    try:
        weights = select_weights(_in_folder(names, checkpoint_dir), selection)
    except FileNotFoundError as exc:
        raise ModelLoadError(f"{label}/{checkpoint_dir}: {exc}" if checkpoint_dir else f"{label}: {exc}") from None

    tokenizer_dirs: list[str] = []
    for folder in ("", checkpoint_dir, *sorted({posixpath.dirname(n) for n in names if n.startswith("data/lang")})):
        if folder not in tokenizer_dirs and any(_join(folder, t) in names for t in TOKENIZER_FILES):
            tokenizer_dirs.append(folder)
    if not tokenizer_dirs:
        for up in ANCESTORS:
            found = sorted({posixpath.dirname(n) for n in names
                            if n.startswith(f"{up}/data/lang") and posixpath.basename(n) in TOKENIZER_FILES})
            if found:
                tokenizer_dirs.extend(found)
                break
    if not tokenizer_dirs:
        raise ModelLoadError(f"{label}: no tokenizer: expected bpe.model or tokens.txt beside the checkpoint, in "
                             "data/lang_*/, or in data/lang_*/ of a folder above an exp/ folder")
    config = next((c for c in (CONFIG_FILE, _join(checkpoint_dir, CONFIG_FILE)) if c in names), None)
    if checkpoint_dir == "exp":
        kind = "icefall repo (exp/ + data/lang_*/)"
    elif tokenizer_dirs[0].startswith(".."):
        kind = f"icefall exp folder (tokenizer in {tokenizer_dirs[0]})"
    else:
        kind = "flat folder"
    lm = next((_join(folder, f) for folder in ("", checkpoint_dir) for f in LM_FILES if _join(folder, f) in names), None)
    return ModelLayout(kind=kind, checkpoint_dir=checkpoint_dir, weights=weights, tokenizer_dirs=tuple(tokenizer_dirs),
                       config=config, lm=lm)


def list_model_files(root: Union[str, PathLike]) -> list[str]:
    """The relative paths :func:`plan_layout` looks at, for a local directory."""
    root = Path(root)
    if not root.is_dir():
        raise ModelLoadError(f"model directory not found: {root}")
    names = [p.name for p in root.iterdir() if p.is_file()]
    names += [f"exp/{p.name}" for p in (root / "exp").glob("*") if p.is_file()]
    names += [f"data/{p.parent.name}/{p.name}" for t in TOKENIZER_FILES for p in root.glob(f"data/lang*/{t}")]
    for up in ANCESTORS:
        base = root / up
        names += [f"{up}/data/{p.parent.name}/{p.name}" for t in TOKENIZER_FILES for p in base.glob(f"data/lang*/{t}")]
    return names


def find_layout(root: Union[str, PathLike], selection: WeightsSelection = WeightsSelection()) -> ModelLayout:
    """The layout of a local model directory (see :func:`plan_layout`)."""
    return plan_layout(list_model_files(root), selection, where=str(root))


def choose_tokenizer(root: Union[str, PathLike], layout: ModelLayout, vocab_size: int) -> tuple[Tokenizer, Path]:
    """The tokenizer among the layout's candidates whose vocabulary has ``vocab_size`` ids
    (``#0``-style disambiguation lines of a ``tokens.txt`` are not ids of the model).

    Raises :class:`TokenizerMismatchError` naming the model's size and each candidate's."""
    root = Path(root)
    seen = []
    for folder in layout.tokenizer_dirs:
        directory = root / folder if folder else root
        tokenizer = Tokenizer.from_dir(directory)
        path = next(directory / t for t in TOKENIZER_FILES if (directory / t).is_file())
        if tokenizer.vocab_size == vocab_size:
            return tokenizer, path
        seen.append(f"{path} has {tokenizer.vocab_size}")
    raise TokenizerMismatchError(f"the model's vocabulary has {vocab_size} tokens but {'; '.join(seen)}: "
                                 "the tokenizer does not belong to this model")
