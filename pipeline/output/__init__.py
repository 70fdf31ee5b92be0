"""What a run writes: rows and their Arrow schemas (:mod:`~pipeline.output.records`), Parquet
parts written atomically with fingerprints (:mod:`~pipeline.output.parquet`), and the one module
that builds every output URI (:mod:`~pipeline.output.paths`)."""
