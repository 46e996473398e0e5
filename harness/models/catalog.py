"""The models the harness knows by name, with the facts result rows and fits need.

Sizes follow paper-notes.md section 1: public Mamba-2 checkpoints have headdim 64,
d_state 128, expand 2, so a layer holds 256 * d_model state elements; Mamba-1 checkpoints
have d_state 16, expand 2, so a layer holds 32 * d_model. All three families were trained on
the Pile (300B tokens) with the GPT-NeoX-20B tokenizer at 2048 tokens, which makes the peer
sets (`pile-160m` ...) data- and tokenizer-matched comparisons.
"""

from __future__ import annotations

from dataclasses import dataclass

FAMILIES = frozenset({"mamba1", "mamba2", "rwkv6", "transformer"})  # every family the harness runs
NEOX_TOKENIZER = "EleutherAI/gpt-neox-20b"

MAMBA1_CONTEXT_SOURCE = "2048: Gu & Dao 2023 (Mamba), Pile training at sequence length 2048"
MAMBA2_CONTEXT_SOURCE = (
    "2048: Buitrago-Ruiz & Gu 2025; Stuffed Mamba's figures draw 8K (open discrepancy)"
)
PYTHIA_CONTEXT_SOURCE = "2048: Biderman et al. 2023 (Pythia), config max_position_embeddings"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str  # "mamba1" | "mamba2" | "rwkv6" | "transformer"
    repo: str  # hub id of the checkpoint
    tokenizer: str  # hub id of the tokenizer
    params: int
    d_model: int
    n_layer: int
    state_size: int | None  # state elements over all layers; None for transformers
    train_context: int
    train_context_source: str
    checkpoint_format: str
    peer: str  # the matching-size model of the other family
    description: str


def mamba2_params(d_model: int, n_layer: int, vocab: int = 50288, d_state: int = 128) -> int:
    """Parameters of a public Mamba-2 shape (headdim 64, expand 2, ngroups 1, conv 4, tied head)."""
    d_inner, nheads = 2 * d_model, 2 * d_model // 64
    conv_dim = d_inner + 2 * d_state
    mixer = (
        d_model * (2 * d_inner + 2 * d_state + nheads)  # in_proj -> [z, x, B, C, dt]
        + conv_dim * 4
        + conv_dim  # depthwise conv weight and bias
        + 3 * nheads  # dt_bias, A_log, D
        + d_inner  # gated RMSNorm
        + d_inner * d_model  # out_proj
    )
    return vocab * d_model + n_layer * (mixer + d_model) + d_model


