"""On a CUDA device (run by bench/gpu_suite.sh; skipped where torch has no CUDA, as on CI).

Fidelity (TF32 off inside these tests: cuDNN's convolutions and cuBLAS's matmuls would otherwise
round fp32 inputs to TF32 on an Ampere or later GPU, ~1e-3 relative, and the fixture's 1e-4
tolerance is an fp32 one): the golden fixture in fp32 within its tolerance, batched == single,
decoding on the GPU identical to the CPU's from the same encoder output. Where the golden fixtures
are absent (a cluster node without ../shared/fixtures) those tests are skipped, saying so.

Runtime on the GPU: a batch's features started on the side stream (Recognizer.prepare) equal the
ones computed in line and start with no host-device sync; the stage times come from CUDA events;
a shard's batches run with the next one's features prepared give the same transcripts as each
batch alone; the memory probe sizes the budget from the device; a fractional GPU caps the
allocator."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch

from model.decoding import DecodingConfig, decode
from model.precision import resolve_precision

from conftest import fixture_dir
from helpers import make_tiny_model_dir
from test_model_fixture import assert_close, valid

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]


@pytest.fixture(scope="session")
def golden():
    """The golden fixtures, or a skip that says where they were looked for (first argument of
    the tests that need them, so the skip comes before the fixtures' loaders fail)."""
    path = fixture_dir()
    if not (path / "pretrained.pt").exists():
        pytest.skip(f"golden fixtures not found at {path} (absent on this node; set ZIPSCRIBE_FIXTURES): "
                    "the fidelity tests against them are skipped")
    return path


@pytest.fixture()
def no_tf32():
    """fp32 as fp32: TF32 off for cuBLAS and cuDNN while the test runs."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture(scope="module")
def gpu_model(golden, ref_model):
    return copy.deepcopy(ref_model).to("cuda").eval()


def test_fixture_encoder_on_cuda_fp32(golden, no_tf32, gpu_model, ref_inputs, ref_expected):
    with torch.inference_mode():
        out, lens = gpu_model.forward_encoder(ref_inputs["x"].cuda(), ref_inputs["x_lens"].cuda())
    assert torch.equal(lens.cpu(), ref_expected["encoder_out_lens"])
    assert_close("cuda encoder_out", valid(out.cpu(), lens.cpu(), False),
                 valid(ref_expected["encoder_out"], ref_expected["encoder_out_lens"], False))


def test_batched_equals_single_on_cuda(golden, no_tf32, gpu_model, ref_inputs):
    x, x_lens = ref_inputs["x"].cuda(), ref_inputs["x_lens"].cuda()
    with torch.inference_mode():
        batch, lens = gpu_model.forward_encoder(x, x_lens)
        for i in range(x.size(0)):
            n = int(x_lens[i])
            single, _ = gpu_model.forward_encoder(x[i:i + 1, :n], x_lens[i:i + 1])
            assert_close(f"utt {i}", single[0, : int(lens[i])].cpu(), batch[i, : int(lens[i])].cpu())


@pytest.mark.parametrize("method", ["ctc-greedy", "ctc-beam", "attention-rescoring"])
def test_decoding_on_cuda_matches_cpu(golden, no_tf32, gpu_model, ref_model, ref_expected, method):
    enc, lens = ref_expected["encoder_out"], ref_expected["encoder_out_lens"]
    cfg = DecodingConfig(method=method)
    cpu = decode(ref_model, enc, lens, cfg)
    gpu = decode(gpu_model, enc.cuda(), lens.cuda(), cfg)
    assert [h.token_ids for h in gpu] == [h.token_ids for h in cpu]
    np.testing.assert_allclose([h.score for h in gpu], [h.score for h in cpu], rtol=1e-4, atol=1e-3)


def test_fused_lm_search_on_cuda_matches_cpu(no_tf32):
    """The word LM inside the prefix search: the same n-best and LM totals on the GPU."""
    import tempfile
    from pathlib import Path

    from model.decoding import ctc_prefix_beam_search
    from model.word_lm import WordLM
    from test_lm_fusion import FUSION_ARPA, _random_log_probs, search_lm

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "lm.arpa").write_text(FUSION_ARPA)
        lm = WordLM.from_arpa(Path(tmp) / "lm.arpa")
    fz = search_lm(lm)
    log_probs, lens = _random_log_probs(3, 25, seed=7), torch.tensor([25, 18, 9])
    cpu = ctc_prefix_beam_search(log_probs, lens, beam=10, lm=fz, lm_scale=0.5, word_bonus=1.0)
    gpu = ctc_prefix_beam_search(log_probs.cuda(), lens.cuda(), beam=10, lm=fz, lm_scale=0.5, word_bonus=1.0)
    assert cpu.to_lists() == gpu.to_lists()
    torch.testing.assert_close(gpu.search_lm_scores.cpu(), cpu.search_lm_scores, rtol=1e-5, atol=1e-4)


def test_auto_precision_matches_the_device():
    cap = torch.cuda.get_device_capability()
    assert resolve_precision("auto", "cuda").name == ("bf16" if cap >= (8, 0) else "fp16")


def _cuda_lm():
    import tempfile
    from pathlib import Path

    from model.decoding import SearchLM
    from model.word_lm import WordLM
    from test_lm_fusion import FUSION_ARPA, PIECES

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "lm.arpa").write_text(FUSION_ARPA)
        return SearchLM.build(WordLM.from_arpa(Path(tmp) / "lm.arpa"), PIECES, special_ids=[0, 1]), len(PIECES)


@pytest.mark.parametrize("fused", [False, True], ids=["plain", "fused"])
def test_prefix_search_cuda_graphs_match_eager_and_cpu(fused):
    """Issue 32: the frame loop replayed from CUDA graphs gives what the eager loop gives on the
    GPU, and the same n-best as the CPU."""
    from model.decoding import ctc_prefix_beam_search

    lm, vocab = _cuda_lm()
    g = torch.Generator().manual_seed(5)
    lp = (torch.randn(4, 60, vocab, generator=g) * 3).log_softmax(-1)
    lens = torch.tensor([60, 44, 13, 2])
    kwargs = dict(beam=8, lm=lm if fused else None, lm_scale=0.5, word_bonus=1.0)
    cpu = ctc_prefix_beam_search(lp, lens, **kwargs)
    eager = ctc_prefix_beam_search(lp.cuda(), lens.cuda(), frame_loop="eager", **kwargs)
    graphs = ctc_prefix_beam_search(lp.cuda(), lens.cuda(), frame_loop="graphs", **kwargs)
    for name in ("tokens", "lens", "scores", "log_prob_blank", "log_prob_non_blank"):
        assert torch.equal(getattr(graphs, name), getattr(eager, name)), name
    assert cpu.to_lists() == graphs.to_lists()
    torch.testing.assert_close(graphs.scores.cpu(), cpu.scores, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("fused", [False, True], ids=["plain", "fused"])
def test_prefix_search_loop_never_synchronises(monkeypatch, fused):
    """The eager frame loop under torch.cuda.set_sync_debug_mode("error"): any host
    synchronisation inside it (an item(), a pageable copy, a nonzero) raises. (The graph path
    replays the same operations; capturing them already fails on a synchronisation.)"""
    import model.decoding.ctc_prefix_beam as ctc_prefix_beam
    from model.decoding import ctc_prefix_beam_search

    lm, vocab = _cuda_lm()
    real = ctc_prefix_beam.run_frames

    def strict(step, inputs, outputs, n_frames, frame_loop=None):
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            real(step, inputs, outputs, n_frames, frame_loop)
        finally:
            torch.cuda.set_sync_debug_mode(0)

    monkeypatch.setattr(ctc_prefix_beam, "run_frames", strict)
    lp = torch.randn(3, 30, vocab).log_softmax(-1).cuda()
    ctc_prefix_beam_search(lp, torch.tensor([30, 20, 5]).cuda(), beam=6, lm=lm if fused else None,
                           lm_scale=0.5, frame_loop="eager")


@pytest.mark.parametrize("method", ["transducer-greedy", "transducer-beam"])
def test_transducer_cuda_graphs_match_eager(gpu_model, method):
    from model.decoding import transducer_greedy_search, transducer_modified_beam_search

    if gpu_model.decoder is None:
        pytest.skip("the fixture model has no transducer")
    dim = gpu_model.joiner.encoder_proj.in_features
    enc = torch.randn(3, 25, dim, generator=torch.Generator().manual_seed(2)).cuda()
    lens = torch.tensor([25, 17, 4]).cuda()
    if method == "transducer-greedy":
        runs = [transducer_greedy_search(gpu_model, enc, lens, frame_loop=m) for m in ("eager", "graphs")]
    else:
        runs = [transducer_modified_beam_search(gpu_model, enc, lens, beam=4, frame_loop=m) for m in ("eager", "graphs")]
    for name in ("tokens", "lens", "frames", "scores"):
        assert torch.equal(getattr(runs[0], name), getattr(runs[1], name)), name


# -- the runtime on a GPU -----------------------------------------------------------------------

SR = 16000


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny"))


def _waves(seconds, seed=0):
    rng = np.random.default_rng(seed)
    return [(0.1 * rng.standard_normal(int(s * SR))).astype(np.float32) for s in seconds]


def test_features_started_on_the_side_stream_equal_in_line_ones_and_start_without_a_sync(tiny_dir, no_tf32):
    from model.recognizer import Recognizer

    rec = Recognizer.from_dir(tiny_dir, device="cuda", amp_dtype="fp32", rescoring_dtype="fp32")
    waves = _waves([3.0, 1.2, 2.4])
    rec.transcribe(waves)  # warm: kernels loaded, side stream made
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            batch = rec.prepare(waves)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    assert syncs == [], [str(w.message) for w in syncs]
    inline = rec.features(waves, device="cuda")
    torch.cuda.current_stream().wait_event(batch.ready)
    torch.testing.assert_close(batch.feats, inline[0], rtol=0, atol=0)
    assert torch.equal(batch.feat_lens, inline[1])
    prepared, times = rec.transcribe(batch)
    direct, _ = rec.transcribe(waves)
    assert [t.token_ids for t in prepared] == [t.token_ids for t in direct]
    assert times.features > 0 and times.encoder > 0 and times.decoding > 0  # from CUDA events


def test_a_shards_batches_with_the_next_prepared_give_each_batchs_own_transcripts(tiny_dir, tmp_path, no_tf32):
    from pipeline.run.transcriber import ActorConfig, Transcriber
    from model.recognizer import StageTimes

    t = Transcriber(ActorConfig(model_uri=str(tiny_dir), model_sha256="", output_uri=str(tmp_path), run_id="t",
                                amp_dtype="fp32", rescoring_dtype="fp32", max_cut_seconds=5.0, device="cuda"))
    batches = [_waves([3.0, 2.0], 1), _waves([1.5, 1.4, 1.0], 2), _waves([0.8], 3)]
    got = t._run_model_batches(batches, StageTimes())
    alone = [t.recognizer.transcribe(b)[0] for b in batches]
    assert [[r[0].token_ids for r in out] for out in got] == [[tr.token_ids for tr in b] for b in alone]


def test_the_memory_probe_sizes_the_budget_from_the_device(tiny_dir, tmp_path):
    """The tiny model costs little per padded second: on any real GPU the budget is raised far
    above the CPU's 160 padded s (and at most a given --max-batch-seconds)."""
    from pipeline.run.transcriber import ActorConfig, Transcriber

    free, total = torch.cuda.mem_get_info()
    t = Transcriber(ActorConfig(model_uri=str(tiny_dir), model_sha256="", output_uri=str(tmp_path), run_id="t",
                                max_cut_seconds=10.0, device="cuda"))
    assert t.max_batch_seconds > 160.0 and t.oom_splits == 0, (t.max_batch_seconds, free / 2**30, total / 2**30)
    capped = Transcriber(ActorConfig(model_uri=str(tiny_dir), model_sha256="", output_uri=str(tmp_path), run_id="t",
                                     max_cut_seconds=10.0, device="cuda", max_batch_seconds=300.0))
    assert capped.max_batch_seconds == 300.0


def test_half_a_gpu_caps_the_process_allocator(tiny_dir, tmp_path):
    from pipeline.run.device_memory import CONTEXT_BYTES
    from pipeline.run.transcriber import ActorConfig, Transcriber

    total = torch.cuda.get_device_properties(0).total_memory
    try:
        t = Transcriber(ActorConfig(model_uri=str(tiny_dir), model_sha256="", output_uri=str(tmp_path), run_id="t",
                                    max_cut_seconds=10.0, device="cuda"), gpu_share=0.5)
        assert t.memory_fraction == pytest.approx(0.5 - CONTEXT_BYTES / total)
        if hasattr(torch.cuda, "get_per_process_memory_fraction"):
            assert torch.cuda.get_per_process_memory_fraction(0) == pytest.approx(t.memory_fraction)
        with pytest.raises(torch.OutOfMemoryError):  # more than the share cannot be had
            torch.empty(int(0.55 * total), dtype=torch.uint8, device="cuda")
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, 0)
        torch.cuda.empty_cache()


