"""Every mitigation on the bundled toys at 1x-16x their training length, into the project's
own tables, with a README of what they show.

    python bench/mitigations_reference.py --out results/reference/mitigations

For each bundled recurrent model (training length T; Mamba-2, Mamba-1, RWKV-6):
1. where its family has dt and A (Mamba-2, Mamba-1), `harness calibrate` per-layer dt-scale
   and a-scale factors at 8T on the shipped Sonnets (`--calib-steps` zeroth-order steps),
   written to OUT/calibration/.
2. `harness run --tasks passkey` with those of none, rri, state-norm, window:r=T, dt-scale,
   a-scale, longmamba that apply to its family, oprm, and the calibrated files, at T, 2T, 4T,
   8T, 16T (`--samples` each);
   `harness run --tasks perplexity` on the Sonnets with the same mitigations but oprm (an
   inference strategy that loss by position cannot serve). The bundled transformer runs
   passkey with none and oprm (the only model-agnostic ones).
Tables land in OUT/results (`harness leaderboard --results OUT/results` draws them), and
OUT/README.md gets a table per bundled model with results: passkey correct/samples (mean key
log-probability) and loss beyond T, per mitigation and multiple of T. Rerunning resumes
(finished units and calibration files are kept), so `--models` can add models one by one.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pyarrow.compute as pc

from harness import results
from harness.cli import main as harness
from harness.mitigations import parse_mitigation
from harness.models.bundled import bundled_models
from harness.models.loading import resolve

MITIGATIONS = ("none", "rri", "state-norm", "window:r={T}", "dt-scale", "a-scale", "longmamba")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("results/reference/mitigations"))
    parser.add_argument("--multiples", default="1,2,4,8,16", help="lengths as multiples of T")
    parser.add_argument("--samples", type=int, default=8, help="passkey samples per length")
    parser.add_argument("--calib-steps", type=int, default=10, help="zo steps per calibration")
    parser.add_argument("--text", default="sonnets", help="calibration and perplexity text")
    parser.add_argument("--models", help="comma-separated bundled models (default: all)")
    return parser.parse_args()


def run(argv: list[str]) -> None:
    """One `harness` command, as a user types it; stop on wrong input (exit 2)."""
    print("+ harness " + " ".join(argv), flush=True)
    code = harness(argv)
    if code == 2:
        raise SystemExit(f"harness {argv[0]} refused its input (exit 2)")


def train_context(name: str) -> int:
    return int(resolve(name).config["train_context"])


def calibrate(name: str, kind: str, length: int, args: argparse.Namespace) -> Path:
    path = args.out / "calibration" / f"{name}-{kind}-{length}.json"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        steps = str(args.calib_steps)
        run(["calibrate", "--model", name, "--mitigation", kind, "--length", str(length),
             "--data", args.text, "--steps", steps, "--out", str(path)])  # fmt: skip
    return path


def evaluate(name: str, family: str, multiples: list[int], args: argparse.Namespace) -> None:
    T = train_context(name)
    lengths = ",".join(str(k * T) for k in multiples)
    table = args.out / "results"
    state = [s for m in MITIGATIONS if family in parse_mitigation(s := m.format(T=T)).families]
    if family in parse_mitigation("dt-scale").families:
        kinds = ("dt-scale", "a-scale")
        state += [f"{kind}:file={calibrate(name, kind, 8 * T, args)}" for kind in kinds]
    common = ["--models", name, "--lengths", lengths, "--out", str(table)]
    run(["run", *common, "--mitigations", ",".join([*state, "oprm"]), "--tasks", "passkey",
         "--samples", str(args.samples)])  # fmt: skip
    run(["run", *common, "--mitigations", ",".join(state), "--tasks", "perplexity",
         "--option", f"perplexity.source={args.text}"])  # fmt: skip


def cells(out: Path, model: str, T: int) -> dict[tuple[str, int], str]:
    """(mitigation, multiple) -> 'correct/n (mean key log-probability); loss beyond T'."""
    found: dict[tuple[str, int], list[str]] = {}
    passkey = results.read_table(out, "passkey").filter(pc.field("model") == model)
    for row in (
        passkey.group_by(["mitigation", "length"])
        .aggregate([("correct", "sum"), ("correct", "count"), ("key_logprob", "mean")])
        .to_pylist()
    ):
        key = (row["mitigation"], row["length"] // T)
        found.setdefault(key, []).append(
            f"{row['correct_sum']}/{row['correct_count']} ({row['key_logprob_mean']:.1f})"
        )
    ppl = results.read_table(out, "perplexity").filter(pc.field("model") == model)
    beyond = ppl.filter(pc.field("start") >= T)
    for row in (
        beyond.group_by(["mitigation", "length"]).aggregate([("mean_loss", "mean")]).to_pylist()
    ):
        key = (row["mitigation"], row["length"] // T)
        found.setdefault(key, []).append(f"loss {row['mean_loss_mean']:.2f}")
    return {key: "; ".join(parts) for key, parts in found.items()}


def write_readme(out: Path, models: list[str], multiples: list[int]) -> None:
    lines = [HEADER]
    for model in models:
        T = train_context(model)
        table = cells(out / "results", model, T)
        if not table:
            continue
        mitigations = sorted({m for m, _ in table})
        lines += [f"\n### {model} (T = {T} tokens)\n",
                  "| mitigation | " + " | ".join(f"{k}T" for k in multiples) + " |",
                  "|---|" + "---|" * len(multiples)]  # fmt: skip
        for m in mitigations:
            row = [table.get((m, k), "") for k in multiples]
            lines.append(f"| `{_short(m, out)}` | " + " | ".join(row) + " |")
    lines.append(LITERATURE)
    (out / "README.md").write_text("\n".join(lines) + "\n")


def _short(spec: str, out: Path) -> str:
    """A calibrated file's spec without the folder it was written to (results written before
    a spec named its file by name alone, as in results/reference/mitigations, have it)."""
    return spec.replace(str(out / "calibration") + "/", "")


HEADER = """# Mitigations on the bundled toys (reference results)

