"""Finding and loading weights from the Hugging Face Hub, shared by the diffusers model families.

Offline (`HF_HUB_OFFLINE=1`) every loader is told `local_files_only=True`: without it some of them
still ask the Hub (diffusers' sharded-checkpoint resolution asks for the repository's file list;
transformers' `AutoTokenizer` looks for files `hf download` never creates) and then fail on a
complete cache. When a load fails, the cache is inspected: the error says "not in the local
Hugging Face cache" only when files really are missing, and names them; any other failure is
reported as what it is.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Callable, Sequence

import torch

# Weight files a diffusers model or a transformers model may ship, single or sharded (index).
_WEIGHTS = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.bin",
    "model.safetensors",
    "pytorch_model.bin",
)
_TOKENIZER_VOCAB = (("tokenizer.json",), ("vocab.json", "merges.txt"), ("spiece.model",))


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says which part and why, in one line."""

    def __init__(self, model_id: str, what: str, reason: str) -> None:
        super().__init__(f"cannot load {model_id!r} ({what}): {reason}")
        self.model_id = model_id


class WeightsUnavailableError(ModelLoadError):
    """Model files are neither in the local Hugging Face cache nor downloadable right now."""

    def __init__(self, model_id: str, what: str, reason: BaseException | str) -> None:
        super().__init__(
            model_id,
            what,
            f"{_why(reason)}; fetch it with `hf download {model_id}` (or `huggingface-cli download {model_id}`), "
            "set HF_TOKEN for a gated or private repository, or go online",
        )


class CheckpointMismatchError(ValueError):
    """A checkpoint's keys do not match the model class built for it (strict loading)."""


def offline() -> bool:
    """True when `HF_HUB_OFFLINE` forbids downloading."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def local_kwargs(model_id: str) -> dict[str, Any]:
    """`local_files_only=True` when offline or loading a local directory, so no loader asks the Hub."""
    return {"local_files_only": True} if offline() or os.path.isdir(model_id) else {}


_PATH = re.compile(r"(?:[A-Za-z]:)?[/\\](?:[^\s'\"/\\]+[/\\])+([^\s'\"/\\]*)")


def _first_line(reason: BaseException | str) -> str:
    """The first line of a library's message, paths on this machine cut to their file name."""
    text = str(reason).strip()
    text = text.splitlines()[0] if text else type(reason).__name__
    text = _PATH.sub(lambda m: m.group(1) or "a local folder", text)
    return text if len(text) <= 160 else text[:157] + "..."


def _why(reason: BaseException | str) -> str:
    """One short clause for what went wrong (the libraries' own messages run to several lines)."""
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, OfflineModeIsEnabled, RepositoryNotFoundError

    if isinstance(reason, str):
        return reason
    if isinstance(reason, GatedRepoError):
        return "the repository is gated: accept its terms on the Hub"
    if isinstance(reason, RepositoryNotFoundError):
        return "no such repository on the Hub, or it is private"
    if isinstance(reason, (LocalEntryNotFoundError, OfflineModeIsEnabled)):
        if offline():
            return "not in the local Hugging Face cache, and HF_HUB_OFFLINE=1 forbids downloading"
        return "not in the local Hugging Face cache, and the Hub could not be reached"
    return _first_line(reason)


# -- what the local cache holds ------------------------------------------------------------------


def snapshot_dir(model_id: str) -> str | None:
    """The cached snapshot `refs/main` points at (or the local directory itself); None if absent."""
    if os.path.isdir(model_id):
        return model_id
    from huggingface_hub import constants

    repo = os.path.join(constants.HF_HUB_CACHE, "models--" + model_id.replace("/", "--"))
    try:
        with open(os.path.join(repo, "refs", "main")) as f:
            commit = f.read().strip()
    except OSError:
        snaps = os.path.join(repo, "snapshots")
        found = sorted(os.listdir(snaps)) if os.path.isdir(snaps) else []
        if len(found) != 1:
            return None
        commit = found[0]
    path = os.path.join(repo, "snapshots", commit)
    return path if os.path.isdir(path) else None


def _present(root: str, rel: str) -> bool:
    return os.path.isfile(os.path.join(root, rel))  # follows the snapshot's symlink: a missing blob counts as missing


