"""Layers shared by SPAN and the MIL baselines."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

#: Rows per chunk of `rowwise`: bounds the transient memory of per-token layers.
ROW_CHUNK = 16384
#: Rows per chunk of `centered_linear` (16 MB of 1024-d float32 input).
CENTERED_ROWS = 4096
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
        drop, rescale = self.output_mask(x.shape[:-1], x.device)
        weight, bias = self.scaled(rescale, input_rescale)
        y = F.linear(x, weight, bias)
        return y if drop is None else y.masked_fill_(drop, 0.0)

    def output_mask(self, rows: torch.Size, device) -> tuple[torch.Tensor | None, float]:
        """Draw the dropout mask of an output with leading dimensions `rows` (None when not
        dropping) and its rescale."""
        if not self.training or self.p == 0.0:
            return None, 1.0
        return drop_mask((*rows, self.out_features), self.p, device=device)

    def scaled(self, rescale: float, input_rescale: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Weight and bias with the output's and the input's dropout rescales folded in."""
        scale = rescale * input_rescale
        weight = self.weight if scale == 1.0 else self.weight * scale
        bias = self.bias if rescale == 1.0 or self.bias is None else self.bias * rescale
        return weight, bias


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


def _set_rng_state(state: tuple, device: torch.device) -> None:
    """Restore a state recorded by `_rng_state`."""
    cpu_state, cuda_state = state
    torch.set_rng_state(cpu_state)
    if cuda_state is not None:
        torch.cuda.set_rng_state(cuda_state, device)


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
            with torch.random.fork_rng(devices=devices), torch.enable_grad():
                _set_rng_state(ctx.rng_states[number], x.device)
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
        return self.fc2(*self.hidden(x))

    def hidden(self, x: torch.Tensor) -> tuple[torch.Tensor, float]:
        """The hidden layer, dropped units zeroed but not rescaled, and the rescale (which
        fc2 folds into its weights)."""
        h = self.fc1(x)
        if not self.training or self.p == 0.0:
            return h.relu_(), 1.0
        drop, rescale = drop_mask(h.shape, self.p, device=h.device)
        return h.masked_fill_(drop, 0.0).relu_(), rescale


def feed_forward_residual(norm: nn.LayerNorm, ffn: FeedForward, x: torch.Tensor) -> torch.Tensor:
    """x + ffn(norm(x)), as `rowwise` computes it (same chunks, same dropout masks), but the
    backward pass recomputes each chunk only up to the hidden layer: fc2's gradients need its
    input, not its output, and the dropout masks fold into the ReLU's."""
    rows = max(64, ROW_BYTES // (x.shape[1] * x.element_size()))
    params = (norm.weight, norm.bias, ffn.fc1.weight, ffn.fc1.bias, ffn.fc2.weight, ffn.fc2.bias)
    if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params)):
        return _FeedForwardResidual.apply(x, norm, ffn, rows, *params)
    return _in_chunks(lambda part: part + ffn(norm(part)), x, rows)


class _FeedForwardResidual(torch.autograd.Function):
    """`feed_forward_residual` with gradients (LayerNorm with affine parameters and biases)."""

    @staticmethod
    def forward(ctx, x, norm, ffn, rows, *params):
        ctx.norm, ctx.ffn, ctx.rows, ctx.rng_states = norm, ffn, rows, []
        ctx.save_for_backward(x, *params)
        return _in_chunks(lambda part: part + ffn(norm(part)), x, rows, ctx.rng_states)

    @staticmethod
    def backward(ctx, grad):
        x, *params = ctx.saved_tensors
        grads = [torch.zeros_like(p) for p in params]
        dx = torch.empty_like(x)
        devices = [x.device] if x.device.type == "cuda" else []
        for number, start in enumerate(range(0, len(x), ctx.rows)):
            rows = slice(start, start + ctx.rows)
            with torch.random.fork_rng(devices=devices):
                _set_rng_state(ctx.rng_states[number], x.device)
                dx[rows] = _feed_forward_chunk_backward(
                    ctx.norm, ctx.ffn, x[rows], grad[rows], grads
                )
        needs = ctx.needs_input_grad[4:]
        return (
            dx,
            None,
            None,
            None,
            *(g if need else None for g, need in zip(grads, needs, strict=True)),
        )