Made by `python bench/mitigations_reference.py --out results/reference/mitigations` (see its
docstring); the tables are the harness's own under `results/`, so
`harness leaderboard --results results/reference/mitigations/results` draws them.

Each cell: passkey correct/samples (mean log-probability of the key; chance for 5 digits is
about -11.5), then the mean loss per token past T on the text (nats; the shipped Sonnets by
default). Calibrated files (`*-dt-scale-*.json`, `*-a-scale-*.json`) were found by
`harness calibrate` at 8T."""

LITERATURE = """
## What the papers report at scale (for orientation; not reproduced here)

- Stuffed Mamba (Chen et al. 2024, arXiv 2410.07145; ../shared/docs/paper-notes.md): on the
  official Mamba-2 checkpoints, the training-free fixes (forget more / remember less, state
  normalization, sliding window by state difference) keep the loss on the newline prompt from
  exploding up to 1M tokens; the lasting fix is training beyond the state capacity (the 370m
  trained at 64K reaches near-perfect passkey accuracy at 256K).
- LongMamba (Ye et al., ICLR 2025, arXiv 2504.16053): token filtering in global channels,
  calibrated per model (official defaults c = 5e-2, calibration dt clipped at the top 5%),
  evaluated on Mamba-1/Mamba-2 (state-spaces/mamba2-1.3b in its scripts) with LongBench-E,
  RULER and PG-19 perplexity beyond the training length.
- MambaExtend (Azizi et al., ICLR 2025): per-layer dt scaling factors calibrated by
  zeroth-order optimisation on a few target-length samples, training-free.
- Mamba Modulation (Lu et al. 2025, arXiv 2509.19633): per-layer scaling of A's spectrum,
  which changes the decay and not the input gain dt B.
- OPRM (Ben-Kish et al. 2025, arXiv 2505.07793): chunked speculative prefill and
  lowest-entropy chunk selection; gains on LongBench for Falcon-Mamba, RecurrentGemma and
  RWKV-6.
"""


def main() -> None:
    args = parse_args()
    multiples = [int(k) for k in args.multiples.split(",")]
    bundled = list(args.models.split(",")) if args.models else list(bundled_models())
    for name in bundled:
        family = resolve(name).family
        if family != "transformer":
            evaluate(name, family, multiples, args)
    for name in (m for m in bundled if resolve(m).family == "transformer"):
        T = train_context(name)
        run(["run", "--models", name, "--mitigations", "none,oprm", "--tasks", "passkey",
             "--lengths", ",".join(str(k * T) for k in multiples), "--samples", str(args.samples),
             "--out", str(args.out / "results")])  # fmt: skip
    write_readme(args.out, list(bundled_models()), multiples)
    print(f"wrote {args.out / 'README.md'}")


if __name__ == "__main__":
    main()
