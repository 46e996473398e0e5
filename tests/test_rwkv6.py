"""Our RWKV-6 against a naive token-by-token recurrence written here from the equations and
against the `rwkv` package's plain-torch model (`cpu fp32`) on the same weights, in both
checkpoint formats; chunk invariance; the World tokenizer against the package's."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from harness.models.recurrence import ScanInputs, piece_tokens
from harness.models.rwkv6 import (
    Rwkv6,
    Rwkv6Config,
    WorldTokenizer,
    bonus,
    load_rwkv6,
    save_blinkdl,
)
from harness.models.rwkv6.model import exclusive_scan

VOCAB = 50
rwkv_package = pytest.importorskip("rwkv", reason="the rwkv package (dev extra) is the oracle")


@pytest.fixture(autouse=True)
def _threads(one_thread: None) -> None:
    """Tiny tensors: one thread (conftest)."""


@pytest.fixture(scope="module")
def blinkdl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random RWKV-6 with diverse decays and bonuses, saved as BlinkDL's single .pth file."""
    torch.manual_seed(0)
    model = Rwkv6(Rwkv6Config(vocab_size=VOCAB, d_model=32, n_layer=2, head_size=8, d_mix=4,
                              d_decay=6))  # fmt: skip
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln" in name and name.endswith("weight"):
                p.uniform_(0.5, 1.5)
            elif name.endswith(".time_decay"):
                p.uniform_(-6.0, 1.0)  # w from exp(-exp(1)) ~ 0.07 to ~ 1
            else:
                p.normal_(0.0, 0.3)
    return save_blinkdl(model, tmp_path_factory.mktemp("rwkv6") / "RWKV-x060-tiny.pth")


def hf_copy(pth: Path, out: Path) -> Path:
    """The same weights as the Hugging Face conversion names them, with a config.json."""
    tensors = torch.load(pth, weights_only=True)
    renamed = {}
    for key, tensor in tensors.items():
        key = key.replace("emb.", "embeddings.").replace("blocks.0.ln0.", "blocks.0.pre_ln.")
        key = key.replace(".att.", ".attention.").replace(".ffn.", ".feed_forward.")
        renamed[key if key == "head.weight" else f"rwkv.{key}"] = tensor
    out.mkdir()
    torch.save(renamed, out / "pytorch_model.bin")
    config = {
        "model_type": "rwkv6",
        "architectures": ["Rwkv6ForCausalLM"],
        "vocab_size": VOCAB,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "head_size": 8,
        "context_length": 512,
    }
    (out / "config.json").write_text(json.dumps(config))
    return out


def test_wkv_on_the_core_matches_the_recurrence_token_by_token() -> None:
    g = torch.Generator().manual_seed(1)
    b, length, H, N = 2, 37, 3, 4
    r, k, v = (torch.randn(b, length, H, N, generator=g) for _ in range(3))
    log_w = -torch.rand(b, length, H, N, generator=g) * 3
    u, S0 = torch.randn(H, N, generator=g), torch.randn(b, H, N, N, generator=g)
    inputs = ScanInputs(x=v, dt=torch.ones(b, length, H), A=log_w, B=k, C=r, start=0)
    o, S = exclusive_scan(inputs, S0.transpose(-1, -2))  # the core's h is (values, keys)
    o = o + bonus(r, k, v, u)
    state, outs = S0.clone(), []
    for t in range(length):  # o_t = r_t (diag(u) k_t^T v_t + S_{t-1}); S_t = diag(w_t) S + k^T v
        kv = k[:, t, :, :, None] * v[:, t, :, None, :]  # (b, H, N, N)
        outs.append(torch.einsum("bhk,bhkn->bhn", r[:, t], u[..., None] * kv + state))
        state = log_w[:, t].exp()[..., None] * state + kv
    assert torch.allclose(o, torch.stack(outs, 1), atol=1e-5)
    assert torch.allclose(S.transpose(-1, -2), state, atol=1e-5)


def package_logits(pth: Path, ids: list[int]) -> torch.Tensor:
    os.environ.setdefault("RWKV_JIT_ON", "0")
    os.environ.setdefault("RWKV_CUDA_ON", "0")
    from rwkv.model import RWKV

    model = RWKV(model=str(pth), strategy="cpu fp32", verbose=False)
    logits, _ = model.forward(ids, None, full_output=True)
    return logits


