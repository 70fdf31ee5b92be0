"""The model stage's two threads without Ray: the model decodes the next shard while the last one
is written, a shard's result comes only once its parts exist (the transcripts part last), and
failed writes or a device that cannot hold a cut are retried, then reported.

A real :class:`Transcriber` (the tests' tiny model) does the work; faults come from outside it:
storage writes that fail (``parquet.write_part`` monkeypatched to raise the storage layer's error
or to wait for the test), and a fake recognizer that runs out of memory."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.inputs.items import WorkItem
from pipeline.io import storage
from pipeline.output import parquet
from pipeline.plan.shards import Shard
from pipeline.run import model_stage
from pipeline.run.model_stage import OverlappedShards
from pipeline.run.shard_audio import ShardAudio
from pipeline.run.tasks import StageSettings, shard_task
from pipeline.run.transcriber import ActorConfig, Transcriber

from helpers import make_tiny_model_dir

SR = 16000


@pytest.fixture(scope="module")
def transcriber(tmp_path_factory):
    model = make_tiny_model_dir(tmp_path_factory.mktemp("tiny"))
    return Transcriber(ActorConfig(model_uri=str(model), model_sha256="", output_uri="", run_id="t", num_threads=1))


def shard(name: str, out: Path, seconds=(1.5, 2.0, 1.0)):
    """A shard of noise cuts with references, its task (parts under ``out``) and its audio."""
    rng = np.random.default_rng(len(name))
    items = [WorkItem(cut_id=f"{name}-{i}", recording_id=f"{name}-{i}", source=f"/x/{name}-{i}.wav", source_type="file",
                      duration=s, reference="hello world") for i, s in enumerate(seconds)]
    samples = [(0.1 * rng.standard_normal(int(s * SR))).astype(np.float32) for s in seconds]
    settings = StageSettings(run_id="t", output=str(out), fingerprint_parts=("fp",))
    task = shard_task(Shard(shard_id=name, index=0, items=items), settings)
    return task, ShardAudio(samples=samples, errors=[None] * len(items), durations=list(seconds))


def flow(transcriber, attempts=2):
    pool = ThreadPoolExecutor(max_workers=1)
    return OverlappedShards(transcriber, attempts, pool, lambda shard_id, fn, *args: fn(*args))


def test_the_next_shard_decodes_while_the_last_is_written_and_results_wait_for_their_parts(
        transcriber, tmp_path, monkeypatch):
    """Shard a's transcripts part is held at the storage layer until shard b has been decoded: b
    decodes meanwhile (the model thread is free), a's result is not given before its part exists,
    and each part is the one transcribe_shard writes."""
    (task_a, audio_a), (task_b, audio_b) = shard("a", tmp_path / "out"), shard("b", tmp_path / "out")
    b_decoded, order = threading.Event(), []
    real_decode, real_write = transcriber.decode_shard, parquet.write_part

    def decode(task, audio, plan=None):
        out = real_decode(task, audio, plan)
        order.append(f"decoded {task.shard.shard_id}")
        if task.shard.shard_id == "b":
            b_decoded.set()
        return out

    def write_part(uri, table, fingerprint, summary=None):
        if uri == task_a.part_uri:
            assert b_decoded.wait(30), "shard b was not decoded while shard a's part was being written"
        real_write(uri, table, fingerprint, summary=summary)
        order.append(f"wrote {Path(uri).parent.parent.name} {Path(uri).stem}")

    monkeypatch.setattr(transcriber, "decode_shard", decode)
    monkeypatch.setattr(parquet, "write_part", write_part)

    shards, done = flow(transcriber), {}
    callers = [threading.Thread(target=lambda t=t, a=a: done.__setitem__(t.shard.shard_id, shards.process(t, a)))
               for t, a in ((task_a, audio_a), (task_b, audio_b))]  # as Ray Data's threads call the actor
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join(120)
    (result_a, error_a), (result_b, error_b) = done["a"], done["b"]
    assert error_a == error_b == "" and result_a.cuts_ok == result_b.cuts_ok == 3
    assert order.index("decoded b") < order.index("wrote transcripts part-a")
    # each shard: words part, then the transcripts part that marks it done
    assert [o for o in order if o.endswith("part-a")] == ["wrote words part-a", "wrote transcripts part-a"]
    assert result_a.write_seconds > 0 and result_a.wall_seconds > 0
    monkeypatch.undo()
    got = pq.read_table(task_a.part_uri).to_pylist()
    reference = shard("a", tmp_path / "again")[0]
    transcriber.transcribe_shard(reference, audio_a)
    want = pq.read_table(reference.part_uri).to_pylist()
    drop = ("processed_at",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in got] == \
        [{k: v for k, v in r.items() if k not in drop} for r in want]
    assert all(r["ref_words"] == 2 and r["errors"] is not None for r in got)  # scored on the writer


def test_a_failed_write_is_written_again_without_decoding_again(transcriber, tmp_path, monkeypatch):
    task, audio = shard("w", tmp_path / "out")
    decodes, attempts, scored = [], [], []
    real_decode, real_write = transcriber.decode_shard, parquet.write_part
    real_score = __import__("pipeline.run.transcriber", fromlist=["score_row"]).score_row

    def write_part(uri, table, fingerprint, summary=None):
        attempts.append(Path(uri).parent.parent.name)
        if uri == task.part_uri and attempts.count("transcripts") == 1:
            raise storage.StorageError(uri, "SlowDown after 8 attempts")
        real_write(uri, table, fingerprint, summary=summary)

    monkeypatch.setattr(transcriber, "decode_shard", lambda *a: decodes.append(1) or real_decode(*a))
    monkeypatch.setattr(parquet, "write_part", write_part)
    monkeypatch.setattr("pipeline.run.transcriber.score_row", lambda row, n: scored.append(row.cut_id) or real_score(row, n))
    monkeypatch.setattr(model_stage, "_backoff", lambda attempt: 0.0)
    result, error = flow(transcriber).process(task, audio)
    assert error == "" and result.cuts_ok == 3 and len(decodes) == 1
    assert attempts == ["words", "transcripts", "words", "transcripts"]
    assert sorted(scored) == ["w-0", "w-1", "w-2"]  # once, not once per attempt
    assert pq.read_table(task.part_uri).num_rows == 3


def test_writes_failing_every_attempt_report_the_shard_and_write_no_transcripts_part(transcriber, tmp_path, monkeypatch):
    task, audio = shard("f", tmp_path / "out")

    def write_part(uri, table, fingerprint, summary=None):
        raise storage.StorageError(uri, "PUT refused")

    monkeypatch.setattr(parquet, "write_part", write_part)
    monkeypatch.setattr(model_stage, "_backoff", lambda attempt: 0.0)
    result, error = flow(transcriber, attempts=3).process(task, audio)
    assert result is None and f"StorageError: PUT refused: {task.words_part_uri} (written 3 times)" in error
    assert not Path(task.part_uri).exists()


class OutOfMemory:
    """A recognizer that runs out of memory on any batch of more than ``fits`` padded seconds."""

    def __init__(self, real, fits):
        self.real, self.fits, self.calls = real, fits, 0

    def transcribe_all(self, waves, overlap=None):
        self.calls += 1
        batch = getattr(waves, "waveforms", waves)
        if len(batch) * max(w.size for w in batch) / SR > self.fits:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return self.real.transcribe_all(waves, overlap=overlap)

    def __getattr__(self, name):
        return getattr(self.real, name)


def test_a_cut_that_never_fits_fails_its_shard_after_the_attempts_with_a_clear_reason(transcriber, tmp_path, monkeypatch):
    """One cut of 2 s where only 1.8 padded s fit: the shard is decoded again (attempts), then
    reported failed with why; no part, no error row that a rerun would keep."""
    task, audio = shard("m", tmp_path / "out")
    monkeypatch.setattr(transcriber, "recognizer", OutOfMemory(transcriber.recognizer, fits=1.8))
    monkeypatch.setattr(transcriber, "max_batch_seconds", transcriber.max_batch_seconds)
    monkeypatch.setattr(model_stage, "_backoff", lambda attempt: 0.0)
    result, error = flow(transcriber, attempts=2).process(task, audio)
    assert result is None and not Path(task.part_uri).exists()
    assert error.startswith("ShardDeviceError: a cut of 2.0 s does not fit in cpu memory even alone") and \
        error.endswith("(tried 2 times)")
