"""Layers shared by SPAN and the MIL baselines."""

from __future__ import annotations

import torch
from torch import nn


class FeedForward(nn.Sequential):
    """Linear -> ReLU -> dropout -> Linear -> dropout (the transformer MLP)."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__(
            nn.Linear(dim, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, dim),
            nn.Dropout(dropout),
        )


class AttentionScores(nn.Module):
    """Ilse et al.'s attention MIL scores: w^T tanh(V h) (plain) or w^T (tanh(V h) * sigm(U h))
    (gated), one score per instance and branch."""

    def __init__(
        self, dim: int, hidden: int, branches: int = 1, gated: bool = True, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.tanh = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Dropout(dropout))
        self.gate = (
            nn.Sequential(nn.Linear(dim, hidden), nn.Sigmoid(), nn.Dropout(dropout))
            if gated
            else None
        )
        self.score = nn.Linear(hidden, branches)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """(N, dim) -> (N, branches) unnormalised scores."""
        a = self.tanh(h)
        if self.gate is not None:
            a = a * self.gate(h)
        return self.score(a)


class AttentionPool(nn.Module):
    """Softmax-attention pooling of instances into one vector (single branch)."""

    def __init__(self, dim: int, hidden: int, gated: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        self.scores = AttentionScores(dim, hidden, 1, gated, dropout)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, dim) -> pooled (dim,), attention weights (N,)."""
        weights = self.scores(h).squeeze(1).softmax(dim=0)
        return weights @ h, weights
