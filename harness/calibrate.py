"""`harness calibrate`: one dt or A scale per layer that minimises the loss at a target length.

MambaExtend (Azizi et al., ICLR 2025) calibrates per-layer scaling factors of dt on a few
samples of the target length, training-free, by zeroth-order optimisation; Mamba Modulation
scales A per layer. Here, for a Mamba-2 and L tokens of calibration text:

    minimise  f(theta) = mean NLL of the L tokens with s_l = exp(theta_l) applied in layer l
              (dt-scale: dt <- s_l dt; a-scale: A <- s_l A; the harness's own mitigations)

- `zo` (MambaExtend's way): simultaneous-perturbation (SPSA) steps: a random +-1 direction D,
  g = (f(theta + c D) - f(theta - c D)) / (2 c) D, theta <- theta - a g, with the standard
  gains a_k = lr / (k + 1)^0.602, c_k = delta / (k + 1)^0.101; the best point evaluated wins.
- `grad`: the engine is differentiable, so Adam on theta with the exact gradient of f.

dt-scale starts from the uniform form s = min(1, T / L) (MambaExtend's), a-scale from s = 1.
The result is the JSON that `dt-scale:file=` / `a-scale:file=` read ({"scales": [...]}), with
the calibration's provenance beside the scales. Deterministic given the seed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from harness.settings import PATH

if TYPE_CHECKING:
    import torch

    from harness.mitigations.scale import LayerScale
    from harness.models.base import LanguageModel
    from harness.models.loading import ModelSource
    from harness.models.recurrence import Hooks
    from tasks.sources import Source

Loss = Callable[["torch.Tensor"], float]  # f(theta): the mean loss at scales exp(theta)
Progress = Callable[[float], None]  # told the best loss after each step
METHODS = ("zo", "grad")
KINDS = ("dt-scale", "a-scale")


@dataclass(frozen=True)
class CalibrationConfig:
    model: str  # what --model named (catalog name, bundled model, path or hub id)
    mitigation: Literal["dt-scale", "a-scale"]  # which scan input the factors scale
    length: int  # tokens of calibration text per document (the target length L)
    data: str  # the text source, as perplexity's `source` option takes it
    method: Literal["zo", "grad"] = "zo"  # zeroth-order (MambaExtend) or gradient
    steps: int = 20  # optimisation steps (zo: 2 loss evaluations each)
    lr: float = 0.5  # zo: the gain a; grad: Adam's learning rate (in log-scale units)
    delta: float = 0.1  # zo: the perturbation c, in log-scale units
    documents: int = 1  # calibration documents of `length` tokens
    chunk: int = 2048  # tokens per forward call (the state is carried exactly)
    seed: int = 0  # the perturbation directions


@dataclass
class CalibrationResult:
    scales: list[float]  # s_l per layer, what the mitigation file holds
    initial_loss: float  # mean NLL per token at the starting scales
    final_loss: float  # ... at the scales returned
    losses: list[float] = field(default_factory=list)  # f at each step's point (zo: theta)


def scale_hooks(kind: LayerScale, scales: torch.Tensor) -> Hooks:
    """Hooks applying scales[l] (a tensor, possibly requiring grad) in layer l."""
    from harness.models.recurrence import Hooks

    return Hooks(transform_inputs=lambda layer, inputs: kind.apply(inputs, scales[layer]))


def mean_loss(model: LanguageModel, docs: list[torch.Tensor], chunk: int) -> torch.Tensor:
    """Mean next-token NLL over `docs` with the model's hooks, differentiable when grad is on."""
    import torch
    import torch.nn.functional as F

    total, count = 0.0, 0
    for ids in docs:
        state, prev = model.init_state(1), None
        for start in range(0, len(ids), chunk):
            piece = ids[start : start + chunk]
            logits, state = model.forward(piece[None].to(model.device), state)
            logits = logits[0].float()
            if prev is not None:
                logits, targets = torch.cat([prev[None], logits]), piece
            else:
                targets = piece[1:]
            n = len(targets)
            total = total + F.cross_entropy(logits[:n], targets.to(logits.device), reduction="sum")
            count += n
            prev = logits[-1]
    return total / count


