"""TransMIL (Shao et al. 2021): two Nystrom-attention layers over the patch sequence with a
pyramid position encoding generator (PPEG) between them, classified from a cls token.

As the reference (szc19990412/TransMIL on nystrom-attention 0.0.9), except that after the
left padding the LAST n outputs are kept (the package keeps the first n, misaligning tokens).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from span.models.base import MILModel, ModelOutput
from span.models.layers import ROW_CHUNK, InstanceEncoder, MaskDropout


def iterative_pinv(x: torch.Tensor, iterations: int) -> torch.Tensor:
    """Moore-Penrose pseudo-inverse of each (m, m) matrix in `x` by Razavi et al.'s iteration,
    initialised as the package does (x^T over the largest row and column sums of all heads)."""
    magnitude = x.abs()
    z = x.transpose(-1, -2) / (magnitude.sum(-1).max() * magnitude.sum(-2).max())
    eye = torch.eye(x.shape[-1], dtype=x.dtype, device=x.device)
    for _ in range(iterations):
        xz = x @ z
        z = 0.25 * z @ (13 * eye - xz @ (15 * eye - xz @ (7 * eye - xz)))
    return z


@torch.no_grad()
def mixed_softmax_rows(
    weights: torch.Tensor, q: torch.Tensor, k: torch.Tensor, chunk: int = ROW_CHUNK
) -> torch.Tensor:
    """weights (H, 1, m) @ softmax(q k^T) (H, m, L) -> (H, 1, L), in chunks of keys so the
    (H, m, L) matrix never exists (two passes: log-normalisers, then the mixture)."""
    keys = k.split(chunk, dim=1)
    lse = torch.cat([(q @ c.transpose(-1, -2)).logsumexp(-1, keepdim=True) for c in keys], -1)
    lse = lse.logsumexp(-1, keepdim=True)
    return torch.cat([weights @ (q @ c.transpose(-1, -2) - lse).exp() for c in keys], -1)


class NystromAttention(nn.Module):
    """Nystromformer attention (Xiong et al. 2021) with a depthwise convolution over the values.

    The sequence is padded on the left with zero tokens to a multiple of `landmarks`, as in the
    package; they are not masked (their keys score 0 and their values are 0) and their outputs
    are dropped. Landmarks are segment means; out = (k1 pinv(k2)) (k3 v) + conv(v), evaluated
    as two fused attentions, softmax(q k_l^T) @ (pinv(k2) @ softmax(q_l k^T) v), so nothing of
    size L x m is kept for the backward pass.
    """

    def __init__(
        self,
        dim: int,
        heads: int = 8,
        dim_head: int = 64,
        landmarks: int = 256,
        pinv_iterations: int = 6,
        conv_kernel: int = 33,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.heads, self.dim_head = heads, dim_head
        self.landmarks, self.pinv_iterations = landmarks, pinv_iterations
        self.scale = dim_head**-0.5
        self.to_qkv = nn.Linear(dim, 3 * heads * dim_head, bias=False)
        self.to_out = nn.Linear(heads * dim_head, dim)
        self.drop = MaskDropout(dropout)
        self.res_conv = nn.Conv2d(
            heads, heads, (conv_kernel, 1), padding=(conv_kernel // 2, 0), groups=heads, bias=False
        )

    def forward(
        self, x: torch.Tensor, row: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(n, dim) -> (n, dim), and with `row` that token's approximate attention to all n
        tokens (k1[row] pinv(k2) k3, mean over heads, no gradient), else None."""
        n = len(x)
        pad = -n % self.landmarks
        x = F.pad(x, (0, 0, pad, 0))
        segment = len(x) // self.landmarks
        q, k, v = self.to_qkv(x).view(len(x), 3, self.heads, self.dim_head).permute(1, 2, 0, 3)
        q = q * self.scale
        q_l = q.unflatten(1, (self.landmarks, segment)).mean(2)
        k_l = k.unflatten(1, (self.landmarks, segment)).mean(2)
        pinv = iterative_pinv((q_l @ k_l.transpose(-1, -2)).softmax(-1), self.pinv_iterations)
        landmark_values = pinv @ F.scaled_dot_product_attention(q_l, k, v, scale=1.0)
        out = F.scaled_dot_product_attention(q[:, pad:], k_l, landmark_values, scale=1.0)
        # The padded values are zeros, like the convolution's own padding: convolve the last n.
        out = out + self.res_conv(v[None, :, pad:]).squeeze(0)
        out = self.drop(self.to_out(out.transpose(0, 1).reshape(n, -1)))
        if row is None:
            return out, None
        with torch.no_grad():
            weights = (q[:, pad + row : pad + row + 1] @ k_l.transpose(-1, -2)).softmax(-1) @ pinv
            scores = mixed_softmax_rows(weights, q_l, k).mean(0)[0, pad:]
        return out, scores


