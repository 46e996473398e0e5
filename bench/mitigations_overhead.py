"""Time of a forward pass with each mitigation, relative to `none`, on a random Mamba-2.

    python bench/mitigations_overhead.py                    # 130m-shaped, 16K tokens
    python bench/mitigations_overhead.py --length 4096 --repeats 3

The model has mamba2-130m's shape (d_model 768, 24 layers, d_state 128, headdim 64, GPT-NeoX
vocabulary) with random weights; the tokens stream through in pieces of --piece tokens with the
state carried, as the tasks do. Every mitigation runs once per round, each round in another
order, and the fastest round of each is kept. Time is the process's CPU time (all its threads),
which other load on a shared machine disturbs far less than wall time; --threads 1
(the default) keeps it close to the work done.
Targets: rri, dt-scale, a-scale <= 1.05x; state-norm (k=128) <= 1.5x; window <= 2x.
"""

from __future__ import annotations

import argparse
import time

import torch

from harness.mitigations import parse_mitigation
from harness.models.base import ModelInfo
from harness.models.mamba2 import Mamba2, Mamba2Config, Mamba2LM
from harness.models.tokenizer import byte_tokenizer

SPECS = ("none", "rri", "dt-scale", "a-scale", "state-norm:k=128", "window")
TARGETS = {"rri": 1.05, "dt-scale": 1.05, "a-scale": 1.05, "state-norm": 1.5, "window": 2.0}
NEOX_VOCAB = 50277


def build(args: argparse.Namespace) -> Mamba2LM:
    config = Mamba2Config(
        d_model=args.d_model, n_layer=args.n_layer, vocab_size=NEOX_VOCAB, d_state=128, headdim=64
    )
    torch.manual_seed(0)
    module = Mamba2(config).eval()
    info = ModelInfo(
        name="random-130m-shaped", ref="bench", family="mamba2",
        params=sum(p.numel() for p in module.parameters()), state_size=config.state_size,
        train_context=2048, train_context_source="mamba2-130m", dtype="float32", device="cpu",
        backend="torch",
    )  # fmt: skip
    return Mamba2LM(module, byte_tokenizer(), info, backend="torch")


@torch.inference_mode()
def forward_time(model: Mamba2LM, ids: torch.Tensor, piece: int) -> float:
    """CPU seconds to feed ids (1, l) in pieces with the state carried."""
    state = model.init_state(1)
    start = time.process_time()
    for at in range(0, ids.shape[1], piece):
        _, state = model.forward(ids[:, at : at + piece], state)
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=16384)
    parser.add_argument("--piece", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--d-model", type=int, default=768)
    parser.add_argument("--n-layer", type=int, default=24)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--window", type=int, default=2048, help="r (keep it below --length)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = build(args)
    ids = torch.randint(0, NEOX_VOCAB, (1, args.length), generator=torch.Generator().manual_seed(0))
    specs = [f"window:r={args.window}" if spec == "window" else spec for spec in SPECS]
    hooks = {}
    for spec in specs:  # calibration (state-norm) happens here, outside the timing
        hooks[spec] = parse_mitigation(spec).hooks(model)
    best = dict.fromkeys(specs, float("inf"))
    for round_ in range(args.repeats):  # each round in a rotated order
        for spec in specs[round_ % len(specs) :] + specs[: round_ % len(specs)]:
            model.hooks = hooks[spec]
            best[spec] = min(best[spec], forward_time(model, ids, args.piece))
    model.hooks = None

    print(
        f"d_model {args.d_model}, {args.n_layer} layers, {args.length} tokens in pieces of "
        f"{args.piece}, {torch.get_num_threads()} threads, best of {args.repeats}"
    )
    print(f"{'mitigation':<20}{'CPU s':>10}{'ratio':>8}{'target':>8}")
    for spec in specs:
        ratio = best[spec] / best["none"]
        target = TARGETS.get(spec.split(":")[0])
        mark = "" if target is None else f"{target:>7.2f}x" + (" ok" if ratio <= target else " !")
        print(f"{spec:<20}{best[spec]:>10.2f}{ratio:>7.3f}x{mark}")


if __name__ == "__main__":
    main()
