"""DTFD-MIL (Zhang et al. 2022): double-tier feature distillation, after the public repository
hrzhang1123/DTFD-MIL.

Tier 1 shuffles a slide's instances into pseudo-bags, each attention-pooled and classified
with the slide label; one feature per pseudo-bag (or two, MaxMinS) is distilled and tier 2
classifies the slide from them. Loss = mean tier-1 CE + tier-2 CE.

The reference trains the tiers with two Adam optimisers and backpropagates tier 2 through a
graph the tier-1 step has changed in place (an error on current PyTorch). Here one optimiser
steps both: the distilled features are detached, so tier 2 does not train tier 1 (in the
reference those gradients are zeroed before use too), and every module the reference clips
is its own `gradient_groups` entry, clipped to `grad_clip` (5 by default, as the reference).
"""

from __future__ import annotations

import torch
from torch import nn

from span.models.base import MILModel, ModelOutput
from span.models.layers import AttentionPool, AttentionScores, InstanceEncoder

DISTILL = ("AFS", "MaxS", "MaxMinS")

#: Seed of the pseudo-bags of an evaluation forward, fresh for every slide, so that a
#: checkpoint's predictions do not depend on what drew random numbers before them. The reference
#: shuffles from the global state at test time, as this model did: one checkpoint's test AUC
#: then changed with the number of epochs trained after it.
EVAL_SHUFFLE_SEED = 0


def pseudo_bags(
    n: int, groups: int, generator: torch.Generator | None = None
) -> list[torch.Tensor]:
    """Shuffle 0..n-1 and cut into min(groups, n) pseudo-bags whose sizes differ by at most
    one (the first n % groups one larger, as np.array_split); CPU index tensors."""
    if n < 1 or groups < 1:
        raise ValueError(f"need n >= 1 instances and groups >= 1, got {n} and {groups}")
    return list(torch.randperm(n, generator=generator).tensor_split(min(groups, n)))


class DTFD(MILModel):
    """Double-tier feature distillation MIL over one slide's features (grid unused)."""

    def __init__(
        self,
        in_dim: int,
        n_classes: int,
        hidden: int = 512,
        attention_hidden: int = 128,
        num_groups: int = 4,
        distill: str = "AFS",
        seed: int | None = None,
        grad_clip: float | None = 5.0,
    ) -> None:
        super().__init__(grad_clip)
        if distill not in DISTILL:
            raise ValueError(f"distill must be one of {DISTILL}, got {distill!r}")
        if num_groups < 1:
            raise ValueError(f"num_groups must be >= 1, got {num_groups}")
        self.num_groups, self.distill = num_groups, distill
        # Shuffle source in training; None = torch's global RNG. Not saved with the weights.
        self.generator = None if seed is None else torch.Generator().manual_seed(seed)
        self.encoder = InstanceEncoder(in_dim, hidden, dropout=0.0, bias=False)
        self.attention = AttentionScores(hidden, attention_hidden, 1, gated=True)
        self.classifier = nn.Linear(hidden, n_classes)
        self.tier2_pool = AttentionPool(hidden, attention_hidden, gated=True)
        self.tier2_classifier = nn.Linear(hidden, n_classes)

    def forward(self, features: torch.Tensor, grid: torch.Tensor) -> ModelOutput:
        generator = (
            self.generator if self.training else torch.Generator().manual_seed(EVAL_SHUFFLE_SEED)
        )
        bags = pseudo_bags(len(features), self.num_groups, generator)
        return self.forward_pseudo_bags(features, [b.to(features.device) for b in bags])

    def forward_pseudo_bags(self, features: torch.Tensor, bags: list[torch.Tensor]) -> ModelOutput:
        """Forward with given pseudo-bags (index tensors partitioning the instances).

        patch_scores: each instance's probability of the slide's CAM class (`cam_class` of the
        tier-2 logits) from the tier-1 classifier on its attention-weighted feature: the
        reference's instance probability derivation, which its heatmaps show.
        """
        h = self.encoder(features)
        scores = self.attention(h).squeeze(1)  # (N,), softmaxed per pseudo-bag below
        probs = h.new_zeros(len(h), self.classifier.out_features)
        sub_logits, distilled = [], []
        for bag in bags:
            weights = scores[bag].softmax(dim=0)
            weighted = weights[:, None] * h[bag]
            logits = self.classifier(weighted.sum(dim=0))
            sub_logits.append(logits)
            probs[bag] = self.instance_probabilities(weighted).detach()
            ranked = probs[bag][:, self.cam_class(logits)]
            distilled.append(self._distil(h[bag], weighted, ranked))
        distilled = torch.cat(distilled)
        # Tier 2 does not train tier 1; in eval the graph stays whole, for gradient attributions.
        slide_feature, _ = self.tier2_pool(distilled.detach() if self.training else distilled)
        logits = self.tier2_classifier(slide_feature)
        return ModelOutput(
            logits,
            probs[:, self.cam_class(logits.detach())],
            slide_feature,
            {"sub_logits": torch.stack(sub_logits)},
        )

    def instance_probabilities(self, weighted: torch.Tensor) -> torch.Tensor:
        """(n, C) class probabilities of attention-weighted instance features: the reference's
        instance CAM (get_cam_1d: the tier-1 classifier's weights, no bias), softmaxed."""
        return (weighted @ self.classifier.weight.T).softmax(dim=1)

    def _distil(
        self, h: torch.Tensor, weighted: torch.Tensor, ranked: torch.Tensor
    ) -> torch.Tensor:
        """One pseudo-bag's features for tier 2: its attention-weighted sum (AFS, (1, hidden)),
        or its instances ranked by their CAM-class probability `ranked`: the top one (MaxS) or
        the top and bottom ones (MaxMinS, (2, hidden))."""
        if self.distill == "AFS":
            return weighted.sum(dim=0, keepdim=True)
        top = ranked.argmax().view(1)
        if self.distill == "MaxS":
            return h[top]
        return h[torch.cat([top, ranked.argmin().view(1)])]

    @staticmethod
    def cam_class(logits: torch.Tensor) -> int:
        """Class whose CAM probability ranks instances: binary, the positive class (as the
        reference, which always ranks by the last class); else the class these logits predict."""
        return 1 if len(logits) == 2 else int(logits.argmax())

    def loss(self, output: ModelOutput, label: torch.Tensor, progress: float) -> torch.Tensor:
        """Mean tier-1 CE over the pseudo-bags (all labelled with the slide) + tier-2 CE."""
        tier1 = torch.stack(
            [self.classification_loss(logits, label) for logits in output.extras["sub_logits"]]
        ).mean()
        return tier1 + self.classification_loss(output.logits, label)

    def gradient_groups(self) -> list[list[nn.Parameter]]:
        """The modules the reference clips one by one: tier-1 encoder, attention and
        classifier, and tier 2."""
        modules = (
            [self.encoder],
            [self.attention],
            [self.classifier],
            [self.tier2_pool, self.tier2_classifier],
        )
        return [[p for m in group for p in m.parameters() if p.requires_grad] for group in modules]
