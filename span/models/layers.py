"""Layers shared by SPAN and the MIL baselines."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

#: Rows per chunk of `rowwise`: bounds the transient memory of per-token layers.
ROW_CHUNK = 16384
#: Bytes of input per chunk of `rowwise`: with the hidden layers of a feed-forward block (2x
#: wider), every temporary stays below the 4 MB mmap threshold of `span.memory` and is reused
#: from the heap instead of being page-faulted afresh (on CPU, slower than the GEMMs).
ROW_BYTES = 1 << 20


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


def rowwise(fn, x: torch.Tensor, params, rows: int | None = None) -> torch.Tensor:
    """Apply a per-row function of `params` in chunks of rows (default: ROW_BYTES of x each),
    each recomputed in the backward pass, so its intermediate activations never exist for
    all rows at once. The output and the input's gradient are filled chunk by chunk into
    one tensor each (autograd's own split/cat would hold every chunk's gradient at once)."""
    params = tuple(p for p in params if p.requires_grad)  # frozen ones need no gradient
    rows = rows or max(64, ROW_BYTES // (x.shape[1] * x.element_size()))
    if torch.is_grad_enabled() and (x.requires_grad or params):
        return _RowChunks.apply(x, fn, rows, *params)
    return _in_chunks(fn, x, rows)


def _in_chunks(fn, x: torch.Tensor, rows: int, rng_states: list | None = None) -> torch.Tensor:
    """fn over x in chunks of rows, into one output; records each chunk's RNG state."""
    out = None
    for start in range(0, len(x), rows):
        if rng_states is not None:
            rng_states.append(_rng_state(x.device))
        y = fn(x[start : start + rows])
        if out is None:
            out = y.new_empty((len(x), *y.shape[1:]))
        out[start : start + len(y)] = y
    return out


def _rng_state(device: torch.device) -> tuple:
    """The RNG state that dropout on `device` draws from."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


class _RowChunks(torch.autograd.Function):
    """`rowwise` with gradients: the backward pass recomputes each chunk with its recorded
    RNG state (the same dropout masks) and writes its input gradient in place."""

    @staticmethod
    def forward(ctx, x, fn, rows, *params):
        ctx.fn, ctx.rows, ctx.rng_states = fn, rows, []
        ctx.save_for_backward(x, *params)
        return _in_chunks(fn, x, rows, ctx.rng_states)

    @staticmethod
    def backward(ctx, grad):
        x, *params = ctx.saved_tensors
        dx = torch.empty_like(x)
        d_params = [None] * len(params)
        devices = [x.device] if x.device.type == "cuda" else []
        for number, start in enumerate(range(0, len(x), ctx.rows)):
            cpu_state, cuda_state = ctx.rng_states[number]
            with torch.random.fork_rng(devices=devices), torch.enable_grad():
                torch.set_rng_state(cpu_state)
                if cuda_state is not None:
                    torch.cuda.set_rng_state(cuda_state, x.device)
                part = x[start : start + ctx.rows].detach().requires_grad_()
                y = ctx.fn(part)
            g = grad[start : start + len(part)]
            grads = torch.autograd.grad(y, (part, *params), g, allow_unused=True)
            dx[start : start + len(part)] = grads[0]
            for k, gp in enumerate(grads[1:]):
                if gp is not None:
                    d_params[k] = gp if d_params[k] is None else d_params[k].add_(gp)
        return dx, None, None, *d_params


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


#: Activations of the attention branch: Ilse et al.'s tanh, or ReLU (MHIM-MIL's `DAttention`).
ATTENTION_ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}


class AttentionScores(nn.Module):
    """Ilse et al.'s attention MIL scores: w^T act(V h) (plain) or w^T (act(V h) * sigm(U h))
    (gated), one score per instance and branch; act is tanh (Ilse et al.) or ReLU."""

    def __init__(
        self,
        dim: int,
        hidden: int,
        branches: int = 1,
        gated: bool = True,
        dropout: float = 0.0,
        activation: str = "tanh",
        bias: bool = True,
    ) -> None:
        super().__init__()
        if activation not in ATTENTION_ACTIVATIONS:
            raise ValueError(
                f"attention activation must be one of {sorted(ATTENTION_ACTIVATIONS)}, "
                f"got {activation!r}"
            )
        act = ATTENTION_ACTIVATIONS[activation]()
        # `tanh` names the first branch whatever its activation: the state dict keys stay put.
        self.tanh = nn.Sequential(nn.Linear(dim, hidden, bias=bias), act, nn.Dropout(dropout))
        self.gate = (
            nn.Sequential(nn.Linear(dim, hidden, bias=bias), nn.Sigmoid(), nn.Dropout(dropout))
            if gated
            else None
        )
        self.score = nn.Linear(hidden, branches, bias=bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """(N, dim) -> (N, branches) unnormalised scores."""
        a = self.tanh(h)
        if self.gate is not None:
            a = a * self.gate(h)
        return self.score(a)


class AttentionPool(nn.Module):
    """Softmax-attention pooling of instances into one vector (single branch)."""

    def __init__(
        self,
        dim: int,
        hidden: int,
        gated: bool = True,
        dropout: float = 0.0,
        activation: str = "tanh",
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.scores = AttentionScores(dim, hidden, 1, gated, dropout, activation, bias)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, dim) -> pooled (dim,), attention weights (N,)."""
        weights = self.scores(h).squeeze(1).softmax(dim=0)
        return weights @ h, weights
