"""Loading icefall / zipformer checkpoints into ``AsrModel``.

Accepted files (always read with ``torch.load(..., weights_only=True)``):

* ``pretrained.pt``: ``{"model": state_dict}``
* a bare ``state_dict``
* a training checkpoint ``epoch-N.pt`` / ``checkpoint-N.pt``: ``{"model": ...,
  "model_avg": ..., "optimizer": ..., "scheduler": ..., "sampler": ...}``; only
  ``model`` (or ``model_avg`` with ``use_averaged=True``) is read.

Keys saved from ``DistributedDataParallel`` (``module.`` prefix) are accepted.
"""

from __future__ import annotations

import hashlib
import json
import re
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


class CheckpointMismatchError(ValueError):
    """The checkpoint's tensors do not fit the model built from the config."""


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
    obj = torch.load(path, map_location="cpu", weights_only=True)
    return _unwrap(obj, use_averaged, path)


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


def load_checkpoint(
    path: Union[str, PathLike],
    config: ConfigLike = None,
    device: Union[str, torch.device] = "cpu",
    use_averaged: bool = False,
) -> AsrModel:
    """Build an ``AsrModel`` and load a checkpoint into it, in eval mode on ``device``.

    ``config``: ``None`` infers the architecture from the state dict
    (see :func:`model.config.infer_config`); a dict of ``AsrModel`` kwargs; a
    path to a ``config.json``; or a preset name such as ``"medium-ctc-aed"``.
    """
    state = read_state_dict(path, use_averaged=use_averaged)
    cfg = _resolve_config(config, state)
    model = AsrModel(**cfg)
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


def pick_checkpoint(names: Iterable[str]) -> str:
    """The checkpoint to load among a model directory's file names: ``pretrained.pt``, else the
    ``epoch-N*.pt`` with the highest epoch number N (so ``epoch-40.pt`` beats
    ``epoch-30-avg-10.pt``; at equal N an export such as ``epoch-N-avg-K.pt`` beats the training
    checkpoint ``epoch-N.pt``), else the only ``*.pt``.

    The one place that decides, for local directories (:func:`find_checkpoint`) and object
    storage listings alike. Raises ``FileNotFoundError`` naming what was found when no rule
    picks one."""
    pts = sorted(n for n in names if n.endswith(".pt"))
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
