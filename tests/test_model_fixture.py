"""The model reproduces the reference implementation's golden outputs.

Tolerance (from the fixture README): ``max|ours - ref| <= 1e-4 * max(1, max|ref|)``
per tensor, on valid frames; ids and lengths exactly.
"""

from __future__ import annotations

import math

import pytest
import torch

from model import AsrModel

torch.set_num_threads(2)


def assert_close(name: str, ours: torch.Tensor, ref: torch.Tensor, rtol: float = 1e-4) -> None:
    assert ours.shape == ref.shape, f"{name}: shape {tuple(ours.shape)} != {tuple(ref.shape)}"
    err = (ours.float() - ref.float()).abs().max().item()
    tol = rtol * max(1.0, ref.abs().max().item())
    assert err <= tol, f"{name}: max abs err {err:.3e} > tol {tol:.3e}"


def valid(t: torch.Tensor, lens: torch.Tensor, time_major: bool) -> torch.Tensor:
    """Concatenate the valid frames of each utterance (padded rows are don't-care)."""
    if time_major:
        return torch.cat([t[: int(n), i] for i, n in enumerate(lens)])
    return torch.cat([t[i, : int(n)] for i, n in enumerate(lens)])


@pytest.fixture(scope="module")
def traced(ref_model, ref_inputs):
    """Run forward_encoder once with hooks that capture every intermediate the fixture holds."""
    captured: dict[str, torch.Tensor] = {}
    hooks = []
    enc = ref_model.encoder

    def keep(name, index=None, from_input=False):
        def hook(module, args, output):
            value = args[0] if from_input else output
            captured[name] = (value[index] if index is not None else value).detach().clone()

        return hook

    hooks.append(ref_model.encoder_embed.register_forward_hook(keep("embed_out", 0)))
    for i, stack in enumerate(enc.encoders):
        hooks.append(stack.register_forward_hook(keep(f"encoder.stack_out.{i}")))
        if hasattr(stack, "encoder"):
            hooks.append(stack.encoder.register_forward_hook(keep(f"encoder.stack_inner_out.{i}")))
    hooks.append(enc.downsample_output.register_forward_hook(keep("encoder.pre_downsample", from_input=True)))
    stack0 = enc.encoders[0]
    layer0 = stack0.layers[0]
    hooks.append(stack0.encoder_pos.register_forward_hook(keep("layer0.pos_emb")))
    hooks.append(layer0.register_forward_hook(keep("layer0.in", from_input=True)))
    hooks.append(layer0.register_forward_hook(keep("layer0.out")))
    hooks.append(layer0.self_attn_weights.register_forward_hook(keep("layer0.attn_weights")))
    for key, sub in [
        ("ff1_out", "feed_forward1"),
        ("nonlin_out", "nonlin_attention"),
        ("attn1_out", "self_attn1"),
        ("conv1_out", "conv_module1"),
        ("ff2_out", "feed_forward2"),
        ("bypass_mid_out", "bypass_mid"),
        ("attn2_out", "self_attn2"),
        ("conv2_out", "conv_module2"),
        ("ff3_out", "feed_forward3"),
        ("norm_out", "norm"),
    ]:
        hooks.append(getattr(layer0, sub).register_forward_hook(keep(f"layer0.{key}")))
    try:
        with torch.inference_mode():
            out, out_lens = ref_model.forward_encoder(ref_inputs["x"], ref_inputs["x_lens"])
    finally:
        for h in hooks:
            h.remove()
    captured["encoder_out"], captured["encoder_out_lens"] = out, out_lens
    return captured


def test_strict_load_and_param_count(ref_dir, ref_config):
    state = torch.load(ref_dir / "pretrained.pt", map_location="cpu", weights_only=True)["model"]
    model = AsrModel(**ref_config)
    model.load_state_dict(state, strict=True)
    ours = {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}
    ref = {k: (tuple(v.shape), v.dtype) for k, v in state.items()}
    assert ours == ref
    assert sum(v.numel() for v in state.values()) == 4_483_587


