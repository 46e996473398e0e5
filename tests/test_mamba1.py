"""Our Mamba-1 against transformers' MambaForCausalLM (pure-torch path), on random checkpoints
written in both formats the loader reads; chunk invariance; the scan against a naive loop."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from harness.models.mamba1 import CheckpointError, load_mamba1, save_pretrained
from harness.models.recurrence import piece_tokens

VOCAB = 64


@pytest.fixture(autouse=True)
def _threads(one_thread: None) -> None:
    """Tiny tensors: one thread (conftest)."""


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory):
    """A random transformers Mamba with diverse decays, and its hf-format directory."""
    from transformers import MambaConfig, MambaForCausalLM

    torch.manual_seed(0)
    config = MambaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        state_size=8,
        num_hidden_layers=2,
        expand=2,
        conv_kernel=4,
        time_step_rank=4,
        use_mambapy=False,
    )
    model = MambaForCausalLM(config).eval()
    with torch.no_grad():
        for layer in model.backbone.layers:
            layer.mixer.A_log.uniform_(-2.0, 2.0)  # decays from ~exp(-7 dt) to ~1 per entry
            layer.mixer.D.normal_()
            layer.mixer.dt_proj.bias.uniform_(-4.0, 1.0)
    directory = tmp_path_factory.mktemp("mamba1") / "hf"
    model.save_pretrained(directory)
    return model, directory


def state_spaces_copy(hf_dir: Path, out: Path, vocab_size: int | None = None) -> Path:
    """The same weights as mamba-ssm stores them: config with ssm_cfg, pytorch_model.bin, the
    embedding padded to a multiple of 8 rows beyond `vocab_size` (default: all rows)."""
    from safetensors.torch import load_file

    hf = json.loads((hf_dir / "config.json").read_text())
    tensors = load_file(str(hf_dir / "model.safetensors"))
    tensors["backbone.embedding.weight"] = tensors.pop("backbone.embeddings.weight")
    tensors.pop("lm_head.weight", None)
    out.mkdir()
    torch.save(tensors, out / "pytorch_model.bin")
    config = {
        "d_model": hf["hidden_size"],
        "n_layer": hf["num_hidden_layers"],
        "vocab_size": vocab_size or hf["vocab_size"],
        "ssm_cfg": {"d_state": hf["state_size"], "dt_rank": hf["time_step_rank"]},
        "rms_norm": True,
        "residual_in_fp32": True,
        "fused_add_norm": True,
        "pad_vocab_size_multiple": 8,
    }
    (out / "config.json").write_text(json.dumps(config))
    return out


def losses(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Per-token NLL of ids[:, 1:] from logits over the real vocabulary."""
    return F.cross_entropy(logits[:, :-1, :VOCAB].transpose(1, 2), ids[:, 1:], reduction="none")


@pytest.mark.parametrize("fmt", ["hf", "state-spaces"])
def test_losses_match_transformers(reference, fmt: str, tmp_path: Path) -> None:
    model, hf_dir = reference
    directory = hf_dir if fmt == "hf" else state_spaces_copy(hf_dir, tmp_path / "ss")
    ours = load_mamba1(directory).eval()
    ids = torch.randint(0, VOCAB, (2, 300), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs = losses(model(ids).logits, ids)
        mine = losses(ours(ids)[0], ids)
    assert (mine - theirs).abs().max() < 1e-4


def test_gradients_match_transformers(reference) -> None:
    """What `harness train` steps on: every parameter's gradient of the mean loss, through our
    scan's autograd path, against transformers' pure-torch Mamba."""
    model, hf_dir = reference
    theirs = copy.deepcopy(model)
    ours = load_mamba1(hf_dir).requires_grad_(True)
    ids = torch.randint(0, VOCAB, (2, 200), generator=torch.Generator().manual_seed(3))
    losses(theirs(ids).logits, ids).mean().backward()
    losses(ours(ids)[0], ids).mean().backward()
    expected = dict(theirs.named_parameters())
    renamed = {"embedding.weight": "backbone.embeddings.weight"}
    for name, param in ours.named_parameters():
        grad = expected[renamed.get(name, f"backbone.{name}")].grad
        assert param.grad is not None and grad is not None, name
        assert (param.grad - grad).norm() <= 1e-5 * grad.norm(), name


def test_any_chunking_equals_one_pass(reference) -> None:
    ours = load_mamba1(reference[1]).eval()
    ids = torch.randint(0, VOCAB, (1, 257), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        whole, _ = ours(ids)
        for size in (1, 5, 16, 100):
            state, parts = ours.init_state(1), []
            for lo in range(0, ids.shape[1], size):
                logits, state = ours(ids[:, lo : lo + size], state)
                parts.append(logits)
            assert (torch.cat(parts, 1) - whole).abs().max() < 1e-5, size


def test_long_calls_go_through_in_pieces_exactly(reference) -> None:
    ours = load_mamba1(reference[1]).eval()
    ids = torch.randint(0, VOCAB, (1, 2 * piece_tokens(torch.device("cpu")) + 37))
    with torch.no_grad():
        whole, state = ours(ids)  # three pieces inside
        split, split_state = ours(ids[:, :1000])
        for lo in range(1000, ids.shape[1], 1000):
            logits, split_state = ours(ids[:, lo : lo + 1000], split_state)
            split = torch.cat([split, logits], 1)
        last, _ = ours(ids, last_only=True)
    assert (whole - split).abs().max() < 1e-5
    for a, b in zip(state.ssm, split_state.ssm, strict=True):
        assert (a - b).abs().max() < 1e-5
    assert (last[:, 0] - whole[:, -1]).abs().max() < 1e-5


@pytest.mark.parametrize("fmt", ["hf", "state-spaces"])
def test_saved_checkpoints_load_back(reference, fmt: str, tmp_path: Path) -> None:
    ours = load_mamba1(reference[1]).eval()
    again = load_mamba1(save_pretrained(ours, tmp_path / fmt, fmt)).eval()
    ids = torch.randint(0, VOCAB, (1, 50))
    with torch.no_grad():
        assert torch.equal(ours(ids)[0], again(ids)[0])


def test_wrong_checkpoints_are_named(reference, tmp_path: Path) -> None:
    bad = state_spaces_copy(reference[1], tmp_path / "bad")
    config = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**config, "ssm_cfg": {"layer": "Mamba2"}}))
    with pytest.raises(CheckpointError, match="not a Mamba-1 model"):
        load_mamba1(bad)
    (bad / "config.json").write_text(json.dumps({**config, "n_layer": 3}))
    with pytest.raises(CheckpointError, match="do not match"):
        load_mamba1(bad)


