"""Loading icefall / zipformer checkpoints into ``AsrModel``.

Accepted files (always read with ``torch.load(..., weights_only=True)``):

* ``pretrained.pt``: ``{"model": state_dict}``
* a bare ``state_dict``
* a training checkpoint ``epoch-N.pt`` / ``checkpoint-N.pt`` as icefall's
  ``save_checkpoint`` writes it: ``{"model": ..., "model_avg": ..., "optimizer":
  ..., "scheduler": ..., "grad_scaler": ..., "sampler": ...}`` plus every training
  parameter as a top-level entry (``batch_idx_train``, ``exp_dir`` as a
  ``pathlib.PosixPath``, ...). Only ``model`` (or ``model_avg`` with
  ``use_averaged=True``) and ``batch_idx_train`` are used.

Safety: pickles are never run. :func:`read_checkpoint` unpickles with torch's
``weights_only`` loader and an explicit allow-list of the plain types icefall
stores (:data:`ALLOWED_TYPES`: filesystem paths); any other class named in the
file is replaced by an inert placeholder (:class:`Opaque`, or a plain ``dict``
for dict subclasses such as icefall's ``AttributeDict``) whose code never comes
from the file, so a checkpoint with exotic training state still yields its
tensors. Code objects, ``__reduce__`` payloads and the like are refused by torch.

Keys saved from ``DistributedDataParallel`` (``module.`` prefix) are accepted.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import pickle
import re
import zipfile
from os import PathLike
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Union

import torch

from .asr_model import AsrModel, to_int_tuple
from .config import SHAPE_DETERMINED_FIELDS, infer_config, preset, split_config

ConfigLike = Union[None, str, PathLike, Mapping[str, Any]]

# Parameters that inference never reads; a checkpoint may lack them (e.g. one
# exported without the pruned-RNN-T projections) and still load.
_UNUSED_AT_INFERENCE = ("simple_am_proj.", "simple_lm_proj.")


class ModelLoadError(ValueError):
    """A model directory or checkpoint that cannot be used, with a one-line reason naming the file."""


class CheckpointMismatchError(ModelLoadError):
    """The checkpoint's tensors do not fit the model built from the config."""


class TorchScriptOnlyError(ModelLoadError):
    """Only TorchScript exports were found: they cannot be loaded without running their code."""


#: Plain, code-free types icefall keeps in a training checkpoint's parameters.
ALLOWED_TYPES = (pathlib.PosixPath, pathlib.PurePosixPath, pathlib.WindowsPath, pathlib.PureWindowsPath)


class Opaque:
    """Stands in for an object of a class that is not on the allow-list; keeps what the file held
    (constructor arguments, state) as plain data and never runs the class's code."""

    _name = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<opaque {self._name}>"


# Globals from these modules mean the pickle wants to run code: refused outright, not stubbed.
_CODE_MODULES = frozenset({"builtins", "__builtin__", "os", "posix", "nt", "sys", "subprocess", "importlib", "runpy",
                           "shutil", "socket", "pickle", "marshal", "types", "code", "codecs", "ctypes", "functools",
                           "operator", "eval", "exec", "pty", "webbrowser"})


def _placeholder(name: str, as_dict: bool) -> type:
    qual = name.rpartition(".")[2] or name
    if as_dict:  # built with NEWOBJ + SETITEMS, which torch only allows on a plain dict
        return type(qual, (), {"__new__": staticmethod(lambda cls, *a, **k: {}), "_name": name})
    return type(qual, (Opaque,), {"_name": name})


