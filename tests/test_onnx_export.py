"""ONNX export (model/onnx_export.py), the onnxruntime stand-in (model/onnx_runtime.py) and
jobs/export_onnx.py, checked by a real client: sherpa-onnx's OfflineRecognizer runs the exported
demo model (CTC) and a small transducer on held-out espeak-ng speech and must say what zipscribe
says; onnxruntime must reproduce the golden fixture's encoder and the torch decodings."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import make_tiny_model_dir

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "model" / "assets" / "demo"
sys.path.insert(0, str(REPO / "jobs"))
import demo as demo_job  # noqa: E402

torch.set_num_threads(2)
needs_speech = pytest.mark.needs_tools("espeak-ng", "sox", word_list=True)
#: held-out test-split sentences spoken for these tests
UTTS = 40


def assert_close(name: str, ours: torch.Tensor, ref: torch.Tensor, rtol: float = 1e-4) -> None:
    """The fixture README's rule: ``max|ours - ref| <= rtol * max(1, max|ref|)``."""
    assert ours.shape == ref.shape, f"{name}: shape {tuple(ours.shape)} != {tuple(ref.shape)}"
    err = (ours.float() - ref.float()).abs().max().item()
    tol = rtol * max(1.0, ref.abs().max().item())
    assert err <= tol, f"{name}: max abs err {err:.3e} > tol {tol:.3e}"