def test_params_txt_lists_exactly_our_keys(ref_dir, ref_config):
    rows = [line.split("\t") for line in (ref_dir / "params.txt").read_text().splitlines() if not line.startswith("#")]
    listed = {name: shape for name, shape, _dtype in rows}
    ours = {k: str(list(v.shape)) for k, v in AsrModel(**ref_config).state_dict().items()}
    assert ours == listed


def test_subsampling(traced, ref_expected):
    lens = ref_expected["embed_out_lens"]
    assert torch.equal(lens, torch.tensor([255, 146, 58]))
    assert_close("embed_out", valid(traced["embed_out"], lens, False), valid(ref_expected["embed_out"], lens, False))


def test_first_layer_trace(traced, ref_expected):
    lens = ref_expected["embed_out_lens"]
    assert_close("layer0.pos_emb", traced["layer0.pos_emb"], ref_expected["layer0.pos_emb"])
    for key in ["in", "ff1_out", "nonlin_out", "attn1_out", "conv1_out", "ff2_out", "bypass_mid_out",
                "attn2_out", "conv2_out", "ff3_out", "norm_out", "out"]:
        name = f"layer0.{key}"
        assert_close(name, valid(traced[name], lens, True), valid(ref_expected[name], lens, True))
    shortest = traced["layer0.attn_weights"][:, 2, :58, :58]
    assert_close("layer0.attn_weights_shortest", shortest, ref_expected["layer0.attn_weights_shortest"])


@pytest.mark.parametrize("i", range(6))
def test_stack_outputs(traced, ref_expected, ref_config, i):
    lens = ref_expected["embed_out_lens"]
    name = f"encoder.stack_out.{i}"
    assert_close(name, valid(traced[name], lens, True), valid(ref_expected[name], lens, True))
    if i > 0:
        ds = int(ref_config["downsampling_factor"].split(",")[i])
        inner = f"encoder.stack_inner_out.{i}"
        inner_lens = torch.div(lens + ds - 1, ds, rounding_mode="floor")
        assert traced[inner].shape == ref_expected[inner].shape
        assert_close(inner, valid(traced[inner], inner_lens, True), valid(ref_expected[inner], inner_lens, True))


def test_encoder_output(traced, ref_expected):
    lens = ref_expected["encoder_out_lens"]
    assert torch.equal(traced["encoder_out_lens"], lens)
    assert_close("encoder.pre_downsample", valid(traced["encoder.pre_downsample"], ref_expected["embed_out_lens"], True),
                 valid(ref_expected["encoder.pre_downsample"], ref_expected["embed_out_lens"], True))
    assert_close("encoder_out", valid(traced["encoder_out"], lens, False), valid(ref_expected["encoder_out"], lens, False))
    # The reference notes that an exact re-implementation also matches padded rows.
    assert_close("encoder_out (padded rows too)", traced["encoder_out"], ref_expected["encoder_out"])


def test_ctc_log_probs(traced, ref_model, ref_expected):
    lens = ref_expected["encoder_out_lens"]
    with torch.inference_mode():
        log_probs = ref_model.ctc_output(traced["encoder_out"])
    assert_close("ctc_log_probs", valid(log_probs, lens, False), valid(ref_expected["ctc_log_probs"], lens, False))
    # probabilities normalise
    assert torch.allclose(log_probs.exp().sum(-1), torch.ones(log_probs.shape[:2]), atol=1e-4)


def test_single_utterances(ref_model, ref_inputs, ref_expected):
    x, x_lens = ref_inputs["x"], ref_inputs["x_lens"]
    for i in range(x.size(0)):
        n = int(x_lens[i])
        with torch.inference_mode():
            out, out_lens = ref_model.forward_encoder(x[i : i + 1, :n], x_lens[i : i + 1])
        assert torch.equal(out_lens, ref_expected[f"single.{i}.encoder_out_lens"])
        assert_close(f"single.{i}.encoder_out", out, ref_expected[f"single.{i}.encoder_out"])


