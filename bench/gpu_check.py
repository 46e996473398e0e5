"""GPU parity and benchmarks of our recurrent engines (Mamba-2, Mamba-1, RWKV-6), run by
bench/gpu_check.sh (which installs them).

    python bench/gpu_check.py --out DIR                       # on a GPU: all checks, ~8 min
    python bench/gpu_check.py --device cpu --tiny --out DIR   # the same code at tiny sizes
    python bench/gpu_check.py --families mamba1,rwkv6 --out DIR

Parity (a failure exits 1): on the device, with random weights saved in the peer's format,
1. Mamba-2: our logits against transformers' Mamba2ForCausalLM (its own path on that device:
   mamba-ssm's kernels when installed), for each of our scan backends (torch; triton when
   mamba-ssm is importable, else recorded as skipped); one pass against the same tokens fed in
   uneven pieces with the state carried, over a sequence past 61K tokens (the offsets where
   mamba-ssm's Triton kernels overflow int32), per backend.
   Tolerance: max |difference| <= TOLERANCE x max |reference| over the logits compared.
2. Mamba-1 against transformers' MambaForCausalLM (its pure-torch path, even where mamba-ssm
   imports) and RWKV-6 against the `rwkv` package (`cuda fp32`, its plain-torch path; recorded
   as skipped where the package does not import), float32, on a small shape with the real
   proportions (PARITY_SHAPES, random weights), PARITY_TOKENS tokens; then one pass of ours
   against uneven pieces with the state carried (last logits and the last layer's state).
   Tolerance: FAMILY_TOLERANCE, same measure (see there).

Benchmarks: prefill (logits of the last token) tokens/s and peak memory on the device, float32
and bfloat16, at ascending lengths; a configuration stops growing after an out-of-memory error,
and each family stops at its share of --budget seconds (the budget left, split evenly over the
families left: Mamba-1, RWKV-6, then Mamba-2, whose sweep to 1M takes what they leave), the
rest recorded as skipped; a length is skipped too where the last pass's rate says it would not
finish in time.
- Mamba-2: each backend, and transformers up to --max-transformers tokens (mamba-ssm's kernels
  overflow beyond ~61K, issue 1015; its torch path needs GiBs per 16K), on the 130m and 370m
  shapes, 4K..1M; bfloat16 is our projections in bfloat16, state and scan float32.
- Mamba-1 and RWKV-6: ours at 4K..64K on the 130m-like shapes of bench/families.py, their peers
  (same as for parity, same process) up to --max-peer tokens (token-by-token loops there).
  bfloat16: every weight in bfloat16 (our residual stream and scan stay float32; the peers as
  they do it: transformers' Mamba scans in float32, the rwkv package runs `bf16`).
Peak memory: torch.cuda.max_memory_allocated on CUDA, the process's VmHWM (reset before each
pass, bench/fresh_process.py) on CPU.

Writes DIR/gpu_check.json (every figure and check) and DIR/gpu_check.md (tables), also when
interrupted (SIGINT, as gpu_check.sh's time limit sends: "interrupted" says so). Exits 1 on a
parity failure, 3 when interrupted, 2 on wrong arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import families
import fresh_process
import torch

TOLERANCE = 2e-3  # relative max difference of logits that counts as equal (float32)
# Mamba-1 and RWKV-6 against a float32 torch peer: FAMILY_TOLERANCE below
FAMILIES = ("mamba2", "mamba1", "rwkv6")
BENCH_ORDER = ("mamba1", "rwkv6", "mamba2")  # bounded sweeps first: time they leave goes on
SHAPES = {  # name -> Mamba2Config fields
    "130m": {"d_model": 768, "n_layer": 24, "vocab_size": 50288},
    "370m": {"d_model": 1024, "n_layer": 48, "vocab_size": 50288},
    "tiny": {"d_model": 64, "n_layer": 2, "vocab_size": 256, "d_state": 32, "headdim": 16},
}
LENGTHS = [1 << k for k in range(12, 21)]  # 4K .. 1M
TINY_LENGTHS = [256, 1024, 4096]
PAST_OVERFLOW = 70_000  # tokens of the pieces check: past ~61K (mamba-ssm issue 1015)
PARITY_TOKENS = 2048
# Mamba-1 and RWKV-6, both sides float32 with TF32 off: on CPU the error is 3.8e-7 (RWKV-6) and
# 4.0e-7 (Mamba-1) at the parity shape over 2048 tokens, and the same with the scan a GPU runs
# (`chunked_scan`, 16-token chunks, exp of summed log-decays) forced on CPU (3.2e-7 to 3.4e-7
# from the token-by-token scan). 1e-4 leaves 250x for the GPU's other reduction orders, while a
# fault as small as replaying a few hundred tokens into the state moved the tiny model's last
# logits by 4e-4 (its state by 9e-2).
FAMILY_TOLERANCE = 1e-4
PARITY_SHAPES = {  # family -> (full, tiny) Config fields of the parity model
    "mamba1": (
        {"d_model": 512, "n_layer": 4, "d_state": 16, "vocab_size": 4096},
        {"d_model": 32, "n_layer": 2, "d_state": 8, "vocab_size": 64},
    ),
    "rwkv6": (
        {"d_model": 512, "n_layer": 4, "head_size": 64, "vocab_size": 4096},
        {"d_model": 32, "n_layer": 2, "head_size": 8, "vocab_size": 64, "d_mix": 4, "d_decay": 6},
    ),
}
FAMILY_LENGTHS = [1 << k for k in range(12, 17)]  # 4K .. 64K
FAMILY_PIECES_TOKENS = (20_000, 600)  # the pieces check's length: full, tiny
STATE_FIELD = {"mamba1": "ssm", "rwkv6": "wkv"}  # the state's per-layer recurrent state


Forward = Callable[[torch.Tensor], torch.Tensor]  # ids (1, l) -> the last token's logits
Stepper = Callable[[torch.Tensor, object], tuple[torch.Tensor, object]]  # ids, state -> last, state


@dataclass
class Check:
    name: str
    passed: bool | None  # None: skipped
    detail: str


@dataclass
class Figure:
    family: str  # mamba2, mamba1, rwkv6
    shape: str
    dtype: str
    engine: str  # ours-torch, ours-triton, ours, transformers, rwkv
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
    parser.add_argument("--families", default=",".join(FAMILIES), help="of " + ", ".join(FAMILIES))
    parser.add_argument(
        "--lengths", help="benchmark lengths, comma-separated (default: per family)"
    )
    parser.add_argument("--max-transformers", type=int, default=32768)
    parser.add_argument("--max-peer", type=int, default=16384, help="Mamba-1/RWKV-6 peers' top")
    args = parser.parse_args()
    chosen = args.families.split(",")
    if not chosen or set(chosen) - set(FAMILIES):
        parser.error(f"--families: {args.families!r}; choose from {', '.join(FAMILIES)}")
    try:
        args.lengths = sorted(int(n) for n in args.lengths.split(",")) if args.lengths else None
    except ValueError:
        parser.error(f"--lengths: {args.lengths!r}; give token counts like 4096,16384")
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)  # other jobs share this machine's cores: see mamba2_cpu.py
    checks: list[Check] = []
    figures: list[Figure] = []
    interrupted = ""
    try:
        with tempfile.TemporaryDirectory() as work:
            weights = {f: prepare(f, Path(work) / f, args.tiny) for f in chosen}
            for family in chosen:
                checks += run_parity(family, weights[family], device, args.tiny)
            end = time.monotonic() + args.budget
            order = sorted(chosen, key=BENCH_ORDER.index)
            for left, family in zip(range(len(order), 0, -1), order, strict=True):
                deadline = time.monotonic() + max(0.0, end - time.monotonic()) / left
                benchmark(family, weights[family], device, args, deadline, figures)
    except KeyboardInterrupt:  # gpu_check.sh's time limit (SIGINT): keep what ran
        interrupted = "interrupted (SIGINT) before the end; what ran is written"
        print(f"gpu_check: {interrupted}", file=sys.stderr)
    report = {
        "device": describe(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "interrupted": interrupted,
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
    return 3 if interrupted else 0


def prepare(family: str, directory: Path, tiny: bool) -> dict[str, Path]:
    """Random weights of a family: -> shape name -> path ("parity" for the parity model)."""
    if family == "mamba2":
        shapes = ["tiny"] if tiny else ["130m", "370m"]
        return {s: save_mamba2(s, directory / s) for s in shapes}
    parity_shape = PARITY_SHAPES[family][1 if tiny else 0]
    paths = {"parity": families.save_weights(family, directory / "parity", parity_shape)}
    bench = "tiny" if tiny else "130m"  # the shape bench/families.py times
    fields = parity_shape if tiny else families.SHAPES[family]
    return paths | {bench: families.save_weights(family, directory / bench, fields)}


def run_parity(
    family: str, weights: dict[str, Path], device: torch.device, tiny: bool
) -> list[Check]:
    if family == "mamba2":
        backends = ["torch"] + (["triton"] if triton_ready(device) else [])
        checks = parity(next(iter(weights.values())), device, backends, tiny)
        if "triton" not in backends:
            checks.append(Check("triton backend", None, "skipped: mamba-ssm/triton not usable"))
        return checks
    return family_parity(family, weights["parity"], device, tiny)


def benchmark(
    family: str,
    weights: dict[str, Path],
    device: torch.device,
    args: argparse.Namespace,
    deadline: float,
    figures: list[Figure],
) -> None:
    """Every (shape, dtype, engine) sweep of a family, until `deadline`, onto `figures`."""
    if args.lengths:
        lengths = args.lengths
    elif family == "mamba2":
        lengths = TINY_LENGTHS if args.tiny else LENGTHS
    else:
        lengths = TINY_LENGTHS if args.tiny else FAMILY_LENGTHS
    for shape, path in weights.items():
        if shape == "parity":
            continue
        for dtype in (torch.float32, torch.bfloat16):
            for engine, top, make in engines(family, path, device, dtype, args):
                vocab = vocab_size(family, shape, args.tiny)
                sweep(family, shape, dtype, engine, make, vocab, lengths, top, device, deadline,
                      figures)  # fmt: skip


def engines(family: str, weights: Path, device: torch.device, dtype: torch.dtype, args):
    """-> (engine, top length, a function that loads it) for each engine a family is timed with;
    an engine that cannot run here has no loader: its reason instead."""
    if family == "mamba2":
        backends = ["torch"] + (["triton"] if triton_ready(device) else [])
        for b in backends:
            yield f"ours-{b}", 1 << 40, lambda b=b: mamba2_loader(b, weights, device, dtype)
        yield (
            "transformers",
            args.max_transformers,
            lambda: mamba2_loader("transformers", weights, device, dtype),
        )
        return
    yield "ours", 1 << 40, lambda: families.load_engine(family, "ours", weights, device, dtype)
    peer = families.PEERS[family]
    missing = peer_missing(family)
    if missing:
        yield peer, 0, missing
    else:
        yield (
            peer,
            args.max_peer,
            lambda: families.load_engine(family, peer, weights, device, dtype),
        )


def vocab_size(family: str, shape: str, tiny: bool) -> int:
    if family == "mamba2":
        return SHAPES[shape]["vocab_size"]
    fields = PARITY_SHAPES[family][1] if tiny else families.SHAPES[family]
    return fields["vocab_size"]


def peer_missing(family: str) -> str | None:
    """Why a family's peer cannot run in this process, or None."""
    if family != "rwkv6":
        return None
    try:
        import rwkv  # noqa: F401
    except ImportError as err:
        return f"skipped: the rwkv package does not import ({err})"
    return None


