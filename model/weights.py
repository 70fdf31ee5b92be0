"""Which weights to decode with: one checkpoint, or icefall's checkpoint averaging.

icefall decodes a training run with ``--epoch N --avg K [--use-averaged-model]``
(or ``--iter N`` over ``checkpoint-N.pt`` files). :class:`WeightsSelection` is
that choice; :func:`select_weights` turns it into the files to read (from a
listing, so object storage can fetch only those); :func:`load_weights` reads
them and computes the weights icefall's ``decode.py`` would use
(:func:`load_checkpoint` builds the model from a file or such a folder in one call):

* no ``--epoch`` / ``--iter``: the directory's checkpoint
  (:func:`model.checkpoint.pick_checkpoint`), its ``model`` weights, or its
  ``model_avg`` with ``use_averaged_model``;
* ``--epoch E --avg 1``: ``epoch-E.pt``'s ``model``;
* ``--epoch E --avg K`` (K > 1): the element-wise mean of ``model`` over
  ``epoch-(E-K+1).pt`` .. ``epoch-E.pt`` (epochs below 1 are skipped, as
  icefall does; integer buffers are floor-divided);
* ``--epoch E --avg K --use-averaged-model``: the running average that
  training kept in ``model_avg``, taken over the batches *between*
  ``epoch-(E-K).pt`` (excluded) and ``epoch-E.pt``. With ``s`` and ``e`` the two
  files' ``batch_idx_train`` and ``A_s``, ``A_e`` their ``model_avg``, the mean of
  the model over batches ``s+1 .. e`` is ``(A_e * e - A_s * s) / (e - s)``;
  only floating-point tensors are combined, others come from the end file;
* ``--iter I --avg K``: the K newest ``checkpoint-*.pt`` with number <= I,
  averaged; with ``--use-averaged-model`` the K+1 newest, and the range runs
  from the oldest of them (excluded) to the newest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Union

import torch

from .asr_model import AsrModel
from .checkpoint import (ConfigLike, ModelLoadError, _unwrap, build_model, pick_checkpoint, read_checkpoint,
                         read_state_dict)

_EPOCH_FILE = re.compile(r"^epoch-(\d+)\.pt$")
_ITER_FILE = re.compile(r"^checkpoint-(\d+)\.pt$")


@dataclass(frozen=True)
class WeightsSelection:
    """icefall's decode-time choice of weights (``--epoch/--iter``, ``--avg``, ``--use-averaged-model``).

    The default (no epoch, no iter) means "the directory's checkpoint as it is"."""

    epoch: Optional[int] = None
    iter: Optional[int] = None
    avg: int = 1
    use_averaged_model: bool = False

    def __post_init__(self) -> None:
        if self.epoch is not None and self.iter is not None:
            raise ValueError("give --epoch or --iter, not both")
        for name in ("epoch", "iter"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name} must be >= 1, got {value}")
        if self.avg < 1:
            raise ValueError(f"--avg must be >= 1, got {self.avg}")
        if self.avg > 1 and self.epoch is None and self.iter is None:
            raise ValueError("--avg needs --epoch or --iter (the checkpoints to average)")
        if self.use_averaged_model and self.epoch is not None and self.epoch - self.avg < 1:
            raise ValueError(f"--use-averaged-model averages between epoch-{self.epoch - self.avg}.pt (excluded) and "
                             f"epoch-{self.epoch}.pt: --avg must be smaller than --epoch")

    @property
    def is_default(self) -> bool:
        return self.epoch is None and self.iter is None and not self.use_averaged_model

    def label(self) -> str:
        """icefall's decode suffix: ``epoch-30-avg-9-use-averaged-model``; ``""`` for the default."""
        if self.epoch is not None:
            text = f"epoch-{self.epoch}-avg-{self.avg}"
        elif self.iter is not None:
            text = f"iter-{self.iter}-avg-{self.avg}"
        else:
            text = "model-avg" if self.use_averaged_model else ""
        return text + ("-use-averaged-model" if self.use_averaged_model and text != "model-avg" else "")

    @classmethod
    def from_dict(cls, data: Optional[Mapping[str, Any]]) -> "WeightsSelection":
        return cls(**{k: v for k, v in (data or {}).items() if v is not None})


@dataclass(frozen=True)
class SelectedWeights:
    """The files a :class:`WeightsSelection` needs (names relative to the checkpoint folder) and how
    they combine: ``single`` (one file's ``model``), ``model_avg`` (one file's ``model_avg``),
    ``mean`` (the mean of the files' ``model``) or ``range`` (``model_avg`` between ``files[0]``,
    excluded, and ``files[-1]``)."""

    files: tuple[str, ...]
    method: str
    label: str

    def describe(self) -> str:
        if self.method == "single":
            return f"{self.files[0]} (model)"
        if self.method == "model_avg":
            return f"{self.files[0]} (model_avg: training's running average)"
        if self.method == "mean":
            return f"mean of {len(self.files)} checkpoints' model: {', '.join(self.files)}"
        return f"model_avg over the batches between {self.files[0]} (excluded) and {self.files[-1]}"


