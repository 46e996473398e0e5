"""CPU speed of our Mamba-2 against the matmul floor and transformers' Mamba2; peak memory.

    python bench/mamba2_cpu.py                          # speed, 130m-shaped, 4K 16K 64K
    python bench/mamba2_cpu.py --lengths 4096 --rounds 3
    python bench/mamba2_cpu.py --memory                 # peak memory of each configuration
    python bench/mamba2_cpu.py --losses                 # token_losses memory, tiny, 64K vs 1M

Weights are random (seed 0), saved once in transformers' format and loaded by both engines.
Both compute a prefill: float32 logits of the last token only (ours `last_only`, transformers
`logits_to_keep=1`), or with --modes all,last also every token's.

Speed (default): one process holds both engines and times them in alternating order, round
after round, so that both see the same load; "ours / theirs" is the median of the per-round
ratios. Time is the thread's CPU time with one torch thread: on a machine other jobs share,
wall time measures the scheduler, CPU time the work ("wall / CPU" shows the load). The floor
is the shape's FLOPs per token (the projections and the scan's products at chunk 64; the conv,
the gates and the norms count nothing) over the rate of the in_proj matmul of a 2048-token piece
((2048 x 768) @ (768 x 3352) at 130m) by the fastest of torch's float32 CPU matmuls (MKL's,
oneDNN's, oneDNN's on a prepacked weight), each run back to back for two CPU seconds in the same
process before and after every pass, the best kept; "of floor" is the fraction of it that ours
reaches (a forward of nothing but such matmuls reads 1.0). transformers runs at lengths up to
--max-transformers only (beyond, its CPU path takes many minutes and GiBs).
The process's allocator keeps freed memory for reuse (harness.models.allocator), as a harness
run on CPU does, for both engines.

Memory (--memory): every configuration in a fresh process that reports its own high-water mark
(VmHWM in /proc/self/status; ru_maxrss is inherited from the parent process). "fwd peak" is the
rise over the memory with the model loaded: the mark is reset there (/proc/self/clear_refs).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from fresh_process import fresh, peak_of

SHAPES = {  # name -> Mamba2Config fields
    "130m": {"d_model": 768, "n_layer": 24, "vocab_size": 50288},
    "tiny": {"d_model": 64, "n_layer": 2, "vocab_size": 256, "d_state": 32, "headdim": 16},
}
ENGINES = ("ours", "transformers")
WARMUP_TOKENS = 256
FLOOR_PIECE = 2048  # tokens of the matmul that sets the floor (the engine's CPU piece)
FLOOR_SECONDS = 2.0  # CPU seconds of back-to-back matmuls per sample of the floor's rate


def save_weights(shape: str, directory: Path) -> None:
    from harness.models.mamba2 import Mamba2, Mamba2Config, save_pretrained

    torch.manual_seed(0)
    save_pretrained(Mamba2(Mamba2Config(**SHAPES[shape])), directory, format="hf")


def load_engine(engine: str, weights: Path, last_only: bool) -> tuple[Callable, int]:
    """-> a function ids (1, l) -> float32 logits, and the vocabulary size of its ids."""
    if engine == "ours":
        from harness.models.linear import pack
        from harness.models.mamba2 import load_mamba2

        model = pack(load_mamba2(weights).eval())  # as the harness evaluates it
        return (
            lambda ids: model(ids, backend="torch", last_only=last_only)[0]
        ), model.config.padded_vocab_size
    from transformers import Mamba2ForCausalLM

    hf = Mamba2ForCausalLM.from_pretrained(weights).eval()
    keep = int(last_only)
    return (
        lambda ids: hf(ids, use_cache=False, logits_to_keep=keep).logits.float()
    ), hf.config.vocab_size


def flops_per_token(shape: str, chunk: int = 64) -> float:
    """Multiply-adds x 2 per token of a prefill: in_proj, out_proj, and the scan's products
    (C B^T and its product with x within a chunk, the state's read and its update)."""
    from harness.models.mamba2 import Mamba2Config

    c = Mamba2Config(**SHAPES[shape])
    h, p, n, g = c.nheads, c.headdim, c.d_state, c.ngroups
    projections = 2 * c.d_model * c.d_in_proj + 2 * c.d_inner * c.d_model
    scan = 2 * g * chunk * n + 2 * h * chunk * p + 4 * h * p * n
    return c.n_layer * (projections + scan)


def matmul_rates(shape: str) -> dict[str, float]:
    """FLOP per CPU second of the in_proj matmul of a FLOOR_PIECE-token piece by each of torch's
    float32 CPU matmuls, each run back to back for FLOOR_SECONDS: the rate a forward's seconds
    of products can sustain. (The best of a few single 0.1 s matmuls catches bursts that no
    forward sustains: a 9 s "forward" of nothing but MKL's matmul, timed as ours is, read
    0.984-0.993 of a floor taken from them, 0.991-1.001 of a floor taken from bursts.)

    "mkl": torch's own (`a @ w`, MKL's sgemm); "onednn": oneDNN's on the dense weight;
    "onednn-packed": oneDNN's on a weight reordered once into its blocked layout, as ours computes
    its projections (harness.models.linear.PackedLinear); the last two only in a torch built with
    oneDNN."""
    from harness.models.mamba2 import Mamba2Config
    from harness.models.onednn import ONEDNN

    c = Mamba2Config(**SHAPES[shape])
    a, w = torch.randn(FLOOR_PIECE, c.d_model), torch.randn(c.d_in_proj, c.d_model)
    kinds: dict[str, Callable[[], torch.Tensor]] = {"mkl": lambda: a @ w.T}
    if ONEDNN:
        dense = torch.ops.mkldnn._linear_pointwise
        packed = torch.ops.mkldnn._reorder_linear_weight(w, FLOOR_PIECE)
        kinds["onednn"] = lambda: dense(a, w, None, "none", [], "")
        kinds["onednn-packed"] = lambda: dense(a, packed, None, "none", [], "")
    rates = {}
    for kind, product in kinds.items():
        count, start = 0, time.thread_time()
        while (spent := time.thread_time() - start) < FLOOR_SECONDS:
            product()
            count += 1
        rates[kind] = 2 * FLOOR_PIECE * c.d_model * c.d_in_proj * count / spent
    return rates


def timed(run: Callable, ids: torch.Tensor) -> dict[str, float]:
    """One forward pass: CPU and wall seconds, minor page faults."""
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    cpu, wall = time.thread_time(), time.perf_counter()
    logits = run(ids)
    cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
    assert torch.isfinite(logits[:, -1]).all()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    return {"cpu": cpu, "wall": wall, "faults": faults}


@torch.inference_mode()
def speed(args: argparse.Namespace, work: Path) -> list[dict]:
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, CPU time, {args.rounds} rounds, load {load()}")
    head = ["shape", "tokens", "ours tok/s", "floor tok/s", "of floor", "faults/fwd"]
    head += ["theirs tok/s", "ours/theirs", "wall/CPU"]
    print(" ".join(f"{h:>12}" for h in head))
    figures = []
    for shape in args.models.split(","):
        save_weights(shape, work / shape)
        engines = {e: load_engine(e, work / shape, True) for e in args.engines.split(",")}
        flops = flops_per_token(shape)
        for length in (int(n) for n in args.lengths.split(",")):
            present = [e for e in engines if e == "ours" or length <= args.max_transformers]
            ids = torch.randint(0, engines["ours"][1], (1, length), generator=seeded())
            for engine in present:
                engines[engine][0](ids[:, :WARMUP_TOKENS])
            runs: dict[str, list[dict[str, float]]] = {e: [] for e in present}
            samples = [matmul_rates(shape)]
            for round_ in range(args.rounds):
                for engine in present if round_ % 2 == 0 else present[::-1]:
                    runs[engine].append(timed(engines[engine][0], ids))
                    samples.append(matmul_rates(shape))
            rates = {kind: max(s[kind] for s in samples) for kind in samples[0]}
            figures.append(summary(shape, length, runs, rates, flops))
            print(row(figures[-1]), flush=True)
            print(
                "  floor from the fastest matmul, GFLOP/s: "
                + ", ".join(f"{kind} {rate / 1e9:.1f}" for kind, rate in rates.items())
            )
    return figures


def summary(shape: str, length: int, runs: dict, rates: dict, flops: float) -> dict:
    ours = runs["ours"]
    floor = max(rates.values()) / flops
    figure = {
        "shape": shape,
        "tokens": length,
        "ours_tokens_per_s": length / min(r["cpu"] for r in ours),
        "floor_tokens_per_s": floor,
        "matmul_flops_per_s": rates,
        "faults_per_forward": statistics.median(r["faults"] for r in ours),
        "wall_over_cpu": statistics.median(r["wall"] / r["cpu"] for r in ours),
    }
    figure["of_floor"] = figure["ours_tokens_per_s"] / floor
    if "transformers" in runs:
        theirs = runs["transformers"]
        figure["theirs_tokens_per_s"] = length / min(r["cpu"] for r in theirs)
        ratios = [t["cpu"] / o["cpu"] for o, t in zip(ours, theirs, strict=True)]
        figure["ours_over_theirs"] = statistics.median(ratios)
    return figure


def row(f: dict) -> str:
    cells = [f["shape"], f["tokens"], f"{f['ours_tokens_per_s']:.1f}"]
    cells += [f"{f['floor_tokens_per_s']:.1f}", f"{f['of_floor']:.3f}"]  # 0.896 is not 0.90
    cells += [f"{f['faults_per_forward']:.0f}"]
    if "theirs_tokens_per_s" in f:  # transformers ran at this length
        cells += [f"{f['theirs_tokens_per_s']:.1f}", f"{f['ours_over_theirs']:.2f}x"]
    else:
        cells += ["-", "-"]
    cells += [f"{f['wall_over_cpu']:.1f}"]
    return " ".join(f"{c:>12}" for c in cells)


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def seeded() -> torch.Generator:
    return torch.Generator().manual_seed(1)


def memory_worker(engine: str, weights: Path, length: int, mode: str) -> dict[str, float]:
    """In a fresh process: one forward pass, the process's own peak."""
    torch.set_num_threads(1)
    run, vocab = load_engine(engine, weights, mode == "last")
    ids = torch.randint(0, vocab, (1, length), generator=seeded())
    with torch.inference_mode():
        run(ids[:, :WARMUP_TOKENS])
        logits, peaks = peak_of(lambda: run(ids))
        assert torch.isfinite(logits[:, -1]).all()
    return peaks | {"logits_mb": logits.numel() * 4 / 2**20}


def losses_worker(weights: Path, length: int, chunk: int) -> dict[str, float]:
    """In a fresh process: Mamba2LM.token_losses over `length` tokens (byte tokens)."""
    from harness.models.base import ModelInfo
    from harness.models.mamba2 import Mamba2LM, load_mamba2
    from harness.models.tokenizer import byte_tokenizer

    torch.set_num_threads(1)
    module = load_mamba2(weights).eval()
    info = ModelInfo("bench", "bench", "mamba2", 0, None, 0, "", "float32", "cpu", "torch")
    lm = Mamba2LM(module, byte_tokenizer(), info, backend="torch")
    ids = torch.randint(0, 256, (length,), generator=seeded())
    lm.token_losses(ids[: 2 * chunk], chunk=chunk)
    losses, peaks = peak_of(lambda: lm.token_losses(ids, chunk=chunk))
    assert losses.shape == (length - 1,) and torch.isfinite(losses).all()
    return peaks


def memory(args: argparse.Namespace, work: Path) -> None:
    print(f"{'':<34} {'peak MiB':>10} {'fwd peak':>10} {'- logits':>10}")
    lengths = [int(n) for n in args.lengths.split(",")]
    for shape in args.models.split(","):
        save_weights(shape, work / shape)
        for length, mode in itertools.product(lengths, args.modes.split(",")):
            for engine in args.engines.split(","):
                if engine == "transformers" and length > args.max_transformers:
                    continue
                r = fresh(__file__, "memory", engine, str(work / shape), str(length), mode)
                label = f"{shape} {length:>6} {mode:<4} {engine}"
                beyond = r["forward_peak_mb"] - r["logits_mb"]
                print(
                    f"{label:<34} {r['peak_mb']:>10.0f} {r['forward_peak_mb']:>10.0f} "
                    f"{beyond:>10.0f}",
                    flush=True,
                )


def losses(args: argparse.Namespace, work: Path) -> None:
    save_weights("tiny", work / "tiny")
    lengths = [65536, 1 << 20]
    results = [
        fresh(__file__, "losses", str(work / "tiny"), str(n), str(args.chunk)) for n in lengths
    ]
    for n, r in zip(lengths, results, strict=True):
        print(f"tiny token_losses {n:>8} chunk {args.chunk}: peak {r['peak_mb']:.0f} MiB")
    ratio = results[1]["peak_mb"] / results[0]["peak_mb"]
    print(f"peak {lengths[-1]} / {lengths[0]} tokens: {ratio:.2f}x")


def main() -> None:
    from harness.models.allocator import keep_freed_memory

    keep_freed_memory()  # as harness does when it loads a model on CPU, for every engine here
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="130m")
    parser.add_argument("--lengths", default="4096,16384,65536")
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--modes", default="last", help="memory: last and/or all logits")
    parser.add_argument("--rounds", type=int, default=2, help="speed: passes of each engine")
    parser.add_argument("--max-transformers", type=int, default=16384, help="longest for theirs")
    parser.add_argument("--memory", action="store_true", help="peak memory, fresh processes")
    parser.add_argument("--losses", action="store_true", help="token_losses memory, 64K vs 1M")
    parser.add_argument("--chunk", type=int, default=2048, help="token_losses chunk")
    parser.add_argument("--json", type=Path, help="speed: also write the figures here")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, *rest = args.worker
        if kind == "memory":
            result = memory_worker(rest[0], Path(rest[1]), int(rest[2]), rest[3])
        else:
            result = losses_worker(Path(rest[0]), int(rest[1]), int(rest[2]))
        print(json.dumps(result))
        return
    with tempfile.TemporaryDirectory() as work:
        if args.losses:
            losses(args, Path(work))
        elif args.memory:
            memory(args, Path(work))
        else:
            figures = speed(args, Path(work))
            if args.json:
                args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
