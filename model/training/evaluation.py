"""Scoring a trained model directory: WER per decoding method, and the attention-scale sweep.

WER is computed by a *scorer* the caller passes in (``scorer(references, hypotheses) -> WER in
percent``), so this package never depends on how the product normalises and counts words;
``jobs/train_demo.py`` passes :func:`pipeline.report.wer.corpus_wer`, the same scoring the
transcript rows and reports use.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import torch

from model.decoding import DecodingConfig, decode
from model.recognizer import Recognizer

from .data import Utterance, bucketed_batches, load_audio

__all__ = ["Scorer", "evaluate", "spoken_sentences", "sweep_attention_scale", "sweep_lm_scale", "sweep_search_lm",
           "transcribe_nbest"]

#: ``scorer(references, hypotheses)`` -> WER in percent
Scorer = Callable[[Sequence[str], Sequence[str]], float]


def spoken_sentences(texts: Sequence[str], out_dir: str | Path, styles: int = 3, seed: int = 0) -> list[Utterance]:
    """Each of ``texts`` spoken with espeak-ng in ``styles`` speech styles drawn with ``seed`` from the
    demo corpus's style space (voice, variant, rate, pitch, gain, noise:
    :func:`model.training.corpus.random_style`), as WAV files under ``out_dir``: the sound of the
    training corpus with words it may never have had. Utterances style by style, texts in order."""
    import random

    from .corpus import random_style, synthesize

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    utts = []
    for k in range(styles):
        style = random_style(rng)
        for i, text in enumerate(texts):
            path = out_dir / f"style{k}-{i:04d}.wav"
            duration = synthesize(text, path, style, seed=seed * 1000 + k * 100 + i)
            utts.append(Utterance(id=f"{style.speaker}-{k}-{i}", text=text, duration=duration, audio_path=str(path)))
    return utts


def encode_batches(recognizer: Recognizer, utterances: Sequence[Utterance], batch_seconds: float = 200.0
                   ) -> list[tuple[list[int], torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The utterances' encoder output, once, in duration-bucketed batches: per batch the
    utterances' indices, encoder output and lengths, and the CTC head's log-probs (for benchmarks
    that decode the same batches in several ways, encoder excluded)."""
    encoded = []
    with torch.inference_mode():
        for batch in bucketed_batches([u.duration for u in utterances], batch_seconds):
            feats, lens = recognizer.features([load_audio(utterances[i]) for i in batch])
            enc, enc_lens = recognizer.model.forward_encoder(feats, lens)
            encoded.append((batch, enc, enc_lens, recognizer.model.ctc_output(enc)))
    return encoded


def transcribe_nbest(recognizer: Recognizer, utterances: Sequence[Utterance], batch_seconds: float = 200.0) -> list[Any]:
    """Hypotheses (with n-best lists) of every utterance, in order; uses the recognizer's decoding."""
    out: list[Any] = [None] * len(utterances)
    for batch in bucketed_batches([u.duration for u in utterances], batch_seconds):
        wavs = [load_audio(utterances[i]) for i in batch]
        with torch.inference_mode():
            feats, lens = recognizer.features(wavs)
            enc, enc_lens = recognizer.model.forward_encoder(feats, lens)
            hyps = decode(recognizer.model, enc, enc_lens, recognizer.decoding,
                          lm_scorer=recognizer.lm_scores if recognizer.lm is not None else None,
                          search_lm=recognizer.search_lm)
        for i, h in zip(batch, hyps):
            out[i] = h
    return out


def evaluate(model_dir: str | Path, utterances: Sequence[Utterance], scorer: Scorer,
             methods: Iterable[str] = ("ctc-greedy", "ctc-beam", "attention-rescoring"),
             attention_scale: Optional[float] = None, beam: int = 8, lm_scale: float = 0.0,
             search_lm_scale: float = 0.0, word_bonus: float = 0.0) -> dict[str, float]:
    """WER (%, by ``scorer``) per decoding method of a model directory, through ``Recognizer.from_dir``
    (``lm_scale``: attention rescoring's word-LM weight, ``search_lm_scale`` / ``word_bonus``: the
    same LM fused into its prefix search; the directory's ``lm.arpa.gz``)."""
    refs = [u.text for u in utterances]
    results = {}
    for method in methods:
        rescoring = method == "attention-rescoring"
        cfg = DecodingConfig(method=method, beam=beam, attention_scale=1.0 if attention_scale is None else attention_scale,
                             lm_scale=lm_scale if rescoring else 0.0,
                             search_lm_scale=search_lm_scale if rescoring else 0.0,
                             word_bonus=word_bonus if rescoring and search_lm_scale else 0.0)
        rec = Recognizer.from_dir(model_dir, decoding=cfg)
        texts = [""] * len(utterances)
        for batch in bucketed_batches([u.duration for u in utterances], 200.0):
            transcripts, _ = rec.transcribe([load_audio(utterances[i]) for i in batch])
            for i, t in zip(batch, transcripts):
                texts[i] = t.text
        results[method] = scorer(refs, texts)
    return results


