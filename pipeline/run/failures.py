"""What a model actor does with an exception from the model: the classification as pure functions
of the exception (tested on the CPU with the messages CUDA and its libraries write), and the
exceptions the transcriber raises for the model stage.

=================  ==========================================  ===================================
kind               examples                                    what happens
=================  ==========================================  ===================================
``OUT_OF_MEMORY``  ``torch.OutOfMemoryError``, "CUDA error:    the batch is split in halves and the
                   out of memory", CUBLAS_STATUS_ALLOC_FAILED  budget lowered; one cut alone that
                                                               does not fit: :class:`ShardDeviceError`
``POISONED``       device-side assert, illegal memory access,  the CUDA context is unusable (sticky
                   unspecified launch failure, ECC error,      errors): :class:`DeviceFailure`, the
                   CUBLAS_STATUS_EXECUTION_FAILED              process ends and Ray restarts it
``DEVICE``         "CUDA error: invalid configuration          the context is still usable: each cut
                   argument", no kernel image, CUBLAS_STATUS_  is retried alone; one that still
                   NOT_SUPPORTED, CUDNN_STATUS_NOT_SUPPORTED   fails: :class:`ShardDeviceError`
``None``           anything else (an input the model cannot    each cut is retried alone; one that
                   take)                                       still fails becomes an error row
=================  ==========================================  ===================================

Only an input the model cannot take becomes an error row (which a rerun keeps); anything the device
did is retried: the shard on this actor (:class:`ShardDeviceError`), or on a fresh process
(:class:`DeviceFailure`), within the run's ``--max-attempts``.
"""

from __future__ import annotations

from typing import Optional

import torch

__all__ = ["DEVICE", "OUT_OF_MEMORY", "POISONED", "DeviceError", "DeviceFailure", "ShardDeviceError", "failure_kind",
           "is_fatal_device_error", "is_out_of_memory"]

OUT_OF_MEMORY = "out of memory"
POISONED = "poisoned"
DEVICE = "device"


class DeviceError(RuntimeError):
    """The actor cannot run on the device it was asked for or given (a configuration error: the run
    stops at once, exit status 2)."""


class DeviceFailure(RuntimeError):
    """The device failed in a way that poisons the process (a sticky CUDA error), or the model's
    warm-up failed on the device. The model stage ends the actor's process so Ray restarts it and
    retries the shard; such failures never become error rows."""


class ShardDeviceError(RuntimeError):
    """The device cannot do one cut of the shard even alone, for a reason that is not the cut's
    audio: it does not fit in memory, or a device error repeats. The model stage tries the shard
    again and, failing that, reports it as failed: no part is written, so a rerun does it."""


_OOM_MARKERS = ("CUDA out of memory", "CUDA error: out of memory", "can't allocate memory",
                "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED",
                "Failed to allocate memory")  # the last: onnxruntime's arena

# Errors after which a CUDA context cannot be trusted: CUDA's sticky errors (every later call in
# the process fails the same way), and library statuses that report one
_POISON_MARKERS = ("device-side assert", "illegal memory access", "illegal instruction", "misaligned address",
                   "unspecified launch failure", "hardware stack error", "invalid program counter",
                   "launch timed out", "ECC error", "NVLink", "not supported on global/shared address space",
                   "CUDA error: unknown error", "context is destroyed", "fallen off the bus",
                   "CUBLAS_STATUS_EXECUTION_FAILED", "CUBLAS_STATUS_INTERNAL_ERROR", "CUDNN_STATUS_EXECUTION_FAILED",
                   "CUDNN_STATUS_MAPPING_ERROR", "NCCL error")

# Errors of the device or its libraries that leave the context usable
_DEVICE_MARKERS = ("CUDA error", "CUDA driver error", "CUBLAS_STATUS", "CUDNN_STATUS", "cuDNN error", "CUFFT_",
                   "cuFFT error", "CUSOLVER_STATUS", "CUSPARSE_STATUS")


def failure_kind(exc: BaseException) -> Optional[str]:
    """:data:`OUT_OF_MEMORY`, :data:`POISONED`, :data:`DEVICE`, or None for a failure that is not
    the device's (see the module's table)."""
    text = str(exc)
    if isinstance(exc, torch.OutOfMemoryError) or any(m in text for m in _OOM_MARKERS):
        return OUT_OF_MEMORY
    if any(m in text for m in _POISON_MARKERS):
        return POISONED
    accelerator_error = getattr(torch, "AcceleratorError", None)
    if (accelerator_error is not None and isinstance(exc, accelerator_error)) or any(m in text for m in _DEVICE_MARKERS):
        return DEVICE
    return None


def is_out_of_memory(exc: BaseException) -> bool:
    """A failed allocation (CUDA, its libraries, or the CPU allocator): the batch may fit when split."""
    return failure_kind(exc) == OUT_OF_MEMORY


def is_fatal_device_error(exc: BaseException) -> bool:
    """A device error after which the process cannot go on (see :class:`DeviceFailure`)."""
    return failure_kind(exc) == POISONED
