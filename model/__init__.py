"""zipscribe's model package: an inference implementation of icefall's Zipformer
ASR model that loads public checkpoints (``pretrained.pt``) unchanged.

Usable on its own (it never imports :mod:`pipeline`): :class:`model.recognizer.Recognizer`
turns waveforms into text; :mod:`model.training` trains the demo model.

The names below are imported on first use (PEP 562), so that the modules without torch
(:mod:`model.numbers`, :mod:`model.tokenizer`) can be used by processes that never load a model,
such as a WER report over a million rows, without paying torch's import and memory."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AsrModel": "asr_model",
    "to_int_tuple": "asr_model",
    "CheckpointMismatchError": "checkpoint",
    "ModelLoadError": "checkpoint",
    "TorchScriptOnlyError": "checkpoint",
    "build_model": "checkpoint",
    "file_sha256": "checkpoint",
    "find_checkpoint": "checkpoint",
    "pick_checkpoint": "checkpoint",
    "read_checkpoint": "checkpoint",
    "read_state_dict": "checkpoint",
    "PRESETS": "config",
    "ConfigInferenceError": "config",
    "infer_config": "config",
    "preset": "config",
    "WeightsSelection": "weights",
    "load_checkpoint": "weights",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'model' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
