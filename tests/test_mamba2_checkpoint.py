"""Checkpoints: parity with transformers' Mamba2ForCausalLM, both formats, broken directories."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from harness.models.mamba2 import (
    CheckpointError,
    ConfigError,
    Mamba2,
    Mamba2Config,
    load_mamba2,
    save_pretrained,
)

VOCAB = 60


pytestmark = pytest.mark.usefixtures("one_thread")


def hf_model(heads: int, head_dim: int, groups: int, chunk: int, tied: bool = True):
    """A random transformers Mamba2ForCausalLM with every shape field set explicitly."""
    from transformers import Mamba2Config as HFConfig
    from transformers import Mamba2ForCausalLM

    config = HFConfig(
        num_heads=heads,
        head_dim=head_dim,
        hidden_size=heads * head_dim // 2,
        state_size=8,
        n_groups=groups,
        num_hidden_layers=2,
        vocab_size=VOCAB,
        chunk_size=chunk,
        tie_word_embeddings=tied,
    )
    torch.manual_seed(heads * 100 + groups)
    model = Mamba2ForCausalLM(config).eval()
    with torch.no_grad():  # decays and skips away from their initial values
        for name, p in model.named_parameters():
            if name.endswith(("A_log", "dt_bias", ".D")) or "norm" in name:
                p.add_(torch.randn_like(p) * 0.3)
    return model


@torch.no_grad()
@pytest.mark.parametrize(
    ("heads", "head_dim", "groups", "chunk", "tied"),
    [(4, 8, 1, 16, True), (8, 4, 2, 7, True), (6, 16, 2, 32, False), (2, 8, 1, 64, True)],
)
def test_parity_with_transformers_in_both_formats(
    tmp_path: Path, heads: int, head_dim: int, groups: int, chunk: int, tied: bool
) -> None:
    from transformers import Mamba2ForCausalLM

    hf_model(heads, head_dim, groups, chunk, tied).save_pretrained(tmp_path / "hf")
    ids = torch.randint(0, VOCAB, (2, 45), generator=torch.Generator().manual_seed(0))
    reference = Mamba2ForCausalLM.from_pretrained(tmp_path / "hf").eval()(ids).logits

    ours = load_mamba2(tmp_path / "hf")
    assert ours.config.nheads == heads and ours.config.ngroups == groups
    logits, _ = ours(ids)
    assert (logits - reference).abs().max() < 1e-4

    save_pretrained(ours, tmp_path / "ss", format="state-spaces")
    config = json.loads((tmp_path / "ss" / "config.json").read_text())
    assert config["ssm_cfg"]["layer"] == "Mamba2" and config["ssm_cfg"]["d_state"] == 8
    converted, _ = load_mamba2(tmp_path / "ss")(ids)
    assert (converted - reference).abs().max() < 1e-4


@torch.no_grad()
@pytest.mark.parametrize(("groups", "chunk"), [(1, 16), (2, 7)])
def test_chunk_vectorised_scan_matches_transformers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, groups: int, chunk: int
) -> None:
    """The form the torch backend takes off CPU (ssd_scan_chunks), run here on CPU."""
    from transformers import Mamba2ForCausalLM

    from harness.models.mamba2 import ssd

    hf_model(4, 8, groups, chunk).save_pretrained(tmp_path)
    ids = torch.randint(0, VOCAB, (2, 45), generator=torch.Generator().manual_seed(0))
    reference = Mamba2ForCausalLM.from_pretrained(tmp_path).eval()(ids).logits
    monkeypatch.setattr(ssd, "ssd_scan", ssd.ssd_scan_chunks)
    logits, _ = load_mamba2(tmp_path)(ids)
    assert (logits - reference).abs().max() < 1e-4


@torch.no_grad()
def test_our_hf_format_loads_in_transformers(tmp_path: Path) -> None:
    from transformers import Mamba2ForCausalLM

    torch.manual_seed(0)
    ours = Mamba2(Mamba2Config(d_model=16, n_layer=2, vocab_size=50, d_state=8, headdim=8))
    save_pretrained(ours, tmp_path, format="hf")
    ids = torch.randint(0, 50, (1, 30))
    theirs = Mamba2ForCausalLM.from_pretrained(tmp_path).eval()
    assert (theirs(ids).logits - ours(ids)[0]).abs().max() < 1e-4


@torch.no_grad()
@pytest.mark.parametrize("format", ["state-spaces", "hf"])
def test_round_trip(tmp_path: Path, format: str) -> None:
    torch.manual_seed(0)
    config = Mamba2Config(
        d_model=24, n_layer=3, vocab_size=50, d_state=4, headdim=12, ngroups=2, chunk_size=16
    )
    model = Mamba2(config)
    save_pretrained(model, tmp_path, format=format)  # type: ignore[arg-type]
    loaded = load_mamba2(tmp_path)
    ids = torch.randint(0, 50, (1, 40))
    assert torch.equal(model(ids)[0], loaded(ids)[0])
    assert loaded.lm_head.weight is loaded.embedding.weight
    assert loaded.config.padded_vocab_size == config.padded_vocab_size


@torch.no_grad()
def test_state_spaces_torch_bin_with_head(tmp_path: Path) -> None:
    """The original format: pytorch_model.bin holding lm_head.weight too, default ssm_cfg."""
    torch.manual_seed(0)
    model = Mamba2(Mamba2Config(d_model=64, n_layer=1, vocab_size=40, d_state=128, headdim=64))
    tensors = {f"backbone.{k}": v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    tensors["lm_head.weight"] = model.lm_head.weight.detach().clone()
    torch.save(tensors, tmp_path / "pytorch_model.bin")
    config = {"d_model": 64, "n_layer": 1, "vocab_size": 40, "ssm_cfg": {"layer": "Mamba2"}}
    (tmp_path / "config.json").write_text(json.dumps(config | {"pad_vocab_size_multiple": 16}))
    loaded = load_mamba2(tmp_path, dtype=torch.bfloat16)
    assert loaded.embedding.weight.dtype == torch.bfloat16 and loaded.config.d_state == 128
    assert loaded.config.state_size == 1 * 2 * 64 * 128


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    save_pretrained(
        Mamba2(Mamba2Config(d_model=16, n_layer=2, vocab_size=30, d_state=4, headdim=8)), tmp_path
    )
    return tmp_path


def test_missing_tensor(saved: Path) -> None:
    tensors = load_file(saved / "model.safetensors")
    del tensors["backbone.layers.1.mixer.A_log"]
    save_file(tensors, saved / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"backbone\.layers\.1\.mixer\.A_log is missing"):
        load_mamba2(saved)


def test_wrong_shape(saved: Path) -> None:
    tensors = load_file(saved / "model.safetensors")
    tensors["backbone.layers.0.mixer.in_proj.weight"] = torch.zeros(3, 16)
    save_file(tensors, saved / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"in_proj\.weight has shape \[3, 16\], expected"):
        load_mamba2(saved)


def test_config_disagreeing_with_weights(saved: Path) -> None:
    config = json.loads((saved / "config.json").read_text())
    (saved / "config.json").write_text(json.dumps(config | {"n_layer": 1}))
    with pytest.raises(CheckpointError, match=r"not in a 1-layer model: backbone\.layers\.1\."):
        load_mamba2(saved)


def test_no_config(saved: Path) -> None:
    (saved / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"has no config\.json"):
        load_mamba2(saved)


def test_no_weights(saved: Path) -> None:
    (saved / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="has no weights"):
        load_mamba2(saved)


def test_not_a_mamba2_config(saved: Path) -> None:
    (saved / "config.json").write_text(json.dumps({"model_type": "gpt_neox"}))
    with pytest.raises(CheckpointError, match="neither a state-spaces Mamba-2 config"):
        load_mamba2(saved)


def test_unknown_hub_id_offline() -> None:
    with pytest.raises(CheckpointError, match="neither a local directory nor a downloadable"):
        load_mamba2("nobody-here/no-such-model")


def test_config_fields_and_validation() -> None:
    config = Mamba2Config(d_model=768, n_layer=24, vocab_size=50277)
    assert (config.d_inner, config.nheads, config.conv_dim) == (1536, 24, 1792)
    assert config.padded_vocab_size == 50288 and config.state_size == 4_718_592
    with pytest.raises(ConfigError, match="not a multiple of headdim"):
        Mamba2Config(d_model=40, n_layer=1, vocab_size=10, headdim=64)
    with pytest.raises(ConfigError, match="split evenly among ngroups"):
        Mamba2Config(d_model=96, n_layer=1, vocab_size=10, headdim=64, ngroups=2)
    with pytest.raises(ConfigError, match=r"ssm_cfg\.D_has_hdim"):
        Mamba2Config.from_dict(
            {
                "d_model": 64,
                "n_layer": 1,
                "vocab_size": 9,
                "ssm_cfg": {"layer": "Mamba2", "D_has_hdim": True},
            }
        )
    with pytest.raises(ConfigError, match="not a Mamba-2 model"):
        Mamba2Config.from_dict({"d_model": 64, "n_layer": 1, "vocab_size": 9, "ssm_cfg": {}})
