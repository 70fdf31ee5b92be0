"""Training of the CTC + attention-decoder ``AsrModel`` (library; CLI: ``jobs/train_demo.py``).

* :func:`init_for_training`: the reference's small initial scales for residual branches.
* :func:`compute_loss`: ``ctc_scale * CTC + att_scale * label-smoothed attention CE``, both summed
  over the batch and divided by the number of target tokens.
* :class:`Trainer`: AdamW, linear warmup then cosine decay over the larger of step and time
  progress, gradient clipping, periodic checkpoints ``{"model": state_dict}`` (what
  :func:`model.load_checkpoint` reads) and :func:`average_checkpoints`.

Data comes from :mod:`model.training.data`; :mod:`model.training.evaluation` scores the result.
The model is the project's own ``AsrModel`` in train mode. It has no dropout, Balancer or
Whiten modules (it is inference-oriented), so regularisation here is SpecAugment only.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from model.asr_model import AsrModel
from model.precision import cpu_has_native_bf16

from .data import CutDataset, bucketed_batches, spec_augment


# ------------------------------------------------------------------ initialisation

#: Initial scales of the encoder's residual-branch output projections, as the reference's
#: ``ScaledLinear(..., initial_scale=...)`` sets them: each branch starts as a small correction,
#: so the freshly initialised encoder is close to the identity and trains from the first step.
BRANCH_OUT_SCALES = {"feed_forward": 0.1, "self_attn": 0.05, "nonlin_attention": 0.05, "conv_module": 0.05}
#: Scale of the positional projection of the attention weights (``linear_pos``).
POS_PROJ_SCALE = 0.05


def _scale_linear(linear: torch.nn.Linear, scale: float, gen: torch.Generator) -> None:
    """PyTorch's default weight init times ``scale``; bias uniform in +-0.1 * scale."""
    bound = 1.0 / math.sqrt(linear.in_features)  # kaiming_uniform(a=sqrt(5)) bound
    linear.weight.copy_((torch.rand(linear.weight.shape, generator=gen) * 2 - 1) * bound * scale)
    if linear.bias is not None:
        linear.bias.copy_((torch.rand(linear.bias.shape, generator=gen) * 2 - 1) * 0.1 * scale)


@torch.no_grad()
def init_for_training(model: AsrModel, seed: int = 0) -> int:
    """Re-initialise a fresh model's encoder the way the reference starts training.

    ``AsrModel`` is built for inference and leaves PyTorch's default initialisation; trained
    from that, every residual branch starts at full strength and the encoder spends hundreds of
    steps on a loss plateau. This scales the output projection of every feed-forward,
    attention, non-linear attention and convolution branch down (:data:`BRANCH_OUT_SCALES`),
    the positional projection by :data:`POS_PROJ_SCALE` and the attention-weight input
    projection by ``query_head_dim ** -0.25``. Returns the number of layers touched.
    """
    gen = torch.Generator().manual_seed(seed)
    touched = 0
    for name, module in model.encoder.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        parts = name.split(".")
        leaf, parent = parts[-1], (parts[-2] if len(parts) > 1 else "")
        branch = parent.rstrip("0123456789")
        if leaf == "out_proj" and branch in BRANCH_OUT_SCALES:
            _scale_linear(module, BRANCH_OUT_SCALES[branch], gen)
        elif leaf == "linear_pos":
            _scale_linear(module, POS_PROJ_SCALE, gen)
        elif leaf == "in_proj" and parent == "self_attn_weights":
            owner = model.encoder.get_submodule(".".join(parts[:-1]))
            _scale_linear(module, float(owner.query_head_dim) ** -0.25, gen)
        else:
            continue
        touched += 1
    return touched


# ------------------------------------------------------------------ loss


@dataclass
class LossParts:
    loss: torch.Tensor
    ctc: float
    att: float
    tokens: int
    frames: int


