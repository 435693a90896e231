"""Encoder weights: local checkpoints (state dict or safetensors) and Hugging Face hub files,
checked against the architecture before use, each failure one line naming the fix."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from span.errors import SpanError
from span.features.convert import TO_TIMM
from span.features.registry import EncoderInfo

#: Checkpoint files looked up in a hub repository, in this order (timm's own order).
HUB_FILES = ("model.safetensors", "pytorch_model.bin")


def hub_files(info: EncoderInfo) -> tuple[str, ...]:
    """The checkpoint files to look up in the encoder's hub repository, in order."""
    return (info.hub_file,) if info.hub_file else HUB_FILES


def how_to_get(info: EncoderInfo) -> str:
    """The fix line of a weights error: where this encoder's weights come from."""
    local = "a local checkpoint of this architecture (state dict or .safetensors)"
    if info.hub_repo:
        return (
            f"set features.weights: hf-hub (needs access to huggingface.co/{info.hub_repo}: "
            f"accept its terms there, then export HF_TOKEN) or point it at {local}"
        )
    return f"set features.weights to imagenet, random or {local}"


def sha256_of(path: Path) -> str:
    """Hex digest of a file, read in blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_state_dict(path: Path, fix: str, shapes_only: bool = False) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors (safetensors, or torch's format memory-mapped), unwrapped from
    `state_dict`/`model` and DataParallel's `module.` prefix. `shapes_only`: safetensors come
    back as meta tensors read from the header (a check reads no weights)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open
            from safetensors.torch import load_file

            if shapes_only:
                with safe_open(path, "pt") as f:
                    names = list(f.keys())  # a safe_open handle is not iterable
                    state = {
                        k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in names
                    }
            else:
                state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # torch and safetensors raise many types for foreign files
        raise SpanError(path, f"cannot load checkpoint ({type(exc).__name__}: {exc})", fix) from exc
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise SpanError(path, "checkpoint is not a state dict", fix)
    return {k.removeprefix("module."): v for k, v in state.items()}


def published_state(
    info: EncoderInfo, model: nn.Module, path: Path, shapes_only: bool = False
) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors under `model`'s names: renamed from the encoder's published
    layout (`info.layout`) to timm's, its position grid resampled to the model's as the
    published code does at run time."""
    state = read_state_dict(path, how_to_get(info), shapes_only)
    if info.layout == "timm":
        return state
    return TO_TIMM[info.layout](state, tuple(model.patch_embed.grid_size))


def needed_keys(model: nn.Module, used: nn.Module) -> set[str]:
    """Names of `model`'s parameters and buffers that the `used` part computes with."""
    used_ids = {id(t) for t in [*used.parameters(), *used.buffers()]}
    named = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    return {k for k, t in named.items() if id(t) in used_ids}


def fit_problem(model: nn.Module, used: nn.Module, state: dict) -> str | None:
    """Why `state` is not a checkpoint of `model` (None when it is): tensors of the used part
    missing or of another shape, or tensors the architecture does not have."""
    named = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    needed = needed_keys(model, used)
    missing = sorted(needed - state.keys())
    if missing:
        return f"checkpoint lacks {len(missing)} tensors, e.g. {missing[:3]}"
    unexpected = sorted(state.keys() - named.keys())
    if unexpected:
        return (
            f"checkpoint has {len(unexpected)} tensors this architecture lacks, e.g. "
            f"{unexpected[:3]}"
        )
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(named[k].shape)}"
        for k in sorted(needed)
        if tuple(state[k].shape) != tuple(named[k].shape)
    ]
    if wrong:
        return f"checkpoint does not fit: {len(wrong)} tensors of another shape, e.g. {wrong[0]}"
    return None


def load_checkpoint(info: EncoderInfo, model: nn.Module, used: nn.Module, path: Path) -> None:
    """Load a checkpoint into `model`; every tensor of the `used` part must come from it."""
    state = published_state(info, model, path)
    problem = fit_problem(model, used, state)
    if problem:
        raise SpanError(path, f"not a {info.name} checkpoint: {problem}", how_to_get(info))
    needed = needed_keys(model, used)
    model.load_state_dict({k: v for k, v in state.items() if k in needed}, strict=False)


def hub_repo_of(info: EncoderInfo, weights: str) -> str:
    """The repository of `hf-hub` (the entry's own) or `hf-hub:<owner/name>`."""
    return weights.partition(":")[2] or str(info.hub_repo)


def _hub_error(info: EncoderInfo, repo: str, exc: Exception) -> SpanError:
    """The one line for a hub failure: gated, unknown (or no token), or unreachable."""
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    fix = how_to_get(info)
    where = f"huggingface.co/{repo}"
    if isinstance(exc, GatedRepoError):
        return SpanError(None, f"{info.name}: {where} is gated and this token has no access", fix)
    if isinstance(exc, RepositoryNotFoundError):
        return SpanError(
            None, f"{info.name}: {where} not found or needs a token (HF_TOKEN unset?)", fix
        )
    return SpanError(
        None,
        f"{info.name}: weights from {where} are not in the Hugging Face cache and the hub "
        f"cannot be reached (offline? {type(exc).__name__})",
        f"run once with network access, or {fix}",
    )


def hub_checkpoint(info: EncoderInfo, weights: str, local_only: bool = False) -> tuple[Path, str]:
    """Download (or find in the Hugging Face cache) the encoder's checkpoint; returns its path
    and its identity `hf-hub:<repo>@<commit>/<file>`. The token comes from HF_TOKEN (or
    `hf auth login`), the cache is huggingface_hub's (HF_HOME)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    repo = hub_repo_of(info, weights)
    offline = None
    for filename in hub_files(info):
        try:
            path = Path(hf_hub_download(repo, filename, local_files_only=local_only))
        except LocalEntryNotFoundError as exc:
            offline = exc  # not cached and no network (or HF_HUB_OFFLINE): try the next file
            continue
        except EntryNotFoundError:
            continue  # the repository has no such file: try the next one
        except OSError as exc:  # huggingface_hub's HTTP errors: gated, unknown repository
            raise _hub_error(info, repo, exc) from exc
        return path, f"hf-hub:{repo}@{path.parent.name}/{filename}"
    if offline is not None:
        raise _hub_error(info, repo, offline) from offline
    raise SpanError(
        None,
        f"{info.name}: huggingface.co/{repo} has none of {', '.join(hub_files(info))}",
        how_to_get(info),
    )


def hub_preflight(info: EncoderInfo, weights: str) -> Path | None:
    """The cached hub checkpoint, or None once the hub says this token may download it; an
    inaccessible or unreachable repository raises its one line."""
    from huggingface_hub import HfApi

    try:
        return hub_checkpoint(info, weights, local_only=True)[0]
    except SpanError:
        pass  # not cached: ask the hub whether this token may download it
    repo = hub_repo_of(info, weights)
    try:
        HfApi().auth_check(repo)
    except Exception as exc:  # HTTP errors, or httpx's when there is no network
        raise _hub_error(info, repo, exc) from exc
    return None
