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

from span.models.layers import ROW_BYTES
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
        params = tuple(
            p for p in (self.norm.weight, self.norm.bias, self.weight) if p.requires_grad
        )
        if torch.is_grad_enabled() and (x.requires_grad or params):
            out = _ChildSum.apply(x, down, self, *params)
        else:
            out = self.child_sum(x, down)
        out = out / down.children[:, None].to(x.dtype)
        return out if self.bias is None else out + self.bias

    def contribution(self, x: torch.Tensor, child: torch.Tensor) -> torch.Tensor:
        """(rows, D) children -> what each adds to its parent: its normalised features times
        the kernel at its position."""
        x = self.norm(x)
        if self.depthwise:
            # Per-row kernel weights as a one-hot matmul: its weight gradient is a GEMM, not an
            # index_put that accumulates the rows into 4 (slow on CPU).
            return x * (nn.functional.one_hot(child, 4).to(x.dtype) @ self.weight)
        out = torch.empty_like(x)  # one matmul per kernel position, never a weight per cell
        for position in range(4):
            rows = torch.nonzero(child == position).squeeze(1)
            out[rows] = x[rows] @ self.weight[position]
        return out

    def child_sum(self, x: torch.Tensor, down: Downsampling) -> torch.Tensor:
        """(P, D): each parent's sum of its children's contributions, in chunks of rows."""
        out = x.new_zeros((len(down.parent_grid), x.shape[1]))
        for rows in _row_chunks(x):
            out.index_add_(0, down.parent[rows], self.contribution(x[rows], down.child[rows]))
        return out


def _row_chunks(x: torch.Tensor) -> list[slice]:
    """ROW_BYTES of x per chunk: every temporary stays small and is reused from the heap."""
    rows = max(64, ROW_BYTES // (x.shape[1] * x.element_size()))
    return [slice(start, start + rows) for start in range(0, len(x), rows)]


class _ChildSum(torch.autograd.Function):
    """`SparseDownsample.child_sum` keeping only x for the backward pass, which recomputes
    each chunk's contributions (no (N, D) temporary ever exists whole)."""

    @staticmethod
    def forward(ctx, x, down, conv, *params):
        ctx.down, ctx.conv = down, conv
        ctx.save_for_backward(x, *params)
        return conv.child_sum(x, down)

    @staticmethod
    def backward(ctx, grad):
        x, *params = ctx.saved_tensors
        down = ctx.down
        dx = torch.empty_like(x) if ctx.needs_input_grad[0] else None
        d_params = [torch.zeros_like(p) for p in params]
        for rows in _row_chunks(x):
            with torch.enable_grad():
                part = x[rows].detach().requires_grad_()
                y = ctx.conv.contribution(part, down.child[rows])
            grads = torch.autograd.grad(y, (part, *params), grad[down.parent[rows]])
            if dx is not None:
                dx[rows] = grads[0]
            for total, g in zip(d_params, grads[1:], strict=True):
                total.add_(g)
        return dx, None, None, *d_params
