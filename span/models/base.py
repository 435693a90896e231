"""The contract every slide-level model honours, so the trainer has no model-specific branches.

`forward(features[N, d], grid[N, 2]) -> ModelOutput`, `loss(output, label, progress)`,
`after_step()` and `clip_gradients()`; models register themselves by name in `span.models`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ModelOutput:
    """What a model returns for one slide."""

    logits: torch.Tensor  # (C,)
    patch_scores: torch.Tensor  # (N,) importance of each input patch, for heatmaps
    embedding: torch.Tensor  # (E,) slide embedding before the classifier
    extras: dict = field(default_factory=dict)  # model-specific terms for `loss`


class MILModel(nn.Module):
    """Base class: plain cross-entropy, no per-step hook, whole-model gradient clipping."""

    def __init__(self, grad_clip: float | None = None) -> None:
        super().__init__()
        self.grad_clip = grad_clip
        self.register_buffer("class_weights", None, persistent=False)

    def set_class_weights(self, weights: torch.Tensor | None) -> None:
        """Weights of the cross-entropy terms (e.g. inverse class frequency); None = equal."""
        self.class_weights = None if weights is None else weights.float()

    def classification_loss(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of one slide's logits, times its class's weight when weights are set.

        (F.cross_entropy's `weight` would cancel out for a single slide: its mean reduction
        divides by the weight of the one target.)"""
        loss = F.cross_entropy(logits.view(1, -1), label.view(1))
        if self.class_weights is None:
            return loss
        return loss * self.class_weights.to(logits.device)[label.view(())]

    def loss(self, output: ModelOutput, label: torch.Tensor, progress: float) -> torch.Tensor:
        """Training loss; `progress` in [0, 1] is the fraction of training done (schedules)."""
        return self.classification_loss(output.logits, label)

    def after_step(self) -> None:
        """Called after each optimiser step (EMA teachers and the like)."""

    def gradient_groups(self) -> list[list[nn.Parameter]]:
        """Parameter groups clipped separately; one group = the whole model."""
        return [[p for p in self.parameters() if p.requires_grad]]

    def clip_gradients(self) -> None:
        """Clip each group's gradient norm to `grad_clip` (no-op when it is None)."""
        if self.grad_clip is None:
            return
        for group in self.gradient_groups():
            torch.nn.utils.clip_grad_norm_(group, self.grad_clip)