@dataclass(frozen=True)
class WeightsInfo:
    """What :func:`load_weights` used: the selection, the files and the batch range averaged over."""

    selected: SelectedWeights
    batch_idx_train: tuple[int, ...] = ()
    #: what the (last) file holds: "pretrained (model only)", "training checkpoint", "bare state dict"
    kind: str = ""
    #: its top-level entries that are not training parameters (model, model_avg, optimizer, ...)
    entries: tuple[str, ...] = ()
    #: its training position, when it records one (epoch, batch_idx_train)
    position: dict[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        text = self.selected.describe()
        if self.selected.method == "range" and len(self.batch_idx_train) == 2:
            start, end = self.batch_idx_train
            text += f" (batches {start + 1}..{end})"
        return text


def select_weights(names: Iterable[str], selection: WeightsSelection = WeightsSelection()) -> SelectedWeights:
    """The checkpoint files ``selection`` needs among a checkpoint folder's file names.

    Raises ``FileNotFoundError`` naming the missing files, or what was found."""
    names = sorted(set(names))
    label = selection.label()
    if selection.epoch is None and selection.iter is None:
        chosen = pick_checkpoint(names)
        return SelectedWeights((chosen,), "model_avg" if selection.use_averaged_model else "single", label)
    if selection.epoch is not None:
        epochs = {int(m.group(1)): n for n in names if (m := _EPOCH_FILE.match(n))}
        end = selection.epoch
        if selection.use_averaged_model:
            wanted = [end - selection.avg, end]
        else:
            wanted = [i for i in range(end - selection.avg + 1, end + 1) if i >= 1]
        missing = [f"epoch-{i}.pt" for i in wanted if i not in epochs]
        if missing:
            have = ", ".join(epochs[i] for i in sorted(epochs)) or "no epoch-N.pt files"
            raise FileNotFoundError(f"{label} needs {', '.join(missing)}; found: {have}")
        files = tuple(epochs[i] for i in wanted)
    else:
        iters = sorted(((int(m.group(1)), n) for n in names if (m := _ITER_FILE.match(n)) and int(m.group(1)) <= selection.iter),
                       reverse=True)
        need = selection.avg + (1 if selection.use_averaged_model else 0)
        if len(iters) < need:
            raise FileNotFoundError(f"{label} needs {need} checkpoint-N.pt files with N <= {selection.iter}; "
                                    f"found {len(iters)}: {', '.join(n for _, n in iters) or 'none'}")
        files = tuple(n for _, n in reversed(iters[:need]))  # oldest first
    if selection.use_averaged_model:
        return SelectedWeights((files[0], files[-1]), "range", label)
    return SelectedWeights(files, "single" if len(files) == 1 else "mean", label)


def _unique_float_keys(state: Mapping[str, torch.Tensor]) -> list[str]:
    """Keys of distinct tensors (tied parameters share storage and must be scaled once)."""
    seen: set[int] = set()
    keys = []
    for key, value in state.items():
        ptr = value.data_ptr()
        if ptr in seen:
            continue
        seen.add(ptr)
        keys.append(key)
    return keys


def mean_state_dicts(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Element-wise mean of state dicts with the same keys (integer tensors: floor of the mean)."""
    total = {k: v.clone() for k, v in states[0].items()}
    for other in states[1:]:
        for key in _unique_float_keys(total):
            total[key] += other[key]
    n = len(states)
    for key in _unique_float_keys(total):
        if total[key].is_floating_point():
            total[key] /= n
        else:
            total[key] //= n
    return total


def average_between(start: Mapping[str, torch.Tensor], end: Mapping[str, torch.Tensor], batch_start: int,
                    batch_end: int) -> dict[str, torch.Tensor]:
    """The model averaged over batches ``batch_start+1 .. batch_end`` from two running averages
    (``model_avg`` at ``batch_start`` and at ``batch_end``): ``(end*e - start*s) / (e - s)``,
    computed as ``(end + start * (-s/e)) * (e/(e-s))`` so large batch counts do not overflow
    half-precision tensors. Non-float tensors are taken from ``end``."""
    interval = batch_end - batch_start
    if interval <= 0:
        raise ModelLoadError(f"batch_idx_train does not increase between the checkpoints ({batch_start} -> {batch_end})")
    w_end = batch_end / interval
    w_start = 1.0 - w_end
    out = {k: v.clone() for k, v in end.items()}
    for key in _unique_float_keys(out):
        value = out[key]
        if value.is_floating_point():
            value += start[key].to(value.dtype) * (w_start / w_end)
            value *= w_end
    return out


_STATE_ENTRIES = ("model", "model_avg", "optimizer", "scheduler", "grad_scaler", "sampler")


def describe_contents(obj: Any) -> dict[str, Any]:
    """``kind``, ``entries`` and ``position`` of an unpickled checkpoint (see :class:`WeightsInfo`)."""
    if not isinstance(obj, Mapping) or all(isinstance(v, torch.Tensor) for v in obj.values()):
        return {"kind": "bare state dict", "entries": (), "position": {}}
    entries = tuple(k for k in _STATE_ENTRIES if obj.get(k) is not None)
    training = any(k in entries for k in ("optimizer", "model_avg", "scheduler"))
    position = {k: obj[k] for k in ("epoch", "cur_epoch", "batch_idx_train") if isinstance(obj.get(k), int)}
    return {"kind": "training checkpoint" if training else "pretrained (model only)", "entries": entries,
            "position": position}


def _batch_idx(obj: Any, path: Path) -> int:
    value = obj.get("batch_idx_train") if isinstance(obj, Mapping) else None
    if not isinstance(value, int):
        raise ModelLoadError(f"{path}: no batch_idx_train: not an icefall training checkpoint, so "
                             "--use-averaged-model cannot average between checkpoints")
    return value


def load_weights(folder: Union[str, PathLike], selected: SelectedWeights) -> tuple[dict[str, torch.Tensor], WeightsInfo]:
    """Read the files of ``selected`` from ``folder`` and combine them as icefall's decode does."""
    folder = Path(folder)
    paths = [folder / name for name in selected.files]
    if selected.method in ("single", "model_avg"):
        obj = read_checkpoint(paths[0])
        state = _unwrap(obj, selected.method == "model_avg", paths[0])
        return state, WeightsInfo(selected, **describe_contents(obj))
    if selected.method == "mean":
        states, obj = [], None
        for p in paths:
            obj = read_checkpoint(p)
            states.append(_unwrap(obj, False, p))
            obj = describe_contents(obj)  # keep the description, not the optimizer state
        _same_keys(states, paths)
        return mean_state_dicts(states), WeightsInfo(selected, **obj)
    start_obj = read_checkpoint(paths[0])
    s, start = _batch_idx(start_obj, paths[0]), _unwrap(start_obj, True, paths[0])
    del start_obj
    end_obj = read_checkpoint(paths[-1])
    e, end = _batch_idx(end_obj, paths[-1]), _unwrap(end_obj, True, paths[-1])
    _same_keys([end, start], [paths[-1], paths[0]])
    return average_between(start, end, s, e), WeightsInfo(selected, batch_idx_train=(s, e), **describe_contents(end_obj))


def _same_keys(states: list[dict[str, torch.Tensor]], paths: list[Path]) -> None:
    keys = set(states[0])
    for state, path in zip(states[1:], paths[1:]):
        if set(state) != keys:
            raise ModelLoadError(f"{path} has different parameters from {paths[0]}: not the same model")


def load_checkpoint(
    path: Union[str, PathLike],
    config: ConfigLike = None,
    device: Union[str, torch.device] = "cpu",
    use_averaged: bool = False,
    weights: Optional[WeightsSelection] = None,
) -> AsrModel:
    """Build an ``AsrModel`` from a checkpoint file, or from a folder of training checkpoints
    with icefall's choice of weights, in eval mode on ``device``.

    ``path``: a checkpoint file (``pretrained.pt``, ``epoch-N.pt``, a bare state dict), or a
    folder holding ``epoch-*.pt`` / ``checkpoint-*.pt`` (``weights`` then picks and combines
    them; default: the folder's checkpoint, :func:`model.checkpoint.pick_checkpoint`).
    ``config``: ``None`` infers the architecture from the state dict; a dict of ``AsrModel``
    kwargs; a path to a ``config.json``; or a preset name such as ``"medium-ctc-aed"``.
    ``use_averaged``: a file's ``model_avg`` instead of ``model`` (same as
    ``WeightsSelection(use_averaged_model=True)``)."""
    path = Path(path)
    selection = weights or WeightsSelection(use_averaged_model=use_averaged)
    if use_averaged and not selection.use_averaged_model:
        raise ValueError("use_averaged=True contradicts weights.use_averaged_model=False")
    if path.is_dir():
        selected = select_weights([p.name for p in path.iterdir() if p.is_file()], selection)
        state, _ = load_weights(path, selected)
    else:
        if not selection.is_default and (selection.epoch is not None or selection.iter is not None):
            raise ValueError(f"{path} is one file: --epoch / --iter / --avg choose among the files of a folder")
        state = read_state_dict(path, selection.use_averaged_model)
    return build_model(state, config, device)
