"""Executing a run: its options (:mod:`~pipeline.run.config`), the driver
(:mod:`~pipeline.run.driver`), the transcriber actor (:mod:`~pipeline.run.transcriber`), pool
sizing (:mod:`~pipeline.run.resources`), progress, the run summary and memory upkeep
(:mod:`~pipeline.run.heap`)."""