def is_torchscript(path: Union[str, PathLike]) -> bool:
    """Whether ``path`` is a TorchScript archive (``torch.jit.save``): a zip with a ``code/`` folder."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any("/code/" in n or n.startswith("code/") for n in archive.namelist()[:200])
    except (zipfile.BadZipFile, OSError):
        return False


def read_checkpoint(path: Union[str, PathLike]) -> Any:
    """The unpickled contents of a checkpoint file, read safely (see the module docstring).

    Raises :class:`ModelLoadError` with the file's name for a file that is empty, truncated, not
    a torch checkpoint, a TorchScript archive, or needs more than placeholders to unpickle."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path}: checkpoint file not found")
    if path.stat().st_size == 0:
        raise ModelLoadError(f"{path}: empty file")
    if is_torchscript(path):
        raise TorchScriptOnlyError(f"{path} is a TorchScript export, which cannot be loaded without running its "
                                   "code; use the checkpoint it was exported from (pretrained.pt or epoch-N.pt)")
    try:
        unsafe = [n for n in torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
                  if n not in {f"{t.__module__}.{t.__qualname__}" for t in ALLOWED_TYPES}]
    except Exception:  # not a zip checkpoint (legacy format): torch.load below says what is wrong
        unsafe = []
    code = [n for n in unsafe if n.partition(".")[0] in _CODE_MODULES]
    if code:
        raise ModelLoadError(f"{path}: refused: the pickle calls {', '.join(code[:3])}, which a checkpoint never needs")
    as_dict: set[str] = set()
    while True:
        stubs = [(_placeholder(n, n in as_dict), n) for n in unsafe]
        try:
            with torch.serialization.safe_globals([*ALLOWED_TYPES, *stubs]):
                return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            # a dict subclass needs the dict-shaped placeholder; torch names the class it refused
            m = re.search(r"SETITEMS for .* but got <class '[^']*?(\w+)'>", str(exc))
            retry = [n for n in unsafe if m and n not in as_dict and n.rpartition(".")[2] == m.group(1)]
            if not retry:
                if not zipfile.is_zipfile(path):
                    raise ModelLoadError(f"{path}: not a readable torch checkpoint ({_first_line(str(exc))})") from None
                raise ModelLoadError(f"{path}: cannot be read safely (weights_only): "
                                     f"{_first_line(str(exc))}") from None
            as_dict.update(retry)
        except (RuntimeError, EOFError, OSError, ValueError) as exc:
            raise ModelLoadError(f"{path}: not a readable torch checkpoint ({_first_line(str(exc))})") from None


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and "weights_only" not in ln and "PyTorch 2.6" not in ln]
    return lines[0] if lines else text.strip()[:200]