def test_a_local_mamba1_checkpoint_runs_every_task_it_serves(reference, tmp_path: Path) -> None:
    """A state-spaces Mamba-1 folder with a byte tokenizer: detected as mamba1 by its config,
    evaluated through `harness run` like any model (passkey, perplexity)."""
    import pyarrow.dataset as ds
    from transformers import MambaConfig, MambaForCausalLM

    from harness.cli import main
    from harness.models.tokenizer import byte_tokenizer

    tokenizer = byte_tokenizer()
    torch.manual_seed(4)
    config = MambaConfig(
        vocab_size=264,  # the 257 tokens, padded to a multiple of 8
        hidden_size=16,
        state_size=4,
        num_hidden_layers=1,
        time_step_rank=2,
    )
    hf_dir = tmp_path / "hf"
    MambaForCausalLM(config).save_pretrained(hf_dir)
    directory = state_spaces_copy(hf_dir, tmp_path / "mamba1-bytes", len(tokenizer))
    tokenizer.save_pretrained(directory)
    out = tmp_path / "results"
    code = main(["run", "--models", str(directory), "--tasks", "passkey,perplexity",
                 "--lengths", "300", "--samples", "1", "--out", str(out)])  # fmt: skip
    assert code == 0
    for table in ("passkey", "perplexity"):
        rows = ds.dataset(out / table, partitioning="hive").to_table().to_pylist()
        assert rows and {r["family"] for r in rows} == {"mamba1"}
        assert {r["status"] for r in rows} == {"ok"}
        assert rows[0]["state_size"] == 1 * 32 * 4  # layers x d_inner x d_state


@pytest.mark.parametrize(
    ("config", "family"),
    [
        ({"model_type": "mamba", "hidden_size": 8}, "mamba1"),
        ({"model_type": "mamba2"}, "mamba2"),
        ({"d_model": 8, "n_layer": 2, "ssm_cfg": {}}, "mamba1"),
        ({"d_model": 8, "n_layer": 2, "ssm_cfg": {"layer": "Mamba2"}}, "mamba2"),
        ({"model_type": "gpt2", "n_layer": 2, "n_embd": 8}, "transformer"),  # has n_layer too
        ({"model_type": "gpt_neox"}, "transformer"),
        ({"model_type": "rwkv6"}, "rwkv6"),
    ],
)
def test_family_from_the_checkpoint_itself(config: dict, family: str) -> None:
    from harness.models.loading import family_of

    assert family_of(config) == family


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"d_model": 8, "n_layer": 2, "ssm_cfg": {"layer": "Mamba3"}}, "Mamba3"),
        ({"model_type": "rwkv"}, "only rwkv6 runs"),
        ({"hidden": 8}, "names no model family"),
    ],
)
def test_unknown_families_are_refused_naming_what_was_found(config: dict, message: str) -> None:
    from harness.models.loading import ModelError, family_of

    with pytest.raises(ModelError, match=message):
        family_of(config)


def test_peer_sets_expand_to_matching_models() -> None:
    from harness.models.loading import resolve
    from harness.plan import model_refs

    models = [resolve(ref) for ref in model_refs("pile-160m")]  # parse_models would fetch them
    assert [(m.name, m.family) for m in models] == [
        ("pythia-160m", "transformer"),
        ("mamba-130m", "mamba1"),
        ("mamba2-130m", "mamba2"),
    ]