def valid_frames(t: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    return torch.cat([t[i, : int(n)] for i, n in enumerate(lens)])


def padded_fbank(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(lengths), max(lengths), 80, generator=g) * 3 - 8
    for i, n in enumerate(lengths):
        x[i, n:] = math.log(1e-10)
    return x, torch.tensor(lengths, dtype=torch.int64)


def sherpa_texts(recognizer, waves: list[np.ndarray]) -> list[str]:
    streams = []
    for w in waves:
        stream = recognizer.create_stream()
        stream.accept_waveform(16000, w)
        streams.append(stream)
    recognizer.decode_streams(streams)
    return [s.result.text for s in streams]


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    """UTTS sentences of the demo corpus's test split (never in training), spoken now."""
    from lhotse import CutSet

    manifest = demo_job.ensure_data(tmp_path_factory.mktemp("onnx-held-out") / "data", UTTS)
    cuts = list(CutSet.from_file(str(manifest)))
    return [c.supervisions[0].text for c in cuts], [c.load_audio()[0].astype(np.float32) for c in cuts]


@pytest.fixture(scope="module")
def demo_rec():
    from model.recognizer import Recognizer

    return Recognizer.from_dir(DEMO)


@pytest.fixture(scope="module")
def demo_export(demo_rec, tmp_path_factory):
    """The demo model exported once: sherpa-onnx files and backend graphs, fp32 and int8."""
    from model.onnx_export import export_onnx

    return export_onnx(demo_rec.model, demo_rec.tokenizer, tmp_path_factory.mktemp("demo-onnx"), heads="all", int8=True,
                       checkpoint_sha256=demo_rec.info.sha256)


# --------------------------------------------------------------------------- layout


def test_demo_export_layout_and_metadata(demo_rec, demo_export):
    import onnx

    d = demo_export.directory
    for name in ("model.onnx", "model.int8.onnx", "tokens.txt", "zipscribe_encoder.onnx", "ctc_output.onnx",
                 "attention_decoder.onnx", "attention_decoder.int8.onnx", "zipscribe_onnx.json"):
        assert (d / name).is_file(), name
    assert not (d / "encoder.onnx").exists()  # the demo model has no transducer
    manifest = json.loads((d / "zipscribe_onnx.json").read_text())
    assert manifest["heads"] == ["ctc", "attention-decoder"] and manifest["int8"] is True
    assert manifest["checkpoint_sha256"] == demo_rec.info.sha256 and manifest["opset"] == 17
    assert manifest["files"]["sherpa"] == {"tokens": "tokens.txt", "ctc": "model.onnx"}
    assert manifest["model_config"] == demo_rec.model.config

    graph = onnx.load(str(d / "model.onnx"))
    meta = {p.key: p.value for p in graph.metadata_props}
    assert meta["model_type"] == "zipformer2_ctc" and meta["vocab_size"] == "256"
    assert [i.name for i in graph.graph.input] == ["x", "x_lens"]
    assert [o.name for o in graph.graph.output] == ["log_probs", "log_probs_len"]
    dims = [d.dim_param or d.dim_value for d in graph.graph.output[0].type.tensor_type.shape.dim]
    assert dims[0] == "N" and isinstance(dims[1], str) and dims[2] == 256  # sherpa-onnx reads the vocab from it
    assert {o.name: o.type.tensor_type.elem_type for o in graph.graph.output}["log_probs_len"] == onnx.TensorProto.INT64

    lines = (d / "tokens.txt").read_text(encoding="utf-8").splitlines()
    tok = demo_rec.tokenizer
    assert lines == [f"{tok.id_to_piece(i)} {i}" for i in range(tok.vocab_size)]


def test_export_refuses_what_it_cannot_do(demo_rec, tmp_path):
    from model.onnx_export import OnnxExportError, export_onnx
    from model.onnx_runtime import load_onnx_model

    with pytest.raises(OnnxExportError, match="no transducer head"):
        export_onnx(demo_rec.model, demo_rec.tokenizer, tmp_path / "t", heads="transducer")
    with pytest.raises(OnnxExportError, match="tokens.txt"):
        export_onnx(demo_rec.model, None, tmp_path / "t")
    with pytest.raises(OnnxExportError, match="not a zipscribe ONNX export"):
        load_onnx_model(tmp_path)


# --------------------------------------------------------------------------- golden fixture


def test_onnxruntime_reproduces_the_golden_fixture(ref_model, ref_inputs, ref_expected, tmp_path):
    """Encoder output within 1e-4 relative (the fixture's rule), the heads' outputs too, and the
    discrete results exactly: one export, every head."""
    from model.decoding import DecodingConfig, decode
    from model.onnx_export import export_onnx
    from model.onnx_runtime import load_onnx_model

    export_onnx(ref_model, None, tmp_path, sherpa=False)
    om = load_onnx_model(tmp_path, num_threads=2)
    assert om.providers == ["CPUExecutionProvider"] and om.vocab_size == 500
    lens = ref_expected["encoder_out_lens"]
    out, out_lens = om.forward_encoder(ref_inputs["x"], ref_inputs["x_lens"])
    assert out.dtype == torch.float32 and out_lens.dtype == torch.int64
    assert torch.equal(out_lens, lens)
    assert_close("encoder_out", valid_frames(out, lens), valid_frames(ref_expected["encoder_out"], lens))
    assert_close("ctc_log_probs", valid_frames(om.ctc_output(out), lens), valid_frames(ref_expected["ctc_log_probs"], lens))
    ys = [ref_inputs["ys_padded"][i, :n].tolist() for i, n in enumerate(ref_inputs["ys_lens"].tolist())]
    assert_close("attn_decoder.nll", om.attention_decoder.nll(out, out_lens, ys), ref_expected["attn_decoder.nll"])
    ctx = ref_inputs["decoder_context"]
    dec = om.decoder(ctx, need_pad=False)
    assert_close("joiner_logits", om.joiner(om.joiner.encoder_proj(out[:, :5]), dec, project_input=False),
                 ref_expected["transducer.joiner_logits"])
    for i in range(3):  # single unpadded utterances
        n = int(ref_inputs["x_lens"][i])
        single, _ = om.forward_encoder(ref_inputs["x"][i:i + 1, :n], ref_inputs["x_lens"][i:i + 1])
        assert_close(f"single.{i}", single, ref_expected[f"single.{i}.encoder_out"])

    greedy = decode(om, out, out_lens, DecodingConfig(method="transducer-greedy"))
    for i, hyp in enumerate(greedy):
        assert hyp.token_ids == ref_expected["transducer.greedy_ids"][i, : ref_expected["transducer.greedy_lens"][i]].tolist()
    beam = decode(om, out, out_lens, DecodingConfig(method="transducer-beam", transducer_beam=4))
    for i, hyp in enumerate(beam):
        assert hyp.token_ids == ref_expected["transducer.modified_beam_ids"][
            i, : ref_expected["transducer.modified_beam_lens"][i]].tolist()
    for method in ("ctc-greedy", "ctc-beam", "attention-rescoring"):
        cfg = DecodingConfig(method=method, beam=4)
        ours = decode(om, out, out_lens, cfg)
        torch_hyps = decode(ref_model, ref_expected["encoder_out"], lens, cfg)
        assert [h.token_ids for h in ours] == [h.token_ids for h in torch_hyps], method
        assert [h.score for h in ours] == pytest.approx([h.score for h in torch_hyps], rel=1e-4, abs=1e-3), method

    # dynamic batch and time: other lengths and batch sizes than the traced ones
    for lengths in ([9], [13, 11], [64, 40, 33, 17], [1203]):
        x, x_lens = padded_fbank(lengths)
        with torch.inference_mode():
            ref, ref_lens = ref_model.forward_encoder(x, x_lens)
        got, got_lens = om.forward_encoder(x, x_lens)
        assert torch.equal(got_lens, ref_lens), lengths
        assert_close(f"encoder_out {lengths}", valid_frames(got, ref_lens), valid_frames(ref, ref_lens))
    with pytest.raises(ValueError, match="at least 9 feature frames"):
        om.forward_encoder(*padded_fbank([8]))


# --------------------------------------------------------------------------- sherpa-onnx, CTC


@needs_speech
def test_sherpa_onnx_runs_the_exported_demo_ctc_model(demo_rec, demo_export, held_out):
    """sherpa-onnx (its own fbank, padding and greedy search) on the exported model.onnx says what
    zipscribe's torch ctc-greedy says."""
    import sherpa_onnx

    from model.decoding import DecodingConfig
    from model.recognizer import Recognizer
    from pipeline.report.wer import corpus_wer

    refs, waves = held_out
    rec = Recognizer(demo_rec.model, demo_rec.tokenizer, decoding=DecodingConfig(method="ctc-greedy"))
    ours = [t.text for t in rec.transcribe(waves)[0]]
    sherpa = sherpa_onnx.OfflineRecognizer.from_zipformer_ctc(
        model=str(demo_export.path("sherpa", "ctc")), tokens=str(demo_export.path("sherpa", "tokens")), num_threads=2)
    theirs = sherpa_texts(sherpa, waves)
    same = sum(a == b for a, b in zip(ours, theirs))
    assert same >= 0.95 * len(waves), [(a, b) for a, b in zip(ours, theirs) if a != b]
    wer_ours, wer_sherpa = corpus_wer(refs, ours), corpus_wer(refs, theirs)
    assert abs(wer_ours - wer_sherpa) <= 0.5, (wer_ours, wer_sherpa)
    assert wer_ours < 40.0  # the model transcribes (its card: 30.6 % ctc-greedy on the test split, 24.1 % everyday)


# --------------------------------------------------------------------------- onnxruntime backend


@needs_speech
def test_onnxruntime_backend_decodes_like_torch(demo_rec, demo_export, held_out):
    """The stand-in through the unchanged decoding code: the same texts as torch for ctc-greedy,
    ctc-beam and attention-rescoring (the demo model's decoding settings); and the existing
    Recognizer accepts it in place of the torch model."""
    from dataclasses import replace

    from model.decoding import decode
    from model.onnx_runtime import load_onnx_model
    from model.recognizer import Recognizer

    refs, waves = held_out
    om = load_onnx_model(demo_export.directory, num_threads=2)
    tok = demo_rec.tokenizer
    with torch.inference_mode():
        feats, feat_lens = demo_rec.features(waves)
        enc_t, lens_t = demo_rec.model.forward_encoder(feats, feat_lens)
    enc_o, lens_o = om.forward_encoder(feats, feat_lens)
    assert torch.equal(lens_o, lens_t)
    assert_close("demo encoder_out", valid_frames(enc_o, lens_t), valid_frames(enc_t, lens_t))
    base = demo_rec.decoding  # attention-rescoring with the word LM, segments of <= 6 s, the model card's settings
    assert base.lm_scale > 0
    for method in ("ctc-greedy", "ctc-beam", "attention-rescoring"):
        cfg = replace(base, method=method)
        torch_texts = [tok.decode(h.token_ids) for h in decode(demo_rec.model, enc_t, lens_t, cfg, lm_scorer=demo_rec.lm_scores,
                                                                search_lm=demo_rec.search_lm)]
        onnx_texts = [tok.decode(h.token_ids) for h in decode(om, enc_o, lens_o, cfg, lm_scorer=demo_rec.lm_scores,
                                                               search_lm=demo_rec.search_lm)]
        assert onnx_texts == torch_texts, method

    cfg = replace(base, method="attention-rescoring")
    onnx_rec = Recognizer(om, tok, decoding=cfg, lm=demo_rec.lm)
    torch_rec = Recognizer(demo_rec.model, tok, decoding=replace(cfg), lm=demo_rec.lm)
    assert onnx_rec.decoding.method == "attention-rescoring"
    assert [t.text for t in onnx_rec.transcribe(waves[:6])[0]] == [t.text for t in torch_rec.transcribe(waves[:6])[0]]


@needs_speech
def test_int8_export_loads_and_runs(demo_rec, demo_export, held_out):
    import sherpa_onnx

    from model.decoding import DecodingConfig
    from model.onnx_runtime import load_onnx_model
    from model.recognizer import Recognizer
    from pipeline.report.wer import corpus_wer

    refs, waves = held_out
    om = load_onnx_model(demo_export.directory, int8=True, num_threads=2)
    assert om.int8 and "int8" in repr(om)
    rec = Recognizer(om, demo_rec.tokenizer, decoding=DecodingConfig(method="attention-rescoring"))
    wer_int8 = corpus_wer(refs[:20], [t.text for t in rec.transcribe(waves[:20])[0]])
    assert wer_int8 < 40.0, wer_int8
    sherpa = sherpa_onnx.OfflineRecognizer.from_zipformer_ctc(
        model=str(demo_export.path("sherpa", "ctc", int8=True)), tokens=str(demo_export.path("sherpa", "tokens")),
        num_threads=2)
    assert corpus_wer(refs[:20], sherpa_texts(sherpa, waves[:20])) < 40.0


# --------------------------------------------------------------------------- sherpa-onnx, transducer


def _decisive_transducer(rec, waves: list[np.ndarray]) -> None:
    """Make a random-weight transducer's greedy path decisive and varied (as the golden fixture
    did): larger joiner logits, each class centred over real frames, blank winning about half the
    first decisions, and <sos/eos> / <unk> never chosen (sherpa-onnx treats <unk> as blank)."""
    model = rec.model
    joiner = model.joiner
    with torch.no_grad():
        joiner.output_linear.weight.mul_(4.0)
        feats, feat_lens = rec.features(waves)
        enc, enc_lens = model.forward_encoder(feats, feat_lens)
        start = torch.tensor([[-1] * (model.decoder.context_size - 1) + [0]])
        dec = joiner.decoder_proj(model.decoder(start, need_pad=False))
        logits = valid_frames(joiner(enc, dec), enc_lens)
        joiner.output_linear.bias -= logits.mean(0)
        logits -= logits.mean(0)
        for special in (rec.tokenizer.sos_id, rec.tokenizer.unk_id):
            joiner.output_linear.bias[special] -= 1000.0
            logits[:, special] = -1e9
        gap = logits[:, 1:].max(dim=-1).values - logits[:, 0]
        joiner.output_linear.bias[0] += gap.median()


@needs_speech
def test_sherpa_onnx_runs_an_exported_transducer(tmp_path, held_out):
    """A small random transducer: sherpa-onnx's greedy_search on encoder/decoder/joiner.onnx and
    zipscribe's transducer-greedy (torch, and onnxruntime through the stand-in) give the same texts;
    modified beam search agrees between torch and the stand-in."""
    import sherpa_onnx

    from model.decoding import DecodingConfig
    from model.onnx_export import export_cached, export_onnx
    from model.onnx_runtime import load_onnx_model
    from model.recognizer import Recognizer

    _, waves = held_out
    waves = waves[:20]
    rec = Recognizer.from_dir(make_tiny_model_dir(tmp_path / "tiny"), decoding=DecodingConfig(method="transducer-greedy"))
    _decisive_transducer(rec, waves[:8])
    export = export_onnx(rec.model, rec.tokenizer, tmp_path / "onnx", heads="transducer", checkpoint_sha256="0" * 64)
    assert export.heads == ["transducer"]
    assert set(export.files["sherpa"]) == {"tokens", "encoder", "decoder", "joiner"}
    ours = [t.text for t in rec.transcribe(waves)[0]]
    assert sum(len(t.split()) for t in ours) > 50 and len(set("".join(ours))) > 10  # a varied output
    sherpa = sherpa_onnx.OfflineRecognizer.from_transducer(
        encoder=str(export.path("sherpa", "encoder")), decoder=str(export.path("sherpa", "decoder")),
        joiner=str(export.path("sherpa", "joiner")), tokens=str(export.path("sherpa", "tokens")),
        num_threads=2, decoding_method="greedy_search")
    theirs = sherpa_texts(sherpa, waves)
    same = sum(a == b for a, b in zip(ours, theirs))
    assert same >= 0.9 * len(waves), [(a, b) for a, b in zip(ours, theirs) if a != b]

    om = load_onnx_model(export.directory, num_threads=2)
    assert om.ctc_output is None and om.attention_decoder is None and om.decoder.context_size == 2
    for method in ("transducer-greedy", "transducer-beam"):
        torch_rec = Recognizer(rec.model, rec.tokenizer, decoding=DecodingConfig(method=method))
        onnx_rec = Recognizer(om, rec.tokenizer, decoding=DecodingConfig(method=method))
        assert [t.text for t in onnx_rec.transcribe(waves[:8])[0]] == [t.text for t in torch_rec.transcribe(waves[:8])[0]]

    # the cache Recognizer(backend="onnxruntime") would use: exported once, then reused
    first = export_cached(rec.model, rec.tokenizer, "ab" * 32, root=tmp_path / "cache")
    assert export_cached(rec.model, rec.tokenizer, "ab" * 32, root=tmp_path / "cache") == first
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [first.name]
    cached = load_onnx_model(first)
    assert cached.checkpoint_sha256 == "ab" * 32 and cached.manifest["files"].get("sherpa") is None


# --------------------------------------------------------------------------- the job


def test_export_job_reports_a_bad_model_dir_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "jobs" / "export_onnx.py"), "--model", str(tmp_path / "nothing"),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "nothing" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()