def test_hotwords_in_the_cuda_searches_are_the_cpu_searches():
    """Issue 35: a batch with different hotword lists (and one without) runs the batched automata
    on the GPU, CUDA graphs included: the same n-best and kept bonuses as on the CPU."""
    from model.decoding import ctc_prefix_beam_search
    from model.decoding.hotwords import HotwordBatch, HotwordGraph, HotwordList

    g = torch.Generator().manual_seed(21)
    vocab = 40
    logits = 2.0 * torch.randn(3, 60, vocab, generator=g)
    logits[..., 0] += 1.0
    log_probs = logits.log_softmax(-1)
    lens = torch.tensor([60, 41, 17])
    rng = np.random.default_rng(4)
    lists = [HotwordGraph.build(HotwordList(tuple(tuple(int(t) for t in rng.integers(1, vocab, size=rng.integers(1, 4)))
                                                  for _ in range(n)), (1.5,) * n), vocab) for n in (30, 5)]
    per_utt = [lists[0], None, lists[1]]
    cpu = ctc_prefix_beam_search(log_probs, lens, beam=8,
                                 hotwords=HotwordBatch.build(per_utt, torch.device("cpu")))
    gpu = ctc_prefix_beam_search(log_probs.cuda(), lens.cuda(), beam=8,
                                 hotwords=HotwordBatch.build(per_utt, torch.device("cuda")))
    assert gpu.to_lists() == cpu.to_lists()
    torch.testing.assert_close(gpu.hotword_scores.cpu(), cpu.hotword_scores)
    torch.testing.assert_close(gpu.scores.cpu(), cpu.scores)
