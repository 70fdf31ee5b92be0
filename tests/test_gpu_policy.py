"""GPU-readiness policies, tested on the CPU: the precision chosen per device capability, and
what a model actor does when a batch runs out of memory or the device fails.

The device's answers are faked here (a capability passed to the policy function; a recognizer
wrapper that raises ``torch.OutOfMemoryError`` above a padded-seconds limit, or a CUDA error);
the product code under test is the real one."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from model.precision import resolve_precision
from model.recognizer import StageTimes
from pipeline.run.summary import RunSummary
from pipeline.run.transcriber import (ActorConfig, DeviceFailure, Transcriber, is_fatal_device_error,
                                      is_out_of_memory)

from helpers import make_tiny_model_dir

SR = 16000


@pytest.mark.parametrize("requested,cap,name,reason", [
    ("auto", (9, 0), "bf16", "native on compute capability 9.0"),
    ("auto", (8, 0), "bf16", "native on compute capability 8.0"),
    ("auto", (7, 5), "fp16", "compute capability 7.5 has no native bf16"),
    ("auto", (7, 0), "fp16", "compute capability 7.0 has no native bf16"),
    ("bf16", (7, 0), "bf16", "emulated on compute capability 7.0"),
    ("float16", (9, 0), "fp16", "asked for"),
    ("fp32", (7, 0), "fp32", "asked for"),
])
def test_precision_by_cuda_capability(requested, cap, name, reason):
    p = resolve_precision(requested, "cuda", capability=cap)
    assert p.name == name and reason in p.reason
    assert p.dtype == {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def test_precision_on_cpu_and_bad_names():
    assert resolve_precision("auto", "cpu").name == "fp32"
    assert resolve_precision("bfloat16", "cpu").dtype == torch.bfloat16
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("int8", "cpu")


class FakeDevice:
    """Wraps the real recognizer; fails batches as a device would (a test fake, not product code)."""

    def __init__(self, real, oom_above: float = float("inf"), fail_with: Exception | None = None,
                 bad_length: int | None = None):
        self.real, self.oom_above, self.fail_with, self.bad_length = real, oom_above, fail_with, bad_length
        self.calls: list[float] = []

    def transcribe_all(self, waves):
        padded = len(waves) * max(w.size for w in waves) / SR
        self.calls.append(padded)
        if self.fail_with is not None:
            raise self.fail_with
        if padded > self.oom_above:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {padded:.0f} MiB")
        if self.bad_length is not None and any(w.size == self.bad_length for w in waves):
            raise ValueError("input too short for the encoder")
        return self.real.transcribe_all(waves)

    def __getattr__(self, name):
        return getattr(self.real, name)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny"))


@pytest.fixture()
def transcriber(model_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    t = Transcriber(ActorConfig(model_uri=str(model_dir), model_sha256="", output_uri=str(tmp_path), run_id="t",
                                max_batch_seconds=40.0, max_cut_seconds=10.0, num_threads=1))
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    return t


def waves(seconds: list[float]) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [(0.1 * rng.standard_normal(int(s * SR))).astype(np.float32) for s in seconds]


def texts(results):
    """Each cut's text (its only decoding's), or its error message."""
    return [r if isinstance(r, str) else (r[0] if isinstance(r, list) else r).text for r in results]


def test_out_of_memory_splits_the_batch_and_lowers_the_budget(transcriber):
    w = waves([5.0, 4.0, 5.0, 3.0, 5.0, 4.5])  # 30 padded s
    expected = [t.text for t in transcriber.recognizer.transcribe(w)[0]]
    fake = transcriber.recognizer = FakeDevice(transcriber.recognizer, oom_above=12.0)
    got = transcriber._transcribe(w, StageTimes())
    assert texts(got) == expected  # every cut transcribed, in order, as one batch would have
    # 30 s fails -> budget 15; the short half (3, 4, 4.5 s: 13.5 padded s) fails too -> 6.75
    assert transcriber.oom_splits == 2 and transcriber.max_batch_seconds == 6.75
    assert fake.calls[:2] == [30.0, 13.5]
    before = len(fake.calls)
    transcriber._transcribe(w, StageTimes())
    assert all(c <= 6.75 for c in fake.calls[before:])  # split by the lowered budget before running: no new OOM
    assert transcriber.oom_splits == 2


def test_a_single_cut_that_does_not_fit_is_an_error_row(transcriber):
    transcriber.recognizer = FakeDevice(transcriber.recognizer, oom_above=3.0)
    got = transcriber._transcribe(waves([5.0, 2.0]), StageTimes())
    assert isinstance(got[0], str) and "OutOfMemoryError" in got[0] and "5.0 s alone does not fit" in got[0]
    assert not isinstance(got[1], str)


@pytest.mark.parametrize("error", [
    RuntimeError("CUDA error: device-side assert triggered\nCompile with TORCH_USE_CUDA_DSA"),
    RuntimeError("CUDA error: an illegal memory access was encountered"),
    RuntimeError("CUBLAS_STATUS_EXECUTION_FAILED when calling cublasGemmEx"),
])
def test_device_failures_end_the_actor_instead_of_becoming_error_rows(transcriber, error):
    assert is_fatal_device_error(error) and not is_out_of_memory(error)
    transcriber.recognizer = FakeDevice(transcriber.recognizer, fail_with=error)
    with pytest.raises(DeviceFailure, match="CUDA error|CUBLAS"):
        transcriber._transcribe(waves([2.0, 3.0]), StageTimes())


def test_other_failures_isolate_the_bad_cut(transcriber):
    w = waves([2.0, 0.05, 3.0])
    transcriber.recognizer = FakeDevice(transcriber.recognizer, bad_length=w[1].size)
    got = transcriber._transcribe(w, StageTimes())
    assert isinstance(got[1], str) and "input too short" in got[1]
    assert not isinstance(got[0], str) and not isinstance(got[2], str)
    assert transcriber.oom_splits == 0 and transcriber.max_batch_seconds == 40.0


def test_memory_probe_finds_the_budget_before_any_audio(transcriber):
    fake = transcriber.recognizer = FakeDevice(transcriber.recognizer, oom_above=25.0)
    results = transcriber.probe_memory()  # 4 x 10 s (max_cut_seconds) = the budget of 40 padded s
    assert fake.calls[0] == 40.0 and len(results) == 4 and not any(isinstance(r, str) for r in results)
    assert transcriber.max_batch_seconds == 20.0


def test_summary_reports_precision_and_memory_events():
    s = RunSummary(run_id="r", manifest=[], output="o", model_id="m", model_sha256="x" * 64, decoding="d",
                   started_at="now")
    base = {"cuts_ok": 1, "cuts_error": 0, "audio_seconds": 1.0, "padded_seconds": 1.0, "stage_seconds": {}}
    s.add({**base, "precision": "fp32 (auto: fp32 on CPU)", "oom_splits": 0, "batch_budget_seconds": 160.0})
    s.add({**base, "precision": "fp32 (auto: fp32 on CPU)", "oom_splits": 2, "batch_budget_seconds": 40.0})
    assert s.precision == ["fp32 (auto: fp32 on CPU)"] and s.oom_splits == 2 and s.batch_budget_seconds == 40.0
    from pipeline.run.summary import format_summary

    s.finish(1.0)
    text = format_summary(s)
    assert "precision: fp32 (auto: fp32 on CPU)" in text and "2 batch(es) split after running out of memory" in text


def test_fp16_overflow_falls_back_to_fp32_for_good(model_dir):
    """fp16 tops out at 65504: a model with larger activations (here: one feed-forward scaled up)
    gives non-finite encoder output in fp16. The batch is redone in fp32, the recognizer stays in
    fp32 and says why; a model within range keeps fp16."""
    from model.recognizer import Recognizer

    w = waves([2.0, 3.0])
    fp32 = Recognizer.from_dir(model_dir, amp_dtype="fp32")
    fine = Recognizer.from_dir(model_dir, amp_dtype="fp16")
    fine.transcribe(w)
    assert fine.precision.name == "fp16" and fine.fp16_fallbacks == 0
    for rec in (fp32, (hot := Recognizer.from_dir(model_dir, amp_dtype="fp16"))):
        ff = next(m for name, m in rec.model.named_modules() if name.endswith("feed_forward1.in_proj"))
        with torch.no_grad():
            ff.weight.mul_(1e4)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.float16):
        feats, lens = hot.features(w)
        raw, _ = hot.model.forward_encoder(feats, lens)
    assert not torch.isfinite(raw).all()  # the fault is real
    got, _ = hot.transcribe(w)
    assert hot.fp16_fallbacks == 1 and hot.precision.name == "fp32" and "fp16 fell back" in hot.precision.reason
    assert texts(got) == texts(fp32.transcribe(w)[0])
    hot.transcribe(w)
    assert hot.fp16_fallbacks == 1  # no second attempt in fp16