@needs_speech
def test_recognizer_and_pipeline_backend_onnxruntime(demo_rec, held_out, tmp_path, monkeypatch):
    """``Recognizer.from_dir(..., backend="onnxruntime")`` exports the checkpoint once into the cache
    and decodes like torch; a run with ``backend="onnxruntime"`` (the pipeline's actors, here in one
    process) writes the same texts as a torch run and says which backend ran in the summary."""
    from model.onnx_runtime import OnnxAsrModel
    from model.recognizer import Recognizer
    from pipeline.run.config import TranscribeConfig
    from pipeline.run.driver import run_in_process

    monkeypatch.setenv("ZIPSCRIBE_CACHE", str(tmp_path / "cache"))
    refs, waves = held_out
    rec = Recognizer.from_dir(DEMO, backend="onnxruntime")
    assert isinstance(rec.model, OnnxAsrModel) and rec.backend == "onnxruntime"
    assert rec.precision.name == "fp32" and "onnxruntime backend" in rec.precision.reason
    assert [t.text for t in rec.transcribe(waves[:8])[0]] == [t.text for t in demo_rec.transcribe(waves[:8])[0]]
    exports = list((tmp_path / "cache" / "onnx").iterdir())
    assert len(exports) == 1 and exports[0].name.startswith(demo_rec.info.sha256[:16])
    Recognizer.from_dir(DEMO, backend="onnxruntime")  # the cached export is reused
    assert list((tmp_path / "cache" / "onnx").iterdir()) == exports
    with pytest.raises(ValueError, match="backend must be one of"):
        Recognizer.from_dir(DEMO, backend="tensorrt")

    manifest = demo_job.ensure_data(tmp_path / "data", 6)
    texts = {}
    for backend in ("torch", "onnxruntime"):
        cfg = TranscribeConfig(manifest=[str(manifest)], model=str(DEMO), output=str(tmp_path / backend),
                               backend=backend, progress=False)
        result = run_in_process(cfg, run_id=backend)
        precision = result["shards"][0].precision
        assert ("onnxruntime backend" in precision) == (backend == "onnxruntime"), precision
        import pyarrow.parquet as pq

        rows = pq.read_table(tmp_path / backend / "transcripts" / f"run_id={backend}").to_pylist()
        texts[backend] = {r["cut_id"]: r["text"] for r in rows}
    assert len(texts["torch"]) == 6 and texts["onnxruntime"] == texts["torch"]
