"""Toy-scale state capacity: the shortest training length without collapse, per state size.

    python bench/toy_sweep.py --text ../shared/data/gutenberg --out results/reference/toy_sweep

1. Train. For each state size (d_state; d_model, layers and headdim fixed) a tiny byte-level
   Mamba-2 is trained from scratch at the shortest --lengths, then continued at each longer
   one in turn (train short, then continue longer: toy-scale-notes.md), on public-domain
   text mixed with passkey samples, with `harness train`'s Trainer. Checkpoints go to
   OUT/checkpoints/mamba2-n{d_state}-t{length}; state sizes train in --jobs processes.
   An interrupted sweep resumes: finished checkpoints are kept, an unfinished one continues
   from its last save.
2. Evaluate. One `harness run` over every checkpoint, tasks state-capacity (collapse length
   of the loss on the --loss-source prompt, recall length of passkey retrieval) and passkey
   (key log-probability), written to OUT/results in the project's result layout; the run
   adds the T_forget and T_recall fits across state sizes (model=_combined rows).
3. Plot. OUT/fit.png: the toy grid (collapse or not per state size and training length,
   T_forget and its fit), the paper's points and fit beside it, and the key log-probability
   by length that shows each model's retrieval cliff.

The default grid took 50 minutes on a 2-core CPU; results/reference/toy_sweep/README.md
says what it shows.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import matplotlib
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from matplotlib.axes import Axes

from harness import results
from harness.cli import main as harness_main
from harness.models.loading import pick_device
from harness.models.tokenizer import byte_tokenizer, encoder
from harness.train.data import parse_mixture
from harness.train.loop import SUMMARY_FILE, TrainConfig, Trainer
from harness.train.models import Shape, Trainable, build
from harness.train.models import load as load_trainable
from tasks.detect import K_TOKENS, PAPER_FORGET, paper_millions

# paper-notes.md section 4: (N_S in the paper's M elements, min. training length without
# state collapse in K tokens), the paper's five Mamba-2 models.
PAPER_FORGET_POINTS = [(1.1, 1), (1.6, 2), (2.4, 8), (4.8, 16), (12.9, 64)]
CHANCE_KEY_LOGPROB = 5 * math.log(0.1)  # five uniformly guessed digits


def ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def checkpoint_dir(out: Path, d_state: int, length: int) -> Path:
    return out / "checkpoints" / f"mamba2-n{d_state}-t{length}"


def finished(path: Path, steps: int) -> bool:
    """A stage already trained to `steps`: skipped, so its training.json (wall time) stays."""
    summary = path / SUMMARY_FILE
    return summary.exists() and json.loads(summary.read_text())["settings"]["steps"] == steps


def train_stage(
    model: Trainable, length: int, steps: int, path: Path, args: argparse.Namespace
) -> None:
    """Train `model` at `length` for `steps` into `path`, continuing a saved run there."""
    if finished(path, steps):
        return
    specs = [f"text:{args.text}@{1 - args.passkey_ratio}", f"passkey@{args.passkey_ratio}"]
    tokenizer = model.tokenizer
    data = parse_mixture(specs, encoder(tokenizer), tokenizer.eos_token_id, passkey_loss="keys")
    config = TrainConfig(
        out=path,
        steps=steps,
        batch_size=args.batch_size,
        segment_length=length,
        segments=1,
        lr=args.lr,
        min_lr=0.0,
        warmup=max(1, steps // 10),
        decay=0.2,
        weight_decay=0.1,
        clip=1.0,
        seed=args.seed,
        save_every=max(1, steps // 4),
        device=args.device,
    )
    Trainer(model, data, config, meta={"sweep": "bench/toy_sweep.py"}).run(resume=True)


def train_chain(d_state: int, args: argparse.Namespace) -> list[Path]:
    """One state size: from scratch at the shortest length, continued at each longer one."""
    torch.set_num_threads(args.threads)
    shape = Shape(args.d_model, args.n_layer, d_state, args.headdim)
    model = build("mamba2", shape, byte_tokenizer(), args.seed)
    paths = []
    for i, length in enumerate(sorted(args.lengths)):
        path = checkpoint_dir(args.out, d_state, length)
        train_stage(model, length, args.first_steps if i == 0 else args.steps, path, args)
        model = load_trainable(str(path))
        paths.append(path)
    return paths


def eval_lengths(train_lengths: list[int], factor: int) -> list[int]:
    """Every training length times 1, 2, 4 ... factor."""
    doublings = int(math.log2(factor))
    return sorted({t * 2**k for t in train_lengths for k in range(doublings + 1)})


def evaluate(paths: list[Path], args: argparse.Namespace) -> None:
    lengths = eval_lengths(args.lengths, args.factor)
    code = harness_main(
        [
            "run",
            "--models",
            ",".join(str(p) for p in paths),
            "--tasks",
            "state-capacity,passkey",
            "--lengths",
            ",".join(map(str, lengths)),
            "--samples",
            str(args.samples),
            "--seed",
            str(args.seed),
            "--device",
            args.device,
            "--option",
            f"state-capacity.loss_length={max(lengths)}",
            "--option",
            f"state-capacity.source={args.loss_source}",
            "--option",
            "state-capacity.bucket=64",
            "--option",
            f"state-capacity.recall_threshold={args.recall_threshold}",
            "--out",
            str(args.out / "results"),
        ]
    )
    if code != 0:
        raise SystemExit(f"harness run failed (exit {code}); see the failed units above")


def write_training_table(paths: list[Path], out: Path) -> Path:
    """OUT/training.parquet: per checkpoint, its size, steps, tokens, time and final losses."""
    rows = []
    for path in paths:
        summary = json.loads((path / SUMMARY_FILE).read_text())
        by_source = summary["final_loss_by_source"]
        rows.append(
            {
                "model": path.name,
                "state_size": summary["state_size"],
                "train_context": summary["train_context"],
                "params": summary["params"],
                "steps": summary["settings"]["steps"],
                "tokens": summary["tokens"],
                "wall_seconds": summary["wall_seconds_last_session"],
                "final_loss": summary["final_loss"],
                "final_passkey_loss": by_source.get("passkey"),
                "final_text_loss": next(
                    (v for k, v in by_source.items() if k.startswith("text:")), None
                ),
            }
        )
    path = out / "training.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def capacity_rows(out: Path) -> tuple[list[dict], dict]:
    """The state_capacity table: its model rows by (state size, length), and the forget fit."""
    rows = results.read_table(out / "results", "state_capacity").to_pylist()
    models = [r for r in rows if r["kind"] == "model"]
    [forget] = [r for r in rows if r["kind"] == "fit-forget"]
    return sorted(models, key=lambda r: (r["state_size"], r["train_context"])), forget


def key_logprob_curves(out: Path) -> dict[str, tuple[list[int], list[float]]]:
    """model -> (lengths, mean key log-probability per length)."""
    table = results.read_table(out / "results", "passkey")
    table = table.filter(pc.equal(table["status"], "ok"))
    means = table.group_by(["model", "length"]).aggregate([("key_logprob", "mean")])
    curves: dict[str, tuple[list[int], list[float]]] = {}
    for row in sorted(means.to_pylist(), key=lambda r: (r["model"], r["length"])):
        lengths, values = curves.setdefault(row["model"], ([], []))
        lengths.append(row["length"])
        values.append(row["key_logprob_mean"])
    return curves


def plot_grid(ax: Axes, rows: list[dict], forget: dict) -> None:
    """Collapse or not per (state size, training length), T_forget per size and its fit."""
    for row in rows:
        collapsed = row["collapse_length"] is not None
        ax.plot(
            row["state_size"] / 1e3,
            row["train_context"],
            "x" if collapsed else "o",
            color="tab:red" if collapsed else "tab:green",
        )
    sizes = sorted({r["state_size"] for r in rows})
    if not any(r["collapse_length"] is not None for r in rows):
        fit = "no collapse anywhere: T_forget <= the shortest length at every size"
    elif forget["fit_a"] is not None:
        a, b = forget["fit_a"], forget["fit_b"]
        line = [K_TOKENS * (a * paper_millions(s) + b) for s in sizes]
        ax.plot([s / 1e3 for s in sizes], line, "-", color="tab:blue")
        fit = f"fit T_forget = {a:.3g} N_S {b:+.3g} (K, M), R^2 {forget['fit_r2']:.2f}"
    else:
        fit = f"no T_forget fit: {forget['fit_note']}"
    lengths = sorted({r["train_context"] for r in rows})
    ax.set_yscale("log", base=2)
    ax.set_yticks(lengths, [str(n) for n in lengths])
    ax.set(
        xlabel="state size (K elements)",
        ylabel="training length (tokens)",
        title=f"toy scale: o no collapse, x collapse\n{fit}",
    )


def plot_paper(ax: Axes) -> None:
    """The paper's five models and its fit (paper-notes.md section 4)."""
    xs = [n for n, _ in PAPER_FORGET_POINTS]
    ax.plot(xs, [t for _, t in PAPER_FORGET_POINTS], "o", color="tab:green")
    ax.plot(xs, [PAPER_FORGET["a"] * x + PAPER_FORGET["b"] for x in xs], "-", color="tab:blue")
    ax.set(
        xlabel="state size N_S (M elements)",
        ylabel="min. training length without collapse (K)",
        title=f"paper: T_forget = {PAPER_FORGET['a']} N_S {PAPER_FORGET['b']:+}",
    )


