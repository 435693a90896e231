"""Patch-level scores of a trained model for heatmaps, one per input patch.

- `attention`: the model's own attention (`ModelOutput.patch_scores`: ABMIL's and CLAM's
  attention, DTFD's instance probability, TransMIL's class-token attention; SPAN's head pools
  its last stage, so its attention is constant over each last-stage cell of 4 x 4 patches).
- `gradient`: gradient x input, per patch the sum over features of (x - m) * d(margin)/dx,
  where x is the standardised feature, m the slide's mean patch and the margin the target
  class's logit minus the mean of the others: a first-order estimate of how much the patch's
  difference from the slide's average patch moves the decision, at the patch grid's
  resolution, for any model.
- `integrated_gradients`: the same, with the gradient averaged along the straight path from a
  slide whose patches all equal its mean to the slide as it is (Sundararajan et al. 2017,
  midpoint rule): the scores sum to the margin's change along that path (completeness), which
  the plain gradient only approximates where the model is not linear. (A centred SPAN's
  layer norms make its margin jump at the path's very start, all patches equal; the change
  counts from just after it.)

benchmarks/bench_localisation.py measures which of them points at the tumour
(docs/benchmarks.md, "Localisation"); `DEFAULT_METHOD` follows it.
"""

from __future__ import annotations

import torch
from torch import nn

#: The score methods, in the order of the module docstring.
METHODS = ("attention", "gradient", "integrated_gradients")
#: `auto`: the method each model's heatmaps use, chosen by the localisation benchmark.
DEFAULT_METHOD = {"span": "gradient"}
#: Steps along the integrated-gradients path.
IG_STEPS = 16

#: What each method's score means, for heatmap titles and exports.
MEANINGS = {
    "attention": "the model's attention",
    "gradient": "gradient x input toward the predicted class",
    "integrated_gradients": "integrated gradients toward the predicted class",
}
#: What a model's own `patch_scores` are, where "attention" says too little.
ATTENTION_MEANINGS = {
    "span": "SPAN's head attention (constant over each last-stage cell)",
    "clam_sb": "CLAM's attention",
    "clam_mb": "CLAM's attention of the predicted class's branch",
    "dtfd": "DTFD's instance probability of the positive (binary) or predicted class",
    "transmil": "TransMIL's class-token attention (last layer)",
}


def meaning(method: str, model: str) -> str:
    """What a score of `method` means for a model of this registry name, in a few words."""
    if method == "attention":
        return ATTENTION_MEANINGS.get(model, MEANINGS[method])
    return MEANINGS[method]


def resolve_method(method: str, model: str) -> str:
    """`auto` -> the model's default method (attention for models without one)."""
    if method == "auto":
        return DEFAULT_METHOD.get(model, "attention")
    if method not in METHODS:
        raise ValueError(f"unknown patch score method {method!r}; choose auto or one of {METHODS}")
    return method


def margin(logits: torch.Tensor, target: int) -> torch.Tensor:
    """The target class's logit minus the mean of the others (their difference with 2 classes)."""
    others = torch.cat([logits[:target], logits[target + 1 :]])
    return logits[target] - others.mean() if len(others) else logits[target]


def patch_scores(
    model: nn.Module,
    features: torch.Tensor,
    grid: torch.Tensor,
    method: str,
    target: int | None = None,
    steps: int = IG_STEPS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (C,), scores (N,)) of one slide's standardised features; `target` None = the
    predicted class. The model must be in eval mode (dropout off, no augmentation)."""
    if model.training:
        raise ValueError("patch scores need the model in eval mode")
    if method == "attention":
        with torch.no_grad():
            out = model(features, grid)
        return out.logits.detach(), out.patch_scores.detach().float()
    if method == "gradient":
        alphas = [1.0]
    elif method == "integrated_gradients":
        alphas = [(k + 0.5) / steps for k in range(steps)]
        with torch.no_grad():  # the path never reaches the slide itself
            logits = model(features, grid).logits.float()
        target = int(logits.argmax()) if target is None else target
    else:
        raise ValueError(f"unknown patch score method {method!r}; choose one of {METHODS}")
    reference = features.detach().mean(dim=0, keepdim=True)
    delta = features.detach() - reference
    total = torch.zeros_like(features, dtype=torch.float32)
    for alpha in alphas:
        x = (reference + alpha * delta).requires_grad_(True)
        with torch.enable_grad():
            path_logits = model(x, grid).logits.float()
            target = int(path_logits.argmax()) if target is None else target
            (grad,) = torch.autograd.grad(margin(path_logits, target), x)
        total += grad.float()
    if method == "gradient":  # one pass, at the slide itself
        logits = path_logits
    return logits.detach(), (delta.float() * total / len(alphas)).sum(dim=1)
