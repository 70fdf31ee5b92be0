"""On a CUDA device (run by bench/gpu_suite.sh; skipped where torch has no CUDA, as on CI):
the golden fixture in fp32 within its tolerance, batched == single, and decoding on the GPU
identical to the CPU's from the same encoder output."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from model.decoding import DecodingConfig, decode
from model.precision import resolve_precision

from test_model_fixture import assert_close, valid

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]


@pytest.fixture(scope="module")
def gpu_model(ref_model):
    return copy.deepcopy(ref_model).to("cuda").eval()


def test_fixture_encoder_on_cuda_fp32(gpu_model, ref_inputs, ref_expected):
    with torch.inference_mode():
        out, lens = gpu_model.forward_encoder(ref_inputs["x"].cuda(), ref_inputs["x_lens"].cuda())
    assert torch.equal(lens.cpu(), ref_expected["encoder_out_lens"])
    assert_close("cuda encoder_out", valid(out.cpu(), lens.cpu(), False),
                 valid(ref_expected["encoder_out"], ref_expected["encoder_out_lens"], False))


def test_batched_equals_single_on_cuda(gpu_model, ref_inputs):
    x, x_lens = ref_inputs["x"].cuda(), ref_inputs["x_lens"].cuda()
    with torch.inference_mode():
        batch, lens = gpu_model.forward_encoder(x, x_lens)
        for i in range(x.size(0)):
            n = int(x_lens[i])
            single, _ = gpu_model.forward_encoder(x[i:i + 1, :n], x_lens[i:i + 1])
            assert_close(f"utt {i}", single[0, : int(lens[i])].cpu(), batch[i, : int(lens[i])].cpu())


@pytest.mark.parametrize("method", ["ctc-greedy", "ctc-beam", "attention-rescoring"])
def test_decoding_on_cuda_matches_cpu(gpu_model, ref_model, ref_expected, method):
    enc, lens = ref_expected["encoder_out"], ref_expected["encoder_out_lens"]
    cfg = DecodingConfig(method=method)
    cpu = decode(ref_model, enc, lens, cfg)
    gpu = decode(gpu_model, enc.cuda(), lens.cuda(), cfg)
    assert [h.token_ids for h in gpu] == [h.token_ids for h in cpu]
    np.testing.assert_allclose([h.score for h in gpu], [h.score for h in cpu], rtol=1e-4, atol=1e-3)


def test_fused_lm_search_on_cuda_matches_cpu():
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
