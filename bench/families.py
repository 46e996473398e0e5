"""CPU speed and peak memory of our Mamba-1 and RWKV-6 against their reference implementations.

    python bench/families.py                            # speed: both families, 2K and 4K
    python bench/families.py --families mamba1 --lengths 2048,4096 --rounds 3
    python bench/families.py --memory                   # peak memory of each forward
    python bench/families.py --losses                   # token_losses memory, tiny, 64K vs 1M

The peers: Mamba-1 against transformers' MambaForCausalLM (its pure-torch path: mamba-ssm is
never imported; on the 130m shape, random weights saved once in transformers' format and
loaded by both); RWKV-6 against the `rwkv` package's plain-torch model (strategy `cpu fp32`,
RWKV_JIT_ON=0), random weights saved once in BlinkDL's format and loaded by both, on a small
shape (SHAPES). Both engines compute a prefill: float32 logits of the last token only (ours
`last_only`, transformers `logits_to_keep=1`, the package without `full_output`).

Speed (default): one process holds both engines and times them in alternating order, round
after round, so that both see the same load; "ours / theirs" is the median of the per-round
ratios of CPU time. Time is the thread's CPU time with one torch thread: on a machine other
jobs share, wall time measures the scheduler, CPU time the work ("wall / CPU" shows the load).
The peers run at lengths up to --max-peer only (their token-by-token loops take minutes beyond).

Memory (--memory): every configuration in a fresh process that reports its own high-water mark
(VmHWM in /proc/self/status; ru_maxrss is inherited from the parent process). "fwd peak" is the
rise over the memory with the model loaded: the mark is reset there (/proc/self/clear_refs).
--losses does the same for `token_losses` of the tiny models (tiny-mamba1, tiny-rwkv6) over 64K
and 1M tokens: the state is carried chunk by chunk, so the peak should not grow with length.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from fresh_process import fresh, peak_of

SHAPES = {  # family -> the shape it is benchmarked on
    "mamba1": {"d_model": 768, "n_layer": 24, "d_state": 16, "vocab_size": 50280},  # 130m
    "rwkv6": {"d_model": 768, "n_layer": 12, "head_size": 64, "vocab_size": 65536},
}
PEERS = {"mamba1": "transformers", "rwkv6": "rwkv"}  # family -> the engine it is timed against
WARMUP_TOKENS = 64
LOSS_LENGTHS = (65536, 1 << 20)

Forward = Callable[[torch.Tensor], torch.Tensor]  # ids (1, l) -> float32 logits


def save_weights(family: str, directory: Path, shape: dict | None = None) -> Path:
    """Random weights (seed 0) in the peer's format, of `shape` (Config fields; default
    SHAPES[family]): -> the path both engines load."""
    torch.manual_seed(0)
    fields = shape or SHAPES[family]
    if family == "mamba1":
        from harness.models.mamba1 import Mamba1, Mamba1Config, save_pretrained

        return save_pretrained(Mamba1(Mamba1Config(**fields)), directory, format="hf")
    from harness.models.rwkv6 import Rwkv6, Rwkv6Config, save_blinkdl
    from harness.models.tiny import randomize_rwkv6

    model = Rwkv6(Rwkv6Config(**fields))
    randomize_rwkv6(model, std=0.02)  # RWKV-6 builds zeros: finite, varied values
    return save_blinkdl(model, directory / "rwkv6.pth")


def load_ours(
    family: str,
    weights: Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.nn.Module:
    if family == "mamba1":
        from harness.models.mamba1 import load_mamba1

        return load_mamba1(weights, device=device, dtype=dtype).eval()
    from harness.models.rwkv6 import load_rwkv6

    return load_rwkv6(weights, device=device, dtype=dtype).eval()


def load_engine(
    family: str,
    engine: str,
    weights: Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    last_only: bool = True,
) -> Forward:
    """-> ids (1, l) on `device` -> float32 logits, (1, vocab) of the last token with
    `last_only`, else (1, l, vocab) (ours: the padded vocabulary)."""
    if engine == "ours":
        model = load_ours(family, weights, device, dtype)
        if last_only:
            return lambda ids: model(ids, last_only=True)[0][:, -1]
        return lambda ids: model(ids)[0]
    if family == "mamba1":
        from transformers import MambaForCausalLM

        torch_path_mamba()
        hf = MambaForCausalLM.from_pretrained(weights, dtype=dtype).to(device).eval()
        if last_only:
            return lambda ids: hf(ids, use_cache=False, logits_to_keep=1).logits[:, -1].float()
        return lambda ids: hf(ids, use_cache=False).logits.float()
    os.environ["RWKV_JIT_ON"] = "0"  # read when rwkv.model is first imported
    os.environ["RWKV_CUDA_ON"] = "0"  # its plain-torch path, no kernel compiled
    from rwkv.model import RWKV

    precision = "bf16" if dtype == torch.bfloat16 else "fp32"
    strategy = f"{torch.device(device).type} {precision}"
    package = RWKV(model=str(weights), strategy=strategy, verbose=False)
    if last_only:
        return lambda ids: package.forward(ids[0].tolist(), None)[0][None].float()
    return lambda ids: package.forward(ids[0].tolist(), None, full_output=True)[0][None].float()


def torch_path_mamba() -> None:
    """transformers' Mamba calls mamba-ssm's and causal-conv1d's kernels where those import
    (bench/gpu_check.sh installs mamba-ssm): the peer here is its pure-torch path, so the
    decorated scan and conv are set back to the functions they wrap."""
    from transformers.models.mamba import modeling_mamba

    for name in ("causal_conv1d_fn", "mamba_selective_scan"):
        function = getattr(modeling_mamba, name)
        setattr(modeling_mamba, name, getattr(function, "__wrapped__", function))


def timed(run: Forward, ids: torch.Tensor) -> dict[str, float]:
    """One forward pass: CPU and wall seconds."""
    cpu, wall = time.thread_time(), time.perf_counter()
    logits = run(ids)
    cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
    assert torch.isfinite(logits).all()
    return {"cpu": cpu, "wall": wall}


@torch.inference_mode()
def speed(args: argparse.Namespace, work: Path) -> list[dict]:
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, CPU time, {args.rounds} rounds, load {load()}")
    head = ["family", "peer", "tokens", "ours tok/s", "peer tok/s", "ours/peer", "wall/CPU"]
    print(" ".join(f"{h:>12}" for h in head))
    figures = []
    for family in args.families.split(","):
        weights = save_weights(family, work / family)
        engines = {e: load_engine(family, e, weights) for e in ("ours", PEERS[family])}
        for length in (int(n) for n in args.lengths.split(",")):
            present = [e for e in engines if e == "ours" or length <= args.max_peer]
            ids = torch.randint(0, SHAPES[family]["vocab_size"], (1, length), generator=seeded())
            for engine in present:
                engines[engine](ids[:, :WARMUP_TOKENS])
            runs: dict[str, list[dict[str, float]]] = {e: [] for e in present}
            for round_ in range(args.rounds):
                for engine in present if round_ % 2 == 0 else present[::-1]:
                    runs[engine].append(timed(engines[engine], ids))
            figures.append(summary(family, length, runs))
            print(row(figures[-1]), flush=True)
    return figures


def summary(family: str, length: int, runs: dict) -> dict:
    ours = runs["ours"]
    figure = {
        "family": family,
        "peer": PEERS[family],
        "tokens": length,
        "ours_tokens_per_s": length / min(r["cpu"] for r in ours),
        "wall_over_cpu": statistics.median(r["wall"] / r["cpu"] for r in ours),
    }
    if PEERS[family] in runs:
        theirs = runs[PEERS[family]]
        figure["peer_tokens_per_s"] = length / min(r["cpu"] for r in theirs)
        ratios = [t["cpu"] / o["cpu"] for o, t in zip(ours, theirs, strict=True)]
        figure["ours_over_peer"] = statistics.median(ratios)
    return figure


def row(f: dict) -> str:
    cells = [f["family"], f["peer"], f["tokens"], f"{f['ours_tokens_per_s']:.1f}"]
    cells += [f"{f.get('peer_tokens_per_s', 0):.1f}", f"{f.get('ours_over_peer', 0):.2f}x"]
    cells += [f"{f['wall_over_cpu']:.1f}"]
    return " ".join(f"{c:>12}" for c in cells)


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def seeded() -> torch.Generator:
    return torch.Generator().manual_seed(1)


def memory_worker(family: str, engine: str, weights: Path, length: int) -> dict[str, float]:
    """In a fresh process: one forward pass, the process's own peak."""
    torch.set_num_threads(1)
    run = load_engine(family, engine, weights)
    ids = torch.randint(0, SHAPES[family]["vocab_size"], (1, length), generator=seeded())
    with torch.inference_mode():
        run(ids[:, :WARMUP_TOKENS])
        logits, peaks = peak_of(lambda: run(ids))
    assert torch.isfinite(logits).all()
    return peaks


