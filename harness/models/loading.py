"""From what a user typed after --models to a loaded model.

`resolve` checks a reference without loading weights (so a bad one stops the run before any
work): a built-in tiny model, a catalog name, a local checkpoint directory, or a hub id.
`load` then builds the family's LanguageModel on a device and dtype.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from harness.models.allocator import keep_freed_memory
from harness.models.base import LanguageModel, ModelInfo
from harness.models.bundled import bundled_models
from harness.models.catalog import CATALOG, NEOX_TOKENIZER, ModelSpec
from harness.models.tiny import TINY_MODELS

if TYPE_CHECKING:
    from harness.models.tokenizer import TextCodec

WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")
# owner/name as the hub spells them: ASCII letters, digits, '-', '_', '.'; no '..' or '--'
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}", re.ASCII)
DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?", re.ASCII)
DEFAULT_CONTEXT = 2048
HUB_TIMEOUT_S = 5  # for the one request that checks a hub model exists, before any work
FETCH_HINT = (
    "`harness list models` names the bundled models, which need no download; or give a local "
    "checkpoint folder (config.json and weights)"
)


class ModelError(ValueError):
    """A model reference that names nothing loadable."""


@dataclass(frozen=True)
class ModelSource:
    ref: str  # as the user wrote it
    name: str  # display name, the `model=` partition of results/
    family: str  # "mamba1" | "mamba2" | "rwkv6" | "transformer"
    config: dict  # config.json (empty for built-in tiny models)
    spec: ModelSpec | None = None  # catalog entry
    path: Path | None = None  # local checkpoint directory
    repo: str | None = None  # hub id
    id: str | None = None  # content identity, once harness.identity.identify has run


# transformers' model_type of the recurrent families with an engine of ours
MODEL_TYPES = {"mamba": "mamba1", "mamba2": "mamba2", "rwkv6": "rwkv6"}
STATE_SPACES_LAYERS = {"Mamba1": "mamba1", "Mamba2": "mamba2"}  # mamba-ssm's ssm_cfg.layer


def family_of(config: dict) -> str:
    """The family a checkpoint's config.json describes, from its own fields.

    transformers configs name their model_type (mamba, mamba2, or any causal LM: transformer);
    mamba-ssm (state-spaces) configs have d_model, n_layer and ssm_cfg, whose "layer" is Mamba1
    when absent. Anything else is refused, naming what was found."""
    model_type = config.get("model_type")
    if model_type in MODEL_TYPES:
        return MODEL_TYPES[model_type]
    if model_type is None and "d_model" in config and "n_layer" in config:
        layer = (config.get("ssm_cfg") or {}).get("layer", "Mamba1")
        if layer not in STATE_SPACES_LAYERS:
            raise ModelError(
                f"state-spaces config with ssm_cfg.layer {layer!r}: not a family the harness "
                f"runs ({', '.join(STATE_SPACES_LAYERS)})"
            )
        return STATE_SPACES_LAYERS[layer]
    if isinstance(model_type, str) and "rwkv" in model_type.lower():
        raise ModelError(f"model_type {model_type!r}: of the RWKV versions only rwkv6 runs")
    if isinstance(model_type, str):
        return "transformer"  # any other transformers causal LM
    raise ModelError(
        "config.json names no model family: no model_type (transformers) and not a "
        f"state-spaces Mamba config (d_model, n_layer); its keys: {sorted(config)[:12]}"
    )


def resolve(ref: str) -> ModelSource:
    bundled = bundled_models()
    if ref in bundled:
        return replace(_resolve_local(ref, bundled[ref]), name=ref)
    if ref in TINY_MODELS:
        return ModelSource(ref=ref, name=ref, family=TINY_MODELS[ref].family, config={})
    if ref in CATALOG:
        spec = CATALOG[ref]
        return ModelSource(
            ref=ref, name=ref, family=spec.family, config={}, spec=spec, repo=spec.repo
        )
    path = Path(ref).expanduser()
    if path.exists() or not is_hub_id(ref):
        return _resolve_local(ref, path)
    return _resolve_hub(ref)


def is_hub_id(ref: str) -> bool:
    """owner/name, and nothing a path would look like ('a/..', './x/y', '~/m')."""
    return (
        bool(HUB_ID.fullmatch(ref))
        and ".." not in ref
        and "--" not in ref
        and (not ref.endswith("."))
    )


def _resolve_local(ref: str, path: Path) -> ModelSource:
    if not path.exists():
        known = [*TINY_MODELS, *bundled_models(), *CATALOG]
        close = difflib.get_close_matches(ref, known, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ModelError(
            f"unknown model {ref!r}: not a catalog name, an existing directory or a hub id "
            f"(owner/name).{hint} Known: {', '.join(known)}"
        )
    blinkdl = _blinkdl_file(path)
    if blinkdl is not None:
        return ModelSource(ref=ref, name=blinkdl.stem, family="rwkv6", config={}, path=path)
    if not path.is_dir():
        raise ModelError(f"model path {ref!r} is a file; give the checkpoint directory")
    if not (path / "config.json").is_file():
        raise ModelError(f"model directory {ref!r} has no config.json")
    if not any(any(path.glob(p)) for p in WEIGHT_PATTERNS):
        raise ModelError(f"model directory {ref!r} has no weights ({' or '.join(WEIGHT_PATTERNS)})")
    config = json.loads((path / "config.json").read_text())
    return ModelSource(
        ref=ref, name=path.resolve().name, family=family_of(config), config=config, path=path
    )


def _blinkdl_file(path: Path) -> Path | None:
    """The RWKV-6 .pth file (BlinkDL's release format, no config.json) a path is or holds."""
    if path.is_dir() and not (path / "config.json").exists():
        found = list(path.glob("*.pth"))
        path = found[0] if len(found) == 1 else path
    if not (path.is_file() and path.suffix == ".pth"):
        return None
    try:  # the keys only: mmap reads no tensor data
        keys = torch.load(path, map_location="cpu", mmap=True, weights_only=True).keys()
    except Exception as err:
        raise ModelError(f"{str(path)!r} is not a readable torch checkpoint: {err}") from None
    if "blocks.0.att.time_maa_x" not in keys:
        raise ModelError(
            f"{str(path)!r} is a .pth file but not an RWKV-6 (BlinkDL) checkpoint; give a folder "
            "with config.json for other models"
        )
    return path


def _resolve_hub(ref: str) -> ModelSource:
    from huggingface_hub import hf_hub_download

    check_hub_repo(ref, ref)
    try:
        config_file = hf_hub_download(ref, "config.json")
    except Exception as err:  # not there, or the network: the classes vary with the version
        raise ModelError(
            f"cannot fetch config.json of hub model {ref!r} ({type(err).__name__}: "
            f"{_first_line(err)}); {FETCH_HINT}"
        ) from None
    config = json.loads(Path(config_file).read_text())
    return ModelSource(ref=ref, name=ref, family=family_of(config), config=config, repo=ref)


def check_fetchable(source: ModelSource) -> None:
    """A model that comes from the hub: its repository (and its tokenizer's, where that is a
    hub id) is in the local cache or answers one quick request; otherwise ModelError at once,
    without retries."""
    if source.spec is None:
        return  # local folders were checked by resolve; hub ids by _resolve_hub
    check_hub_repo(source.name, source.spec.repo)
    tokenizer = source.spec.tokenizer
    if tokenizer != source.spec.repo and is_hub_id(tokenizer):
        check_hub_repo(source.name, tokenizer)


def check_hub_repo(name: str, repo: str) -> None:
    """Hub repository `repo` has a snapshot in the local cache, or the hub knows it (one
    model-info request, short timeout, no retries); ModelError naming why not."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import RepositoryNotFoundError
    from huggingface_hub.file_download import repo_folder_name

    folder = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo, repo_type="model")
    if (folder / "snapshots").is_dir() and any((folder / "snapshots").iterdir()):
        return
    where = f"model {name!r} needs hub repository {repo!r}, which is not in the local cache"
    if constants.is_offline_mode():
        raise ModelError(f"{where} and HF_HUB_OFFLINE is set; {FETCH_HINT}")
    try:
        HfApi().model_info(repo, timeout=HUB_TIMEOUT_S)
    except RepositoryNotFoundError:
        raise ModelError(
            f"{where}, and the hub ({constants.ENDPOINT}) has no such repository (or it is "
            f"private or gated); check the id; {FETCH_HINT}"
        ) from None
    except Exception as err:  # network and HTTP errors: their classes vary with the version
        raise ModelError(
            f"{where}, and the hub ({constants.ENDPOINT}) did not answer "
            f"({type(err).__name__}: {_first_line(err)}); {FETCH_HINT}"
        ) from None


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [""])[0][:200]


def pick_device(device: str) -> str:
    """auto (cuda when torch sees one, else cpu), cpu, cuda or cuda:N, checked against the
    devices torch sees here; ValueError naming them otherwise."""
    if not DEVICE.fullmatch(device):
        raise ValueError(f"bad --device {device!r}: use auto, cpu, cuda or cuda:N")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return device
    if not torch.cuda.is_available():
        why = "is built without CUDA" if torch.version.cuda is None else "sees no CUDA device"
        raise ValueError(f"--device {device}: torch {torch.__version__} {why}; use cpu or auto")
    index = int(device.partition(":")[2] or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise ValueError(
            f"--device {device}: torch sees {count} CUDA device(s), cuda:0 to cuda:{count - 1}"
        )
    return device


def load(source: ModelSource, device: str, dtype: torch.dtype, backend: str) -> LanguageModel:
    """The model on `device` (on CPU, this process's allocator set to keep freed memory:
    harness.models.allocator)."""
    if torch.device(device).type == "cpu":
        keep_freed_memory()
    if source.ref in TINY_MODELS:
        return TINY_MODELS[source.ref].build(device, dtype, backend)
    if source.family == "mamba2":
        return _load_mamba2(source, device, dtype, backend)
    if source.family == "mamba1":
        return _load_mamba1(source, device, dtype)
    if source.family == "rwkv6":
        return _load_rwkv6(source, device, dtype)
    return _load_transformer(source, device, dtype)


def _context(source: ModelSource, key: str) -> tuple[int, str]:
    if source.spec is not None:
        return source.spec.train_context, source.spec.train_context_source
    if "train_context" in source.config:
        return int(source.config["train_context"]), "config.json train_context"
    if key in source.config:
        return int(source.config[key]), f"config.json {key}"
    return DEFAULT_CONTEXT, f"unknown: assumed {DEFAULT_CONTEXT}"


def _info(
    source: ModelSource,
    module: torch.nn.Module,
    dtype: torch.dtype,
    device: str,
    backend: str,
    state_size: int | None,
    context_key: str,
) -> ModelInfo:
    context, context_source = _context(source, context_key)
    return ModelInfo(
        name=source.name,
        ref=source.ref,
        family=source.family,
        params=sum(p.numel() for p in module.parameters()),
        state_size=state_size,
        train_context=context,
        train_context_source=context_source,
        dtype=str(dtype).removeprefix("torch."),
        device=device,
        backend=backend,
    )


def _checkpoint_folder(source: ModelSource) -> Path:
    """A local checkpoint as given; a hub one downloaded into the hub cache (config, weights
    and any tokenizer files beside them, which are then used rather than the fallback)."""
    if source.path is not None:
        return source.path
    from huggingface_hub import snapshot_download

    from harness.models.mamba2.checkpoint import HUB_PATTERNS
    from harness.models.tokenizer import TOKENIZER_FILES

    assert source.repo is not None, f"model {source.ref!r} is neither local nor on the hub"
    return Path(snapshot_download(source.repo, allow_patterns=[*HUB_PATTERNS, *TOKENIZER_FILES]))


def _load_mamba2(
    source: ModelSource, device: str, dtype: torch.dtype, backend: str
) -> LanguageModel:
    from harness.models.mamba2 import Mamba2LM, load_mamba2, resolve_backend
    from harness.models.tokenizer import load_tokenizer

    folder = _checkpoint_folder(source)
    module = load_mamba2(folder, device=device, dtype=dtype)
    tokenizer = load_tokenizer(folder, source.spec.tokenizer if source.spec else NEOX_TOKENIZER)
    backend = resolve_backend(backend, torch.device(device))
    info = _info(source, module, dtype, device, backend, module.config.state_size, "train_context")
    return Mamba2LM(module, tokenizer, info, backend=backend)


def _load_mamba1(source: ModelSource, device: str, dtype: torch.dtype) -> LanguageModel:
    from harness.models.base import RecurrentLM
    from harness.models.mamba1 import load_mamba1
    from harness.models.tokenizer import load_tokenizer

    folder = _checkpoint_folder(source)
    module = load_mamba1(folder, device=device, dtype=dtype)
    tokenizer = load_tokenizer(folder, source.spec.tokenizer if source.spec else NEOX_TOKENIZER)
    info = _info(source, module, dtype, device, "torch", module.config.state_size, "train_context")
    return RecurrentLM(module, tokenizer, info)


def _load_rwkv6(source: ModelSource, device: str, dtype: torch.dtype) -> LanguageModel:
    from harness.models.base import RecurrentLM
    from harness.models.rwkv6 import checkpoint_path, load_rwkv6

    path = checkpoint_path(source.path or source.repo)
    module = load_rwkv6(_blinkdl_file(path) or path, device=device, dtype=dtype)
    tokenizer = rwkv6_tokenizer(path if path.is_dir() else path.parent)
    info = _info(source, module, dtype, device, "torch", module.config.state_size, "context_length")
    return RecurrentLM(module, tokenizer, info)


def rwkv6_tokenizer(folder: Path) -> TextCodec:
    """The tokenizer.json beside an RWKV-6 checkpoint (e.g. the bundled byte-level toy), else
    the RWKV World vocabulary."""
    from harness.models.rwkv6 import world_tokenizer
    from harness.models.tokenizer import TOKENIZER_FILE, load_tokenizer

    if (folder / TOKENIZER_FILE).is_file():
        return load_tokenizer(folder, str(folder))
    return world_tokenizer(folder)


def _load_transformer(source: ModelSource, device: str, dtype: torch.dtype) -> LanguageModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.models.transformer import TransformerLM

    where = str(source.path or source.repo)
    module = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, attn_implementation="sdpa")
    tokenizer = AutoTokenizer.from_pretrained(source.spec.tokenizer if source.spec else where)
    info = _info(source, module, dtype, device, "sdpa", None, "max_position_embeddings")
    return TransformerLM(module.to(device), tokenizer, info)
