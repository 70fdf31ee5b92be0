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