def losses_worker(model: str, length: int, chunk: int) -> dict[str, float]:
    """In a fresh process: token_losses of a tiny model over `length` (byte) tokens."""
    from harness.models.tiny import TINY_MODELS

    torch.set_num_threads(1)
    lm = TINY_MODELS[model].build("cpu", torch.float32, "torch")
    ids = torch.randint(0, 256, (length,), generator=seeded())
    lm.token_losses(ids[: 2 * chunk], chunk=chunk)
    losses, peaks = peak_of(lambda: lm.token_losses(ids, chunk=chunk))
    assert losses.shape == (length - 1,) and torch.isfinite(losses).all()
    return peaks


def memory(args: argparse.Namespace, work: Path) -> None:
    print(f"{'':<30} {'peak MiB':>10} {'fwd peak':>10}")
    lengths = [int(n) for n in args.lengths.split(",")]
    for family in args.families.split(","):
        weights = save_weights(family, work / family)
        for length, engine in itertools.product(lengths, ("ours", PEERS[family])):
            if engine != "ours" and length > args.max_peer:
                continue
            r = fresh(__file__, "memory", family, engine, str(weights), str(length))
            label = f"{family} {length:>6} {engine}"
            print(f"{label:<30} {r['peak_mb']:>10.0f} {r['forward_peak_mb']:>10.0f}", flush=True)


