"""zipscribe's pipeline: audio in object storage -> transcripts and WER reports as Parquet.

The rooms follow the data (each imports only the rooms before it, and :mod:`model`):

* :mod:`pipeline.io`: object storage (S3 / local), audio decoding, WAV headers, range reads,
  the model cache;
* :mod:`pipeline.inputs`: manifests, bucket prefixes and URI lists -> work items; durations;
* :mod:`pipeline.output`: rows, Arrow schemas, Parquet parts, every output path;
* :mod:`pipeline.plan`: windows of long recordings, content-defined shards, the frozen plan,
  duration-sorted batches;
* :mod:`pipeline.report`: text normalisation, WER, report tables, Markdown, HTML, history;
* :mod:`pipeline.longform`: pauses, the seam merge and stitching of long recordings;
* :mod:`pipeline.run`: the run's options, the driver, the Ray Data stages, the transcriber,
  resources, progress, memory upkeep.

:mod:`pipeline.cli` holds the command-line options the jobs share.
"""
