"""Patch encoders built from the registry (`registry.py`): architecture, output, weights.

The ResNets come from torchvision, the pathology foundation models from timm (CONCH v1.5's
vision tower: a timm trunk under its attentional pooler, written here). Weights are
`imagenet` (the ResNets: torchvision's cache, downloaded on first use; the entry's first
weights, or `imagenet:<member>` such as IMAGENET1K_V1), `hf-hub` (the model's
Hugging Face repository, through huggingface_hub's cache), a local checkpoint (state dict or
safetensors, recorded by sha256) or `random` (seeded, so every slide of a cohort gets the same
encoder). A checkpoint must fit the architecture tensor by tensor.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from span.errors import SpanError
from span.features.convert import DINO_OFFSET, resample_grid
from span.features.registry import (
    ENCODERS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    EncoderInfo,
    Interpolation,
    imagenet_member,
    unknown_output,
    weights_kinds,
)
from span.features.weights import (
    fit_problem,
    how_to_get,
    hub_checkpoint,
    hub_preflight,
    load_checkpoint,
    published_state,
    sha256_of,
)

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "Encoder", "build_encoder", "sha256_of"]

log = logging.getLogger(__name__)

#: Seed of `random` weights: identical on every machine and for every slide of a cohort.
RANDOM_WEIGHTS_SEED = 0
RANDOM_WEIGHTS_WARNING = (
    "ENCODER WEIGHTS ARE RANDOM (seeded): features carry colour and texture statistics only; "
    "results are NOT comparable with pretrained encoders. Use pretrained weights (imagenet, "
    "hf-hub or a checkpoint) for real work."
)


class _ResNetCut(nn.Sequential):
    """The ResNet trunk up to one stage, then global average pooling (CLAM's layer3 cut)."""

    def __init__(self, model: nn.Module, last_stage: str) -> None:
        stages = ["layer1", "layer2", "layer3", "layer4"]
        names = ["conv1", "bn1", "relu", "maxpool", *stages[: stages.index(last_stage) + 1]]
        super().__init__(
            *[getattr(model, n) for n in names], nn.AdaptiveAvgPool2d(1), nn.Flatten(1)
        )


class ViTEmbedding(nn.Module):
    """A timm ViT's final-norm tokens pooled as published: the class token, or the class token
    concatenated with the mean of the patch tokens (register tokens left out)."""

    def __init__(self, vit: nn.Module, pooling: str) -> None:
        super().__init__()
        self.vit = vit
        self.pooling = pooling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.vit.forward_features(x)
        cls = tokens[:, 0]
        if self.pooling == "cls":
            return cls
        return torch.cat([cls, tokens[:, self.vit.num_prefix_tokens :].mean(1)], dim=1)


class AttentionalPooler(nn.Module):
    """Learned queries attending to a ViT's tokens (CoCa's pooler, as CONCH uses it): queries
    and tokens each layer-normalised, multi-head attention without biases. Tensor names are
    CONCH's (`query`, `ln_q`, `ln_k`, `to_q`, `to_kv`, `to_out`)."""

    def __init__(self, dim: int, context_dim: int, heads: int, queries: int = 1) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Parameter(torch.randn(queries, dim))
        self.ln_q = nn.LayerNorm(dim)
        self.ln_k = nn.LayerNorm(context_dim)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_kv = nn.Linear(context_dim, 2 * dim, bias=False)
        self.to_out = nn.Linear(dim, dim, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(batch, tokens, context_dim) -> (batch, queries, dim)."""
        q = self.to_q(self.ln_q(self.query)).expand(len(tokens), -1, -1)
        k, v = self.to_kv(self.ln_k(tokens)).chunk(2, dim=-1)
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in (q, k, v))
        return self.to_out(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2))


class ConchVisionTower(nn.Module):
    """CONCH v1.5's image embedding: a timm ViT trunk (built with `dynamic_img_size`) whose
    position grid is resampled to the input's at run time the DINO way, as TRIDENT's vendored
    iBOT ViT does; its final-norm tokens (class token included) pooled by one learned query,
    then a LayerNorm. Tensor names are the published checkpoint's (`trunk.*`,
    `attn_pool_contrast.*`, `ln_contrast.*`)."""

    def __init__(self, trunk: nn.Module, dim: int = 768, heads: int = 8) -> None:
        super().__init__()
        self.trunk = trunk
        self.attn_pool_contrast = AttentionalPooler(dim, trunk.embed_dim, heads)
        self.ln_contrast = nn.LayerNorm(dim)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The trunk's final-norm tokens, the class token first."""
        trunk = self.trunk
        patches = trunk.patch_embed(x)  # (batch, rows, columns, dim)
        pos = trunk.pos_embed
        grid = resample_grid(pos[:, 1:], patches.shape[1:3], offset=DINO_OFFSET)
        cls = trunk.cls_token.expand(len(x), -1, -1)
        tokens = torch.cat([cls, patches.flatten(1, 2)], 1) + torch.cat([pos[:, :1], grid], 1)
        return trunk.norm(trunk.blocks(trunk.norm_pre(tokens)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln_contrast(self.attn_pool_contrast(self.tokens(x))[:, 0])


def build_architecture(info: EncoderInfo, imagenet: str = "") -> nn.Module:
    """The full model with freshly initialised weights, or torchvision's ImageNet weights of
    that enum member (e.g. IMAGENET1K_V2)."""
    if info.family == "torchvision":
        from torchvision import models

        weights = models.get_model_weights(info.arch)[imagenet] if imagenet else None
        return models.get_model(info.arch, weights=weights)
    import timm

    extra = {}
    if info.swiglu:
        extra = {"mlp_layer": timm.layers.SwiGLUPacked, "act_layer": nn.SiLU}
    kwargs = {**info.kwargs, **extra, "global_pool": "", "num_classes": 0}
    vit = timm.create_model(info.arch, pretrained=False, **kwargs)
    return ConchVisionTower(vit) if info.head == "conch" else vit


def cut(info: EncoderInfo, layer: str, model: nn.Module) -> nn.Module:
    """The part of `model` that computes output `layer`."""
    pooling = info.outputs[layer].pooling
    if info.family == "torchvision":
        return _ResNetCut(model, pooling)
    if pooling == "attn_pool":  # the whole vision tower is the output
        return model
    return ViTEmbedding(model, pooling)


def library_version(info: EncoderInfo) -> str:
    """The library that builds the architecture, with its version (recorded with features)."""
    if info.family == "torchvision":
        import torchvision

        return f"torchvision {torchvision.__version__}"
    import timm

    return f"timm {timm.__version__}"


@dataclass
class Encoder:
    """A ready encoder (eval mode) and what the feature file records about it."""

    model: nn.Module
    name: str
    layer: str
    feature_dim: int
    weights: str  # "imagenet:<torchvision enum member>", "random", "sha256:<hex>" or "hf-hub:..."
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: int  # side the encoder sees (after the centre crop)
    resize_to: int = 224  # side a patch is resized to before the crop
    interpolation: Interpolation = "bilinear"  # the filter of that resize
    version: str = ""  # e.g. "timm 1.0.31"
    amp_dtype: str = "float16"


def encoder_spec(name: str, layer: str | None) -> tuple[EncoderInfo, str]:
    """The registry entry and the output (its default when `layer` is None), or a clear error."""
    if name not in ENCODERS:
        raise SpanError(None, f"unknown encoder {name!r}", f"choose one of {', '.join(ENCODERS)}")
    info = ENCODERS[name]
    layer = layer or info.default_output
    if layer not in info.outputs:
        raise SpanError(None, *unknown_output(info, layer))
    return info, layer


def check_weights_kind(info: EncoderInfo, weights: str) -> None:
    """`imagenet[:member]` and `hf-hub` only for encoders that have them (anything else is a
    path)."""
    member = imagenet_member(info, weights)
    if member is not None:
        ok = bool(member)
    elif weights == "hf-hub":
        ok = info.hub_repo is not None
    elif weights.startswith("hf-hub:"):
        ok = info.family == "timm"
    else:
        return
    if not ok:
        raise SpanError(
            None,
            f"{info.name} has no {weights} weights",
            f"use one of {', '.join(weights_kinds(info))} or a local checkpoint path",
        )


def build_encoder(name: str, layer: str | None, weights: str) -> Encoder:
    """Build an encoder in eval mode; `weights` is imagenet[:member], hf-hub[:repo], random or
    a path."""
    info, layer = encoder_spec(name, layer)
    check_weights_kind(info, weights)
    member = imagenet_member(info, weights)
    if member:
        try:
            model = build_architecture(info, imagenet=member)
        except Exception as exc:  # no network, proxy, or damaged cache
            raise SpanError(
                None,
                f"cannot load ImageNet weights for {name} ({type(exc).__name__}: {exc})",
                "run once with internet access (torchvision caches them under TORCH_HOME) or "
                "set features.weights to a local checkpoint",
            ) from exc
        weights_id = f"imagenet:{member}"  # which ImageNet weights (V1 and V2 differ)
    elif weights == "random":
        log.warning(RANDOM_WEIGHTS_WARNING)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_WEIGHTS_SEED)
            model = build_architecture(info)
        weights_id = "random"
    else:
        if weights.startswith("hf-hub"):
            path, weights_id = hub_checkpoint(info, weights)
        else:
            path = Path(weights)
            if not path.is_file():
                raise SpanError(
                    path,
                    "checkpoint not found",
                    f"set features.weights to {', '.join(weights_kinds(info))} or a file",
                )
            weights_id = f"sha256:{sha256_of(path)}"
        model = build_architecture(info)
        load_checkpoint(info, model, cut(info, layer, model), path)
    return Encoder(
        model=cut(info, layer, model).eval(),
        name=name,
        layer=layer,
        feature_dim=info.outputs[layer].dim,
        weights=weights_id,
        mean=info.mean,
        std=info.std,
        input_size=info.input_size,
        resize_to=info.resize_to,
        interpolation=info.interpolation,
        version=library_version(info),
        amp_dtype=info.amp_dtype,
    )


def preflight(name: str, layer: str | None, weights: str) -> None:
    """Check, without computing, that the weights can be had and fit the architecture: the
    model is built on the meta device (no memory), a local or cached checkpoint is read lazily,
    and an uncached hub checkpoint is only checked for access."""
    info, layer = encoder_spec(name, layer)
    check_weights_kind(info, weights)
    if weights == "random" or imagenet_member(info, weights):
        return
    if weights.startswith("hf-hub"):
        path = hub_preflight(info, weights)
        if path is None:
            return
    else:
        path = Path(weights)
        if not path.is_file():
            raise SpanError(path, "checkpoint not found", how_to_get(info))
    with torch.device("meta"):
        model = build_architecture(info)
    problem = fit_problem(
        model, cut(info, layer, model), published_state(info, model, path, shapes_only=True)
    )
    if problem:
        raise SpanError(path, f"not a {name} checkpoint: {problem}", how_to_get(info))
