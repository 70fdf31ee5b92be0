"""GPU-readiness policies, tested on the CPU: the precision chosen per device capability, what a
model actor does when a batch runs out of memory or the device fails, how the batch budget follows
the device's memory, and the order in which a shard's batches are prepared and run.

The device's answers are faked here (a capability passed to the policy function; a recognizer
wrapper that raises ``torch.OutOfMemoryError`` above a padded-seconds limit, or a CUDA error;
``torch.cuda``'s memory functions monkeypatched to a fake allocator's numbers); the product code
under test is the real one."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from model.precision import resolve_precision
from model.recognizer import StageTimes, Transcript
from pipeline.run import device_memory as dm
from pipeline.run.failures import DEVICE, OUT_OF_MEMORY, POISONED, failure_kind
from pipeline.run.summary import RunSummary
from pipeline.run.transcriber import (ActorConfig, DeviceFailure, ShardDeviceError, Transcriber, is_fatal_device_error,
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
    """Wraps the real recognizer; fails batches as a device would, and can stand in for a GPU's
    allocator (a test fake, not product code): a batch "allocates" ``bytes_per_second`` per padded
    second on top of ``base`` bytes, and :attr:`peak` is the highest since :meth:`reset_peak`.
    ``run_model=False`` answers each cut with an empty transcript instead of running the model."""

    def __init__(self, real, oom_above: float = float("inf"), fail_with: Exception | None = None,
                 bad_length: int | None = None, fail_above: float | None = None, bytes_per_second: int = 0,
                 base: int = 0, run_model: bool = True):
        self.real, self.oom_above, self.fail_with, self.bad_length = real, oom_above, fail_with, bad_length
        self.fail_above, self.bytes_per_second, self.base, self.run_model = fail_above, bytes_per_second, base, run_model
        self.calls: list[float] = []
        self.events: list[str] = []
        self.peak = base

    def reset_peak(self, *_):
        self.peak = self.base

    def prepare(self, waves):
        self.events.append(f"prepare {len(waves)}")
        return self.real.prepare(waves)

    def transcribe_all(self, waves, overlap=None):
        batch = getattr(waves, "waveforms", waves)
        padded = len(batch) * max(w.size for w in batch) / SR
        self.calls.append(padded)
        self.events.append(f"run {len(batch)}" + (" prepared" if batch is not waves else ""))
        if self.fail_with is not None and (self.fail_above is None or padded > self.fail_above):
            raise self.fail_with
        if padded > self.oom_above:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {padded:.0f} MiB")
        if self.bad_length is not None and any(w.size == self.bad_length for w in batch):
            raise ValueError("input too short for the encoder")
        self.peak = max(self.peak, self.base + int(padded * self.bytes_per_second))
        if self.run_model:
            out = self.real.transcribe_all(waves, overlap=overlap)
        else:
            if overlap is not None:
                overlap()
            empty = [Transcript(text="", token_ids=[], token_times=[], score=0.0, confidence=1.0) for _ in batch]
            out = [empty for _ in self.real.decodings], StageTimes()
        self.events.append("done")
        return out

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


def test_a_single_cut_that_does_not_fit_fails_the_shard_not_the_cut(transcriber):
    """Out of memory with one cut alone is the device's limit, not the cut's fault: no error row
    (which a rerun would keep), but a ShardDeviceError the model stage retries and reports."""
    transcriber.recognizer = FakeDevice(transcriber.recognizer, oom_above=3.0)
    with pytest.raises(ShardDeviceError, match=r"a cut of 5\.0 s does not fit in cpu memory even alone") as info:
        transcriber._transcribe(waves([5.0, 2.0]), StageTimes())
    assert "OutOfMemoryError" in str(info.value) and "--max-cut-seconds" in str(info.value)


@pytest.mark.parametrize("message,kind", [
    ("CUDA error: device-side assert triggered\nCompile with TORCH_USE_CUDA_DSA", POISONED),
    ("CUDA error: an illegal memory access was encountered", POISONED),
    ("CUDA error: unspecified launch failure", POISONED),
    ("CUDA error: misaligned address", POISONED),
    ("CUDA error: uncorrectable ECC error encountered", POISONED),
    ("CUBLAS_STATUS_EXECUTION_FAILED when calling cublasGemmEx", POISONED),
    ("CUDA error: invalid configuration argument", DEVICE),
    ("CUDA error: no kernel image is available for execution on the device", DEVICE),
    ("CUBLAS_STATUS_NOT_SUPPORTED when calling cublasGemmStridedBatchedEx", DEVICE),
    ("cuDNN error: CUDNN_STATUS_NOT_SUPPORTED. This error may appear if you passed in a non-contiguous input.", DEVICE),
    ("CUDA error: out of memory", OUT_OF_MEMORY),
    ("CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate(handle)", OUT_OF_MEMORY),
    ("DefaultCPUAllocator: can't allocate memory: you tried to allocate 123 bytes", OUT_OF_MEMORY),
    ("Given groups=1, weight of size [8, 80, 3], expected input to have 80 channels", None),
    ("input too short for the encoder", None),
])
def test_device_errors_are_told_apart_by_what_they_leave_behind(message, kind):
    """Only sticky CUDA errors (the context is unusable) end the process; a CUDA error the context
    survives (a launch configuration, a missing kernel, an unsupported cuBLAS shape) does not."""
    exc = RuntimeError(message)
    assert failure_kind(exc) == kind
    assert is_fatal_device_error(exc) == (kind == POISONED) and is_out_of_memory(exc) == (kind == OUT_OF_MEMORY)
    assert failure_kind(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")) == OUT_OF_MEMORY


def test_a_device_error_the_context_survives_is_retried_per_cut_and_never_ends_the_process(transcriber):
    """A CUDA error that depends on the batch's shape (here: only batches above 6 padded s fail)
    costs a retry per cut, not the process; every cut is transcribed."""
    w = waves([2.0, 3.0, 2.5])
    expected = [t.text for t in transcriber.recognizer.transcribe(w)[0]]
    transcriber.recognizer = FakeDevice(transcriber.recognizer, fail_above=6.0,
                                        fail_with=RuntimeError("CUDA error: invalid configuration argument"))
    assert texts(transcriber._transcribe(w, StageTimes())) == expected


def test_a_device_error_on_one_cut_alone_fails_the_shard(transcriber):
    transcriber.recognizer = FakeDevice(transcriber.recognizer,
                                        fail_with=RuntimeError("CUBLAS_STATUS_NOT_SUPPORTED when calling cublasGemmEx"))
    with pytest.raises(ShardDeviceError, match="the device fails on a cut of 2.0 s even alone: RuntimeError: CUBLAS"):
        transcriber._transcribe(waves([2.0, 3.0]), StageTimes())


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


def test_budget_policy_from_the_devices_numbers():
    gib = 2**30
    # a whole GPU: no cap; half of an 80 GiB GPU: its share less 1 GiB of CUDA context
    assert dm.allocator_fraction(None, 80 * gib) is None and dm.allocator_fraction(1.0, 80 * gib) is None
    assert dm.allocator_fraction(0.5, 80 * gib) == pytest.approx(0.5 - 1 / 80)
    mem = dm.DeviceMemory(free=30 * gib, total=80 * gib, reserved=6 * gib, allocated=2 * gib)
    assert dm.room_bytes(mem) == 34 * gib  # the free memory and this process's cached blocks
    assert dm.room_bytes(mem, fraction=0.25) == 18 * gib  # 20 GiB share less the 2 GiB in use
    cost = dm.cost_per_padded_second(allocated_before=2 * gib, peak=2 * gib + 160 * 10 * 2**20, padded_seconds=160.0)
    assert cost == 10 * 2**20  # 10 MiB per padded second
    assert dm.batch_budget(34 * gib, cost) == pytest.approx(34 * 1024 * 0.8 / 10)  # 2785 s: raised far above 160
    assert dm.batch_budget(34 * gib, cost, cap=1000.0) == 1000.0
    assert dm.batch_budget(1 * gib, cost) == pytest.approx(81.92)  # lowered
    assert dm.batch_budget(0, cost) == dm.MIN_BATCH_SECONDS and dm.batch_budget(gib, 0.0) == dm.CPU_BATCH_SECONDS
    with pytest.raises(ValueError):
        dm.cost_per_padded_second(0, 1, 0.0)


@pytest.fixture()
def on_fake_gpu(model_dir, tmp_path, monkeypatch):
    """A transcriber with no --max-batch-seconds whose memory questions go to a fake GPU: 16 GiB,
    10 GiB free, 1 GiB held by the model; its recognizer allocates 20 MiB per padded second."""
    gib = 2**30
    t = Transcriber(ActorConfig(model_uri=str(model_dir), model_sha256="", output_uri=str(tmp_path), run_id="t",
                                max_cut_seconds=2.0, num_threads=1))
    fake = t.recognizer = FakeDevice(t.recognizer, bytes_per_second=20 * 2**20, base=gib, run_model=False)
    t.device = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10 * gib, 16 * gib))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: gib)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: gib)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: fake.peak)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", fake.reset_peak)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    return t, fake


def test_memory_probe_raises_the_budget_to_what_the_gpu_holds(on_fake_gpu):
    """The first probe (80 cuts of 2 s = 160 padded s, a second batch prepared while it runs)
    measures 20 MiB per padded second; 10 GiB less 20 % holds 409.6 padded s, and a second probe
    at that size checks it."""
    t, fake = on_fake_gpu
    t.probe_memory()
    assert t.max_batch_seconds == pytest.approx(409.6)
    assert fake.calls == [160.0, 408.0] and t.oom_splits == 0
    assert fake.events == ["prepare 80", "run 80 prepared", "prepare 80", "done",
                           "prepare 204", "run 204 prepared", "prepare 204", "done"]


def test_memory_probe_lowers_the_budget_to_a_shared_gpus_share(on_fake_gpu):
    """Half a GPU: the allocator's cap (0.3 of 16 GiB less the 1 GiB in use: 3.8 GiB) holds less
    than the first probe; the budget drops to 155.6 padded s, no second probe."""
    t, fake = on_fake_gpu
    t.memory_fraction = 0.3
    t.probe_memory()
    assert t.max_batch_seconds == pytest.approx((0.3 * 16 - 1) * 1024 * 0.8 / 20, rel=1e-4)
    assert fake.calls == [160.0]


def test_memory_probe_at_the_raised_budget_halves_it_on_out_of_memory(on_fake_gpu):
    t, fake = on_fake_gpu
    fake.oom_above = 300.0
    t.probe_memory()
    assert t.oom_splits == 1 and t.max_batch_seconds == 204.0  # half of the 408 padded s that failed
    assert fake.calls[:2] == [160.0, 408.0]


def test_a_shards_batches_start_their_features_while_the_one_before_runs(on_fake_gpu):
    """On CUDA each model batch's features are started (prepare) during the previous batch's run
    (the recognizer calls back once the encoder is queued), and each batch runs on what was
    prepared for it; the transcripts are those of running the batches one by one."""
    t, fake = on_fake_gpu
    t.max_batch_seconds = 6.0
    fake.run_model = True
    w = waves([2.0, 2.0, 3.0, 1.5, 1.0])
    batches = [w[:2], w[2:4], w[4:]]
    expected = [[tr.text for tr in fake.real.transcribe(b)[0]] for b in batches]
    got = t._run_model_batches(batches, StageTimes())
    assert [texts(r) for r in got] == expected
    assert fake.events == ["prepare 2", "run 2 prepared", "prepare 2", "done", "run 2 prepared", "prepare 1", "done",
                           "run 1 prepared", "done"]


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


@pytest.mark.parametrize("error,raised", [
    (RuntimeError("CUDA error: an illegal memory access was encountered"), DeviceFailure),
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB"), DeviceFailure),
    (ValueError("a model that cannot take audio"), ValueError),
])
def test_a_warm_up_failure_on_the_device_asks_for_a_fresh_process(model_dir, tmp_path, monkeypatch, error, raised):
    """The model loads, then its warm-up fails (the fault: torch's linear layer raising): a device's
    failure becomes DeviceFailure (the model stage ends the process and Ray starts a fresh one),
    anything else escapes as it is."""
    def failing_linear(*args, **kwargs):
        raise error

    monkeypatch.setattr(torch.nn.functional, "linear", failing_linear)
    with pytest.raises(raised) as info:
        Transcriber(ActorConfig(model_uri=str(model_dir), model_sha256="", output_uri=str(tmp_path), run_id="t",
                                num_threads=1))
    if raised is DeviceFailure:
        assert str(info.value).startswith("the model's warm-up failed on cpu: ") and type(error).__name__ in str(info.value)
