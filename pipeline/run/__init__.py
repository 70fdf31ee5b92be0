"""Executing a run: its options (:mod:`~pipeline.run.config`), the driver (:mod:`~pipeline.run.driver`:
plan, stages, stitching, summary), the Ray Data stages (:mod:`~pipeline.run.stages`: the audio stage
and the run's ledger; :mod:`~pipeline.run.model_stage`: the actor pool), what they pass around
(:mod:`~pipeline.run.tasks`), a shard's audio (:mod:`~pipeline.run.shard_audio`), the transcriber
(:mod:`~pipeline.run.transcriber`) with what it does when the device fails (:mod:`~pipeline.run.failures`)
and how large its batches may be (:mod:`~pipeline.run.device_memory`), planning and duration probing in
Ray tasks (:mod:`~pipeline.run.planning`),
stage sizing and waiting for an autoscaler (:mod:`~pipeline.run.resources`), progress, the run
summary and memory upkeep (:mod:`~pipeline.run.heap`)."""
