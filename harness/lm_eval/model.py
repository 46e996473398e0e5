"""The harness's models as the lm-eval model `harness`.

    --model harness --model_args model=<ref>,mitigation=<spec>,device=<d>,dtype=<t>,backend=<b>

- `model`: what `harness run --models` takes: a built-in tiny model, a catalog name
  (mamba2-370m, pythia-410m...), a local checkpoint directory or a hub id;
- `mitigation`: a mitigation spec as in `harness run --mitigations` (default `none`),
  refused for a model family it does not apply to;
- `device`: auto | cpu | cuda | cuda:N (default: lm-eval's `--device`, else auto); a CUDA
  device on a machine without CUDA falls back to the CPU with a warning, as lm-eval's `hf`
  backend does with its default `cuda:0`;
- `dtype`: float32 | bfloat16; `backend`: the Mamba-2 scan backend, auto | torch | triton;
- `chunk`: tokens per forward call when streaming long inputs (default 2048).

Nothing is truncated: contexts of any length stream through the model in chunks with the
state carried exactly (the model interface's `prefill` / `token_losses`), so a request
longer than the training context is evaluated, not cut. `loglikelihood_rolling` scores every
token of a text after the end-of-text token (the sum of `token_losses`); `generate_until`
decodes greedily up to `max_gen_toks` (default 256), stopping at end of text or before the
first `until` sequence, and refuses sampling settings. Requests run one at a time
(`batch_size` is accepted and ignored); consecutive `loglikelihood` requests with one context
prefill it once.

lm-eval's `--model_args` win over its other settings (its `--device` defaults to cuda:0).
Under `accelerate launch` / torchrun the model reports its rank and world size, so lm-eval
splits the requests between the processes (harness.lm_eval.distributed); a CUDA device is
then each process's own GPU, cuda:LOCAL_RANK.
From Python, `HarnessLM(model=<loaded LanguageModel>)` wraps a model already loaded, for
`lm_eval.simple_evaluate(model=...)`. lm-eval only sees this model once this module is
imported: `harness-lm-eval` (`harness.lm_eval.console`) does that for its command line.
"""

from __future__ import annotations

import logging
from typing import Any

import lm_eval.models  # noqa: F401 - lm-eval's own models, which it registers only into an empty registry
import torch
import torch.nn.functional as F
from lm_eval.api.instance import Instance
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import simple_parse_args_string
from tqdm import tqdm

from harness.lm_eval import distributed, prompt_parts
from harness.mitigations.base import Mitigation
from harness.models.base import LanguageModel, State
from harness.models.loading import load, pick_device, resolve
from harness.plan import parse_mitigation
from harness.runner import DTYPES

log = logging.getLogger(__name__)

DEFAULT_MAX_GEN_TOKS = 256


class ModelArgsError(ValueError):
    """A `--model_args` value of the harness model that cannot be used."""


class StrategyNotSupported(ModelArgsError):
    """A scoring request under an inference strategy (oprm), which serves generation only."""


class SamplingNotSupported(ValueError):
    """A generation request asked for sampling; the harness model decodes greedily."""