def calibrate(
    model: LanguageModel,
    kind: LayerScale,
    docs: list[torch.Tensor],
    config: CalibrationConfig,
    progress: Progress | None = None,
) -> CalibrationResult:
    """Per-layer scales for `model` (Mamba-2 or Mamba-1) minimising the mean loss on `docs`."""
    import torch

    from harness.mitigations.engine import layer_count, recurrent

    n_layer = layer_count(model)
    start = math.log(min(1.0, model.info.train_context / config.length))
    theta = torch.full((n_layer,), start if config.mitigation == "dt-scale" else 0.0)
    lm = recurrent(model)
    for p in lm.module.parameters():
        p.requires_grad_(False)

    def f(point: torch.Tensor) -> float:
        lm.hooks = scale_hooks(kind, point.exp())
        with torch.inference_mode():
            return float(mean_loss(lm, docs, config.chunk))

    def loss_with_grad(point: torch.Tensor) -> torch.Tensor:
        lm.hooks = scale_hooks(kind, point.exp())
        return mean_loss(lm, docs, config.chunk)

    try:
        if config.method == "zo":
            return _zo(config, theta, f, progress or _quiet)
        return _grad(config, theta, f, loss_with_grad, progress or _quiet)
    finally:
        lm.hooks = None


def _quiet(loss: float) -> None:
    """No progress report."""


def _zo(
    config: CalibrationConfig, theta: torch.Tensor, f: Loss, progress: Progress
) -> CalibrationResult:
    import torch

    g = torch.Generator().manual_seed(config.seed)
    initial = f(theta)
    best, best_loss, losses = theta.clone(), initial, []
    for k in range(config.steps):
        a = config.lr / (k + 1) ** 0.602
        c = config.delta / (k + 1) ** 0.101
        direction = torch.randint(0, 2, theta.shape, generator=g).float() * 2 - 1
        plus, minus = theta + c * direction, theta - c * direction
        f_plus, f_minus = f(plus), f(minus)
        for point, value in ((plus, f_plus), (minus, f_minus)):
            if value < best_loss:
                best, best_loss = point.clone(), value
        theta = theta - a * (f_plus - f_minus) / (2 * c) * direction
        losses.append(min(f_plus, f_minus))
        progress(best_loss)
    final = f(theta)
    if final < best_loss:
        best, best_loss = theta, final
    return CalibrationResult(best.exp().tolist(), initial, best_loss, losses)


def _grad(
    config: CalibrationConfig,
    theta: torch.Tensor,
    f: Loss,
    loss_with_grad: Callable[[torch.Tensor], torch.Tensor],
    progress: Progress,
) -> CalibrationResult:
    import torch

    initial = f(theta)
    theta = theta.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([theta], lr=config.lr)
    best, best_loss, losses = theta.detach().clone(), initial, []
    for _ in range(config.steps):
        optimizer.zero_grad()
        loss = loss_with_grad(theta)
        loss.backward()
        value = float(loss.detach())
        if value < best_loss:
            best, best_loss = theta.detach().clone(), value
        optimizer.step()
        losses.append(value)
        progress(best_loss)
    final = f(theta.detach())
    if final < best_loss:
        best, best_loss = theta.detach().clone(), final
    return CalibrationResult(best.exp().tolist(), initial, best_loss, losses)


