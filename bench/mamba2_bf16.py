"""bfloat16 projections against float32: loss and passkey drift, and speed, on CPU.

    python bench/mamba2_bf16.py                                  # all, as in the README
    python bench/mamba2_bf16.py --skip-bundled --lengths 4096,16384,65536

With --dtype bfloat16 our Mamba-2 keeps the projections (embedding, in_proj, out_proj, lm_head)
in bfloat16 and everything else in float32: per-head parameters, conv, norms, the residual
stream, the scan and its state (Mamba2.set_projection_dtype).

1. The bundled trained Mamba-2 models through `harness run` (passkey and perplexity, the default
   run's lengths and samples), once with --dtype float32 and once with bfloat16: passkey
   accuracy and mean key log-prob, and mean loss per length, side by side.
2. A 130m-shaped random model (seed 0) over random tokens in pieces of 2048 with the state
   carried: per length, the mean and max |difference| of the next-token loss against float32,
   and CPU time of both forms, alternating piece by piece (one torch thread).
"""

from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

BUNDLED = ("mamba2-bytes-320", "mamba2-bytes-320-tbptt-1280")
PIECE = 2048


def bundled(models: list[str], lengths: str, samples: int, work: Path) -> None:
    import pandas as pd

    tables = {}
    for dtype in ("float32", "bfloat16"):
        out = work / dtype
        command = [sys.executable, "-m", "harness.cli", "run", "--models", ",".join(models)]
        command += ["--tasks", "passkey,perplexity", "--lengths", lengths, "--device", "cpu"]
        command += ["--samples", str(samples), "--dtype", dtype, "--out", str(out)]
        env = os.environ | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
        tables[dtype] = (pd.read_parquet(out / "passkey"), pd.read_parquet(out / "perplexity"))
    print("model, length: passkey accuracy f32 / bf16, key log-prob f32 / bf16, loss f32 / bf16")
    passkey = {d: t[0].groupby(["model", "length"]) for d, t in tables.items()}
    loss = {d: token_mean_loss(t[1]) for d, t in tables.items()}
    accuracy = {d: g["correct"].mean() for d, g in passkey.items()}
    logprob = {d: g["key_logprob"].mean() for d, g in passkey.items()}
    for key in accuracy["float32"].index:
        a32, a16 = accuracy["float32"][key], accuracy["bfloat16"][key]
        k32, k16 = logprob["float32"][key], logprob["bfloat16"][key]
        l32, l16 = loss["float32"].get(key, float("nan")), loss["bfloat16"].get(key, float("nan"))
        print(
            f"{key[0]:<28} {key[1]:>6}: {a32:.2f} / {a16:.2f}   {k32:7.3f} / {k16:7.3f}   "
            f"{l32:.4f} / {l16:.4f}",
            flush=True,
        )


def token_mean_loss(perplexity: Any) -> Any:
    """Per (model, length): the buckets' mean losses weighted by their token counts."""
    weighted = perplexity.assign(total=perplexity["mean_loss"] * perplexity["count"])
    sums = weighted.groupby(["model", "length"])[["total", "count"]].sum()
    return sums["total"] / sums["count"]


@torch.inference_mode()
def random_130m(lengths: list[int]) -> None:
    from harness.models.linear import pack
    from harness.models.mamba2 import Mamba2, Mamba2Config

    torch.set_num_threads(1)
    torch.manual_seed(0)
    f32 = Mamba2(Mamba2Config(d_model=768, n_layer=24, vocab_size=50288)).eval()
    bf16 = copy.deepcopy(f32).set_projection_dtype(torch.bfloat16)
    pack(f32)  # as the harness evaluates a float32 model on CPU (bfloat16 stays dense)
    print("130m-shaped random, tokens: |loss bf16 - f32| mean, max; loss f32; f32 / bf16 time")
    for length in lengths:
        ids = torch.randint(0, 50288, (1, length + 1), generator=torch.Generator().manual_seed(1))
        states: dict[str, object] = {"f32": None, "bf16": None}
        seconds = {"f32": 0.0, "bf16": 0.0}
        differences, losses = [], []
        for i, start in enumerate(range(0, length, PIECE)):
            piece, targets = ids[:, start : start + PIECE], ids[0, start + 1 : start + PIECE + 1]
            nll = {}
            for name in ("f32", "bf16") if i % 2 == 0 else ("bf16", "f32"):
                model = f32 if name == "f32" else bf16
                begin = time.thread_time()
                logits, states[name] = model(piece, states[name])
                seconds[name] += time.thread_time() - begin
                nll[name] = torch.nn.functional.cross_entropy(
                    logits[0, :, :50288], targets, reduction="none"
                )
            differences.append((nll["bf16"] - nll["f32"]).abs())
            losses.append(nll["f32"])
        difference = torch.cat(differences)
        print(
            f"{length:>7}: {difference.mean():.2e} {difference.max():.2e}  "
            f"{torch.cat(losses).mean():.3f}  {seconds['f32'] / seconds['bf16']:.2f}x",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(BUNDLED))
    parser.add_argument("--bundled-lengths", default="320,1280,2560")
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--lengths", default="4096,16384", help="of the random 130m model")
    parser.add_argument("--skip-bundled", action="store_true")
    args = parser.parse_args()
    if not args.skip_bundled:
        with tempfile.TemporaryDirectory() as work:
            bundled(args.models.split(","), args.bundled_lengths, args.samples, Path(work))
    random_130m([int(n) for n in args.lengths.split(",")])


if __name__ == "__main__":
    main()