def missing_files(model_id: str, subfolder: str | None, kind: str) -> list[str]:
    """Files a component needs that the local copy lacks ([] when all are there).

    `kind`: "model" (config.json and weights, single or every shard of an index), "scheduler",
    "tokenizer" or "index" (model_index.json). A repository with no snapshot at all lacks everything.
    """
    root = snapshot_dir(model_id)
    pre = f"{subfolder}/" if subfolder else ""
    if kind == "index":
        need = ["model_index.json"]
    elif kind == "scheduler":
        need = [pre + "scheduler_config.json"]
    elif kind == "tokenizer":
        need = [pre + "tokenizer_config.json"]
        if root is not None and not any(all(_present(root, pre + f) for f in group) for group in _TOKENIZER_VOCAB):
            return [pre + " or ".join("+".join(g) for g in _TOKENIZER_VOCAB)]
    elif kind == "model":
        need = [pre + "config.json"]
        if root is not None:
            weights = _weight_files(root, pre)
            if weights is None:
                return [f"{pre}{_WEIGHTS[0]} (or another weights file)"]
            need += weights
    else:
        raise ValueError(f"kind={kind!r}: allowed are model, scheduler, tokenizer, index")
    if root is None:
        return need
    return [f for f in need if not _present(root, f)]


def _weight_files(root: str, pre: str) -> list[str] | None:
    """The weight files of one component: a single file, or an index and every shard it names."""
    for name in _WEIGHTS:
        if _present(root, pre + name):
            return [pre + name]
        index = pre + name + ".index.json"
        if _present(root, index):
            with open(os.path.join(root, index)) as f:
                shards = sorted(set(json.load(f).get("weight_map", {}).values()))
            return [index] + [pre + s for s in shards]
    return None


# -- loading ---------------------------------------------------------------------------------------


def _hub_errors() -> tuple[type[BaseException], ...]:
    from huggingface_hub.errors import EntryNotFoundError

    # OSError covers what diffusers/transformers raise for missing files, LocalEntryNotFoundError,
    # RepositoryNotFoundError, GatedRepoError, HfHubHTTPError and OfflineModeIsEnabled.
    return (OSError, EntryNotFoundError, ValueError)


def hub_call(
    model_id: str, what: str, fn: Callable[..., Any], *args, kind: str = "model", subfolder: str | None = None, **kwargs
) -> Any:
    """Run a `from_pretrained`-style call offline-safely; failures become one-line ModelLoadErrors.

    `kind` and `subfolder` say which files the call needs, so that a failure can be checked
    against the cache: missing files give WeightsUnavailableError naming them, anything else a
    ModelLoadError with the library's own reason.
    """
    if subfolder:
        kwargs["subfolder"] = subfolder
    kwargs = {**local_kwargs(model_id), **kwargs}
    try:
        return fn(*args, **kwargs)
    except _hub_errors() as e:
        raise load_error(model_id, what, e, subfolder, kind) from None


def load_error(model_id: str, what: str, e: BaseException, subfolder: str | None, kind: str) -> ModelLoadError:
    """The true one-line error for a failed load: missing files named, or the library's reason."""
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    if isinstance(e, (GatedRepoError, RepositoryNotFoundError)):
        return WeightsUnavailableError(model_id, what, e)
    missing = missing_files(model_id, subfolder, kind)
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        if not offline() and not os.path.isdir(model_id):
            return WeightsUnavailableError(model_id, what, f"{shown} not in the local Hugging Face cache, and downloading failed ({_first_line(e)})")
        where = "the local directory" if os.path.isdir(model_id) else "the local Hugging Face cache"
        return WeightsUnavailableError(model_id, what, f"{shown} not in {where}")
    return ModelLoadError(model_id, what, f"{type(e).__name__}: {_first_line(e)}")


def probe_repo(model_id: str, filenames: Sequence[str]) -> str:
    """The first of `filenames` the repository has (downloading it); fails fast when offline and uncached."""
    if os.path.isdir(model_id):  # a local copy (save_pretrained layout): no Hub access at all
        for name in filenames:
            if os.path.isfile(os.path.join(model_id, name)):
                return name
        raise WeightsUnavailableError(model_id, "local directory", f"it has no {' or '.join(filenames)}")
    if offline():
        root = snapshot_dir(model_id)
        for name in filenames:
            if root is not None and _present(root, name):
                return name
        raise WeightsUnavailableError(model_id, "repository index", f"{' or '.join(filenames)} not in the local Hugging Face cache")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    last: BaseException | None = None
    for name in filenames:
        try:
            hf_hub_download(model_id, name)
            return name
        except EntryNotFoundError as e:  # that file is not there: try the next layout
            last = e
        except OSError as e:
            raise WeightsUnavailableError(model_id, "repository index", e) from None
    raise WeightsUnavailableError(model_id, "repository index", last or f"no {' or '.join(filenames)}")


