"""Work items -> units of work: long cuts become windows (:mod:`~pipeline.plan.windows`), items
become shards (:mod:`~pipeline.plan.shards`) and shards duration-sorted batches
(:mod:`~pipeline.plan.batching`); :mod:`~pipeline.plan.preview` tells what a run would do."""
