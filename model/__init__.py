"""zipscribe's model package: an inference implementation of icefall's Zipformer
ASR model that loads public checkpoints (``pretrained.pt``) unchanged."""

from .asr_model import AsrModel, to_int_tuple
from .checkpoint import CheckpointMismatchError, file_sha256, load_checkpoint, read_state_dict
from .config import PRESETS, ConfigInferenceError, infer_config, preset

__all__ = [
    "AsrModel",
    "CheckpointMismatchError",
    "ConfigInferenceError",
    "PRESETS",
    "file_sha256",
    "infer_config",
    "load_checkpoint",
    "preset",
    "read_state_dict",
    "to_int_tuple",
]
