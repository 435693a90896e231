"""ABMIL (Ilse et al. 2018): attention-based deep MIL, plain or gated attention."""

from __future__ import annotations

import torch
from torch import nn

from span.models.base import MILModel, ModelOutput
from span.models.layers import AttentionPool, InstanceEncoder


class ABMIL(MILModel):
    """Instances -> 512-d embedding -> attention pooling (128 hidden) -> linear classifier.

    The attention branch is w^T act(V h) (times sigm(U h) when gated): `attention_activation`
    "tanh" with biases (the defaults) is Ilse et al.'s; "relu" with `attention_bias=False` is
    the `DAttention` of MHIM-MIL's code (the instance encoder and the classifier keep their
    biases in both). The branch keeps its module names, so both load the same state dict keys
    apart from the biases.
    """

    def __init__(
        self,
        in_dim: int,
        n_classes: int,
        hidden: int = 512,
        attention_hidden: int = 128,
        gated: bool = False,
        dropout: float = 0.25,
        attention_activation: str = "tanh",
        attention_bias: bool = True,
        grad_clip: float | None = None,
    ) -> None:
        super().__init__(grad_clip)
        self.encoder = InstanceEncoder(in_dim, hidden, dropout)
        self.pool = AttentionPool(
            hidden,
            attention_hidden,
            gated=gated,
            activation=attention_activation,
            bias=attention_bias,
        )
        self.classifier = nn.Linear(hidden, n_classes)

    def forward(self, features: torch.Tensor, grid: torch.Tensor) -> ModelOutput:
        h = self.encoder(features)
        embedding, weights = self.pool(h)
        return ModelOutput(self.classifier(embedding), weights, embedding)
