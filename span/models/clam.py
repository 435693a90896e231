"""CLAM (Lu et al. 2021): gated attention MIL with instance-level clustering, single-branch
(CLAM_SB) and multi-branch (CLAM_MB), after the public repository mahmoodlab/CLAM.

Besides the bag cross-entropy, instance classifiers learn to separate the most and least
attended patches of the true class (and, when subtyping, to reject the most attended patches
of every other class); the loss is bag_weight * bag CE + (1 - bag_weight) * instance CE.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from span.models.base import MILModel, ModelOutput
from span.models.layers import AttentionScores, InstanceEncoder


def attention_order(scores: torch.Tensor) -> torch.Tensor:
    """Instance indices by decreasing score; ties keep index order, so selections are
    deterministic on every device."""
    return scores.argsort(descending=True, stable=True)


def instance_targets(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """In-class clustering: the k highest-scored instances (target 1), then the k lowest
    (target 0). Needs 2k <= N so that no instance is both."""
    if not 0 <= 2 * k <= len(scores):
        raise ValueError(f"need 0 <= 2k <= N, got k={k} and N={len(scores)}")
    order = attention_order(scores)
    indices = torch.cat([order[:k], order[len(order) - k :]])
    targets = torch.cat([torch.ones(k), torch.zeros(k)]).to(scores.device, torch.long)
    return indices, targets


def out_of_class_targets(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Out-of-class clustering: another class's k highest-scored instances, all target 0."""
    indices = attention_order(scores)[:k]
    return indices, torch.zeros(len(indices), dtype=torch.long, device=scores.device)


class _CLAM(MILModel):
    """What CLAM_SB and CLAM_MB share (constructor included): encoder, gated attention with one
    score column per branch, instance classifiers and the clustering loss."""

    multi_branch: bool  # one attention branch per class (MB) or a single one (SB)

    def __init__(
        self,
        in_dim: int,
        n_classes: int,
        hidden: int = 512,
        attention_hidden: int = 256,
        dropout: float = 0.25,
        gated: bool = True,
        k_sample: int = 8,
        bag_weight: float = 0.7,
        subtyping: bool | None = None,
        grad_clip: float | None = None,
    ) -> None:
        super().__init__(grad_clip)
        if k_sample < 1 or not 0.0 <= bag_weight <= 1.0:
            raise ValueError(
                f"need k_sample >= 1 and bag_weight in [0, 1], got {k_sample}, {bag_weight}"
            )
        self.k_sample, self.bag_weight = k_sample, bag_weight
        self.subtyping = n_classes > 2 if subtyping is None else subtyping  # None: multi-class
        branches = n_classes if self.multi_branch else 1
        self.encoder = InstanceEncoder(in_dim, hidden, dropout)
        self.attention = AttentionScores(hidden, attention_hidden, branches, gated, dropout)
        self.bag_classifier = self.make_bag_classifier(hidden, n_classes)
        self.instance_classifiers = nn.ModuleList(nn.Linear(hidden, 2) for _ in range(n_classes))

    def make_bag_classifier(self, hidden: int, n_classes: int) -> nn.Module:
        """The module that `classify` applies to the pooled vectors."""
        raise NotImplementedError

    def classify(self, pooled: torch.Tensor) -> torch.Tensor:
        """(branches, hidden) attention-pooled vectors -> (C,) logits."""
        raise NotImplementedError

    def forward(self, features: torch.Tensor, grid: torch.Tensor) -> ModelOutput:
        h = self.encoder(features)
        scores = self.attention(h)  # (N, branches), unnormalised
        weights = scores.softmax(dim=0)
        pooled = weights.T @ h  # (branches, hidden)
        logits = self.classify(pooled)
        shown = self._branch(weights, int(logits.argmax()))
        return ModelOutput(logits, shown, pooled.flatten(), {"scores": scores, "h": h})

    def _branch(self, scores: torch.Tensor, c: int) -> torch.Tensor:
        """The column of (N, branches) scores that attends for class c."""
        return scores[:, c if self.multi_branch else 0]

    def instance_loss(self, scores: torch.Tensor, h: torch.Tensor, label: int) -> torch.Tensor:
        """CE of the instance classifiers on the clustering targets; with subtyping the
        per-class terms are averaged over all C classes (as CLAM). k = min(k_sample, N // 2)
        keeps the top and bottom sets disjoint; a 1-instance bag has no instance term (0)."""
        k = min(self.k_sample, len(h) // 2)
        total = h.new_zeros(())
        if k == 0:
            return total
        for c, classifier in enumerate(self.instance_classifiers):
            if c == label:
                indices, targets = instance_targets(self._branch(scores, c), k)
            elif self.subtyping:
                indices, targets = out_of_class_targets(self._branch(scores, c), k)
            else:
                continue
            total = total + F.cross_entropy(classifier(h[indices]), targets)
        return total / len(self.instance_classifiers) if self.subtyping else total

    def loss(self, output: ModelOutput, label: torch.Tensor, progress: float) -> torch.Tensor:
        """bag_weight * bag CE (class-weighted) + (1 - bag_weight) * instance CE."""
        bag = self.classification_loss(output.logits, label)
        instance = self.instance_loss(output.extras["scores"], output.extras["h"], int(label))
        return self.bag_weight * bag + (1.0 - self.bag_weight) * instance


class CLAM_SB(_CLAM):
    """Single attention branch, one Linear(hidden, C) bag classifier."""

    multi_branch = False

    def make_bag_classifier(self, hidden: int, n_classes: int) -> nn.Module:
        return nn.Linear(hidden, n_classes)

    def classify(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.bag_classifier(pooled[0])


class CLAM_MB(_CLAM):
    """One attention branch and one Linear(hidden, 1) bag classifier per class: logit c comes
    from the instances pooled by branch c."""

    multi_branch = True

    def make_bag_classifier(self, hidden: int, n_classes: int) -> nn.Module:
        return nn.ModuleList(nn.Linear(hidden, 1) for _ in range(n_classes))

    def classify(self, pooled: torch.Tensor) -> torch.Tensor:
        return torch.cat([head(p) for head, p in zip(self.bag_classifier, pooled, strict=True)])