def _unwrap(obj: Any, use_averaged: bool, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        if use_averaged:
            if "model_avg" not in obj:
                raise CheckpointMismatchError(f"{path}: use_averaged=True but the checkpoint has no 'model_avg' entry")
            obj = obj["model_avg"]
        elif "model" in obj and isinstance(obj["model"], Mapping):
            obj = obj["model"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointMismatchError(f"{path}: expected a state dict or {{'model': state_dict}}, found {type(obj).__name__}")
    state = {}
    for key, value in obj.items():
        while key.startswith("module."):
            key = key[len("module.") :]
        state[key] = value
    return state


def read_state_dict(path: Union[str, PathLike], use_averaged: bool = False) -> dict[str, torch.Tensor]:
    """The model state dict of a checkpoint file, on CPU, ``module.`` prefixes stripped."""
    path = Path(path)
    return _unwrap(read_checkpoint(path), use_averaged, path)


def _resolve_config(config: ConfigLike, state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    if config is None:
        return infer_config(state)
    if isinstance(config, Mapping):
        return split_config(config)[0]
    text = str(config)
    if text.endswith(".json") or Path(text).is_file():
        return split_config(json.loads(Path(text).read_text()))[0]
    return preset(text)


def _config_hint(state: Mapping[str, torch.Tensor], config: Optional[Mapping[str, Any]]) -> list[str]:
    """Lines naming the config fields on which the checkpoint and ``config`` disagree."""
    if config is None:
        return []
    try:
        inferred = infer_config(state)
    except ValueError as exc:
        return [f"  the checkpoint is not a recognisable Zipformer: {exc}"]
    fields = [f for f in SHAPE_DETERMINED_FIELDS if f in config]
    diffs = [
        f"    {f}: checkpoint {inferred[f]!r} vs config {config[f]!r}"
        for f in fields
        if _normalise(inferred[f]) != _normalise(config[f])
    ]
    return ["  config fields that differ from the checkpoint (try config=None to infer it):", *diffs] if diffs else []


def _normalise(value: Any) -> Any:
    return to_int_tuple(value) if isinstance(value, (str, list, tuple)) else value


def check_compatible(
    model: torch.nn.Module, state: Mapping[str, torch.Tensor], config: Optional[Mapping[str, Any]] = None
) -> None:
    """Raise one ``CheckpointMismatchError`` listing every missing, unexpected or
    wrongly-shaped key (instead of torch's error from deep inside load_state_dict),
    and, given the config used, which of its fields disagree with the checkpoint."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.startswith(_UNUSED_AT_INFERENCE)]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if not (missing or unexpected or wrong):
        return
    lines = ["checkpoint does not fit the model configuration:", *_config_hint(state, config)]
    for title, items in (("shape mismatches", wrong), ("missing from checkpoint", missing), ("unexpected in checkpoint", unexpected)):
        if items:
            shown = items[:20] + ([f"... and {len(items) - 20} more"] if len(items) > 20 else [])
            lines.append(f"  {title} ({len(items)}):")
            lines.extend(f"    {item}" for item in shown)
    raise CheckpointMismatchError("\n".join(lines))


def build_model(state: Mapping[str, torch.Tensor], config: ConfigLike = None,
                device: Union[str, torch.device] = "cpu") -> AsrModel:
    """An ``AsrModel`` holding ``state``, in eval mode on ``device``. The resolved config is kept
    as ``model.config``.

    ``config``: ``None`` infers the architecture from the state dict
    (see :func:`model.config.infer_config`); a dict of ``AsrModel`` kwargs; a
    path to a ``config.json``; or a preset name such as ``"medium-ctc-aed"``."""
    cfg = _resolve_config(config, state)
    try:
        model = AsrModel(**cfg)
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(f"invalid model configuration: {exc}") from None
    check_compatible(model, state, cfg)
    model.load_state_dict(state, strict=False)
    model.config = cfg  # type: ignore[attr-defined]
    return model.to(device).eval()


def file_sha256(path: Union[str, PathLike], chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


_EPOCH = re.compile(r"^epoch-(\d+)(\D.*)?\.pt$")  # epoch-30.pt, epoch-30-avg-10.pt
_JIT_NAME = re.compile(r"(^|[^a-z])jit([^a-z]|$)", re.IGNORECASE)  # jit_script.pt, cpu_jit.pt, encoder_jit_trace.pt


def is_torchscript_name(name: str) -> bool:
    """Whether a ``*.pt`` file name is one icefall gives TorchScript exports (``jit_script.pt``,
    ``cpu_jit.pt``, ``*_jit_trace.pt``); :func:`is_torchscript` checks a local file's content."""
    return bool(_JIT_NAME.search(name))


def pick_checkpoint(names: Iterable[str]) -> str:
    """The checkpoint to load among a model directory's file names: ``pretrained.pt``, else the
    ``epoch-N*.pt`` with the highest epoch number N (so ``epoch-40.pt`` beats
    ``epoch-30-avg-10.pt``; at equal N an export such as ``epoch-N-avg-K.pt`` beats the training
    checkpoint ``epoch-N.pt``), else the only ``*.pt``. TorchScript exports (by name, see
    :func:`is_torchscript_name`) are never picked.

    The one place that decides, for local directories (:func:`find_checkpoint`) and object
    storage listings alike. Raises ``FileNotFoundError`` naming what was found when no rule
    picks one, and :class:`TorchScriptOnlyError` when only TorchScript exports are there."""
    all_pts = sorted(n for n in names if n.endswith(".pt"))
    pts = [n for n in all_pts if not is_torchscript_name(n)]
    if not pts and all_pts:
        raise TorchScriptOnlyError(
            f"only TorchScript exports ({', '.join(all_pts)}): they cannot be loaded safely (loading TorchScript "
            "runs code from the file); use the checkpoint they were exported from: pretrained.pt, or the "
            "epoch-N.pt files of the training run (an icefall Hugging Face repo keeps them under exp/)")
    if "pretrained.pt" in pts:
        return "pretrained.pt"
    epochs = [(int(m.group(1)), m.group(2) is not None, n) for n in pts if (m := _EPOCH.match(n))]
    if epochs:
        return max(epochs)[2]
    if len(pts) == 1:
        return pts[0]
    raise FileNotFoundError(f"no pretrained.pt or epoch-N.pt, and not exactly one *.pt (found: {', '.join(pts) or 'none'})")


def find_checkpoint(model_dir: Union[str, PathLike]) -> Path:
    """The checkpoint file of a local model directory (see :func:`pick_checkpoint`)."""
    model_dir = Path(model_dir)
    try:
        return model_dir / pick_checkpoint(p.name for p in model_dir.glob("*.pt") if p.is_file())
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{model_dir}: {exc}") from None
