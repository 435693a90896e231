"""Sparse 2 x 2, stride-2 convolution over occupied cells (SPAN's downsampling), pure PyTorch.

Output cells are unique(grid // 2); each output is the sum of its occupied children's
contributions divided by their number, so border cells are not darkened by empty neighbours.

The kernel starts as the mean of the (normalised) children, not at random: a random kernel
mixes the four children with random signs, so two downsamplings in a row hand the last stage a
scrambled view of the tissue and the pyramid's coarse stages learn nothing from slide labels
(measured on the spatial benchmark: a 3-stage SPAN stayed at chance where a 2-stage one
learned). Starting as a mean, each stage sees a clean local average that training refines.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from span.models.sparse import Downsampling


class SparseDownsample(nn.Module):
    """LayerNorm, then a sparse k=2 s=2 convolution (depthwise by default, as in SPAN's code)."""

    def __init__(
        self, dim: int, depthwise: bool = True, bias: bool = False, init: str = "mean"
    ) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.depthwise = depthwise
        # kernel position = 2 * dy + dx
        if init == "mean":  # every position the identity (see above)
            weight = torch.ones(4, dim) if depthwise else torch.eye(dim).expand(4, dim, dim)
        elif init == "random":  # PyTorch's default for convolutions, as the authors' code
            bound = 1 / math.sqrt(4 if depthwise else 4 * dim)
            weight = torch.empty((4, dim) if depthwise else (4, dim, dim)).uniform_(-bound, bound)
        else:
            raise ValueError(f"downsampling init must be 'mean' or 'random', got {init!r}")
        self.weight = nn.Parameter(weight.clone())
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: torch.Tensor, down: Downsampling) -> torch.Tensor:
        """(N, D) features of the child cells -> (P, D) features of the parent cells."""
        x = self.norm(x)
        out = x.new_zeros((len(down.parent_grid), x.shape[1]))
        if self.depthwise:
            # Per-row kernel weights as a one-hot matmul: its weight gradient is a GEMM, not an
            # index_put that accumulates 100k rows into 4 (slow on CPU).
            positions = nn.functional.one_hot(down.child, 4).to(x.dtype)
            out = out.index_add(0, down.parent, x * (positions @ self.weight))
        else:  # one matmul per kernel position, never a weight copy per cell
            for position in range(4):
                rows = torch.nonzero(down.child == position).squeeze(1)
                out = out.index_add(0, down.parent[rows], x[rows] @ self.weight[position])
        out = out / down.children[:, None].to(x.dtype)
        return out if self.bias is None else out + self.bias
