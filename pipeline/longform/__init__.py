"""Long recordings after planning: windows are cut at their pauses (:mod:`~pipeline.longform.pauses`),
their transcripts merged at the seams (:mod:`~pipeline.longform.merge`) and stitched into one
row per cut (:mod:`~pipeline.longform.stitching`)."""