def compute_loss(model: AsrModel, x: torch.Tensor, x_lens: torch.Tensor, ys: Sequence[Sequence[int]],
                 ctc_scale: float = 0.2, att_scale: float = 0.8) -> LossParts:
    """CTC (blank ``model.blank_id``) + attention-decoder loss, per target token."""
    encoder_out, encoder_out_lens = model.forward_encoder(x, x_lens)
    num_tokens = sum(len(y) for y in ys)
    total = encoder_out.new_zeros(())
    ctc_val = att_val = 0.0
    if model.ctc_output is not None and ctc_scale > 0:
        log_probs = model.ctc_output(encoder_out)  # (N, T, V)
        targets = torch.tensor([t for y in ys for t in y], dtype=torch.int64)
        target_lens = torch.tensor([len(y) for y in ys], dtype=torch.int64)
        ctc = F.ctc_loss(log_probs.permute(1, 0, 2).float(), targets, encoder_out_lens.cpu(), target_lens,
                         blank=model.blank_id, reduction="sum", zero_infinity=True)
        total = total + ctc_scale * ctc
        ctc_val = float(ctc.detach()) / max(num_tokens, 1)
    if model.attention_decoder is not None and att_scale > 0:
        att = model.attention_decoder.calc_att_loss(encoder_out, encoder_out_lens, ys, reduction="sum")
        total = total + att_scale * att
        att_val = float(att.detach()) / max(num_tokens + len(ys), 1)
    return LossParts(total / max(num_tokens, 1), ctc_val, att_val, num_tokens, int(x_lens.sum()))


# ------------------------------------------------------------------ training


@dataclass
class TrainConfig:
    max_steps: int = 100000
    time_budget_s: Optional[float] = None
    batch_seconds: float = 120.0
    lr: float = 2e-3
    min_lr_ratio: float = 0.02
    warmup_steps: int = 500
    weight_decay: float = 1e-3
    grad_clip: float = 5.0
    ctc_scale: float = 0.2
    att_scale: float = 0.8
    spec_augment: bool = True
    spec_augment_after: int = 0  # steps without SpecAugment at the start
    seed: int = 0
    log_every: int = 20
    checkpoint_every: int = 0  # steps; 0: only at the end
    keep_checkpoints: int = 5
    average_last: int = 1  # checkpoints averaged into the final model
    #: "float32"; "bfloat16-embed": the convolutional front end (``encoder_embed``) under bf16
    #: autocast, the rest float32 (1.2x faster steps on a 2-core AMX CPU); "bfloat16": the whole
    #: forward under autocast (what a GPU wants; slower than float32 on that CPU, whose bf16
    #: matmuls at these small shapes do not use AMX). Weights, optimizer and losses stay float32.
    precision: str = "float32"


PRECISIONS = ("float32", "bfloat16-embed", "bfloat16")


def default_cpu_precision() -> str:
    """``bfloat16-embed`` where the CPU has native bf16, else ``float32``."""
    return "bfloat16-embed" if cpu_has_native_bf16() else "float32"


@dataclass
class TrainState:
    step: int = 0
    epoch: int = 0
    elapsed_s: float = 0.0
    frames: int = 0
    history: list[dict] = field(default_factory=list)
    checkpoints: list[str] = field(default_factory=list)


def lr_factor(progress: float, step: int, warmup_steps: int, min_ratio: float) -> float:
    """Linear warmup over ``warmup_steps``, then cosine decay to ``min_ratio`` at progress 1."""
    warm = min(1.0, (step + 1) / max(1, warmup_steps))
    p = min(max(progress, 0.0), 1.0)
    return warm * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * p)))


def average_checkpoints(paths: Sequence[str | Path]) -> dict[str, torch.Tensor]:
    """Element-wise mean of the ``"model"`` state dicts of ``paths`` (integer tensors: the last one's)."""
    avg: dict[str, torch.Tensor] = {}
    for k, p in enumerate(paths):
        state = torch.load(str(p), map_location="cpu", weights_only=True)["model"]
        for name, t in state.items():
            if k == 0:
                avg[name] = t.clone().double() if t.is_floating_point() else t.clone()
            elif t.is_floating_point():
                avg[name] += t.double()
            else:
                avg[name] = t.clone()
    for name, t in avg.items():
        if t.is_floating_point():
            avg[name] = (t / len(paths)).float()
    return avg


