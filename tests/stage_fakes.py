"""Model stages whose device fails or whose storage is slow (test fakes, not product code), for runs
on a local Ray: the product's :class:`ShardTranscriber` with the fault injected from outside, in the
actor's process. Ray pickles this module by value (the workers do not have ``tests/`` on their path)."""

from __future__ import annotations

from pipeline.run.model_stage import ShardTranscriber

#: a cut of this many samples (2.5 s) fails like a device-side assert
POISON_SAMPLES = 40000
ILLEGAL_ADDRESS = "CUDA error: an illegal memory access was encountered"
DEVICE_SIDE_ASSERT = "CUDA error: device-side assert triggered"


class PoisonedCut:
    """Wraps the actor's recognizer: any batch holding a waveform of :data:`POISON_SAMPLES`
    samples raises a sticky CUDA error."""

    def __init__(self, real):
        self.real = real

    def transcribe_all(self, waves, overlap=None):
        if any(w.size == POISON_SAMPLES for w in getattr(waves, "waveforms", waves)):
            raise RuntimeError(DEVICE_SIDE_ASSERT)
        return self.real.transcribe_all(waves, overlap=overlap)

    def __getattr__(self, name):
        return getattr(self.real, name)


class PoisonStage(ShardTranscriber):
    """The model stage, its recognizer failing on the poison cut (after a normal start-up)."""

    def __init__(self, actor_config, settings, ledger=None):
        super().__init__(actor_config, settings, ledger)
        self.transcriber.recognizer = PoisonedCut(self.transcriber.recognizer)


class WarmUpFails(ShardTranscriber):
    """The model stage in a process whose torch linear layers fail with a sticky CUDA error: the
    model loads, its warm-up fails."""

    def __init__(self, actor_config, settings, ledger=None):
        import torch

        def linear(*args, **kwargs):
            raise RuntimeError(ILLEGAL_ADDRESS)

        torch.nn.functional.linear = linear
        super().__init__(actor_config, settings, ledger)


class SlowWrites(ShardTranscriber):
    """The model stage with parts that take ``WRITE_SECONDS`` each to write (the storage layer's
    write patched in the actor's process), logging when each shard's decoding and writing start
    and end to the file named by ``$STAGE_EVENTS``."""

    WRITE_SECONDS = 1.5

    def __init__(self, actor_config, settings, ledger=None):
        import json
        import os
        import threading
        import time

        from pipeline.output import parquet

        super().__init__(actor_config, settings, ledger)
        lock, path = threading.Lock(), os.environ["STAGE_EVENTS"]

        def note(event, shard_id):
            with lock, open(path, "a") as f:
                f.write(json.dumps({"t": time.monotonic(), "event": event, "shard": shard_id}) + "\n")

        real_write, real_decode, real_write_shard = parquet.write_part, self.transcriber.decode_shard, \
            self.transcriber.write_shard

        def write_part(*args, **kwargs):
            time.sleep(self.WRITE_SECONDS)
            return real_write(*args, **kwargs)

        def decode_shard(task, audio, plan=None):
            note("decode start", task.shard.shard_id)
            out = real_decode(task, audio, plan)
            note("decode end", task.shard.shard_id)
            return out

        def write_shard(decoded):
            note("write start", decoded.task.shard.shard_id)
            out = real_write_shard(decoded)
            note("write end", decoded.task.shard.shard_id)
            return out

        parquet.write_part = write_part
        self.transcriber.decode_shard, self.transcriber.write_shard = decode_shard, write_shard
