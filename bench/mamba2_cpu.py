"""CPU throughput and peak memory: our Mamba-2 against transformers' Mamba2, same weights.

    python bench/mamba2_cpu.py                        # all: 130m-shaped and tiny, 4K and 16K
    python bench/mamba2_cpu.py --models tiny --lengths 4096
    python bench/mamba2_cpu.py --losses               # token_losses memory, tiny, 64K vs 1M
    python bench/mamba2_cpu.py --threads 1            # on a shared machine (see below)

Every measurement runs in a fresh subprocess, so its peak RSS (getrusage ru_maxrss, which sees
torch's allocations, unlike tracemalloc) belongs to that measurement alone. Both engines compute
float32 logits in one forward pass, after a short warm-up: of every token (mode "all"), or of
the last one (mode "last", a prefill: transformers' logits_to_keep=1, our last_only), where the
layers' working memory shows. "fwd peak" is the peak RSS minus the RSS with the model loaded:
what the forward pass added; "- logits" takes away the logits' size (a peak is not a sum, so
this is only a hint of what the layers took). Weights are
random (seed 0), saved once in transformers' format and loaded by both engines.

On a machine whose cores other processes also use, torch's default of one OpenMP thread per
core stalls every parallel op waiting for a descheduled thread (here 10-30x slower for the small
ops of a tiny model): pass --threads 1 there, and compare only figures taken together.

glibc's malloc raises its mmap threshold (up to 32 MiB) once a large block is freed; blocks
below it then come from the heap, which fragments: our layers' tensors of a few tens of MiB
leave the RSS growing layer after layer (a few hundred MiB at 4K tokens, 130m), transformers'
larger ones do not. MALLOC_MMAP_THRESHOLD_=1048576 in the environment fixes the threshold (the
workers inherit it): compare both ways.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {  # name -> Mamba2Config fields
    "130m": {"d_model": 768, "n_layer": 24, "vocab_size": 50288},
    "tiny": {"d_model": 64, "n_layer": 2, "vocab_size": 256, "d_state": 32, "headdim": 16},
}
ENGINES = ("ours", "transformers")
WARMUP_TOKENS = 256


def rss_mb() -> float:
    """Resident memory now (MiB), from /proc/self/statm."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def save_weights(shape: str, directory: Path) -> None:
    from harness.models.mamba2 import Mamba2, Mamba2Config, save_pretrained

    torch.manual_seed(0)
    save_pretrained(Mamba2(Mamba2Config(**SHAPES[shape])), directory, format="hf")