def mamba1_params(d_model: int, n_layer: int, vocab: int = 50280, d_state: int = 16) -> int:
    """Parameters of a public Mamba-1 shape (expand 2, conv 4, dt_rank d_model / 16, tied head)."""
    d_inner, rank = 2 * d_model, -(-d_model // 16)
    mixer = (
        d_model * 2 * d_inner  # in_proj -> [x, z]
        + d_inner * 4
        + d_inner  # depthwise conv weight and bias
        + d_inner * (rank + 2 * d_state)  # x_proj -> [dt, B, C]
        + rank * d_inner
        + d_inner  # dt_proj with bias
        + d_inner * d_state
        + d_inner  # A_log, D
        + d_inner * d_model  # out_proj
    )
    return vocab * d_model + n_layer * (mixer + d_model) + d_model


def neox_params(d_model: int, n_layer: int, vocab: int = 50304) -> int:
    """Parameters of a Pythia (GPT-NeoX) shape: untied embeddings, 4x MLP, biases, LayerNorms."""
    layer = 12 * d_model * d_model + 13 * d_model
    return 2 * vocab * d_model + n_layer * layer + 2 * d_model


def _mamba2(size: str, d_model: int, n_layer: int, peer: str) -> ModelSpec:
    return ModelSpec(
        name=f"mamba2-{size}",
        family="mamba2",
        repo=f"state-spaces/mamba2-{size}",
        tokenizer=NEOX_TOKENIZER,
        params=mamba2_params(d_model, n_layer),
        d_model=d_model,
        n_layer=n_layer,
        state_size=n_layer * 256 * d_model,
        train_context=2048,
        train_context_source=MAMBA2_CONTEXT_SOURCE,
        checkpoint_format="state-spaces (config.json + pytorch_model.bin, fp32)",
        peer=peer,
        description=f"Mamba-2 {size}, {n_layer} layers, d_model {d_model}, Pile 300B",
    )


def _mamba1(size: str, d_model: int, n_layer: int, peer: str) -> ModelSpec:
    return ModelSpec(
        name=f"mamba-{size}",
        family="mamba1",
        repo=f"state-spaces/mamba-{size}",
        tokenizer=NEOX_TOKENIZER,
        params=mamba1_params(d_model, n_layer),
        d_model=d_model,
        n_layer=n_layer,
        state_size=n_layer * 32 * d_model,
        train_context=2048,
        train_context_source=MAMBA1_CONTEXT_SOURCE,
        checkpoint_format="state-spaces (config.json + pytorch_model.bin, fp32)",
        peer=peer,
        description=f"Mamba-1 {size}, {n_layer} layers, d_model {d_model}, Pile 300B",
    )


RWKV6_CONTEXT_SOURCE = "4096: BlinkDL's release names (RWKV-x060-World-*-ctx4096)"


def rwkv6_params(d_model: int, n_layer: int, vocab: int = 65536, d_mix: int = 32) -> int:
    """Parameters of an RWKV-6 shape: channel mix 3.5 C wide, decay LoRA rank 64, untied head."""
    C, ffn = d_model, int(d_model * 3.5) // 32 * 32
    time_mix = 5 * C * C + 6 * C + 2 * 5 * d_mix * C + C + 2 * 64 * C + C + 2 * C
    channel_mix = 2 * C * ffn + C * C + 2 * C
    return 2 * vocab * C + 4 * C + n_layer * (time_mix + channel_mix + 4 * C)


def _rwkv6(size: str, repo: str, d_model: int, n_layer: int, peer: str) -> ModelSpec:
    return ModelSpec(
        name=f"rwkv6-world-{size}",
        family="rwkv6",
        repo=repo,
        tokenizer="RWKV World (rwkv_vocab_v20230424.txt, beside the checkpoint or in `rwkv`)",
        params=rwkv6_params(d_model, n_layer),
        d_model=d_model,
        n_layer=n_layer,
        state_size=n_layer * d_model * 64,  # H x N x N per layer, head size N = 64
        train_context=4096,
        train_context_source=RWKV6_CONTEXT_SOURCE,
        checkpoint_format="Hugging Face conversion (config.json model_type rwkv6 + .bin)",
        peer=peer,
        description=f"RWKV-6 Finch World {size}, {n_layer} layers, d_model {d_model}, World v2.1",
    )


def _pythia(size: str, d_model: int, n_layer: int, peer: str) -> ModelSpec:
    return ModelSpec(
        name=f"pythia-{size}",
        family="transformer",
        repo=f"EleutherAI/pythia-{size}",
        tokenizer=f"EleutherAI/pythia-{size}",
        params=neox_params(d_model, n_layer),
        d_model=d_model,
        n_layer=n_layer,
        state_size=None,
        train_context=2048,
        train_context_source=PYTHIA_CONTEXT_SOURCE,
        checkpoint_format="transformers GPT-NeoX (config.json + model.safetensors)",
        peer=peer,
        description=f"Pythia {size} transformer, {n_layer} layers, d_model {d_model}, Pile 300B",
    )


CATALOG: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        _mamba2("130m", 768, 24, "pythia-160m"),
        _mamba2("370m", 1024, 48, "pythia-410m"),
        _mamba2("780m", 1536, 48, "pythia-1b"),
        _mamba2("1.3b", 2048, 48, "pythia-1.4b"),
        _mamba2("2.7b", 2560, 64, "pythia-2.8b"),
        _mamba1("130m", 768, 24, "pythia-160m"),
        _mamba1("370m", 1024, 48, "pythia-410m"),
        _mamba1("790m", 1536, 48, "pythia-1b"),
        _mamba1("1.4b", 2048, 48, "pythia-1.4b"),
        _mamba1("2.8b", 2560, 64, "pythia-2.8b"),
        _rwkv6("1.6b", "RWKV/v6-Finch-1B6-HF", 2048, 24, "pythia-1.4b"),
        _rwkv6("3b", "RWKV/v6-Finch-3B-HF", 2560, 32, "pythia-2.8b"),
        _pythia("160m", 768, 12, "mamba2-130m"),
        _pythia("410m", 1024, 24, "mamba2-370m"),
        _pythia("1b", 2048, 16, "mamba2-780m"),
        _pythia("1.4b", 2048, 24, "mamba2-1.3b"),
        _pythia("2.8b", 2560, 32, "mamba2-2.7b"),
    ]
}

# Named peer sets: models of matching size trained on the same data with the same tokenizer,
# so that `--models pile-160m` compares the families on equal terms.
PEER_SETS: dict[str, tuple[str, ...]] = {
    "pile-160m": ("pythia-160m", "mamba-130m", "mamba2-130m"),
    "pile-410m": ("pythia-410m", "mamba-370m", "mamba2-370m"),
    "pile-1b": ("pythia-1b", "mamba-790m", "mamba2-780m"),
    "pile-1.4b": ("pythia-1.4b", "mamba-1.4b", "mamba2-1.3b"),
    "pile-2.8b": ("pythia-2.8b", "mamba-2.8b", "mamba2-2.7b"),
    # every family at toy size, random weights, bytes: the offline stand-in of a peer set
    "tiny": ("tiny-pythia", "tiny-mamba1", "tiny-mamba2", "tiny-rwkv6"),
}
