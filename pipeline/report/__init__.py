"""WER reports: text normalisation (:mod:`~pipeline.report.normalize`), word errors
(:mod:`~pipeline.report.wer`), report tables (:mod:`~pipeline.report.tables`), their renderings
(:mod:`~pipeline.report.markdown`, :mod:`~pipeline.report.html`), files
(:mod:`~pipeline.report.files`) and the nightly history with its gate
(:mod:`~pipeline.report.history`)."""