def test_attention_decoder(ref_model, ref_inputs, ref_expected):
    ys = [row[: int(n)].tolist() for row, n in zip(ref_inputs["ys_padded"], ref_inputs["ys_lens"])]
    enc, enc_lens = ref_expected["encoder_out"], ref_expected["encoder_out_lens"]
    ad = ref_model.attention_decoder
    ys_in, ys_in_lens, ys_out = ad.prepare_targets(ys)
    assert torch.equal(ys_in, ref_expected["attn_decoder.ys_in"])
    assert torch.equal(ys_in_lens, ref_expected["attn_decoder.ys_in_lens"])
    assert torch.equal(ys_out, ref_expected["attn_decoder.ys_out"])
    with torch.inference_mode():
        logits = ad.decoder(x=ys_in, x_lens=ys_in_lens, memory=enc, memory_lens=enc_lens)
        nll = ad.nll(enc, enc_lens, ys)
    assert_close("attn_decoder.logits", logits, ref_expected["attn_decoder.logits"])
    assert_close("attn_decoder.nll", nll, ref_expected["attn_decoder.nll"])
    assert torch.equal(nll == 0, ys_out == -1)


def test_transducer_heads(ref_model, ref_inputs, ref_expected):
    enc = ref_expected["encoder_out"][:, :5]
    with torch.inference_mode():
        dec = ref_model.decoder(ref_inputs["decoder_context"], need_pad=False)
        enc_proj = ref_model.joiner.encoder_proj(enc)
        dec_proj = ref_model.joiner.decoder_proj(dec)
        logits = ref_model.joiner(enc, dec)
    assert_close("transducer.decoder_out", dec, ref_expected["transducer.decoder_out"])
    assert_close("transducer.joiner_enc_proj", enc_proj, ref_expected["transducer.joiner_enc_proj"])
    assert_close("transducer.joiner_dec_proj", dec_proj, ref_expected["transducer.joiner_dec_proj"])
    assert_close("transducer.joiner_logits", logits, ref_expected["transducer.joiner_logits"])
    # id -1 means "no token" and must embed to zero
    with torch.inference_mode():
        blank_ctx = ref_model.decoder(torch.tensor([[-1, -1]]), need_pad=False)
    assert torch.all(blank_ctx == 0)


def test_ctc_greedy_from_our_log_probs(ref_model, ref_inputs, ref_expected):
    """Greedy CTC on our own log-probs gives the reference ids (margins are >= 9e-3)."""
    with torch.inference_mode():
        out, lens = ref_model.forward_encoder(ref_inputs["x"], ref_inputs["x_lens"])
        best = ref_model.ctc_output(out).argmax(-1)
    for i, n in enumerate(lens.tolist()):
        seq = torch.unique_consecutive(best[i, :n])
        seq = seq[seq != 0]
        ref = ref_expected["ctc_greedy_ids"][i, : int(ref_expected["ctc_greedy_lens"][i])]
        assert torch.equal(seq, ref)


def test_padding_value_matters(ref_model, ref_inputs, ref_expected):
    """The reference pads with log(1e-10); padding with zeros must change the shorter utterances."""
    x = ref_inputs["x"].clone()
    assert math.isclose(float(ref_inputs["padding_value"]), math.log(1e-10), rel_tol=1e-6)
    for i, n in enumerate(ref_inputs["x_lens"].tolist()):
        x[i, n:] = 0.0
    with torch.inference_mode():
        out, _ = ref_model.forward_encoder(x, ref_inputs["x_lens"])
    diff = (out[2, :29] - ref_expected["encoder_out"][2, :29]).abs().max().item()
    assert diff > 1e-2


def test_bf16_autocast_runs_and_stays_close(ref_model, ref_inputs, ref_expected):
    """Mixed precision (the GPU path) must run: bf16 branches meet fp32 residuals."""
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        out, lens = ref_model.forward_encoder(ref_inputs["x"], ref_inputs["x_lens"])
        log_probs = ref_model.ctc_output(out)
    assert torch.equal(lens, ref_expected["encoder_out_lens"])
    ref = valid(ref_expected["encoder_out"], lens, False)
    ours = valid(out.float(), lens, False)
    rel = ((ours - ref).norm() / ref.norm()).item()
    assert rel < 0.05, rel
    ref_lp = valid(ref_expected["ctc_log_probs"], lens, False)
    lp_rel = ((valid(log_probs.float(), lens, False) - ref_lp).norm() / ref_lp.norm()).item()
    assert lp_rel < 0.05, lp_rel
