"""Inputs -> work items: lhotse manifests, bucket prefixes and URI lists
(:mod:`~pipeline.inputs.manifests`) become :class:`~pipeline.inputs.items.WorkItem` s, with the
durations of plain audio files probed from byte ranges (:mod:`~pipeline.inputs.durations`)."""
