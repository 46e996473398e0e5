"""GPU parity and benchmarks of our Mamba-2, run by bench/gpu_check.sh (which installs them).

    python bench/gpu_check.py --out DIR                       # on a GPU: all checks, ~8 min
    python bench/gpu_check.py --device cpu --tiny --out DIR   # the same code at tiny sizes

Parity (a failure exits 1): on the device, with random weights saved in transformers' format,
1. our logits against transformers' Mamba2ForCausalLM (its own path on that device: mamba-ssm's
   kernels when installed), for each of our scan backends (torch; triton when mamba-ssm is
   importable, else recorded as skipped);
2. one pass against the same tokens fed in uneven pieces with the state carried, over a sequence
   past 61K tokens (the offsets where mamba-ssm's Triton kernels overflow int32), per backend.
Tolerance: max |difference| <= TOLERANCE x max |reference| over the logits compared.

Benchmarks: prefill (logits of the last token) tokens/s and peak memory of each backend, and of
transformers up to --max-transformers tokens (mamba-ssm's kernels overflow beyond ~61K, issue
1015; its torch path needs GiBs per 16K), on the 130m and 370m shapes, float32 and bfloat16
(projections in bfloat16, state and scan float32), at lengths 4K..1M ascending; a configuration
stops growing after an out-of-memory error, and everything stops at --budget seconds, the rest
recorded as skipped. Peak memory: torch.cuda.max_memory_allocated on CUDA, the process's VmHWM
(reset before each pass) on CPU.

Writes DIR/gpu_check.json (every figure and check) and DIR/gpu_check.md (tables).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

TOLERANCE = 2e-3  # relative max difference of logits that counts as equal (float32)
SHAPES = {  # name -> Mamba2Config fields
    "130m": {"d_model": 768, "n_layer": 24, "vocab_size": 50288},
    "370m": {"d_model": 1024, "n_layer": 48, "vocab_size": 50288},
    "tiny": {"d_model": 64, "n_layer": 2, "vocab_size": 256, "d_state": 32, "headdim": 16},
}
LENGTHS = [1 << k for k in range(12, 21)]  # 4K .. 1M
TINY_LENGTHS = [256, 1024, 4096]
PAST_OVERFLOW = 70_000  # tokens of the pieces check: past ~61K (mamba-ssm issue 1015)
PARITY_TOKENS = 2048


@dataclass
class Check:
    name: str
    passed: bool | None  # None: skipped
    detail: str


@dataclass
class Figure:
    shape: str
    dtype: str
    engine: str  # ours-torch, ours-triton, transformers
    tokens: int
    tokens_per_s: float | None
    peak_mib: float | None
    status: str  # ok, oom, skipped: why, error: what


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes and lengths (CPU proof)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--budget", type=float, default=420.0, help="seconds for benchmarks")
    parser.add_argument("--max-transformers", type=int, default=32768)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)  # other jobs share this machine's cores: see mamba2_cpu.py
    shapes = ["tiny"] if args.tiny else ["130m", "370m"]
    lengths = TINY_LENGTHS if args.tiny else LENGTHS
    backends = ["torch"] + (["triton"] if triton_ready(device) else [])
    with tempfile.TemporaryDirectory() as work:
        weights = {s: save_weights(s, Path(work) / s) for s in shapes}
        checks = parity(weights[shapes[0]], device, backends, args.tiny)
        deadline = time.monotonic() + args.budget
        figures = []
        for shape in shapes:
            for dtype in (torch.float32, torch.bfloat16):
                for engine in [f"ours-{b}" for b in backends] + ["transformers"]:
                    top = args.max_transformers if engine == "transformers" else lengths[-1]
                    figures += sweep(weights[shape], shape, dtype, engine, lengths, top, device,
                                     deadline)  # fmt: skip
    if "triton" not in backends:
        checks.append(Check("triton backend", None, "skipped: mamba-ssm/triton not usable here"))
    report = {
        "device": describe(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "checks": [asdict(c) for c in checks],
        "figures": [asdict(f) for f in figures],
    }
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1))
    (args.out / "gpu_check.md").write_text(markdown(report, checks, figures))
    print(markdown(report, checks, figures))
    failed = [c.name for c in checks if c.passed is False]
    if failed:
        print(f"parity FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def triton_ready(device: torch.device) -> bool:
    from harness.models.mamba2.triton_scan import triton_available

    return device.type == "cuda" and triton_available()


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({platform.processor() or platform.machine()})"


def save_weights(shape: str, directory: Path) -> Path:
    from harness.models.mamba2 import Mamba2, Mamba2Config, save_pretrained

    torch.manual_seed(0)
    save_pretrained(Mamba2(Mamba2Config(**SHAPES[shape])), directory, format="hf")
    return directory


def load_ours(weights: Path, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    from harness.models.mamba2 import load_mamba2

    return load_mamba2(weights, device=device, dtype=dtype).eval()


def load_theirs(weights: Path, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    from transformers import Mamba2ForCausalLM

    return Mamba2ForCausalLM.from_pretrained(weights, dtype=dtype).to(device).eval()


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.float(), want.float()
    return float((got - want).abs().max() / want.abs().max().clamp_min(1e-6))


@torch.inference_mode()
def parity(weights: Path, device: torch.device, backends: list[str], tiny: bool) -> list[Check]:
    checks = []
    ours = load_ours(weights, device, torch.float32)
    theirs = load_theirs(weights, device, torch.float32)
    vocab = ours.config.vocab_size
    ids = torch.randint(0, vocab, (1, PARITY_TOKENS), generator=seeded()).to(device)
    want = theirs(ids, use_cache=False).logits.float()[..., :vocab]
    del theirs
    for backend in backends:
        got = ours(ids, backend=backend)[0][..., :vocab]
        checks.append(compare(f"{backend} vs transformers, {PARITY_TOKENS} tokens", got, want))
    length = 3000 if tiny else PAST_OVERFLOW
    ids = torch.randint(0, vocab, (1, length), generator=seeded()).to(device)
    cuts = [0, 1, 777, length // 2 + 5, length - 1, length]  # uneven, single tokens too
    for backend in backends:
        one, one_state = ours(ids, backend=backend, last_only=True)
        state, last = None, None
        for lo, hi in itertools.pairwise(cuts):
            last, state = ours(ids[:, lo:hi], state, backend=backend, last_only=True)
        name = f"{backend}: {length} tokens in one pass vs in pieces"
        checks.append(compare(name + " (last logits)", last, one))
        checks.append(compare(name + " (final state)", state.ssm[-1], one_state.ssm[-1]))
    return checks


def compare(name: str, got: torch.Tensor, want: torch.Tensor) -> Check:
    try:
        error = relative_error(got, want)
    except RuntimeError as err:  # shapes differ
        return Check(name, False, str(err))
    passed = math.isfinite(error) and error <= TOLERANCE
    print(f"{'ok  ' if passed else 'FAIL'} {name}: {error:.2e}", flush=True)
    return Check(name, passed, f"relative max difference {error:.2e} (tolerance {TOLERANCE})")


def sweep(
    weights: Path,
    shape: str,
    dtype: torch.dtype,
    engine: str,
    lengths: list[int],
    top: int,
    device: torch.device,
    deadline: float,
) -> list[Figure]:
    """One (shape, dtype, engine) over ascending lengths, until an OOM, the top, or the time."""
    name = str(dtype).removeprefix("torch.")
    figures: list[Figure] = []

    def skip(length: int, why: str) -> Figure:
        return Figure(shape, name, engine, length, None, None, f"skipped: {why}")

    if time.monotonic() > deadline:
        return [skip(n, "time budget spent") for n in lengths]
    run = loader(engine, weights, device, dtype)
    stop = ""
    for length in lengths:
        if not stop and length > top:
            stop = f"over {top} tokens"
        if not stop and time.monotonic() > deadline:
            stop = "time budget spent"
        if stop:
            figures.append(skip(length, stop))
            continue
        figures.append(measure(run, shape, name, engine, length, device))
        print(asdict(figures[-1]), flush=True)
        if figures[-1].status != "ok":
            stop = f"after {figures[-1].status.split(':')[0]} at {length}"
    del run
    empty_cache(device)
    return figures


def loader(
    engine: str, weights: Path, device: torch.device, dtype: torch.dtype
) -> Callable[[torch.Tensor], torch.Tensor]:
    """-> ids (1, l) -> the last token's logits."""
    if engine == "transformers":
        theirs = load_theirs(weights, device, dtype)
        return lambda ids: theirs(ids, use_cache=False, logits_to_keep=1).logits
    ours, backend = load_ours(weights, device, dtype), engine.removeprefix("ours-")
    return lambda ids: ours(ids, backend=backend, last_only=True)[0]


