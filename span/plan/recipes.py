"""Recipes: named sets of model hyperparameters and training options that a variant starts
from before its own `hparams` and `training` (config key `recipe`, for all variants or one).

`default` is this project's setup (span train's defaults and the SPAN constructor's). `authors`
is the SPAN authors' released code (github.com/wwyi1828/SPAN, read in 2026: configs/
classification.yaml, configs/model/span.yaml, src/span/): every item below, so that a reader
of the paper can reproduce it with one config line. Their split protocol is `splits` options
and their features are `features` options (docs/pipeline.md, "The authors' setup").
Standard library only: the Snakefile imports it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Recipe:
    """Starting values of a variant: constructor arguments per model, `span train` options."""

    name: str
    summary: str
    hparams: Mapping[str, Mapping] = field(default_factory=dict)  # model -> arguments
    training: Mapping = field(default_factory=dict)

    def apply(self, model: str, hparams: Mapping, training: Mapping) -> tuple[dict, dict]:
        """A variant's (hparams, training) over this recipe's: the variant's own keys win."""
        return {**self.hparams.get(model, {}), **hparams}, {**self.training, **training}


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe("default", "this project's defaults"),
        Recipe(
            "authors",
            "the SPAN authors' released code: embedding width in/2 without bias, global tokens "
            "with their own projections and a softmax apart from the windows', a head summing "
            "the global tokens, no centring, a randomly initialised downsampling kernel; "
            "class-weighted cross-entropy, cosine learning rate, weight decay 1e-4, their "
            "mirror/shear/rotation augmentation instead of grid flips and translation",
            hparams={
                "span": {
                    "embed_ratio": 0.5,  # configs/model/span.yaml: embed_dim = in_dim // 2
                    "embed_bias": False,
                    "global_attention": "separate",  # share_qkv: false, two summed softmaxes
                    "head": "global",  # sums each stage's global token
                    "center": False,
                    "conv_init": "random",  # PyTorch's default initialisation
                }
            },
            training={
                "weight_decay": 1e-4,
                "class_weighted": True,
                "cosine": True,  # CosineAnnealingLR(T_max=epochs)
                "affine": True,
                "flips": False,
                "translate": 0,
            },
        ),
    )
}


def recipe(name: str) -> Recipe:
    """The recipe called `name`; KeyError names the known ones."""
    if name not in RECIPES:
        raise KeyError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return RECIPES[name]
