"""Toy-scale state capacity: the shortest training length without collapse, per state size.

    python bench/toy_sweep.py --d-states 16,32,64 --lengths 320,640,1280 --steps 200 \
        --out results/reference/toy_sweep

For each state size (d_state, the rest of the shape fixed) a tiny byte-level Mamba-2 learns
passkey retrieval at the shortest training length from scratch, then is continued at each
longer length in turn (train short, then continue longer: toy-scale-notes.md), with
`harness train`'s Trainer. After each length the passkey task is run at 1x .. --factor x the
training length. A (state size, length) has learned retrieval when the accuracy at 1x is at
least --threshold, and collapses when it has but the accuracy at the longest length is
below it; T_forget(state size) is the shortest learned length that does not collapse. A line
T_forget = a * N_S + b is fitted over the state sizes that have one (paper-notes section 4).
Writes sweep.parquet (one row per evaluation), fit.parquet, and fit.png.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from harness.models.loading import load, resolve
from harness.models.tokenizer import byte_tokenizer
from harness.train.data import parse_mixture
from harness.train.loop import TrainConfig, Trainer
from harness.train.models import Shape, Trainable, build
from harness.train.models import load as load_trainable
from tasks.base import TaskOptions
from tasks.passkey import Passkey


def ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def train(model: Trainable, length: int, out: Path, args: argparse.Namespace) -> None:
    tokenizer = model.tokenizer

    def encode(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False)

    data = parse_mixture(["passkey@1", *args.data], encode, tokenizer.eos_token_id)
    config = TrainConfig(
        out=out,
        steps=args.steps,
        batch_size=args.batch_size,
        segment_length=length,
        segments=1,
        lr=args.lr,
        min_lr=0.0,
        warmup=max(1, args.steps // 10),
        decay=0.2,
        weight_decay=0.1,
        clip=1.0,
        seed=args.seed,
        save_every=args.steps,
    )
    Trainer(model, data, config, meta={"sweep": "bench/toy_sweep.py"}).run(resume=False)


def accuracy_by_length(path: Path, lengths: list[int], args: argparse.Namespace) -> list[float]:
    model = load(resolve(str(path)), "cpu", torch.float32, "torch")
    task = Passkey(TaskOptions(lengths=tuple(lengths), samples=args.samples, seed=args.seed))
    out = []
    for params in task.units():
        rows = task.run(model, params, progress=lambda n: None)
        out.append(sum(r["correct"] for r in rows) / len(rows))
    return out


def sweep(args: argparse.Namespace) -> list[dict]:
    rows = []
    for d_state in args.d_states:
        model = build(
            "mamba2",
            Shape(args.d_model, args.n_layer, d_state, args.headdim),
            byte_tokenizer(),
            args.seed,
        )
        for length in sorted(args.lengths):
            run_dir = args.out / "runs" / f"n{d_state}-t{length}"
            train(model, length, run_dir, args)
            evals = [length * f for f in (1, 2, 4, args.factor)]
            accuracies = accuracy_by_length(run_dir, evals, args)
            learned = accuracies[0] >= args.threshold
            collapsed = learned and accuracies[-1] < args.threshold
            for eval_length, accuracy in zip(evals, accuracies, strict=True):
                rows.append(
                    {
                        "d_state": d_state,
                        "state_size": model.state_size,
                        "train_length": length,
                        "eval_length": eval_length,
                        "accuracy": accuracy,
                        "learned": learned,
                        "collapsed": collapsed,
                    }
                )
            model = load_trainable(str(run_dir))
    return rows


def fit(rows: list[dict]) -> list[dict]:
    """T_forget per state size (None where no length was learned without collapse), and the
    linear fit over the sizes that have one."""
    by_size: dict[int, list[int]] = {}
    for row in rows:
        lengths = by_size.setdefault(row["state_size"], [])
        if row["learned"] and not row["collapsed"]:
            lengths.append(row["train_length"])
    points = [(size, min(ls) if ls else None) for size, ls in sorted(by_size.items())]
    known = [(s, t) for s, t in points if t is not None]
    slope = intercept = None
    if len(known) >= 2:
        x = torch.tensor([s for s, _ in known], dtype=torch.float64)
        y = torch.tensor([t for _, t in known], dtype=torch.float64)
        design = torch.stack([x, torch.ones_like(x)], 1)
        slope, intercept = torch.linalg.lstsq(design, y[:, None]).solution.flatten().tolist()
    return [
        {"state_size": s, "t_forget": t, "fit_slope": slope, "fit_intercept": intercept}
        for s, t in points
    ]


def plot(fits: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    known = [f for f in fits if f["t_forget"] is not None]
    ax.plot([f["state_size"] for f in known], [f["t_forget"] for f in known], "o")
    if known and known[0]["fit_slope"] is not None:
        xs = [f["state_size"] for f in fits]
        ax.plot(xs, [known[0]["fit_slope"] * x + known[0]["fit_intercept"] for x in xs], "-")
    ax.set_xlabel("state size N_S (elements)")
    ax.set_ylabel("shortest training length without collapse")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-states", type=ints, default=[16, 32, 64])
    parser.add_argument("--lengths", type=ints, default=[320, 640, 1280])
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--n-layer", type=int, default=2)
    parser.add_argument("--headdim", type=int, default=16)
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps per length")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--data", action="append", default=[], help="extra --data specs")
    parser.add_argument("--samples", type=int, default=8, help="passkey samples per length")
    parser.add_argument("--factor", type=int, default=8, help="longest eval / train length")
    parser.add_argument("--threshold", type=float, default=0.5, help="accuracy: no collapse")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("results/reference/toy_sweep"))
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    rows = sweep(args)
    fits = fit(rows)
    pq.write_table(pa.Table.from_pylist(rows), args.out / "sweep.parquet")
    pq.write_table(pa.Table.from_pylist(fits), args.out / "fit.parquet")
    plot(fits, args.out / "fit.png")
    for row in fits:
        print(row)


if __name__ == "__main__":
    main()