def write(
    path: Path, result: CalibrationResult, config: CalibrationConfig, provenance: dict
) -> None:
    """The file `dt-scale:file=` / `a-scale:file=` read: the scales and how they were found."""
    record = {"scales": result.scales, "calibration": asdict(config) | provenance}
    record["calibration"] |= {
        "initial_loss": result.initial_loss,
        "final_loss": result.final_loss,
        "losses": result.losses,
    }
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", required=True, help="a Mamba-2 or Mamba-1: catalog name, folder or hub id"
    )
    parser.add_argument("--mitigation", required=True, choices=KINDS, help="which input to scale")
    parser.add_argument("--length", required=True, help="target length L in tokens: 8192, 8k")
    parser.add_argument(
        "--data", required=True, help="calibration text, as perplexity's source= (file, folder...)"
    )
    parser.add_argument("--method", default="zo", choices=METHODS, help="zo (MambaExtend) or grad")
    parser.add_argument("--steps", type=int, default=CalibrationConfig.steps)
    parser.add_argument("--documents", type=int, default=CalibrationConfig.documents)
    parser.add_argument("--seed", type=int, default=CalibrationConfig.seed)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=PATH, required=True, help="the JSON file to write")


def command(args: argparse.Namespace) -> int:
    """`harness calibrate`: check everything, calibrate with a progress bar, write the file."""
    from harness.plan import UsageError, parse_lengths, parse_models

    (length,) = _one_length(args.length, lambda text: parse_lengths(text, "length"))
    (source,) = parse_models(args.model)
    if source.family not in ("mamba1", "mamba2"):
        raise UsageError(
            f"calibrate scales the dt or A of Mamba-2 and Mamba-1; {source.name} is a "
            f"{source.family}"
        )
    for name, value in (("--steps", args.steps), ("--documents", args.documents)):
        if value < 1:
            raise UsageError(f"{name} must be at least 1, got {value}")
    if args.out.is_dir() or not args.out.parent.is_dir():
        raise UsageError(f"--out {str(args.out)!r}: give a file in an existing folder")
    config = CalibrationConfig(
        model=args.model,
        mitigation=args.mitigation,
        length=length,
        data=args.data,
        method=args.method,
        steps=args.steps,
        documents=args.documents,
        seed=args.seed,
    )
    text = _source(args.data)
    return _run(config, source, text, args.device, args.out)


def _one_length(text: str, parse: Callable[[str], tuple[int, ...]]) -> tuple[int]:
    from harness.plan import UsageError

    lengths = parse(text)
    if len(lengths) != 1 or lengths[0] < 2:
        raise UsageError(f"--length takes one length of at least 2 tokens, got {text!r}")
    return (lengths[0],)


def _source(data: str) -> Source:
    from harness.plan import UsageError
    from tasks.sources import SourceError, resolve

    try:
        return resolve(data)
    except SourceError as err:
        raise UsageError(f"--data: {err}") from None


def _run(
    config: CalibrationConfig, source: ModelSource, text: Source, device: str, out: Path
) -> int:
    import sys

    import torch
    from tqdm import tqdm

    from harness.identity import model_identity
    from harness.mitigations import parse_mitigation
    from harness.mitigations.scale import LayerScale
    from harness.models.loading import load, pick_device
    from tasks.sources import SourceError, documents

    model = load(source, pick_device(device), torch.float32, "auto")
    try:
        docs = documents(text, model.encode, config.length, config.documents, "skip", None)
    except SourceError as err:
        print(f"harness: error: --data: {err}", file=sys.stderr)
        return 2
    kind = parse_mitigation(f"{config.mitigation}:s=1")
    assert isinstance(kind, LayerScale)
    bar = tqdm(total=config.steps, desc=f"calibrating {config.mitigation}", unit="step")

    def progress(loss: float) -> None:
        bar.update(1)
        bar.set_postfix(best_loss=f"{loss:.4f}")

    with bar:
        result = calibrate(model, kind, [d.ids for d in docs], config, progress)
    provenance = {
        "model_id": model_identity(source),
        "train_context": model.info.train_context,
        "documents_used": [list(d.parts) for d in docs],
    }
    write(out, result, config, provenance)
    loss = f"loss {result.initial_loss:.4f} -> {result.final_loss:.4f}"
    print(f"{out}: {len(result.scales)} scales, {loss}", file=sys.stderr)
    return 0
