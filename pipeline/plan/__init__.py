"""Work items -> units of work: each unit of the inputs (:mod:`~pipeline.plan.units`, many planned
at once) gives its items, long cuts as windows (:mod:`~pipeline.plan.windows`), cut into
content-defined shards that keep a recording's segments together (:mod:`~pipeline.plan.shards`);
the driver merges them into the run's frozen plan (:mod:`~pipeline.plan.frozen`); a shard's items
become duration-sorted batches (:mod:`~pipeline.plan.batching`); :mod:`~pipeline.plan.preview`
tells what a run would do (``--plan-only``)."""
