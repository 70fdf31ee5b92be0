"""zipscribe's model package: an inference implementation of icefall's Zipformer
ASR model that loads public checkpoints (``pretrained.pt``) unchanged.

Usable on its own (it never imports :mod:`pipeline`): :class:`model.recognizer.Recognizer`
turns waveforms into text; :mod:`model.training` trains the demo model."""

from .asr_model import AsrModel, to_int_tuple
from .checkpoint import (CheckpointMismatchError, ModelLoadError, TorchScriptOnlyError, build_model, file_sha256,
                         find_checkpoint, pick_checkpoint, read_checkpoint, read_state_dict)
from .config import PRESETS, ConfigInferenceError, infer_config, preset
from .weights import WeightsSelection, load_checkpoint

__all__ = [
    "AsrModel",
    "CheckpointMismatchError",
    "ModelLoadError",
    "TorchScriptOnlyError",
    "WeightsSelection",
    "build_model",
    "read_checkpoint",
    "ConfigInferenceError",
    "PRESETS",
    "file_sha256",
    "find_checkpoint",
    "infer_config",
    "load_checkpoint",
    "pick_checkpoint",
    "preset",
    "read_state_dict",
    "to_int_tuple",
]