def plot_keys(ax: Axes, rows: list[dict], curves: dict[str, tuple[list[int], list[float]]]) -> None:
    """Mean key log-probability against prompt length / training length, per model."""
    sizes = sorted({r["state_size"] for r in rows})
    lengths = sorted({r["train_context"] for r in rows})
    colors = matplotlib.colormaps["viridis"]
    styles = ["-", "--", "-.", ":"]
    for row in rows:
        prompt_lengths, values = curves[row["model"]]
        ax.plot(
            [n / row["train_context"] for n in prompt_lengths],
            values,
            styles[lengths.index(row["train_context"]) % len(styles)],
            color=colors(sizes.index(row["state_size"]) / max(1, len(sizes) - 1)),
            label=f"{row['state_size'] // 1024}K state, T={row['train_context']}",
        )
    ax.axhline(CHANCE_KEY_LOGPROB, color="grey", lw=0.8)
    ax.set(
        xscale="log",
        xlabel="prompt length / training length",
        ylabel="mean key log-probability (grey: chance)",
        title="passkey beyond the training length",
    )
    ax.legend(fontsize=6, ncol=2)


def plot(out: Path) -> Path:
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, forget = capacity_rows(out)
    fig, (grid, paper, keys) = plt.subplots(1, 3, figsize=(16, 4.5))
    plot_grid(grid, rows, forget)
    plot_paper(paper)
    plot_keys(keys, rows, key_logprob_curves(out))
    fig.tight_layout()
    path = out / "fit.png"
    fig.savefig(path, dpi=120)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text", type=Path, required=True, help="public-domain .txt file/dir")
    parser.add_argument("--d-states", type=ints, default=[16, 64, 128, 256])
    parser.add_argument("--lengths", type=ints, default=[320, 640, 1280, 2560])
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--n-layer", type=int, default=2)
    parser.add_argument("--headdim", type=int, default=16)
    parser.add_argument("--first-steps", type=int, default=1200, help="steps from scratch")
    parser.add_argument("--steps", type=int, default=200, help="steps per continuation")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--passkey-ratio", type=float, default=0.7)
    parser.add_argument("--samples", type=int, default=8, help="passkey samples per length")
    parser.add_argument("--factor", type=int, default=8, help="longest eval / training length")
    parser.add_argument("--loss-source", default="newlines", help="state-capacity source")
    parser.add_argument("--recall-threshold", type=float, default=0.5)
    parser.add_argument("--jobs", type=int, default=2, help="state sizes trained at once")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("results/reference/toy_sweep"))
    args = parser.parse_args()
    if not args.text.exists():
        parser.error(f"--text {args.text} does not exist: give a .txt file or a folder of them")
    args.threads = max(1, (os.cpu_count() or 1) // args.jobs)
    args.device = pick_device(args.device)

    sizes = sorted(args.d_states, reverse=True)  # the slowest first: better packing
    with ProcessPoolExecutor(args.jobs) as pool:
        chains = dict(zip(sizes, pool.map(train_chain, sizes, [args] * len(sizes)), strict=True))
    torch.set_num_threads(os.cpu_count() or 1)
    paths = [p for d in sorted(chains) for p in chains[d]]
    print(f"training: {write_training_table(paths, args.out)}")
    evaluate(paths, args)
    print(f"figure: {plot(args.out)}")


if __name__ == "__main__":
    main()
