"""Patch encoders behind a small registry: architecture, output layers, weights, normalisation.

Adding a torchvision or timm model is one `EncoderSpec` entry. Weights are `imagenet`
(torchvision's cache, downloaded on first use), a local checkpoint (loaded with
`weights_only=True`) or `random` (seeded, so every slide of a cohort gets the same encoder).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from span.errors import SpanError

log = logging.getLogger(__name__)

#: Seed of `random` weights: identical on every machine and for every slide of a cohort.
RANDOM_WEIGHTS_SEED = 0
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RANDOM_WEIGHTS_WARNING = (
    "ENCODER WEIGHTS ARE RANDOM (seeded): features carry colour and texture statistics only; "
    "results are NOT comparable with pretrained encoders. Use weights: imagenet or a checkpoint "
    "for real work."
)


@dataclass(frozen=True)
class EncoderSpec:
    """How to build one architecture and cut it at each supported output."""

    build: Callable[[bool], nn.Module]  # pretrained -> full model
    outputs: dict[str, tuple[Callable[[nn.Module], nn.Module], int]]  # layer -> (cut, dim)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    input_size: int = 224


def _torchvision_resnet50(pretrained: bool) -> nn.Module:
    from torchvision.models import ResNet50_Weights, resnet50

    return resnet50(weights=ResNet50_Weights.IMAGENET1K_V1 if pretrained else None)


def _resnet_trunk(model: nn.Module, last_stage: str) -> list[nn.Module]:
    stages = ["layer1", "layer2", "layer3", "layer4"]
    names = ["conv1", "bn1", "relu", "maxpool", *stages[: stages.index(last_stage) + 1]]
    return [getattr(model, n) for n in names]


def _resnet_cut(last_stage: str) -> Callable[[nn.Module], nn.Module]:
    """The trunk up to `last_stage`, then global average pooling (CLAM's layer3 convention)."""

    def cut(model: nn.Module) -> nn.Module:
        return nn.Sequential(
            *_resnet_trunk(model, last_stage), nn.AdaptiveAvgPool2d(1), nn.Flatten(1)
        )

    return cut


ENCODERS: dict[str, EncoderSpec] = {
    "resnet50": EncoderSpec(
        build=_torchvision_resnet50,
        outputs={
            "penultimate": (_resnet_cut("layer4"), 2048),
            "layer3": (_resnet_cut("layer3"), 1024),
        },
    ),
}


@dataclass
class Encoder:
    """A ready encoder (eval mode) and what the feature file records about it."""

    model: nn.Module
    name: str
    layer: str
    feature_dim: int
    weights: str  # "imagenet", "random" or "sha256:<hex>"
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: int


def encoder_spec(name: str, layer: str) -> EncoderSpec:
    """The registry entry, with a clear error for unknown names or layers."""
    if name not in ENCODERS:
        raise SpanError(None, f"unknown encoder {name!r}", f"choose one of {sorted(ENCODERS)}")
    spec = ENCODERS[name]
    if layer not in spec.outputs:
        raise SpanError(
            None, f"{name} has no output {layer!r}", f"choose one of {sorted(spec.outputs)}"
        )
    return spec


def sha256_of(path: Path) -> str:
    """Hex digest of a file, read in blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _load_checkpoint(model: nn.Module, used: nn.Module, path: Path) -> None:
    """Load a local state dict into `model`; every parameter of the `used` part must be in it."""
    fix = "point features.weights at a state dict of this architecture (or use imagenet/random)"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for foreign or damaged files
        raise SpanError(path, f"cannot load checkpoint ({type(exc).__name__}: {exc})", fix) from exc
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise SpanError(path, "checkpoint is not a state dict", fix)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    used_keys = {id(p) for p in [*used.parameters(), *used.buffers()]}
    named = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    needed = {k for k, t in named.items() if id(t) in used_keys}
    missing = sorted(needed - state.keys())
    if missing:
        raise SpanError(path, f"checkpoint lacks {len(missing)} tensors, e.g. {missing[:3]}", fix)
    try:
        model.load_state_dict({k: v for k, v in state.items() if k in needed}, strict=False)
    except RuntimeError as exc:
        raise SpanError(path, f"checkpoint does not fit ({str(exc).splitlines()[0]})", fix) from exc


def build_encoder(name: str, layer: str, weights: str) -> Encoder:
    """Build an encoder in eval mode; `weights` is imagenet, random, or a checkpoint path."""
    spec = encoder_spec(name, layer)
    cut, dim = spec.outputs[layer]
    if weights == "imagenet":
        try:
            model = spec.build(True)
        except Exception as exc:  # no network, proxy, or damaged cache
            raise SpanError(
                None,
                f"cannot load ImageNet weights for {name} ({type(exc).__name__}: {exc})",
                "run once with internet access (torchvision caches them under TORCH_HOME) or "
                "set features.weights to a local checkpoint",
            ) from exc
        weights_id = "imagenet"
    elif weights == "random":
        log.warning(RANDOM_WEIGHTS_WARNING)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_WEIGHTS_SEED)
            model = spec.build(False)
        weights_id = "random"
    else:
        path = Path(weights)
        if not path.is_file():
            raise SpanError(
                path, "checkpoint not found", "set features.weights to imagenet, random or a file"
            )
        model = spec.build(False)
        _load_checkpoint(model, cut(model), path)
        weights_id = f"sha256:{sha256_of(path)}"
    return Encoder(
        model=cut(model).eval(),
        name=name,
        layer=layer,
        feature_dim=dim,
        weights=weights_id,
        mean=spec.mean,
        std=spec.std,
        input_size=spec.input_size,
    )
