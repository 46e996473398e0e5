"""`harness train`: its arguments, and the command that checks them and runs the trainer."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from harness.settings import FLOAT, INT, PATH
from harness.train.models import FAMILIES, SHAPE_FIELDS, Shape, Trainable, build, load

if TYPE_CHECKING:
    from harness.models.tokenizer import TextCodec
    from harness.train.loop import Trainer

EXAMPLE = (
    "harness train --model mamba2 --data text:books/@0.5 --data passkey@0.5 "
    "--segment-length 512 --segments 1 --steps 600 --out runs/m2-512"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Train a Mamba-2, Mamba-1, RWKV-6 or GPT-NeoX model from scratch, or continue a "
        "checkpoint, on samples "
        "of --segments x --segment-length tokens with the state carried between segments "
        f"and detached (TBPTT). Example: {EXAMPLE}"
    )
    what = parser.add_argument_group("model and data")
    what.add_argument(
        "--model",
        required=True,
        help=f"a family to train from scratch ({', '.join(FAMILIES)}) or a checkpoint to "
        "continue (local dir, catalog name, hub id)",
    )
    what.add_argument(
        "--data",
        action="append",
        required=True,
        metavar="SPEC",
        help="repeatable: text:PATH (file or dir of *.txt), hf:NAME[:CONFIG]:SPLIT, or "
        "passkey; each optionally @RATIO (relative weight), e.g. --data text:books@0.7",
    )
    what.add_argument(
        "--passkey-loss",
        choices=["answer", "keys", "all"],
        default="answer",
        help="passkey samples: loss on the answer tokens only (default), also on the needle's "
        "repeated key (keys: a short copy that makes retrieval learnable sooner), or on all",
    )
    what.add_argument("--out", type=PATH, required=True, help="run directory (the checkpoint)")
    what.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    what.add_argument(
        "--tokenizer",
        type=Path,
        help="from scratch: a tokenizer dir or tokenizer.json (default: 256 bytes + EOS)",
    )

    shape = parser.add_argument_group(
        "shape, when training from scratch (each family takes only its own flags)"
    )
    defaults = Shape()
    for name, help_text in [
        ("d_model", f"width (default {defaults.d_model})"),
        ("n_layer", f"layers (default {defaults.n_layer})"),
        ("d_state", "state dimension N of Mamba-2 (default 128) and Mamba-1 (default 16)"),
        ("headdim", f"Mamba-2 head dimension P (default {defaults.headdim})"),
        ("n_head", f"GPT-NeoX attention heads (default {defaults.n_head})"),
        ("d_ff", "MLP width: GPT-NeoX (default 256), RWKV-6 channel mix (default 3.5 x d_model)"),
        ("head_size", f"RWKV-6 head size, dividing d_model (default {defaults.head_size})"),
        ("d_mix", f"RWKV-6 rank of the token-shift mixing LoRA (default {defaults.d_mix})"),
        ("d_decay", f"RWKV-6 rank of the decay LoRA (default {defaults.d_decay})"),
    ]:
        flag = "--" + name.replace("_", "-")
        shape.add_argument(flag, type=INT, help=help_text)

    run = parser.add_argument_group("optimisation")
    run.add_argument("--segment-length", type=INT, default=512, help="T: tokens per segment")
    run.add_argument("--segments", type=INT, default=1, help="P: segments chained per sample")
    run.add_argument("--steps", type=INT, default=1000, help="optimizer steps")
    run.add_argument("--batch-size", type=INT, default=16, help="samples per step")
    run.add_argument("--lr", type=FLOAT, default=2e-3, help="peak learning rate")
    run.add_argument("--min-lr", type=FLOAT, default=0.0, help="rate at the end of the decay")
    run.add_argument("--warmup", type=INT, default=100, help="warmup steps")
    run.add_argument("--decay", type=FLOAT, default=0.2, help="fraction of steps decaying")
    run.add_argument("--weight-decay", type=FLOAT, default=0.1)
    run.add_argument("--clip", type=FLOAT, default=1.0, help="gradient norm clip")
    run.add_argument("--seed", type=INT, default=0, help="weights and data order")
    run.add_argument("--save-every", type=INT, default=100, help="steps between checkpoints")
    run.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")


def command(args: argparse.Namespace) -> int:
    """Run `harness train`: exit status 2 on wrong input, 1 when training fails, 130 when
    interrupted, each with one line naming the problem; 0 when done."""
    from harness.train.checkpoint import ResumeError

    try:
        trainer = _trainer(args)
    except (ValueError, OSError) as err:  # DataError, ModelError, ResumeError, unreadable files
        print(f"harness train: error: {err}", file=sys.stderr)
        return 2
    try:
        summary = trainer.run(resume=args.resume)
    except ResumeError as err:  # the saved run does not fit the one asked for: wrong input
        print(f"harness train: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"harness train: interrupted; rerun with --resume to continue from the last "
            f"checkpoint in {args.out}",
            file=sys.stderr,
        )
        return 130
    except Exception as err:  # anything while training (a failed write, out of memory, ...)
        print(
            f"harness train: failed while training: {type(err).__name__}: {err} "
            f"(checkpoints so far are in {args.out}; rerun with --resume to continue)",
            file=sys.stderr,
        )
        return 1
    print(
        f"trained {summary['params']:,} parameters for {args.steps} steps; final loss "
        f"{summary['final_loss']:.4f} {summary['final_loss_by_source']}; saved to {args.out}"
    )
    return 0


def _trainer(args: argparse.Namespace) -> Trainer:
    """The trainer the arguments ask for, every input checked (ValueError subclasses)."""
    from harness.models.loading import pick_device
    from harness.models.tokenizer import encoder
    from harness.plan import check_out_dir
    from harness.train.checkpoint import ResumeError, has_state
    from harness.train.data import parse_mixture
    from harness.train.loop import TrainConfig, Trainer

    _check_numbers(args)
    check_out_dir(args.out)
    device = pick_device(args.device)
    if has_state(args.out) and not args.resume:
        raise ResumeError(
            f"{args.out} holds a training run; pass --resume to continue it or choose another --out"
        )
    model = _model(args)
    data = parse_mixture(
        args.data, encoder(model.tokenizer), model.tokenizer.eos_token_id, args.passkey_loss
    )
    config = TrainConfig(
        out=args.out,
        steps=args.steps,
        batch_size=args.batch_size,
        segment_length=args.segment_length,
        segments=args.segments,
        lr=args.lr,
        min_lr=args.min_lr,
        warmup=args.warmup,
        decay=args.decay,
        weight_decay=args.weight_decay,
        clip=args.clip,
        seed=args.seed,
        save_every=args.save_every,
        device=device,
    )
    meta = {
        "command": "harness train " + shlex.join(sys.argv[2:]),
        "data": args.data,
        "passkey_loss": args.passkey_loss,
    }
    return Trainer(model, data, config, meta)


def _check_numbers(args: argparse.Namespace) -> None:
    positive = ("segment_length", "segments", "steps", "batch_size", "save_every")
    for name in positive:
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
    if not args.lr > 0 or args.min_lr < 0 or args.weight_decay < 0 or not args.clip > 0:
        raise ValueError("--lr and --clip must be > 0, --min-lr and --weight-decay >= 0")


def _model(args: argparse.Namespace) -> Trainable:
    given = {
        field.name: getattr(args, field.name)
        for field in dataclasses.fields(Shape)
        if getattr(args, field.name) is not None
    }
    flags = ", ".join("--" + name.replace("_", "-") for name in given)
    if args.model not in FAMILIES:
        if given:
            raise ValueError(
                f"{flags}: shape flags apply when training from scratch; --model {args.model} "
                "continues a checkpoint with its own shape"
            )
        return load(args.model)
    own = SHAPE_FIELDS[args.model]
    foreign = [name for name in given if name not in own]
    if foreign:
        wrong = ", ".join("--" + name.replace("_", "-") for name in foreign)
        allowed = ", ".join("--" + name.replace("_", "-") for name in own)
        raise ValueError(f"{wrong}: not a {args.model} shape flag; {args.model} takes {allowed}")
    if any(value < 1 for value in given.values()):
        raise ValueError(f"{flags}: shape sizes must be at least 1")
    return build(args.model, Shape(**given), _tokenizer(args.tokenizer), args.seed)


def _tokenizer(path: Path | None) -> TextCodec:
    from harness.models.tokenizer import EOS, TextTokenizer, byte_tokenizer, load_tokenizer

    if path is None:
        return byte_tokenizer()
    if not path.exists():
        raise ValueError(f"tokenizer {str(path)!r} does not exist")
    if path.is_file():
        tokenizer: TextCodec = TextTokenizer.from_file(path, eos_token=EOS)
    else:
        tokenizer = load_tokenizer(path, str(path))
    if tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer {str(path)!r} has no end-of-text token ({EOS})")
    return tokenizer
