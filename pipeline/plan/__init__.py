"""Work items -> units of work: long cuts become windows (:mod:`~pipeline.plan.windows`), the
run's items (:mod:`~pipeline.plan.items`) become content-defined shards (:mod:`~pipeline.plan.shards`),
written once as the run's frozen plan (:mod:`~pipeline.plan.frozen`); a shard's items become
duration-sorted batches (:mod:`~pipeline.plan.batching`); :mod:`~pipeline.plan.preview` tells what a
run would do (``--plan-only``)."""