@register_model("harness")
class HarnessLM(TemplateLM):
    def __init__(
        self,
        model: str | LanguageModel,
        mitigation: str | None = "none",
        device: str | None = None,
        dtype: str = "float32",
        backend: str = "auto",
        chunk: int = 2048,
        batch_size: int | str | None = None,
        max_batch_size: int | None = None,
    ) -> None:
        """`model` is a reference to load, or a loaded LanguageModel used as it is (then
        `device`, `dtype` and `backend` are its own). `mitigation` None keeps the hooks a
        loaded model already has (`harness run` installed the unit's mitigation)."""
        super().__init__()
        ranks = distributed.from_env()
        self._rank, self._world_size = ranks.rank, ranks.world_size
        if not isinstance(chunk, int) or chunk < 1:
            raise ModelArgsError(f"chunk={chunk!r}: give a positive number of tokens")
        self.chunk = chunk
        self.mitigation: Mitigation | None = None  # None: the loaded model's hooks, kept
        if mitigation is None:
            if not isinstance(model, LanguageModel):
                raise ModelArgsError("mitigation=None keeps a loaded model's hooks: pass a model")
            self.lm = model
        else:
            self._install(model, parse_mitigation(str(mitigation)), device, dtype, backend, ranks)
        self._device = self.lm.device
        distributed.join(ranks, str(self._device))

    def _install(
        self,
        model: str | LanguageModel,
        mitigation: Mitigation,
        device: str | None,
        dtype: str,
        backend: str,
        ranks: distributed.Ranks,
    ) -> None:
        """The model, loaded unless given, with the mitigation's hooks installed."""
        self.mitigation = mitigation
        if isinstance(model, LanguageModel):
            self.lm = model
        else:
            self.lm = _load(str(model), mitigation, device, dtype, backend, ranks)
        _check_applies(mitigation, self.lm.info.family, self.lm.info.name)
        self.lm.hooks = mitigation.hooks(self.lm)
        self.lm.strategy = mitigation.strategy()
        log.info("%s with %s: %s", self.lm.info.name, mitigation.spec, mitigation.artifacts())

    @classmethod
    def create_from_arg_string(
        cls, arg_string: str, additional_config: dict[str, Any] | None = None
    ) -> HarnessLM:
        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(
        cls, arg_dict: dict[str, Any], additional_config: dict[str, Any] | None = None
    ) -> HarnessLM:
        """`--model_args` win over lm-eval's own settings (its `--device` defaults to cuda:0)."""
        given = {k: v for k, v in (additional_config or {}).items() if v is not None}
        return cls(**{**given, **arg_dict})

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        return distributed.all_gather(tensor) if self.world_size > 1 else tensor

    def gather_object(self, obj: Any, dst: int = 0) -> list[Any] | None:
        return distributed.gather_object(obj, dst) if self.world_size > 1 else [obj]

    def barrier(self) -> None:
        if self.world_size > 1:
            distributed.barrier()

    @property
    def eot_token_id(self) -> int:
        if self.lm.eos_token_id is None:
            raise ModelArgsError(
                f"{self.lm.info.name} has no end-of-text token, which lm-eval uses to condition "
                "the first token of a text with no context"
            )
        return self.lm.eos_token_id

    def tok_encode(
        self, string: str, add_special_tokens: bool | None = None, **kwargs: Any
    ) -> list[int]:
        return self.lm.encode(string)

    def _loglikelihood_tokens(
        self,
        requests: list[tuple[tuple[str, str], list[int], list[int]]],
        disable_tqdm: bool = False,
        **kwargs: Any,
    ) -> list[tuple[float, bool]]:
        """Each context prefilled once for consecutive requests that share it."""
        self._whole_sequences("loglikelihood")
        results: list[tuple[float, bool]] = []
        prefilled: tuple[list[int], torch.Tensor, State] | None = None
        for args, context, continuation in tqdm(requests, disable=disable_tqdm):
            if prefilled is None or prefilled[0] != context:
                prefilled = (context, *self.lm.prefill(context, self.chunk))
            _, logits, state = prefilled
            result = self._continuation(logits, state.clone(), continuation)
            self.cache_hook.add_partial("loglikelihood", args, result)
            results.append(result)
        return results

    @torch.inference_mode()
    def _continuation(
        self, logits: torch.Tensor, state: State, continuation: list[int]
    ) -> tuple[float, bool]:
        """(sum of log p(continuation | context), whether greedy decoding gives it), chunked."""
        total, greedy = 0.0, True
        for start in range(0, len(continuation), self.chunk):
            piece = torch.as_tensor(continuation[start : start + self.chunk], device=self._device)
            out, state = self.lm.forward(piece[None], state)
            predictions = torch.cat([logits[None], out[0, :-1].float()])
            logp = F.log_softmax(predictions, dim=-1)
            total += float(logp.gather(1, piece[:, None]).sum())
            greedy = greedy and bool((predictions.argmax(-1) == piece).all())
            logits = out[0, -1].float()
        return total, greedy

    def loglikelihood_rolling(
        self, requests: list[Instance], disable_tqdm: bool = False
    ) -> list[float]:
        """log p(text | end-of-text token), every token scored with all the text before it."""
        self._whole_sequences("loglikelihood_rolling")
        results = []
        for request in tqdm(requests, disable=disable_tqdm):
            (text,) = request.args
            ids = [self.prefix_token_id, *self.tok_encode(text)]
            result = -float(self.lm.token_losses(ids, chunk=self.chunk).sum())
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), result)
            results.append(result)
        return results

    def _whole_sequences(self, kind: str) -> None:
        """Refuse scoring requests under an inference strategy, which serves generation."""
        if self.lm.strategy is not None:
            raise StrategyNotSupported(
                f"{kind} requests score whole sequences; the inference strategy (oprm) reads a "
                "prompt in parts for generation only: use it with generate_until tasks"
            )

    def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
        results = []
        for request in tqdm(requests, disable=disable_tqdm):
            context, gen_kwargs = request.args
            text = self._generate(context, *_generation_settings(gen_kwargs))
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
            results.append(text)
        return results

    @torch.inference_mode()
    def _generate(self, context: str, until: list[str], max_new_tokens: int) -> str:
        """Greedy decoding after the whole context (or as the inference strategy reads its
        parts: harness.lm_eval.prompt_parts), cut before the first stop sequence."""
        if self.lm.strategy is not None:
            logits, state = self.lm.prefill_prompt(prompt_parts.split(context))
        else:
            logits, state = self.lm.prefill(
                self.tok_encode(context) or [self.prefix_token_id], self.chunk
            )
        tokens: list[int] = []
        while len(tokens) < max_new_tokens:
            token = int(logits.argmax())
            if token == self.lm.eos_token_id:
                break
            tokens.append(token)
            text = self.lm.decode(tokens)
            stop = _first_stop(text, until)
            if stop is not None:
                return text[:stop]
            out, state = self.lm.forward(torch.tensor([[token]], device=self._device), state)
            logits = out[0, -1].float()
        return self.lm.decode(tokens)


