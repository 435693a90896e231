"""Layers shared by SPAN and the MIL baselines."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

#: Rows per chunk of `rowwise`: bounds the transient memory of per-token layers.
ROW_CHUNK = 16384


def drop_mask(shape, p: float, generator: torch.Generator | None = None, device=None):
    """Dropout's mask of dropped elements and the rescale of the kept ones, from random bytes
    (4 per 32-bit draw, several times faster than float uniforms on CPU); the drop
    probability is rounded to 1/256."""
    threshold = round(p * 256)
    numel = math.prod(shape)
    words = torch.randint(
        -(2**31),
        2**31,
        ((numel + 3) // 4,),
        dtype=torch.int32,
        generator=generator,
        device=device,
    )
    drop = words.view(torch.uint8)[:numel].view(shape) < threshold
    return drop, dropout_rescale(p)


def dropout_rescale(p: float) -> float:
    """The factor that keeps the expectation of `drop_mask`'s kept elements (p rounded)."""
    return 1.0 / (1.0 - round(p * 256) / 256)


class MaskDropout(nn.Module):
    """Dropout keeping a boolean mask for the backward pass (a quarter of a float mask)."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        drop, rescale = drop_mask(x.shape, self.p, device=x.device)
        return x.masked_fill(drop, 0.0).mul_(rescale)


class DropoutLinear(nn.Linear):
    """A Linear layer followed by dropout, the rescale folded into the weights: one pass over
    the output (an in-place mask) instead of three, which matters for per-token layers."""

    def __init__(self, in_features: int, out_features: int, dropout: float = 0.0) -> None:
        super().__init__(in_features, out_features)
        self.p = dropout

    def forward(self, x: torch.Tensor, input_rescale: float = 1.0) -> torch.Tensor:
        """`input_rescale`: the rescale of a dropout whose mask the caller applied to x."""
        drop, rescale = None, 1.0
        if self.training and self.p > 0.0:
            drop, rescale = drop_mask((*x.shape[:-1], self.out_features), self.p, device=x.device)
        scale = rescale * input_rescale
        weight = self.weight if scale == 1.0 else self.weight * scale
        bias = self.bias if rescale == 1.0 or self.bias is None else self.bias * rescale
        y = F.linear(x, weight, bias)
        return y if drop is None else y.masked_fill_(drop, 0.0)


def recompute_in_backward(fn, *args):
    """Call `fn`; when gradients flow, keep only its inputs and recompute it in the backward
    pass (activation checkpointing, random state preserved)."""
    if torch.is_grad_enabled() and any(torch.is_tensor(a) and a.requires_grad for a in args):
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


def rowwise(fn, x: torch.Tensor, rows: int = ROW_CHUNK) -> torch.Tensor:
    """Apply a per-row function in chunks of rows, each recomputed in the backward pass, so
    its intermediate activations never exist for all rows at once."""
    if len(x) <= rows:
        return recompute_in_backward(fn, x)
    return torch.cat([recompute_in_backward(fn, x[i : i + rows]) for i in range(0, len(x), rows)])


class FeedForward(nn.Module):
    """Linear -> ReLU -> dropout -> Linear -> dropout (the transformer MLP); the hidden layer
    is masked and rectified in place, both rescales folded into the second Linear."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = DropoutLinear(hidden, dim, dropout)
        self.p = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        if not self.training or self.p == 0.0:
            return self.fc2(h.relu_())
        drop, rescale = drop_mask(h.shape, self.p, device=h.device)
        return self.fc2(h.masked_fill_(drop, 0.0).relu_(), rescale)


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
