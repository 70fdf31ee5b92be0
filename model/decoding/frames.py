"""Running a search's frame loop: eagerly, or replayed from CUDA graphs on a GPU.

A search written for :func:`run_frames` keeps all its state in preallocated tensors, in two
copies that alternate (frame ``t`` reads copy ``t % 2`` and writes the other), and has a
``step(parity, inputs, outputs)`` that only reads ``inputs`` (frame ``t``'s slices of its
per-frame inputs) and writes ``outputs`` (frame ``t``'s slices of its per-frame outputs). Then:

* ``"eager"``: ``step`` is called on the slices themselves, one frame after the other;
* ``"graphs"`` (CUDA): the first two frames run eagerly on a side stream (the warm-up CUDA graphs
  need), then one graph per parity is captured with *static* input and output buffers, and
  each later frame is three steps: copy the frame's inputs into the static buffers, replay
  the graph of its parity, copy the static outputs out. The copies are device-to-device; a
  replay launches the whole frame at the cost of about one launch. If capturing fails, the
  frames run eagerly;
* ``"staged"``: the graph path's staging without a graph (any device): the same static buffers
  and copies around a plain ``step`` call. The tests run it on the CPU to show that staging
  changes nothing.

The results are the same in every mode: the operations are the same, in the same order.
"""

from __future__ import annotations

import logging
import os
from typing import Callable, Optional, Sequence

import torch

log = logging.getLogger(__name__)

MODES = ("eager", "graphs", "staged")

Step = Callable[[int, Sequence[torch.Tensor], Sequence[torch.Tensor]], None]
Slices = Callable[[int], Sequence[torch.Tensor]]


def default_mode(device: torch.device) -> str:
    """``graphs`` on CUDA devices unless ``ZIPSCRIBE_CUDA_GRAPHS=0``, else ``eager``."""
    if device.type == "cuda" and os.environ.get("ZIPSCRIBE_CUDA_GRAPHS", "1") != "0":
        return "graphs"
    return "eager"


def run_frames(step: Step, frame_inputs: Slices, frame_outputs: Slices, n_frames: int,
               mode: Optional[str] = None) -> None:
    """Run ``step(t % 2, frame_inputs(t), frame_outputs(t))`` for ``t`` in ``range(n_frames)``
    in ``mode`` (:data:`MODES`; None: :func:`default_mode` of the inputs' device)."""
    if n_frames <= 0:
        return
    if mode is None:
        mode = default_mode(frame_inputs(0)[0].device)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "eager" or (mode == "graphs" and n_frames <= 2):
        for t in range(n_frames):
            step(t % 2, frame_inputs(t), frame_outputs(t))
        return
    static_in = [x.clone() for x in frame_inputs(0)]
    static_out = [y.clone() for y in frame_outputs(0)]

    def staged(t: int, run: Callable[[int], None]) -> None:
        for buf, x in zip(static_in, frame_inputs(t)):
            buf.copy_(x)
        run(t % 2)
        for y, buf in zip(frame_outputs(t), static_out):
            y.copy_(buf)

    start = 0
    replay: Optional[Callable[[int], None]] = None
    if mode == "graphs":
        replay = _capture(step, static_in, static_out, frame_inputs, frame_outputs)
        start = 2
    if replay is None:
        replay = lambda parity: step(parity, static_in, static_out)  # noqa: E731
    for t in range(start, n_frames):
        staged(t, replay)


def _capture(step: Step, static_in: list, static_out: list, frame_inputs: Slices,
             frame_outputs: Slices) -> Optional[Callable[[int], None]]:
    """Frames 0 and 1 eagerly on a side stream (the warm-up), then a graph of ``step`` for each
    parity; the replay function, or None (after running frames 0 and 1) if capture failed."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for t in range(2):
            step(t % 2, frame_inputs(t), frame_outputs(t))
    torch.cuda.current_stream().wait_stream(side)
    graphs = []
    try:
        for parity in range(2):
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                step(parity, static_in, static_out)
            graphs.append(graph)
    except Exception as exc:  # noqa: BLE001 - any capture failure: run the frames eagerly instead
        log.warning("CUDA graph capture of a search frame failed (%s); running it eagerly", exc)
        return None
    return lambda parity: graphs[parity].replay()
