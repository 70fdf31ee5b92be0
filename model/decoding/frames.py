"""Running a search's frame loop: eagerly, or replayed from a CUDA graph on a GPU.

A search written for :func:`run_frames` keeps all its state in preallocated tensors, in two
copies that alternate where it needs them (frame ``t`` reads copy ``t % 2`` and writes the
other), takes its per-frame inputs as (T, ...) tensors and writes its per-frame outputs into
(T, ...) tensors, and has a ``step(parity, inputs, outputs)`` that reads only frame ``t``'s
slices of the inputs and writes only frame ``t``'s slices of the outputs. Then:

* ``"eager"``: ``step(t % 2, [x[t] ...], [y[t] ...])`` for every frame, the slices being views;
* ``"graphs"`` (CUDA): frame ``t`` is read and written through a frame counter held on the
  device (``index_select`` of the inputs, ``index_copy_`` of the outputs, the counter
  incremented in place), so that a block of :data:`BLOCK` frames is the same work whatever
  ``t`` is: it is captured once per call as a CUDA graph and replayed for every block; one replay
  launches BLOCK frames. The frames before the first whole block run eagerly, the first block runs
  eagerly on a side stream (the warm-up a capture needs) before the capture. If capturing
  fails, the remaining frames run eagerly;
* ``"staged"``: the graph path's block body (device counter, ``index_select``, ``index_copy_``)
  run eagerly, on any device. The tests run it on the CPU to show that the block body computes
  what the eager loop computes.

The results are the same in every mode: each frame is the same operations on the same values.
"""

from __future__ import annotations

import logging
import os
from typing import Callable, Optional, Sequence

import torch

log = logging.getLogger(__name__)

MODES = ("eager", "graphs", "staged")

#: frames per captured graph (even: a block starts on the same parity every time). The graph is
#: captured per call (the buffers are the call's), after one eager warm-up block: a short block
#: keeps that overhead small against the replays it saves (150-frame segments: 6 + 2 x 8 frames
#: dispatched on the host, 17 replays)
BLOCK = 8

Step = Callable[[int, Sequence[torch.Tensor], Sequence[torch.Tensor]], None]


def default_mode(device: torch.device) -> str:
    """``graphs`` on CUDA devices unless ``ZIPSCRIBE_CUDA_GRAPHS=0``, else ``eager``."""
    if device.type == "cuda" and os.environ.get("ZIPSCRIBE_CUDA_GRAPHS", "1") != "0":
        return "graphs"
    return "eager"


def run_frames(step: Step, inputs: Sequence[torch.Tensor], outputs: Sequence[torch.Tensor], n_frames: int,
               mode: Optional[str] = None, block: int = BLOCK) -> None:
    """Run ``step(t % 2, [x[t] for x in inputs], [y[t] for y in outputs])`` for ``t`` in
    ``range(n_frames)`` in ``mode`` (:data:`MODES`; None: :func:`default_mode` of the inputs'
    device). ``inputs`` and ``outputs`` are (T, ...) tensors with T >= ``n_frames``."""
    if n_frames <= 0:
        return
    if mode is None:
        mode = default_mode(inputs[0].device)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if block < 2 or block % 2:
        raise ValueError(f"block must be even and >= 2, got {block}")
    whole = n_frames // block
    if mode == "eager" or (mode == "graphs" and whole < 2):
        _eager(step, inputs, outputs, 0, n_frames)
        return
    first = n_frames - whole * block  # frames before the first whole block
    _eager(step, inputs, outputs, 0, first)
    counter = torch.full((1,), first, dtype=torch.long, device=inputs[0].device)

    def body() -> None:
        for i in range(block):
            frame_in = [x.index_select(0, counter).squeeze(0) for x in inputs]
            frame_out = [torch.empty_like(y[0]) for y in outputs]
            step((first + i) % 2, frame_in, frame_out)
            for y, o in zip(outputs, frame_out):
                y.index_copy_(0, counter, o.unsqueeze(0))
            counter.add_(1)

    if mode == "staged":
        for _ in range(whole):
            body()
        return
    replay = _capture(body)
    done = first + block  # the warm-up block ran
    if replay is None:
        _eager(step, inputs, outputs, done, n_frames)
        return
    for _ in range(whole - 1):
        replay()


def _eager(step: Step, inputs: Sequence[torch.Tensor], outputs: Sequence[torch.Tensor], start: int, stop: int) -> None:
    for t in range(start, stop):
        step(t % 2, [x[t] for x in inputs], [y[t] for y in outputs])


def _capture(body: Callable[[], None]) -> Optional[Callable[[], None]]:
    """``body`` once eagerly on a side stream (the warm-up; it does the first block's frames),
    then captured as a CUDA graph: the replay function, or None if capturing failed."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        body()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            body()
    except Exception as exc:  # noqa: BLE001 - any capture failure: run the frames eagerly instead
        log.warning("CUDA graph capture of the search frames failed (%s); running them eagerly", exc)
        return None
    return graph.replay