def _load(
    ref: str,
    mitigation: Mitigation,
    device: str | None,
    dtype: str,
    backend: str,
    ranks: distributed.Ranks,
) -> LanguageModel:
    """The model `ref`, once the arguments are known to fit (so a mistake costs no loading)."""
    if dtype not in DTYPES:
        raise ModelArgsError(f"dtype={dtype!r}: choose one of {', '.join(DTYPES)}")
    source = resolve(ref)
    _check_applies(mitigation, source.family, source.name)
    return load(source, distributed.device_for(_device(device), ranks), DTYPES[dtype], backend)


def _device(device: str | None) -> str:
    if device is None or device == "auto":
        return pick_device("auto")
    if device.startswith("cuda") and not torch.cuda.is_available():
        log.warning("device %r asked for, but CUDA is not available: running on the CPU", device)
        return "cpu"
    return device


def _check_applies(mitigation: Mitigation, family: str, model_name: str) -> None:
    if family not in mitigation.families:
        raise ModelArgsError(
            f"mitigation {mitigation.spec!r} does not apply to {model_name} (family {family}); "
            f"it applies to: {', '.join(sorted(mitigation.families))}"
        )


def _generation_settings(gen_kwargs: dict[str, Any]) -> tuple[list[str], int]:
    """(stop sequences, most new tokens) of one request; sampling is refused."""
    sampling = gen_kwargs.get("do_sample")
    if sampling is None:
        sampling = float(gen_kwargs.get("temperature") or 0.0) > 0.0
    if sampling:
        raise SamplingNotSupported(
            f"generation settings {gen_kwargs} ask for sampling; the harness model decodes "
            "greedily: set do_sample=false and temperature=0 (e.g. --gen_kwargs do_sample=false)"
        )
    until = gen_kwargs.get("until") or []
    stops = [until] if isinstance(until, str) else list(until)
    return stops, int(gen_kwargs.get("max_gen_toks", DEFAULT_MAX_GEN_TOKS))


def _first_stop(text: str, until: list[str]) -> int | None:
    """Where the earliest stop sequence starts in `text`, or None."""
    found = [i for stop in until if stop and (i := text.find(stop)) >= 0]
    return min(found) if found else None