class Trainer:
    def __init__(self, model: AsrModel, train: CutDataset, config: TrainConfig, out_dir: str | Path,
                 log: Callable[[str], None] = print):
        if config.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {config.precision!r}")
        model.encoder_embed.conv_autocast_dtype = torch.bfloat16 if config.precision == "bfloat16-embed" else None
        self.model = model
        self.train = train
        self.cfg = config
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.log = log
        decay, no_decay = [], []
        for name, p in model.named_parameters():
            (no_decay if p.dim() < 2 else decay).append(p)
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                      {"params": no_decay, "weight_decay": 0.0}], lr=config.lr, betas=(0.9, 0.98))
        self.state = TrainState()
        self.rng = random.Random(config.seed)
        self.gen = torch.Generator().manual_seed(config.seed)

    def progress(self) -> float:
        p = self.state.step / max(1, self.cfg.max_steps)
        if self.cfg.time_budget_s:
            p = max(p, self.state.elapsed_s / self.cfg.time_budget_s)
        return p

    def done(self) -> bool:
        return self.state.step >= self.cfg.max_steps or (
            self.cfg.time_budget_s is not None and self.state.elapsed_s >= self.cfg.time_budget_s)

    def save(self, name: str, state_dict: Optional[dict] = None) -> Path:
        path = self.out_dir / name
        torch.save({"model": state_dict if state_dict is not None else self.model.state_dict()}, path)
        return path

    def _checkpoint(self) -> None:
        path = self.save(f"checkpoint-{self.state.step}.pt")
        self.state.checkpoints.append(str(path))
        keep = max(self.cfg.keep_checkpoints, self.cfg.average_last)
        while len(self.state.checkpoints) > keep:
            Path(self.state.checkpoints.pop(0)).unlink(missing_ok=True)

    def step(self, batch: Sequence[int]) -> dict:
        cfg, st = self.cfg, self.state
        t0 = time.time()
        self.model.train()
        x, x_lens, ys = self.train.collate(batch)
        if cfg.spec_augment and st.step >= cfg.spec_augment_after:
            spec_augment(x, x_lens, self.gen)
        factor = lr_factor(self.progress(), st.step, cfg.warmup_steps, cfg.min_lr_ratio)
        for g in self.opt.param_groups:
            g["lr"] = cfg.lr * factor
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bfloat16"):  # whole forward
            parts = compute_loss(self.model, x, x_lens, ys, cfg.ctc_scale, cfg.att_scale)
        self.opt.zero_grad(set_to_none=True)
        parts.loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip))
        if math.isfinite(grad_norm):
            self.opt.step()
        dt = time.time() - t0
        st.step += 1
        st.elapsed_s += dt
        st.frames += parts.frames
        rec = {"step": st.step, "loss": float(parts.loss.detach()), "ctc": parts.ctc, "att": parts.att, "lr": cfg.lr * factor,
               "grad_norm": grad_norm, "frames": parts.frames, "batch": len(batch), "seconds": dt}
        st.history.append(rec)
        return rec

    def run(self) -> TrainState:
        cfg, st = self.cfg, self.state
        durations = [u.duration for u in self.train.utterances]
        window: list[dict] = []
        while not self.done():
            for batch in bucketed_batches(durations, cfg.batch_seconds, self.rng):
                if self.done():
                    break
                rec = self.step(batch)
                window.append(rec)
                if cfg.log_every and st.step % cfg.log_every == 0:
                    fr = sum(r["frames"] for r in window) / max(1e-9, sum(r["seconds"] for r in window))
                    self.log(f"step {st.step} epoch {st.epoch} loss {np.mean([r['loss'] for r in window]):.3f} "
                             f"ctc {np.mean([r['ctc'] for r in window]):.3f} att {np.mean([r['att'] for r in window]):.3f} "
                             f"lr {rec['lr']:.2e} {fr:.0f} frames/s ({fr / 100:.1f} audio s/s) elapsed {st.elapsed_s / 60:.1f} min")
                    window = []
                if cfg.checkpoint_every and st.step % cfg.checkpoint_every == 0:
                    self._checkpoint()
            else:
                st.epoch += 1
        if not st.checkpoints or not st.checkpoints[-1].endswith(f"-{st.step}.pt"):
            self._checkpoint()
        return st

    def final_state_dict(self) -> dict[str, torch.Tensor]:
        paths = self.state.checkpoints[-max(1, self.cfg.average_last):]
        if len(paths) <= 1:
            return {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.log(f"averaging {len(paths)} checkpoints: {', '.join(Path(p).name for p in paths)}")
        return average_checkpoints(paths)
