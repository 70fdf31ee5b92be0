"""Training the demo model: not the inference path.

* :mod:`model.training.corpus`: synthetic English sentences spoken by espeak-ng (the demo corpus);
* :mod:`model.training.data`: utterances, cached features, bucketed batches, SpecAugment;
* :mod:`model.training.trainer`: initialisation, loss, the training loop, checkpoint averaging;
* :mod:`model.training.evaluation`: WER per decoding method with a scorer the caller passes in.

``jobs/make_synthetic_corpus.py`` and ``jobs/train_demo.py`` are the command lines.
"""
