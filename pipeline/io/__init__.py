"""Bytes in and out: object storage (S3 / local, :mod:`~pipeline.io.storage`), audio decoding
(:mod:`~pipeline.io.audio`), WAV headers (:mod:`~pipeline.io.wav`), range reads of long files
(:mod:`~pipeline.io.ranges`) and the per-node model cache (:mod:`~pipeline.io.model_store`)."""