def triton_ready(device: torch.device) -> bool:
    from harness.models.mamba2.triton_scan import triton_available

    return device.type == "cuda" and triton_available()


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({platform.processor() or platform.machine()})"


def save_mamba2(shape: str, directory: Path) -> Path:
    from harness.models.mamba2 import Mamba2, Mamba2Config, save_pretrained

    torch.manual_seed(0)
    save_pretrained(Mamba2(Mamba2Config(**SHAPES[shape])), directory, format="hf")
    return directory


def load_mamba2(weights: Path, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    from harness.models.mamba2 import load_mamba2

    return load_mamba2(weights, device=device, dtype=dtype).eval()


def load_theirs(weights: Path, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    from transformers import Mamba2ForCausalLM

    return Mamba2ForCausalLM.from_pretrained(weights, dtype=dtype).to(device).eval()


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.float(), want.float()
    return float((got - want).abs().max() / want.abs().max().clamp_min(1e-6))


@contextlib.contextmanager
def no_tf32() -> Iterator[None]:
    """float32 products in float32 (cuDNN's convolutions default to TF32 on CUDA)."""
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


@torch.inference_mode()
def parity(weights: Path, device: torch.device, backends: list[str], tiny: bool) -> list[Check]:
    checks = []
    ours = load_mamba2(weights, device, torch.float32)
    theirs = load_theirs(weights, device, torch.float32)
    vocab = ours.config.vocab_size
    ids = torch.randint(0, vocab, (1, PARITY_TOKENS), generator=seeded()).to(device)
    want = theirs(ids, use_cache=False).logits.float()[..., :vocab]
    del theirs
    for backend in backends:
        got = ours(ids, backend=backend)[0][..., :vocab]
        checks.append(compare(f"{backend} vs transformers, {PARITY_TOKENS} tokens", got, want))
    length = 3000 if tiny else PAST_OVERFLOW
    for backend in backends:

        def step(ids: torch.Tensor, state: object, backend: str = backend) -> tuple:
            return ours(ids, state, backend=backend, last_only=True)

        name = f"{backend}: {length} tokens in one pass vs in pieces"
        checks += pieces(name, step, lambda s: s.ssm[-1], vocab, length, device, TOLERANCE)
    return checks


@torch.inference_mode()
@no_tf32()
def family_parity(family: str, weights: Path, device: torch.device, tiny: bool) -> list[Check]:
    """Mamba-1 or RWKV-6: ours against the peer (float32, on the device), then in pieces."""
    ours = families.load_ours(family, weights, device, torch.float32)
    vocab = PARITY_SHAPES[family][1 if tiny else 0]["vocab_size"]
    peer = families.PEERS[family]
    name = f"{family}: ours vs {peer}, {PARITY_TOKENS} tokens"
    missing = peer_missing(family)
    if missing:
        checks = [Check(name, None, missing)]
    else:
        ids = torch.randint(0, vocab, (1, PARITY_TOKENS), generator=seeded()).to(device)
        theirs = families.load_engine(family, peer, weights, device, torch.float32, False)
        want = theirs(ids)[..., :vocab]
        del theirs
        checks = [compare(name, ours(ids)[0][..., :vocab], want, FAMILY_TOLERANCE)]
    length = FAMILY_PIECES_TOKENS[1 if tiny else 0]

    def step(ids: torch.Tensor, state: object) -> tuple:
        return ours(ids, state, last_only=True)

    def final(state: object) -> torch.Tensor:
        return getattr(state, STATE_FIELD[family])[-1]

    name = f"{family}: {length} tokens in one pass vs in pieces"
    return checks + pieces(name, step, final, vocab, length, device, FAMILY_TOLERANCE)


def pieces(
    name: str,
    step: Stepper,
    final: Callable[[object], torch.Tensor],
    vocab: int,
    length: int,
    device: torch.device,
    tolerance: float,
) -> list[Check]:
    """One pass against uneven pieces (single tokens too) with the state carried: the last
    logits and `final` of the state."""
    ids = torch.randint(0, vocab, (1, length), generator=seeded()).to(device)
    one, one_state = step(ids, None)
    cuts = [0, 1, min(777, length // 3), length // 2 + 5, length - 1, length]  # ascending
    state, last = None, None
    for lo, hi in itertools.pairwise(cuts):
        last, state = step(ids[:, lo:hi], state)
    return [
        compare(name + " (last logits)", last[..., :vocab], one[..., :vocab], tolerance),
        compare(name + " (final state)", final(state), final(one_state), tolerance),
    ]


def compare(
    name: str, got: torch.Tensor, want: torch.Tensor, tolerance: float = TOLERANCE
) -> Check:
    try:
        error = relative_error(got, want)
    except RuntimeError as err:  # shapes differ
        return Check(name, False, str(err))
    passed = math.isfinite(error) and error <= tolerance
    print(f"{'ok  ' if passed else 'FAIL'} {name}: {error:.2e}", flush=True)
    return Check(name, passed, f"relative max difference {error:.2e} (tolerance {tolerance})")


def sweep(
    family: str,
    shape: str,
    dtype: torch.dtype,
    engine: str,
    make: Callable[[], Forward] | str,
    vocab: int,
    lengths: list[int],
    top: int,
    device: torch.device,
    deadline: float,
    out: list[Figure],
) -> None:
    """One (shape, dtype, engine) over ascending lengths, until an OOM, the top, or the time,
    each figure onto `out` as it is taken; `make` loads the engine, or says why it cannot run."""
    name = str(dtype).removeprefix("torch.")
    figures: list[Figure] = []  # this sweep's

    def skip(length: int, why: str) -> Figure:
        return Figure(family, shape, name, engine, length, None, None, f"skipped: {why}")

    if isinstance(make, str):
        out += [skip(n, make.removeprefix("skipped: ")) for n in lengths]
        return
    if time.monotonic() > deadline:
        out += [skip(n, "time budget spent") for n in lengths]
        return
    run = make()
    stop = ""
    for length in lengths:
        if not stop and length > top:
            stop = f"over {top} tokens"
        if not stop and time.monotonic() + expected(figures, length) > deadline:
            stop = "time budget spent"
        figure = skip(length, stop) if stop else measure(run, family, shape, name, engine,
                                                         length, vocab, device)  # fmt: skip
        figures.append(figure)
        out.append(figure)
        if not stop:
            print(asdict(figure), flush=True)  # once recorded: a SIGINT after it keeps it
            if figure.status != "ok":
                stop = f"after {figure.status.split(':')[0]} at {length}"
    del run
    empty_cache(device)


def expected(figures: list[Figure], length: int) -> float:
    """Seconds a pass of `length` tokens should take at the last pass's rate (0 at the first):
    every engine here is linear in the length."""
    rate = figures[-1].tokens_per_s if figures else None
    return length / rate if rate else 0.0


def mamba2_loader(engine: str, weights: Path, device: torch.device, dtype: torch.dtype) -> Forward:
    if engine == "transformers":
        theirs = load_theirs(weights, device, dtype)
        return lambda ids: theirs(ids, use_cache=False, logits_to_keep=1).logits
    ours = load_mamba2(weights, device, dtype)
    return lambda ids: ours(ids, backend=engine, last_only=True)[0]


@torch.inference_mode()
def measure(
    run: Forward,
    family: str,
    shape: str,
    dtype: str,
    engine: str,
    length: int,
    vocab: int,
    device: torch.device,
) -> Figure:
    ids = torch.randint(0, vocab, (1, length), generator=seeded()).to(device)

    def failed(status: str) -> Figure:
        return Figure(family, shape, dtype, engine, length, None, None, status)

    try:
        run(ids[:, : min(length, 1024)])  # warm-up: kernels compiled, autotuned
        synchronize(device)
        reset_peak(device)
        start = time.perf_counter()
        logits = run(ids)
        synchronize(device)
        seconds = time.perf_counter() - start
        if not torch.isfinite(logits.float()).all():
            return failed("error: non-finite logits")
        return Figure(
            family, shape, dtype, engine, length, length / seconds, peak_mib(device), "ok"
        )
    except torch.OutOfMemoryError:
        empty_cache(device)
        return failed("oom")
    except RuntimeError as err:  # a kernel fault: recorded, the sweep goes on without it
        traceback.print_exc()
        return failed(f"error: {str(err)[:200]}")


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
        fresh_process.reset_peak()  # VmHWM := VmRSS


def peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return fresh_process.status_mb("VmHWM")


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
    lines.append("| family | shape | dtype | engine | " + " | ".join(map(tokens, columns)) + " |")
    lines.append("|---" * (4 + len(columns)) + "|")
    rows: dict[tuple[str, str, str, str], dict[int, str]] = {}
    for f in figures:
        cell = f"{f.tokens_per_s:.0f} ({f.peak_mib:.0f})" if f.status == "ok" else f.status
        rows.setdefault((f.family, f.shape, f.dtype, f.engine), {})[f.tokens] = cell
    for key, cells in rows.items():
        values = " | ".join(cells.get(n, "") for n in columns)
        lines.append(f"| {' | '.join(key)} | {values} |")
    return "\n".join(lines) + "\n"


def tokens(n: int) -> str:
    return f"{n >> 20}M" if n >= 1 << 20 else f"{n >> 10}K" if n >= 1024 else str(n)


if __name__ == "__main__":
    sys.exit(main())