def forward_worker(
    engine: str, weights: Path, length: int, mode: str, repeat: int
) -> dict[str, float]:
    """Load one engine, time forward passes over `length` random tokens: the best of `repeat`."""
    last_only = mode == "last"
    if engine == "ours":
        from harness.models.mamba2 import load_mamba2

        model = load_mamba2(weights).eval()
        vocab = model.config.padded_vocab_size

        def run(ids: torch.Tensor) -> torch.Tensor:
            return model(ids, backend="torch", last_only=last_only)[0]
    else:
        from transformers import Mamba2ForCausalLM

        hf = Mamba2ForCausalLM.from_pretrained(weights).eval()
        vocab = hf.config.vocab_size

        def run(ids: torch.Tensor) -> torch.Tensor:
            return hf(ids, use_cache=False, logits_to_keep=int(last_only)).logits.float()

    ids = torch.randint(0, vocab, (1, length), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        run(ids[:, :WARMUP_TOKENS])
        loaded = rss_mb()
        seconds = math.inf
        for _ in range(repeat):
            start = time.perf_counter()
            logits = run(ids)
            seconds = min(seconds, time.perf_counter() - start)
            assert logits.shape == (1, 1 if last_only else length, vocab)
            assert torch.isfinite(logits[:, -1]).all()
            del logits  # before the next pass makes its own
    peak = peak_rss_mb()
    return {
        "tokens_per_s": length / seconds,
        "peak_mb": peak,
        "forward_peak_mb": peak - loaded,
        "logits_mb": (1 if last_only else length) * vocab * 4 / 2**20,
    }


def losses_worker(weights: Path, length: int, chunk: int) -> dict[str, float]:
    """Peak memory of Mamba2LM.token_losses over `length` tokens (tiny model, byte tokens)."""
    from harness.models.base import ModelInfo
    from harness.models.mamba2 import Mamba2LM, load_mamba2
    from harness.models.tokenizer import byte_tokenizer

    module = load_mamba2(weights).eval()
    info = ModelInfo("bench", "bench", "mamba2", 0, None, 0, "", "float32", "cpu", "torch")
    lm = Mamba2LM(module, byte_tokenizer(), info, backend="torch")
    ids = torch.randint(0, 256, (length,), generator=torch.Generator().manual_seed(1))
    lm.token_losses(ids[: 2 * chunk], chunk=chunk)
    loaded = rss_mb()
    start = time.perf_counter()
    losses = lm.token_losses(ids, chunk=chunk)
    seconds = time.perf_counter() - start
    peak = peak_rss_mb()
    assert losses.shape == (length - 1,) and torch.isfinite(losses).all()
    return {"tokens_per_s": length / seconds, "peak_mb": peak, "forward_peak_mb": peak - loaded}


def measure(threads: int | None, *args: str) -> dict[str, float]:
    """One measurement in a fresh interpreter."""
    env = os.environ | {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    done = subprocess.run(
        [sys.executable, __file__, "--worker", *args], env=env, capture_output=True, text=True
    )
    if done.returncode:
        raise RuntimeError(f"worker {args} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def row(label: str, result: dict[str, float]) -> str:
    beyond = result["forward_peak_mb"] - result.get("logits_mb", 0.0)
    return (
        f"{label:<34} {result['tokens_per_s']:>10.1f} {result['peak_mb']:>10.0f} "
        f"{result['forward_peak_mb']:>10.0f} {beyond:>10.0f}"
    )


HEADER = f"{'':<34} {'tokens/s':>10} {'peak MiB':>10} {'fwd peak':>10} {'- logits':>10}"


def compare(
    shapes: list[str],
    lengths: list[int],
    engines: list[str],
    modes: list[str],
    threads: int | None,
    repeat: int,
    work: Path,
) -> None:
    print(f"torch {torch.__version__}, {threads or torch.get_num_threads()} threads")
    print(HEADER)
    for shape in shapes:
        weights = work / shape
        save_weights(shape, weights)
        for length, mode in itertools.product(lengths, modes):
            results = {
                e: measure(threads, "forward", e, str(weights), str(length), mode, str(repeat))
                for e in engines
            }
            for engine, result in results.items():
                print(row(f"{shape} {length:>6} {mode:<4} {engine}", result), flush=True)
            if len(results) == 2:
                ours, theirs = results["ours"], results["transformers"]
                speed = ours["tokens_per_s"] / theirs["tokens_per_s"]
                ratios = [
                    ours[key] / max(theirs[key], 1.0) for key in ("peak_mb", "forward_peak_mb")
                ]
                print(
                    f"{'ours / transformers':<34} {speed:>10.2f} {ratios[0]:>10.2f} "
                    f"{ratios[1]:>10.2f}"
                )


def losses(lengths: list[int], chunk: int, threads: int | None, work: Path) -> None:
    print(HEADER)
    save_weights("tiny", work / "tiny")
    weights = str(work / "tiny")
    results = [measure(threads, "losses", weights, str(n), str(chunk)) for n in lengths]
    for n, result in zip(lengths, results, strict=True):
        print(row(f"tiny token_losses {n:>8} chunk {chunk}", result), flush=True)
    ratio = results[-1]["peak_mb"] / results[0]["peak_mb"]
    print(f"peak RSS {lengths[-1]} / {lengths[0]} tokens: {ratio:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="130m,tiny")
    parser.add_argument("--lengths", default="4096,16384")
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument(
        "--modes", default="all,last", help="logits of all tokens, or of the last (a prefill)"
    )
    parser.add_argument("--losses", action="store_true", help="token_losses memory, 64K vs 1M")
    parser.add_argument("--chunk", type=int, default=2048, help="token_losses chunk")
    parser.add_argument("--threads", type=int, help="torch threads (default: one per core)")
    parser.add_argument("--repeat", type=int, default=1, help="forward passes: the best counts")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, *rest = args.worker
        if kind == "forward":
            result = forward_worker(rest[0], Path(rest[1]), int(rest[2]), rest[3], int(rest[4]))
        else:
            result = losses_worker(Path(rest[0]), int(rest[1]), int(rest[2]))
        print(json.dumps(result))
        return
    with tempfile.TemporaryDirectory() as work:
        if args.losses:
            losses([65536, 1 << 20], args.chunk, args.threads, Path(work))
        else:
            lengths = [int(n) for n in args.lengths.split(",")]
            models, engines = args.models.split(","), args.engines.split(",")
            modes = args.modes.split(",")
            compare(models, lengths, engines, modes, args.threads, args.repeat, Path(work))


if __name__ == "__main__":
    main()