@torch.inference_mode()
def measure(
    run: Callable[[torch.Tensor], torch.Tensor],
    shape: str,
    dtype: str,
    engine: str,
    length: int,
    device: torch.device,
) -> Figure:
    vocab = SHAPES[shape]["vocab_size"]
    ids = torch.randint(0, vocab, (1, length), generator=seeded()).to(device)
    try:
        run(ids[:, : min(length, 1024)])  # warm-up: kernels compiled, autotuned
        synchronize(device)
        reset_peak(device)
        start = time.perf_counter()
        logits = run(ids)
        synchronize(device)
        seconds = time.perf_counter() - start
        if not torch.isfinite(logits.float()).all():
            return Figure(shape, dtype, engine, length, None, None, "error: non-finite logits")
        return Figure(shape, dtype, engine, length, length / seconds, peak_mib(device), "ok")
    except torch.OutOfMemoryError:
        empty_cache(device)
        return Figure(shape, dtype, engine, length, None, None, "oom")
    except RuntimeError as err:  # a kernel fault: recorded, the sweep goes on without it
        traceback.print_exc()
        return Figure(shape, dtype, engine, length, None, None, f"error: {str(err)[:200]}")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def empty_cache(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS


def peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise KeyError("VmHWM")


def seeded() -> torch.Generator:
    return torch.Generator().manual_seed(1)


def markdown(report: dict, checks: list[Check], figures: list[Figure]) -> str:
    lines = [f"# gpu_check: {report['device']}, torch {report['torch']}", "", "## Parity", ""]
    lines += ["| check | result | detail |", "|---|---|---|"]
    for c in checks:
        result = "skipped" if c.passed is None else ("ok" if c.passed else "FAILED")
        lines.append(f"| {c.name} | {result} | {c.detail} |")
    lines += ["", "## Prefill tokens/s (peak MiB)", ""]
    columns = sorted({f.tokens for f in figures})
    lines.append("| shape | dtype | engine | " + " | ".join(map(tokens, columns)) + " |")
    lines.append("|---" * (3 + len(columns)) + "|")
    rows: dict[tuple[str, str, str], dict[int, str]] = {}
    for f in figures:
        cell = f"{f.tokens_per_s:.0f} ({f.peak_mib:.0f})" if f.status == "ok" else f.status
        rows.setdefault((f.shape, f.dtype, f.engine), {})[f.tokens] = cell
    for (shape, dtype, engine), cells in rows.items():
        values = " | ".join(cells.get(n, "") for n in columns)
        lines.append(f"| {shape} | {dtype} | {engine} | {values} |")
    return "\n".join(lines) + "\n"


def tokens(n: int) -> str:
    return f"{n >> 20}M" if n >= 1 << 20 else f"{n >> 10}K" if n >= 1024 else str(n)


if __name__ == "__main__":
    sys.exit(main())