def sweep_attention_scale(model_dir: str | Path, utterances: Sequence[Utterance], scorer: Scorer,
                          scales: Sequence[float] = (0.01, 0.05, 0.1, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0, 5.0, 9.0),
                          beam: int = 8) -> tuple[float, dict[float, float]]:
    """icefall-style sweep: rescore the CTC n-best once, pick the scale with the lowest WER
    (by ``scorer``)."""
    rec = Recognizer.from_dir(model_dir, decoding=DecodingConfig(method="attention-rescoring", beam=beam, return_nbest=True))
    hyps = transcribe_nbest(rec, utterances)
    refs = [u.text for u in utterances]
    table: dict[float, float] = {}
    for s in scales:
        texts = []
        for h in hyps:
            best = max(h.nbest, key=lambda e: e.ctc_score + s * (e.attention_score or 0.0)) if h.nbest else h
            texts.append(rec.tokenizer.decode(best.token_ids))
        table[s] = scorer(refs, texts)
    best_scale = min(scales, key=lambda s: (table[s], abs(math.log(s))))
    return best_scale, table


def sweep_lm_scale(model_dir: str | Path, utterances: Sequence[Utterance], scorer: Scorer, scales: Sequence[float],
                   attention_scale: float, beam: int = 8) -> tuple[float, dict[float, float]]:
    """Rescore the attention-rescoring n-best once per word-LM scale (the directory's
    ``lm.arpa.gz``): ``ctc + attention_scale * attention + scale * lm``. Returns the scale with the
    lowest WER (ties: the smallest) and the table."""
    rec = Recognizer.from_dir(model_dir, decoding=DecodingConfig(method="attention-rescoring", beam=beam,
                                                                  attention_scale=attention_scale, return_nbest=True))
    if rec.lm is None:
        raise ValueError(f"{model_dir} has no word LM (lm.arpa.gz)")
    hyps = transcribe_nbest(rec, utterances)
    refs = [u.text for u in utterances]
    entries = [[(e, rec.tokenizer.decode(e.token_ids)) for e in (h.nbest or [])] for h in hyps]
    lm_scores = [[rec.lm.score(text) for _, text in row] for row in entries]
    table: dict[float, float] = {}
    for s in scales:
        texts = []
        for h, row, lms in zip(hyps, entries, lm_scores):
            if not row:
                texts.append(rec.tokenizer.decode(h.token_ids))
                continue
            k = max(range(len(row)), key=lambda i: row[i][0].ctc_score + attention_scale * (row[i][0].attention_score or 0.0)
                    + s * lms[i])
            texts.append(row[k][1])
        table[s] = scorer(refs, texts)
    return min(scales, key=lambda s: (table[s], s)), table


def sweep_search_lm(model_dir: str | Path, utterances: Sequence[Utterance], scorer: Scorer,
                    grid: Sequence[tuple[float, float]], decoding: dict) -> tuple[tuple[float, float], dict]:
    """Attention rescoring (``decoding``: the model directory's beam, ``attention_scale`` and
    ``lm_scale``; whole utterances, as :func:`evaluate`) with the word LM fused into the prefix search at each ``(search_lm_scale, word_bonus)`` of
    ``grid``: every batch is encoded once and decoded with each. Returns the pair with the lowest
    WER (ties: the smaller scale, then bonus) and ``{"S/B": {"wer", "seconds"}}`` (decoding
    seconds of the whole list, the encoder's excluded)."""
    import time

    grid = list(dict.fromkeys((float(s), float(b) if s else 0.0) for s, b in grid))  # no fusion: no bonus
    # as evaluate() decodes: whole utterances, the beam and the scales of ``decoding``
    configs = [DecodingConfig(method="attention-rescoring", beam=decoding["beam"],
                              attention_scale=decoding["attention_scale"], lm_scale=decoding.get("lm_scale", 0.0),
                              search_lm_scale=s, word_bonus=b) for s, b in grid]
    rec = Recognizer.from_dir(model_dir, decoding=configs)
    if rec.lm is None:
        raise ValueError(f"{model_dir} has no word LM (lm.arpa.gz)")
    texts = [[""] * len(utterances) for _ in configs]
    seconds = [0.0] * len(configs)
    for batch in bucketed_batches([u.duration for u in utterances], 200.0):
        waves = [load_audio(utterances[i]) for i in batch]
        with torch.inference_mode():
            feats, lens = rec.features(waves)
            enc, enc_lens = rec.model.forward_encoder(feats, lens)
            log_probs = rec.model.ctc_output(enc)
            for j, cfg in enumerate(configs):
                started = time.perf_counter()
                hyps = decode(rec.model, enc, enc_lens, cfg, ctc_log_probs=log_probs, lm_scorer=rec.lm_scores,
                              search_lm=rec.search_lm)
                seconds[j] += time.perf_counter() - started
                for i, h in zip(batch, hyps):
                    texts[j][i] = rec.tokenizer.decode(h.token_ids)
    refs = [u.text for u in utterances]
    table = {f"{s:g}/{b:g}": {"wer": round(scorer(refs, texts[j]), 2), "seconds": round(seconds[j], 3)}
             for j, (s, b) in enumerate(grid)}
    best = min(grid, key=lambda sb: (table[f"{sb[0]:g}/{sb[1]:g}"]["wer"], sb[0], sb[1]))
    return best, table
