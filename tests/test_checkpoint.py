"""Checkpoint loading: formats, config inference, presets, clear errors, weights_only."""

from __future__ import annotations

import json

import pytest
import torch

from model import (
    PRESETS,
    AsrModel,
    CheckpointMismatchError,
    ModelLoadError,
    find_checkpoint,
    infer_config,
    load_checkpoint,
    pick_checkpoint,
    preset,
    read_state_dict,
)
from model.config import SHAPE_DETERMINED_FIELDS

HEAD_FIELDS = ("decoder_dim", "joiner_dim", "context_size", "attention_decoder_dim", "attention_decoder_num_layers",
               "attention_decoder_attention_dim", "attention_decoder_num_heads", "attention_decoder_feedforward_dim")
ATTENTION_FIELDS = ("num_heads", "query_head_dim", "value_head_dim", "pos_head_dim", "sos_id", "eos_id", "blank_id")


def as_tuple(v):
    from model import to_int_tuple

    return to_int_tuple(v) if isinstance(v, (str, list, tuple)) else v


def same(a, b, fields):
    return {f: (as_tuple(a.get(f)), as_tuple(b.get(f))) for f in fields if as_tuple(a.get(f)) != as_tuple(b.get(f))}


def tiny_config(**overrides):
    cfg = dict(
        downsampling_factor="1,2", num_encoder_layers="1,1", encoder_dim="32,48", encoder_unmasked_dim="32,32",
        num_heads="2,2", query_head_dim=8, value_head_dim=4, pos_head_dim=4, pos_dim=16, feedforward_dim="64,96",
        cnn_module_kernel="7,5", vocab_size=37, use_ctc=True, use_transducer=False, use_attention_decoder=True,
        attention_decoder_dim=32, attention_decoder_num_layers=1, attention_decoder_attention_dim=32,
        attention_decoder_num_heads=1, attention_decoder_feedforward_dim=64, sos_id=1, eos_id=1, ignore_id=-1,
    )
    cfg.update(overrides)
    return cfg


def test_infer_config_equals_fixture_config(ref_dir, ref_config):
    inferred = infer_config(read_state_dict(ref_dir / "pretrained.pt"))
    assert same(inferred, ref_config, SHAPE_DETERMINED_FIELDS + HEAD_FIELDS + ATTENTION_FIELDS) == {}


def test_load_without_config_reproduces_fixture(ref_dir, ref_inputs, ref_expected):
    model = load_checkpoint(ref_dir / "pretrained.pt")  # architecture inferred
    assert not model.training
    with torch.inference_mode():
        out, lens = model.forward_encoder(ref_inputs["x"], ref_inputs["x_lens"])
    assert torch.equal(lens, ref_expected["encoder_out_lens"])
    assert (out - ref_expected["encoder_out"]).abs().max() < 1e-4 * ref_expected["encoder_out"].abs().max()


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip_through_inference(name):
    cfg = preset(name)
    torch.manual_seed(0)
    model = AsrModel(**cfg)
    inferred = infer_config(model.state_dict())
    assert same(inferred, cfg, SHAPE_DETERMINED_FIELDS + ATTENTION_FIELDS) == {}
    heads = [f for f in HEAD_FIELDS if f in cfg]
    assert same(inferred, cfg, heads) == {}


def test_medium_transducer_parameter_count():
    # icefall reports 65.5 M parameters for its medium (default) transducer
    n = sum(p.numel() for p in AsrModel(**preset("medium-transducer")).parameters())
    assert 65.0e6 < n < 66.0e6


def test_formats_prefixes_and_model_avg(tmp_path):
    torch.manual_seed(1)
    model = AsrModel(**tiny_config())
    state = model.state_dict()
    averaged = {k: v + 1.0 if v.is_floating_point() else v for k, v in state.items()}
    files = {
        "pretrained.pt": {"model": state},
        "bare.pt": state,
        "ddp.pt": {"model": {f"module.{k}": v for k, v in state.items()}},
        "epoch-3.pt": {"model": state, "model_avg": averaged, "optimizer": {"state": {}, "param_groups": []},
                       "scheduler": {"last_epoch": 3}, "sampler": {"epoch": 3}, "batch_idx_train": 1234},
    }
    x = torch.randn(2, 60, 80)
    x_lens = torch.tensor([60, 41])
    with torch.inference_mode():
        want, _ = model.eval().forward_encoder(x, x_lens)
    for name, obj in files.items():
        torch.save(obj, tmp_path / name)
        loaded = load_checkpoint(tmp_path / name)
        with torch.inference_mode():
            got, _ = loaded.forward_encoder(x, x_lens)
        assert torch.equal(got, want), name
    avg = load_checkpoint(tmp_path / "epoch-3.pt", use_averaged=True)
    assert torch.equal(avg.ctc_output[1].bias, state["ctc_output.1.bias"] + 1.0)
    with pytest.raises(CheckpointMismatchError, match="model_avg"):
        load_checkpoint(tmp_path / "bare.pt", use_averaged=True)