def load_tokenizer(model_id: str, subfolder: str | None = "tokenizer") -> Any:
    """The tokenizer class its `tokenizer_config.json` names, loaded directly.

    Not `AutoTokenizer`: with transformers 5 it also reads a model `config.json` from the same
    folder, which a pipeline's tokenizer folder (as `hf download` leaves it) does not have.
    """
    import transformers

    rel = f"{subfolder}/tokenizer_config.json" if subfolder else "tokenizer_config.json"
    path = _resolve(model_id, rel)
    cls: Any = transformers.PreTrainedTokenizerFast
    if path is not None:
        try:
            with open(path) as f:
                name = json.load(f).get("tokenizer_class")
        except (OSError, ValueError) as e:
            raise ModelLoadError(model_id, "tokenizer", f"{rel}: {type(e).__name__}: {_first_line(e)}") from None
        found = getattr(transformers, str(name), None) if name else None
        if isinstance(found, type) and issubclass(found, transformers.PreTrainedTokenizerBase):
            cls = found
    tokenizer = hub_call(model_id, "tokenizer", cls.from_pretrained, model_id, kind="tokenizer", subfolder=subfolder)
    check_tokenizer(model_id, tokenizer, subfolder)
    return tokenizer


def _resolve(model_id: str, rel: str) -> str | None:
    """Local path of one repository file (downloading it when online); None when it cannot be had."""
    if os.path.isdir(model_id):
        path = os.path.join(model_id, rel)
        return path if os.path.isfile(path) else None
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(model_id, rel, local_files_only=offline())
    except Exception:  # missing or unreachable: the load itself then reports what is missing
        return None


def check_tokenizer(model_id: str, tokenizer: Any, subfolder: str | None = "tokenizer") -> None:
    """Refuse the special-tokens-only tokenizer transformers returns (no error) when the files are missing."""
    if len(tokenizer) < 10:
        missing = missing_files(model_id, subfolder, "tokenizer")
        where = "the local directory" if os.path.isdir(model_id) else "the local Hugging Face cache"
        why = f"{', '.join(missing)} not in {where}" if missing else f"tokenizer files missing (vocabulary of {len(tokenizer)})"
        raise WeightsUnavailableError(model_id, "tokenizer", why)


def load_model_strict(cls: type, model_id: str, what: str, subfolder: str | None = None, **kwargs) -> torch.nn.Module:
    """`cls.from_pretrained` that refuses missing, unexpected or mis-shaped keys instead of warning."""
    model, info = hub_call(model_id, what, cls.from_pretrained, model_id, subfolder=subfolder, output_loading_info=True, **kwargs)
    problems = []
    for key in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        found = info.get(key) or []
        if found:
            names = sorted(k[0] if isinstance(k, tuple) else k for k in found)
            problems.append(f"{len(names)} {key.replace('_', ' ')} (e.g. {', '.join(names[:4])})")
    if info.get("error_msgs"):
        problems.append(f"errors: {info['error_msgs'][:2]}")
    if problems:
        raise CheckpointMismatchError(f"{model_id} {what}: checkpoint does not match {cls.__name__}: {'; '.join(problems)}")
    return model


def load_scheduler(model_id: str, subfolder: str | None = "scheduler"):
    """The scheduler a repository ships, built from its config by class name (no remote code)."""
    import diffusers

    cfg = hub_call(model_id, "scheduler config", diffusers.DDIMScheduler.load_config, model_id, kind="scheduler", subfolder=subfolder)
    cls = getattr(diffusers, str(cfg.get("_class_name", "")), None)
    if not (isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)):
        raise ValueError(f"{model_id}: unknown scheduler class {cfg.get('_class_name')!r}")
    return cls.from_config(cfg)


def with_variant(load: Callable[[str | None], Any], dtype: torch.dtype, variant: str | None) -> Any:
    """`load(variant)`; "auto" takes the half-size fp16 files for fp16 when the repository has them."""
    if variant != "auto":
        return load(variant)
    if dtype == torch.float16:
        try:
            return load("fp16")
        except ModelLoadError:
            pass
    return load(None)


# -- devices ---------------------------------------------------------------------------------------


def default_device(device: str | torch.device | None) -> torch.device:
    """CUDA when present, else CPU."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def apply_cpu_offload(modules: Sequence[torch.nn.Module], device: torch.device) -> None:
    """Keep `modules` on the CPU, each moved to `device` only while it is the one running (accelerate)."""
    if device.type != "cuda":
        raise ValueError(f"cpu_offload=True needs a CUDA device, not {device}")
    offload_chain(modules, device)


def offload_chain(modules: Sequence[torch.nn.Module], device: torch.device) -> None:
    """accelerate's model offload hooks, chained in a cycle: running one module offloads the one before.

    A cycle, not diffusers' one-way chain, because FIFO encodes new prompts between denoising calls
    (prompt schedules), and the text encoder should then push the denoiser out, not join it.
    """
    from accelerate import cpu_offload_with_hook

    hooks = []
    for m in modules:
        _, hook = cpu_offload_with_hook(m, device, prev_module_hook=hooks[-1] if hooks else None)
        hooks.append(hook)
    if len(hooks) > 1:
        hooks[0].hook.prev_module_hook = hooks[-1]
