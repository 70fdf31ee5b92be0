"""Which precision the model runs in on a device: the policy behind ``--precision auto``.

=========================  ======================================================
device                     ``auto``
=========================  ======================================================
CUDA, compute capability   ``bf16`` autocast: computed natively (A100, H100, H200,
>= 8.0                     L4, RTX 30xx/40xx); fp32's range, so nothing overflows
CUDA, compute capability   ``fp16`` autocast: these GPUs (V100, T4) have fp16
< 8.0                      tensor cores but no bf16 (emulated bf16 is slow or
                           refused); icefall trains Zipformers with fp16 AMP and
                           limits their activations. Autocast keeps softmax,
                           log-softmax, exp, pow, sums and norms in fp32, but a
                           Linear's output stays fp16: a model with activations
                           past 65504 overflows (the demo model does: measured by
                           ``bench/precision_wer.py``). The recognizer then redoes
                           the batch in fp32 and stays there (its ``precision``
                           says so), so fp16 is never wrong, only sometimes not
                           faster.
CPU                        ``fp32``: CPU autocast is emulated (~5x slower) without
                           AVX-512 BF16 / AMX; with them bf16 is ~1.5x faster at
                           the same WER (``bench/precision_wer.py``), but results
                           would then depend on the machine's CPU: ask for it with
                           ``--precision bf16``
=========================  ======================================================

An explicit ``bf16`` / ``fp16`` / ``fp32`` is taken as asked; a choice the device
only emulates says so in its reason. :func:`resolve_precision` takes the CUDA
compute capability as an argument (read from the device when not given) so the
policy is one pure function.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch

#: accepted spellings -> canonical name
ALIASES = {"auto": "auto", "fp32": "fp32", "float32": "fp32", "bf16": "bf16", "bfloat16": "bf16",
           "fp16": "fp16", "float16": "fp16"}
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Precision:
    """A resolved precision: ``name`` (fp32 / bf16 / fp16), the autocast ``dtype`` (None: no
    autocast) and ``reason``, one line for the run summary."""

    name: str
    dtype: Optional[torch.dtype]
    reason: str


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX-512 BF16 / AMX), as oneDNN sees it.
    Without it bf16 convolutions are emulated: ~5x slower on an AVX2-only CPU."""
    probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return bool(probe()) if probe is not None else False
    except RuntimeError:
        return False


def cuda_capability(device: Union[str, torch.device]) -> tuple[int, int]:
    return tuple(torch.cuda.get_device_capability(torch.device(device)))  # type: ignore[return-value]


def resolve_precision(requested: str, device: Union[str, torch.device],
                      capability: Optional[tuple[int, int]] = None) -> Precision:
    """The precision for ``requested`` (auto / fp32 / bf16 / fp16, or their long names) on
    ``device``; ``capability``: the CUDA compute capability (read from the device if None)."""
    name = ALIASES.get(str(requested).lower())
    if name is None:
        raise ValueError(f"precision must be one of auto, fp32, bf16, fp16 (or float32, bfloat16, float16); got {requested!r}")
    device = torch.device(device)
    if device.type == "cuda":
        cap = capability or cuda_capability(device)
        native_bf16 = cap >= (8, 0)
        where = f"compute capability {cap[0]}.{cap[1]}"
        if name == "auto":
            return (Precision("bf16", torch.bfloat16, f"auto: bf16, native on {where}") if native_bf16 else
                    Precision("fp16", torch.float16, f"auto: fp16, {where} has no native bf16"))
        if name == "bf16" and not native_bf16:
            return Precision("bf16", torch.bfloat16, f"asked for; emulated on {where} (slow): fp16 is native there")
        return Precision(name, DTYPES[name], f"asked for ({where})")
    if name == "auto":
        return Precision("fp32", None, "auto: fp32 on CPU")
    if name == "bf16" and not cpu_has_native_bf16():
        return Precision("bf16", torch.bfloat16, "asked for; emulated on this CPU (no AVX-512 BF16 / AMX): slow")
    return Precision(name, DTYPES[name], "asked for (CPU autocast)" if name != "fp32" else "asked for")
