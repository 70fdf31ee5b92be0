"""Inputs -> work items: the ``--manifest`` values become units of planning
(:mod:`~pipeline.inputs.sources`: globs, lhotse Shar shards), each read lazily
(:mod:`~pipeline.inputs.manifests`: lhotse manifests, bucket prefixes, URI lists) into
:class:`~pipeline.inputs.items.WorkItem` s, with the durations of plain audio files probed from byte
ranges (:mod:`~pipeline.inputs.durations`)."""