@pytest.mark.parametrize("fmt", ["blinkdl", "hf"])
def test_losses_match_the_rwkv_package(blinkdl: Path, fmt: str, tmp_path: Path) -> None:
    ids = torch.randint(0, VOCAB, (120,), generator=torch.Generator().manual_seed(2))
    where = blinkdl if fmt == "blinkdl" else hf_copy(blinkdl, tmp_path / "hf")
    with torch.no_grad():
        ours = load_rwkv6(where)(ids[None])[0][0]
    theirs = package_logits(blinkdl, ids.tolist())
    mine = F.cross_entropy(ours[:-1], ids[1:], reduction="none")
    ref = F.cross_entropy(theirs[:-1], ids[1:], reduction="none")
    assert (mine - ref).abs().max() < 1e-4


def test_any_chunking_equals_one_pass(blinkdl: Path) -> None:
    model = load_rwkv6(blinkdl)
    ids = torch.randint(0, VOCAB, (1, 90), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        whole, _ = model(ids)
        for size in (1, 7, 16, 50):
            state, parts = model.init_state(1), []
            for lo in range(0, ids.shape[1], size):
                logits, state = model(ids[:, lo : lo + size], state)
                parts.append(logits)
            assert (torch.cat(parts, 1) - whole).abs().max() < 1e-5 * whole.abs().max(), size


def test_long_calls_go_through_in_pieces_exactly(blinkdl: Path) -> None:
    model = load_rwkv6(blinkdl)
    ids = torch.randint(0, VOCAB, (1, 2 * piece_tokens(torch.device("cpu")) + 37))
    with torch.no_grad():
        whole, state = model(ids)  # three pieces inside
        split, split_state = model(ids[:, :1000])
        for lo in range(1000, ids.shape[1], 1000):
            logits, split_state = model(ids[:, lo : lo + 1000], split_state)
            split = torch.cat([split, logits], 1)
        last, _ = model(ids, last_only=True)
    assert (whole - split).abs().max() < 1e-5 * whole.abs().max()
    for a, b in zip(state.wkv, split_state.wkv, strict=True):
        assert (a - b).abs().max() < 1e-5 * a.abs().max()
    assert (last[:, 0] - whole[:, -1]).abs().max() < 1e-5 * whole.abs().max()


def test_world_tokenizer_matches_the_package_one() -> None:
    from importlib import resources

    from rwkv.rwkv_tokenizer import TRIE_TOKENIZER

    vocab = Path(str(resources.files("rwkv") / "rwkv_vocab_v20230424.txt"))
    ours, theirs = WorldTokenizer(vocab), TRIE_TOKENIZER(str(vocab))
    text = "The passkey is 01234. Remember it.\n\n  中文 日本語 😀\t\x00 ################"
    assert ours.encode(text) == theirs.encode(text)
    assert ours.decode(ours.encode(text)) == text


def test_a_blinkdl_file_runs_through_harness_run(blinkdl: Path, tmp_path: Path) -> None:
    """A .pth file is detected as RWKV-6 from its tensors and evaluated like any model, with
    a World vocabulary beside it (here a byte-level one written by the test)."""
    import pyarrow.dataset as ds

    from harness.cli import main

    folder = tmp_path / "rwkv6-tiny"
    folder.mkdir()
    (folder / "model.pth").write_bytes(blinkdl.read_bytes())
    lines = [f"{i + 1} {bytes([i])!r} 1" for i in range(VOCAB - 1)]  # ids 1..49: bytes 0..48
    (folder / "vocab.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path / "results"
    code = main(["run", "--models", str(folder), "--tasks", "perplexity", "--lengths", "200",
                 "--option", "perplexity.source=newlines", "--out", str(out)])  # fmt: skip
    assert code == 0
    rows = ds.dataset(out / "perplexity", partitioning="hive").to_table().to_pylist()
    assert {r["family"] for r in rows} == {"rwkv6"} and {r["status"] for r in rows} == {"ok"}
    assert rows[0]["state_size"] == 2 * 4 * 8 * 8  # layers x heads x head size^2


def test_bfloat16_weights_run_near_float32(blinkdl: Path) -> None:
    """bfloat16 weights: the scan's output is float32, its group norm runs in float32 too."""
    ids = torch.randint(0, VOCAB, (1, 64), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        f32 = load_rwkv6(blinkdl)(ids)[0]
        bf16 = load_rwkv6(blinkdl, dtype=torch.bfloat16)(ids)[0]
    assert bf16.dtype == torch.float32
    assert (bf16 - f32).abs().max() < 0.05 * f32.abs().max()
