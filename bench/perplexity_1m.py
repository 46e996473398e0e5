"""Loss by position at a million tokens on the CPU: wall time and peak memory against 64K.

Each length runs in a fresh subprocess (peak RSS from resource.getrusage is per process):
the built-in tiny Mamba-2, the newline prompt, the perplexity task's own path (prompt,
chunked token_losses with the state carried, bucket rows). The target: peak memory at 1M
within 1.2x of 64K, i.e. memory that does not grow with the sequence beyond the ids, the
per-token losses and the rows (8 + 4 bytes a token, one row per bucket).

    python bench/perplexity_1m.py                      # 64k and 1m, tiny-mamba2
    python bench/perplexity_1m.py --lengths 64k,256k --chunk 8192
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_RATIO = 1.2


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure(model_name: str, length: int, chunk: int, bucket: int) -> dict:
    """One length in this process: load, run the task unit, report time and memory."""
    import torch

    from harness.models.loading import load, resolve
    from tasks.base import TaskOptions
    from tasks.perplexity import Perplexity

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    model = load(resolve(model_name), "cpu", torch.float32, "auto")
    settings = {"chunk": str(chunk), "bucket": str(bucket)}
    task = Perplexity(TaskOptions(lengths=(length,), extra={"perplexity": settings}))
    [params] = task.units()
    loaded = peak_rss_mib()
    done = {"tokens": 0, "reported": 0.0}
    started = time.perf_counter()

    def progress(n: int) -> None:
        done["tokens"] += n
        elapsed = time.perf_counter() - started
        if elapsed - done["reported"] > 30:
            done["reported"] = elapsed
            rate = done["tokens"] / elapsed
            print(f"  {done['tokens']:>9} tokens, {rate:,.0f} tok/s", file=sys.stderr, flush=True)

    rows = task.run(model, params, progress)
    wall = time.perf_counter() - started
    return {
        "model": model_name,
        "length": length,
        "chunk": chunk,
        "rows": len(rows),
        "wall_s": round(wall, 2),
        "tokens_per_s": round(length / wall, 1),
        "rss_after_load_mib": round(loaded, 1),
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "last_bucket_loss": round(rows[-1]["mean_loss"], 4),
    }


def run_child(model_name: str, length: int, chunk: int, bucket: int) -> dict:
    command = [
        sys.executable,
        __file__,
        "--child",
        f"--models={model_name}",
        f"--lengths={length}",
        f"--chunk={chunk}",
        f"--bucket={bucket}",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    out = subprocess.run(command, cwd=ROOT, env=env, stdout=subprocess.PIPE)
    if out.returncode != 0:
        raise SystemExit(f"length {length} failed with exit status {out.returncode}")
    return json.loads(out.stdout.decode().strip().splitlines()[-1])


def parse_length(text: str) -> int:
    scale = {"k": 1024, "m": 1024 * 1024}.get(text[-1].lower(), 1)
    return int(text.rstrip("kKmM")) * scale


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny-mamba2")
    parser.add_argument("--lengths", default="64k,1m")
    parser.add_argument("--chunk", type=int, default=8192)
    parser.add_argument("--bucket", type=int, default=1024)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    lengths = [parse_length(t) for t in args.lengths.split(",")]
    if args.child:
        print(json.dumps(measure(args.models, lengths[0], args.chunk, args.bucket)), flush=True)
        return
    found = []
    for length in lengths:
        print(f"{args.models} at {length} tokens...", file=sys.stderr, flush=True)
        found.append(run_child(args.models, length, args.chunk, args.bucket))
        print(json.dumps(found[-1]))
    ratio = found[-1]["peak_rss_mib"] / found[0]["peak_rss_mib"]
    verdict = "within" if ratio <= TARGET_RATIO else "OVER"
    print(
        f"peak memory {found[-1]['length']} / {found[0]['length']} tokens: {ratio:.3f}x "
        f"({verdict} the {TARGET_RATIO}x target)"
    )


if __name__ == "__main__":
    main()