def _feed_forward_chunk_backward(norm, ffn, x, grad, grads) -> torch.Tensor:
    """One chunk of x + ffn(norm(x)): recompute, add the parameters' gradients into `grads`
    (norm, fc1, fc2 weight and bias), return x's gradient. Draws the forward's dropout masks
    again, in the forward's order."""
    d_norm_w, d_norm_b, d_w1, d_b1, d_w2, d_b2 = grads
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_() for t in (x, norm.weight, norm.bias)]
        normed = F.layer_norm(leaves[0], norm.normalized_shape, leaves[1], leaves[2], norm.eps)
    with torch.no_grad():
        h, hidden_rescale = ffn.hidden(normed.detach())
        drop, rescale = ffn.fc2.output_mask(grad.shape[:-1], grad.device)
        weight, _ = ffn.fc2.scaled(rescale, hidden_rescale)
        d_y = grad if drop is None else grad.masked_fill(drop, 0.0)
        d_w2.addmm_(d_y.T, h, alpha=rescale * hidden_rescale)
        d_b2.add_(d_y.sum(0), alpha=rescale)
        # ReLU's backward (its ATen op: the fastest mask) also applies the hidden dropout,
        # since h = 0 wherever either cut a unit.
        d_h = torch.ops.aten.threshold_backward(d_y @ weight, h, 0)
        d_w1.addmm_(d_h.T, normed.detach())
        d_b1.add_(d_h.sum(0))
        d_normed = d_h @ ffn.fc1.weight
    d_x, d_gamma, d_beta = torch.autograd.grad(normed, leaves, d_normed)
    d_norm_w.add_(d_gamma)
    d_norm_b.add_(d_beta)
    return d_x.add_(grad)


def centered_linear(linear: nn.Linear, x: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    """linear(x - center) without x - center ever existing whole: it is formed in chunks of
    rows, in the forward pass and again for the weight's gradient. For a slide's features
    the centred copy would cost as much memory as the features themselves."""
    return _CenteredLinear.apply(x, center, linear.weight, linear.bias)


def _centered_chunks(x: torch.Tensor, center: torch.Tensor):
    """(row slice, x[rows] - center) over x, CENTERED_ROWS rows at a time in one buffer."""
    buffer = x.new_empty((min(CENTERED_ROWS, len(x)), x.shape[1]))
    for start in range(0, len(x), CENTERED_ROWS):
        rows = slice(start, min(start + CENTERED_ROWS, len(x)))
        yield rows, torch.sub(x[rows], center, out=buffer[: rows.stop - start])


class _CenteredLinear(torch.autograd.Function):
    """`centered_linear` with gradients."""

    @staticmethod
    def forward(ctx, x, center, weight, bias):
        ctx.save_for_backward(x, center, weight)
        out = x.new_empty((len(x), len(weight)))
        for rows, centered in _centered_chunks(x, center):
            if bias is None:
                torch.mm(centered, weight.T, out=out[rows])
            else:
                torch.addmm(bias, centered, weight.T, out=out[rows])
        return out

    @staticmethod
    def backward(ctx, grad):
        x, center, weight = ctx.saved_tensors
        need_x, need_center, need_weight, need_bias = ctx.needs_input_grad
        d_x = grad @ weight if need_x or need_center else None
        d_center = -d_x.sum(0, keepdim=True) if need_center else None
        d_weight = None
        if need_weight:
            d_weight = torch.zeros_like(weight)
            for rows, centered in _centered_chunks(x, center):
                d_weight.addmm_(grad[rows].T, centered)
        d_bias = grad.sum(0) if need_bias else None
        return (d_x if need_x else None), d_center, d_weight, d_bias


class InstanceEncoder(nn.Sequential):
    """Linear(in, hidden) + ReLU + dropout: the instance embedding of ABMIL, CLAM, DTFD-MIL
    and TransMIL (MHIM-MIL through its ABMIL or TransMIL student)."""

    def __init__(self, in_dim: int, hidden: int, dropout: float, bias: bool = True) -> None:
        super().__init__(nn.Linear(in_dim, hidden, bias=bias), nn.ReLU(), nn.Dropout(dropout))


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
