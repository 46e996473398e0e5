"""Time of a forward pass with each mitigation, relative to `none`, on a random Mamba-2.

    python bench/mitigations_overhead.py                    # 130m-shaped, 16K tokens
    python bench/mitigations_overhead.py --length 4096 --repeats 3

The model has mamba2-130m's shape (d_model 768, 24 layers, d_state 128, headdim 64, GPT-NeoX
vocabulary) with random weights; the tokens stream through in pieces of --piece tokens with the
state carried, as the tasks do, each piece a prefill (logits of its last token only, forward_last):
the baseline and every mitigation compute the same thing but the mitigation's own work, so the
ratio is not diluted by logits of every token (a quarter of a 130m forward) that the long-context
prefill of a task never computes. Every mitigation runs once per round, each round in another
order, and the fastest round of each is kept. Time is the process's CPU time (all its threads),
which other load on a shared machine disturbs far less than wall time; --threads 1
(the default) keeps it close to the work done. "in hooks" is the CPU time spent inside the
mitigation's own hook functions in that round (for window: both of its scans), a figure that
other load hardly moves: the cheap mitigations' overhead is read there.
Targets: rri, dt-scale, a-scale <= 1.05x; state-norm (k=128) <= 1.5x; window <= 2x;
longmamba <= 1.1x; a per-layer scale file (what `harness calibrate` writes) <= 1.05x.

`--oprm` also times oprm's chunked prefill of one prompt against reading it whole, per chunk
count (each chunk is [prefix, chunk, question] prefilled on its own), and `--calibrate N` the
CPU time of N zeroth-order calibration steps at --length, per step and per layer factor.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from harness.mitigations import parse_mitigation
from harness.models.base import ModelInfo, PromptParts
from harness.models.mamba2 import Hooks, Mamba2, Mamba2Config, Mamba2LM
from harness.models.tokenizer import byte_tokenizer

SPECS = ("none", "rri", "dt-scale", "a-scale", "state-norm:k=128", "window", "longmamba")
TARGETS = {
    "rri": 1.05,
    "dt-scale": 1.05,
    "a-scale": 1.05,
    "state-norm": 1.5,
    "window": 2.0,
    "longmamba": 1.1,
}
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


class HookClock:
    """Hooks whose functions add their CPU time to `seconds`."""

    def __init__(self, hooks: Hooks | None) -> None:
        self.seconds = 0.0
        self.hooks = None if hooks is None else self.wrap(hooks)

    def timed(self, fn: Callable[..., Any] | None) -> Callable[..., Any] | None:
        if fn is None:
            return None

        def run(*args: Any) -> Any:
            start = time.process_time()
            try:
                return fn(*args)
            finally:
                self.seconds += time.process_time() - start

        return run

    def wrap(self, hooks: Hooks) -> Hooks:
        return replace(
            hooks,
            transform_inputs=self.timed(hooks.transform_inputs),
            transform_state=self.timed(hooks.transform_state),
            scans={layer: self.timed(scan) for layer, scan in hooks.scans.items()},
        )


@torch.inference_mode()
def forward_time(model: Mamba2LM, ids: torch.Tensor, piece: int) -> float:
    """CPU seconds to prefill ids (1, l) in pieces with the state carried."""
    state = model.init_state(1)
    start = time.process_time()
    for at in range(0, ids.shape[1], piece):
        _, state = model.forward_last(ids[:, at : at + piece], state)
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
    parser.add_argument("--oprm", action="store_true", help="also time oprm per chunk count")
    parser.add_argument("--calibrate", type=int, default=0, help="also time N calibration steps")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = build(args)
    ids = torch.randint(0, NEOX_VOCAB, (1, args.length), generator=torch.Generator().manual_seed(0))
    specs = [f"window:r={args.window}" if spec == "window" else spec for spec in SPECS]
    with tempfile.TemporaryDirectory() as work:  # the scales file is read when parsed
        scale_file = Path(work) / "scales.json"  # as `harness calibrate` writes it
        scale_file.write_text(
            json.dumps({"scales": [0.5 + i / args.n_layer for i in range(args.n_layer)]})
        )
        specs.append(f"dt-scale:file={scale_file}")
        mitigations = {spec: parse_mitigation(spec) for spec in specs}
    hooks = {}
    for spec in specs:  # calibration (state-norm) happens here, outside the timing
        hooks[spec] = mitigations[spec].hooks(model)
    best = dict.fromkeys(specs, (float("inf"), 0.0))  # (forward, in hooks) CPU seconds
    for round_ in range(args.repeats):  # each round in a rotated order
        for spec in specs[round_ % len(specs) :] + specs[: round_ % len(specs)]:
            clock = HookClock(hooks[spec])
            model.hooks = clock.hooks
            best[spec] = min(best[spec], (forward_time(model, ids, args.piece), clock.seconds))
    model.hooks = None

    print(
        f"d_model {args.d_model}, {args.n_layer} layers, {args.length} tokens in pieces of "
        f"{args.piece}, {torch.get_num_threads()} threads, best of {args.repeats}"
    )
    print(f"{'mitigation':<20}{'CPU s':>8}{'ratio':>8}{'in hooks':>10}{'target':>8}")
    base = best["none"][0]
    for spec in specs:
        total, in_hooks = best[spec]
        ratio = total / base
        target = TARGETS.get(spec.split(":")[0])
        mark = "" if target is None else f"{target:>7.2f}x" + (" ok" if ratio <= target else " !")
        name = "dt-scale:file" if "file=" in spec else spec
        print(f"{name:<20}{total:>8.2f}{ratio:>7.3f}x{in_hooks:>9.3f}s{mark}")
    if args.oprm:
        oprm_costs(model, args)
    if args.calibrate:
        calibration_cost(model, ids, args)


@torch.inference_mode()
def oprm_costs(model: Mamba2LM, args: argparse.Namespace) -> None:
    """CPU time of oprm's chunked prefill of one --length prompt, per chunk count, against
    reading the whole prompt once."""
    text = "".join(chr(ord("a") + i % 26) for i in range(args.length - 40))
    parts = PromptParts("Find it.\n", text, "\nIt is")
    start = time.process_time()
    model.prefill_prompt(parts)
    whole = time.process_time() - start
    print(f"\noprm, one {args.length}-token prompt: read whole {whole:.2f} s CPU")
    for chunks in (1, 2, 4, 8):
        model.strategy = parse_mitigation(f"oprm:chunk={-(-len(text) // chunks)}").strategy()
        start = time.process_time()
        model.prefill_prompt(parts)
        spent = time.process_time() - start
        print(f"  {chunks} chunks: {spent:.2f} s ({spent / whole:.2f}x)")
    model.strategy = None


def calibration_cost(model: Mamba2LM, ids: torch.Tensor, args: argparse.Namespace) -> None:
    """CPU time of --calibrate zeroth-order steps of dt-scale at --length."""
    from harness.calibrate import CalibrationConfig, calibrate

    config = CalibrationConfig(
        model="bench", mitigation="dt-scale", length=args.length, data="-", steps=args.calibrate
    )
    kind = parse_mitigation("dt-scale:s=1")
    start = time.process_time()
    calibrate(model, kind, [ids[0]], config)  # type: ignore[arg-type]
    spent = time.process_time() - start
    per_step = spent / args.calibrate
    factor = per_step / args.n_layer
    print(f"\ncalibrate (zo) at {args.length} tokens: {spent:.1f} s CPU, {args.calibrate} steps")
    print(f"  {per_step:.1f} s a step, {factor:.2f} s a step per layer factor")


if __name__ == "__main__":
    main()