def test_config_sources(tmp_path, ref_dir, ref_config):
    (tmp_path / "config.json").write_text(json.dumps(ref_config))
    model = load_checkpoint(ref_dir / "pretrained.pt", config=tmp_path / "config.json")
    assert model.encoder.num_encoder_layers == (1, 1, 2, 2, 1, 1)
    with pytest.raises(KeyError, match="unknown preset"):
        preset("gigantic")


def test_mismatch_error_names_keys_and_shapes(ref_dir):
    with pytest.raises(CheckpointMismatchError) as info:
        load_checkpoint(ref_dir / "pretrained.pt", config="small-transducer")
    text = str(info.value)
    assert "shape mismatches" in text
    assert "encoder_embed.out.weight: checkpoint (64, 2432) vs model (192, 2432)" in text
    assert "encoder_dim: checkpoint '64,96,128,160,128,96' vs config '192,256,256,256,256,256'" in text
    assert "num_encoder_layers: checkpoint '1,1,2,2,1,1' vs config '2,2,2,2,2,2'" in text
    assert "unexpected in checkpoint" in text and "ctc_output.1.weight" in text
    assert "Traceback" not in text


def test_missing_key_is_reported(tmp_path):
    state = AsrModel(**tiny_config()).state_dict()
    del state["ctc_output.1.bias"]
    torch.save({"model": state}, tmp_path / "broken.pt")
    with pytest.raises(CheckpointMismatchError, match=r"missing from checkpoint \(1\):\n\s+ctc_output.1.bias"):
        load_checkpoint(tmp_path / "broken.pt", config=tiny_config())


def test_not_a_zipformer(tmp_path):
    torch.save({"model": {"w": torch.zeros(3)}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a Zipformer"):
        load_checkpoint(tmp_path / "other.pt")


class Exploit:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_weights_only_refuses_pickled_code(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"model": AsrModel(**tiny_config()).state_dict(), "payload": Exploit()}, path)
    with pytest.raises(ModelLoadError, match="refused: the pickle calls builtins.print"):
        load_checkpoint(path)
    assert "must never run" not in capsys.readouterr().out


def test_config_json_with_metadata_loads(tmp_path, ref_dir, ref_config):
    """A model directory's config.json carries name / decoding beside the kwargs."""
    (tmp_path / "config.json").write_text(json.dumps({"name": "demo", "decoding": {"attention_scale": 0.5}, **ref_config}))
    for config in (tmp_path / "config.json", json.loads((tmp_path / "config.json").read_text())):
        model = load_checkpoint(ref_dir / "pretrained.pt", config=config)
        assert model.encoder.num_encoder_layers == (1, 1, 2, 2, 1, 1)


def test_checkpoint_picking():
    """pretrained.pt first, then the highest epoch number (not all digits of the name), an export
    of an epoch before its training checkpoint, else the only .pt."""
    assert pick_checkpoint(["epoch-40.pt", "pretrained.pt"]) == "pretrained.pt"
    assert pick_checkpoint(["epoch-30-avg-10.pt", "epoch-40.pt", "epoch-9.pt"]) == "epoch-40.pt"
    assert pick_checkpoint(["epoch-30.pt", "epoch-30-avg-10.pt", "epoch-29.pt"]) == "epoch-30-avg-10.pt"
    assert pick_checkpoint(["epoch-100.pt", "epoch-99.pt"]) == "epoch-100.pt"
    assert pick_checkpoint(["model.pt", "bpe.model"]) == "model.pt"
    for names in (["a.pt", "b.pt"], ["bpe.model"], []):
        with pytest.raises(FileNotFoundError, match="not exactly one"):
            pick_checkpoint(names)


def test_find_checkpoint_in_a_directory(tmp_path):
    for name in ("epoch-30-avg-10.pt", "epoch-40.pt", "bpe.model"):
        (tmp_path / name).write_bytes(b"x")
    assert find_checkpoint(tmp_path) == tmp_path / "epoch-40.pt"
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "empty")):
        (tmp_path / "empty").mkdir()
        find_checkpoint(tmp_path / "empty")