class TransLayer(nn.Module):
    """x + NystromAttention(LayerNorm(x)); TransMIL has no feed-forward block."""

    def __init__(self, dim: int, heads: int, landmarks: int, pinv_iterations: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = NystromAttention(
            dim, heads, dim // heads, landmarks, pinv_iterations, dropout=dropout
        )

    def forward(
        self, x: torch.Tensor, row: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        out, scores = self.attn(self.norm(x), row)
        return x + out, scores


class PPEG(nn.Module):
    """Pyramid position encoding: x + dw7x7(x) + dw5x5(x) + dw3x3(x) on the square map of the
    patch tokens; the leading cls token passes through."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(dim, dim, size, padding=size // 2, groups=dim) for size in (7, 5, 3)
        )

    def forward(self, x: torch.Tensor, side: int) -> torch.Tensor:
        cls, tokens = x[:1], x[1:]
        square = tokens.T.reshape(1, -1, side, side)
        square = square + sum(conv(square) for conv in self.convs)
        return torch.cat([cls, square.flatten(2)[0].T])


def square_padding(n: int) -> tuple[int, torch.Tensor]:
    """Side of the smallest square holding n tokens, and the token order filling it: all n,
    then the first ones again (as the reference does)."""
    side = math.isqrt(n - 1) + 1
    return side, torch.arange(side * side) % n


class TransMIL(MILModel):
    """Linear(in, 512) + ReLU -> square padding -> cls + TransLayer -> PPEG -> TransLayer ->
    LayerNorm(cls) -> Linear(512, C).

    patch_scores: the cls token's attention to each of the N original patches in the last
    layer, as Nystrom attention approximates it (k1[cls] pinv(k2) k3, mean over heads). It is
    not a distribution: the cls token, the square-padding copies and the unmasked zero tokens of
    the landmark padding take some mass (most of it in bags far below 256 patches), and the
    approximate pseudo-inverse can make small values slightly negative.
    """

    def __init__(
        self,
        in_dim: int,
        n_classes: int,
        dim: int = 512,
        heads: int = 8,
        landmarks: int | None = None,
        pinv_iterations: int = 6,
        dropout: float = 0.1,
        grad_clip: float | None = None,
    ) -> None:
        super().__init__(grad_clip)
        landmarks = landmarks or dim // 2
        self.encoder = InstanceEncoder(in_dim, dim, dropout=0.0)
        self.cls_token = nn.Parameter(torch.randn(1, dim))
        self.layer1 = TransLayer(dim, heads, landmarks, pinv_iterations, dropout)
        self.ppeg = PPEG(dim)
        self.layer2 = TransLayer(dim, heads, landmarks, pinv_iterations, dropout)
        self.norm = nn.LayerNorm(dim)
        self.classifier = nn.Linear(dim, n_classes)

    def forward(self, features: torch.Tensor, grid: torch.Tensor) -> ModelOutput:
        n = len(features)
        if n == 0:
            raise ValueError("TransMIL needs at least one patch")
        side, order = square_padding(n)
        h = self.encoder(features)
        x = torch.cat([self.cls_token, h[order.to(h.device)]])
        x, _ = self.layer1(x)
        x, scores = self.layer2(self.ppeg(x, side), row=0)
        embedding = self.norm(x[0])
        return ModelOutput(self.classifier(embedding), scores[1 : n + 1], embedding)