def losses(args: argparse.Namespace) -> None:
    for family in args.families.split(","):
        model = f"tiny-{family}"
        results = [fresh(__file__, "losses", model, str(n), str(args.chunk)) for n in LOSS_LENGTHS]
        for n, r in zip(LOSS_LENGTHS, results, strict=True):
            print(
                f"{model} token_losses {n:>8} chunk {args.chunk}: peak {r['peak_mb']:.0f} MiB, "
                f"over the loaded model {r['forward_peak_mb']:.0f} MiB",
                flush=True,
            )
        ratio = results[1]["peak_mb"] / results[0]["peak_mb"]
        print(f"{model} peak {LOSS_LENGTHS[1]} / {LOSS_LENGTHS[0]} tokens: {ratio:.2f}x")


def main() -> None:
    from harness.models.allocator import keep_freed_memory

    keep_freed_memory()  # as harness does when it loads a model on CPU, for every engine here
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", default="mamba1,rwkv6")
    parser.add_argument("--lengths", default="2048,4096")
    parser.add_argument("--rounds", type=int, default=2, help="speed: passes of each engine")
    parser.add_argument("--max-peer", type=int, default=4096, help="longest for the peers")
    parser.add_argument("--memory", action="store_true", help="peak memory, fresh processes")
    parser.add_argument("--losses", action="store_true", help="token_losses memory, 64K vs 1M")
    parser.add_argument("--chunk", type=int, default=2048, help="token_losses chunk")
    parser.add_argument("--json", type=Path, help="speed: also write the figures here")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, *rest = args.worker
        if kind == "memory":
            result = memory_worker(rest[0], rest[1], Path(rest[2]), int(rest[3]))
        else:
            result = losses_worker(rest[0], int(rest[1]), int(rest[2]))
        print(json.dumps(result))
        return
    with tempfile.TemporaryDirectory() as work:
        if args.losses:
            losses(args)
        elif args.memory:
            memory(args, Path(work))
        else:
            figures = speed(args, Path(work))
            if args.json:
                args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
