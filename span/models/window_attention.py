"""Sparse window attention with shifted windows and global tokens (SPAN's transformer layer).

Each token attends, in ONE softmax, to the union of its regular and its shifted window
(deduplicated, itself included) and to the global tokens (or, with `global_attention=
"separate"`, the authors' variant, in a second softmax over the global tokens alone); each
global token attends to all tokens and to the global tokens.

Both directions run in one fused, memory-efficient kernel written in plain PyTorch. Queries,
keys and values stay token-major, (N, 3 D) as the projection writes them, and so do the
output and the gradient. Windows are processed in chunks whose index maps and masks are built
once per forward pass (the backward pass reuses them): a chunk's blocks are gathered
head-major into buffers that every chunk reuses, and its logits start from an additive term
(position bias, -inf on empty or already counted keys) that one batched GEMM accumulates into.
Only q, k, v, the output and one log-sum-exp per token and head are kept for the backward
pass, which recomputes the window logits chunk by chunk (as flash attention does). Memory
therefore grows with N x D, not with N x window^2. The products of the global tokens with all
N tokens are single GEMMs against block-diagonal (one block per head) matrices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from span.models.layers import DropoutLinear, drop_mask, dropout_rescale
from span.models.position import PositionEncoding, position_encoding
from span.models.sparse import WindowLayout, Windows

#: Elements of one chunk's (heads, windows, side^2, side^2) logits: bounds the working memory.
CHUNK_ELEMENTS = 1 << 19


class _Chunk:
    """Consecutive windows of a partition: where their slots read and write, and the additive
    mask of their logits. Empty slots read token N - 1 (their gradients are zero) and all
    write row N, a scratch row of the forward pass's outputs (index_put_, not index_copy_,
    which has no deterministic CUDA kernel for repeated indices)."""

    def __init__(self, number: int, index_map: torch.Tensor, n: int, key_mask: torch.Tensor):
        self.number, self.windows, self.key_mask = number, len(index_map), key_mask
        self.slot = index_map.reshape(-1)  # (c side^2,) token per slot, N when empty
        self.gather = self.slot.clamp(max=n - 1)


class _Partition:
    """One window partition, cut into chunks once per forward pass."""

    def __init__(
        self,
        windows: Windows,
        duplicate: torch.Tensor | None,
        heads: int,
        part: int,
        dtype: torch.dtype,
    ) -> None:
        self.part = part
        index_map, n = windows.index_map, len(windows.window)
        side2 = index_map.shape[1]
        masked = (index_map == n)[:, None, :]  # empty key slots
        if duplicate is not None:  # shifted windows: keys already seen in the regular window
            masked = masked | duplicate[index_map.clamp(max=n - 1)]
        key_mask = torch.zeros(masked.shape, dtype=dtype, device=index_map.device)
        key_mask.masked_fill_(masked, float("-inf"))
        per_chunk = max(1, CHUNK_ELEMENTS // (heads * side2 * side2))
        cuts = [slice(start, start + per_chunk) for start in range(0, len(index_map), per_chunk)]
        self.chunks = [
            _Chunk(number, index_map[cut], n, key_mask[cut]) for number, cut in enumerate(cuts)
        ]


class _Workspace:
    """Buffers that every chunk of one pass reuses: on CPU a fresh allocation of a few MB is
    mapped and page-faulted anew, which costs more than the work done in it."""

    def __init__(self, like: torch.Tensor) -> None:
        self.like, self.buffers = like, {}

    def __call__(self, name: str, *shape: int) -> torch.Tensor:
        """An uninitialised view of buffer `name` with `shape` (grown on demand)."""
        size = math.prod(shape)
        buffer = self.buffers.get(name)
        if buffer is None or len(buffer) < size:
            buffer = self.buffers[name] = self.like.new_empty(size)
        return buffer[:size].view(shape)


@dataclass
class _Setup:
    """What a forward pass shares with its backward pass besides tensors."""

    heads: int
    position: PositionEncoding
    partitions: list[_Partition]
    p: float  # attention dropout (0 in eval mode)
    seed: int  # of the dropout masks, drawn again in the backward pass
    joint: bool = True  # local queries: one softmax over window and global keys (else windows)

    @property
    def rescale(self) -> float:
        """The local weights' dropout rescale, applied once to the output."""
        return dropout_rescale(self.p)

    def generator(self, part: int, number: int, device) -> torch.Generator:
        """The dropout generator of one chunk, seeded from (seed, partition, chunk)."""
        gen = torch.Generator(device=device)
        gen.manual_seed((self.seed + 7919 * part + 104729 * number) % (2**63))
        return gen

    def drop(self, shape, part: int, number: int, device) -> torch.Tensor | None:
        """The dropout mask of one chunk (dropped = True); None without dropout."""
        if self.p == 0.0:
            return None
        return drop_mask(shape, self.p, self.generator(part, number, device), device)[0]

    def keep(self, weights: torch.Tensor, part: int) -> torch.Tensor | None:
        """F.dropout's multiplier (kept / (1 - p), else 0) of the global queries' weights."""
        if self.p == 0.0:
            return None
        gen = self.generator(part, 0, weights.device)
        return torch.empty_like(weights).bernoulli_(1 - self.p, generator=gen).div_(1 - self.p)


def _split_heads(qkv: torch.Tensor, heads: int) -> torch.Tensor:
    """(rows, 3 H dh) token-major qkv -> (3, H, rows, dh) view."""
    return qkv.view(len(qkv), 3, heads, -1).permute(1, 2, 0, 3)


def _block_diagonal(t: torch.Tensor) -> torch.Tensor:
    """(H, G, dh) -> (H G, H dh), row (h, g) holding t[h, g] in head h's columns: one GEMM
    with a token-major (N, H dh) tensor then acts head by head."""
    return torch.block_diag(*t)


def _per_token(t: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """(N, H dh) token-major rows . (H, G, dh) global rows, per head -> (N, H G): one GEMM
    with the token-major operand first (several times faster than with it transposed)."""
    return t @ _block_diagonal(g).T


def _diagonal_blocks(t: torch.Tensor, heads: int) -> torch.Tensor:
    """(H G, H dh) product -> its (H, G, dh) per-head blocks (the inverse of the above)."""
    return t.view(heads, len(t) // heads, heads, -1).diagonal(dim1=0, dim2=2).permute(2, 0, 1)


def _head_major(t: torch.Tensor, scratch: float) -> torch.Tensor:
    """(N, H) -> contiguous (H, N + 1) with column N = scratch (what empty slots read)."""
    out = t.new_full((t.shape[1], len(t) + 1), scratch)
    out[:, :-1] = t.t()
    return out


class _Windows:
    """The chunk loop over the window partitions of one layer call, forward and backward."""

    def __init__(self, qkv, bias, cells, setup: _Setup) -> None:
        self.qkv, self.bias, self.cells, self.setup = qkv, bias, cells, setup
        self.heads, self.workspace = setup.heads, _Workspace(qkv)

    def gather(self, t: torch.Tensor, groups: int, chunk: _Chunk, name: str) -> torch.Tensor:
        """The chunk's rows of token-major (N, groups H dh) t -> head-major (groups, H c,
        side^2, dh) in buffer `name`: one contiguous gather and one permuted copy (gathering
        from a head-major view of t takes a several times slower strided path)."""
        rows, width = len(chunk.gather), t.shape[1]
        staged = self.workspace("staged", rows, width)
        torch.index_select(t, 0, chunk.gather, out=staged)
        split = staged.view(rows, groups, self.heads, -1).permute(1, 2, 0, 3)
        blocks = self.workspace(name, *split.shape).copy_(split)
        return blocks.view(groups, self.heads * chunk.windows, rows // chunk.windows, -1)

    def blocks(self, chunk: _Chunk) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v (H c, side^2, dh) of the chunk's windows; q and k rotated under RoPE."""
        blocks = self.gather(self.qkv, 3, chunk, "qkv")
        if self.setup.position.rotates:
            cells = self.cells[chunk.gather]
            rotated = blocks[:2].view(2, self.heads, len(cells), -1)
            rotated.copy_(self.setup.position.rotate(rotated, cells))
        return blocks.unbind(0)

    def logits(self, q: torch.Tensor, k: torch.Tensor, chunk: _Chunk) -> torch.Tensor:
        """Biased, masked window logits (H c, side^2, side^2); queries come pre-scaled."""
        hc, side2, _ = q.shape
        logits = self.workspace("logits", self.heads, chunk.windows, side2, side2)
        if self.bias is None:
            logits.copy_(chunk.key_mask.expand_as(logits))
        else:
            torch.add(self.bias[:, None], chunk.key_mask, out=logits)
        return logits.view(hc, side2, side2).baddbmm_(q, k.transpose(1, 2))

    def drop(self, part: _Partition, chunk: _Chunk, logits: torch.Tensor) -> torch.Tensor | None:
        """The chunk's dropout mask, shaped like its logits."""
        shape = (self.heads, chunk.windows, *logits.shape[1:])
        mask = self.setup.drop(shape, part.part, chunk.number, logits.device)
        return None if mask is None else mask.view(logits.shape)

    def forward(self, part: _Partition):
        """Softmax statistics of one partition per token and head, with scratch row N:
        (max logit (N + 1, H), sum of exp (N + 1, H), unnormalised output (N + 1, D) with
        dropped weights zeroed and NOT rescaled)."""
        n, heads = len(self.qkv), self.heads
        top, total = self.qkv.new_empty((n + 1, heads)), self.qkv.new_empty((n + 1, heads))
        out = self.qkv.new_empty((n + 1, self.qkv.shape[1] // 3))
        for chunk in part.chunks:
            q, k, v = self.blocks(chunk)
            e = self.logits(q, k, chunk)
            m = e.amax(dim=-1)
            e.sub_(torch.nan_to_num(m, neginf=0.0)[..., None]).exp_()  # in place: no temporaries
            top.index_put_((chunk.slot,), m.view(heads, -1).t())
            total.index_put_((chunk.slot,), e.sum(-1).view(heads, -1).t())
            drop = self.drop(part, chunk, e)
            if drop is not None:
                e.masked_fill_(drop, 0.0)
            self.scatter(out, chunk, torch.bmm(e, v, out=self.workspace("out", *v.shape)))
        return top, total, out

    def scatter(self, out: torch.Tensor, chunk: _Chunk, blocks: torch.Tensor) -> None:
        """out[slots] = head-major (H c, side^2, dh) blocks, out token-major (N + 1, D)."""
        rows = len(chunk.slot)
        staged = self.workspace("staged", rows, out.shape[1])
        staged.view(rows, self.heads, -1).copy_(blocks.view(self.heads, rows, -1).transpose(0, 1))
        out.index_put_((chunk.slot,), staged)

    def backward(self, part: _Partition, d_out, lse, delta, d_qkv, d_bias) -> None:
        """Add one partition's gradients, divided by the dropout rescale, into d_qkv (N, 3 D)
        and d_bias; lse and delta come head-major, (H, N + 1)."""
        for chunk in part.chunks:
            q, k, v = self.blocks(chunk)
            hc, side2, dh = q.shape
            d_o = self.gather(d_out, 1, chunk, "d_out")[0]
            a = self.logits(q, k, chunk)
            a.sub_(lse.index_select(1, chunk.slot).view(hc, side2, 1)).exp_()  # empty rows: 0
            drop = self.drop(part, chunk, a)
            ds = torch.bmm(d_o, v.transpose(1, 2), out=self.workspace("ds", hc, side2, side2))
            if drop is not None:
                ds.masked_fill_(drop, 0.0)
            ds.sub_(delta.index_select(1, chunk.slot).view(hc, side2, 1)).mul_(a)  # d(logits)
            if drop is not None:
                a.masked_fill_(drop, 0.0)
            grads = self.workspace("grads", 3, hc, side2, dh)
            torch.bmm(ds, k, out=grads[0])
            torch.bmm(ds.transpose(1, 2), q, out=grads[1])
            torch.bmm(a.transpose(1, 2), d_o, out=grads[2])
            if d_bias is not None:
                d_bias += ds.view(self.heads, chunk.windows, side2, side2).sum(1)
            grads = grads.view(3, self.heads, -1, dh)
            if self.setup.position.rotates:
                cells = self.cells[chunk.gather]
                grads[:2] = self.setup.position.rotate(grads[:2], cells, inverse=True)
            _split_heads(d_qkv, self.heads).index_add_(2, chunk.gather, grads)


def _merge_into(stats, top_b, total_b, out_b=None, weights_b=None, values_b=None):
    """Combine running softmax statistics (rows, H), (rows, H), (rows, D) with those of a
    disjoint key set (online-softmax rule), in place. The second set's output is out_b, or
    weights_b (rows, H, G) @ block-diagonal values_b (H G, D). The running maximum is finite
    for every token (a token always sees itself)."""
    top_a, total_a, out_a = stats
    top = torch.maximum(top_a, top_b)
    wa, wb = (top_a - top).exp_(), (top_b - top).exp_()  # exp(-inf) = 0: no keys in b
    total_a.mul_(wa).add_(total_b * wb)
    heads_a = out_a.view(*wa.shape, -1)
    heads_a.mul_(wa[..., None])
    if out_b is not None:
        heads_a.addcmul_(out_b.view(heads_a.shape), wb[..., None])
    else:
        out_a.addmm_((weights_b * wb[..., None]).flatten(1), values_b)
    return top, total_a, out_a


def _global_key_logits(qkv: torch.Tensor, gqkv: torch.Tensor) -> torch.Tensor:
    """(N, H, G) logits of the local queries over the global keys."""
    heads, g = gqkv.shape[1:3]
    return _per_token(qkv.chunk(3, dim=1)[0], gqkv[1]).view(len(qkv), heads, g)


def _global_key_drop(setup: _Setup, n: int, g: int, device) -> torch.Tensor | None:
    """The dropout mask of the local queries' global-key weights, (N, H, G)."""
    mask = setup.drop((setup.heads, n, g), len(setup.partitions), 0, device)
    return None if mask is None else mask.transpose(0, 1)


def _local_forward(qkv, gqkv, bias, cells, setup: _Setup):
    """Local queries over their windows and the global keys: output (N, D) and log-sum-exp
    (H, N + 1) with column N = inf."""
    n, heads = len(qkv), setup.heads
    windows = _Windows(qkv, bias, cells, setup)
    stats = None
    for part in setup.partitions:  # each token sits in exactly one window of a partition
        part_stats = windows.forward(part)
        stats = part_stats if stats is None else _merge_into(stats, *part_stats)
    stats = tuple(t[:n] for t in stats)
    if gqkv is not None and setup.joint:
        e = _global_key_logits(qkv, gqkv)
        top = e.amax(dim=-1)
        total = e.sub_(top[..., None]).exp_().sum(-1)
        drop = _global_key_drop(setup, n, e.shape[2], qkv.device)
        if drop is not None:
            e.masked_fill_(drop, 0.0)
        stats = _merge_into(stats, top, total, weights_b=e, values_b=_block_diagonal(gqkv[2]))
    top, total, out = stats
    out.view(n, heads, -1).div_((total / setup.rescale)[..., None])
    return out, _head_major(top + torch.log(total), float("inf"))


def _local_backward(qkv, gqkv, bias, cells, out, lse, d_out, setup: _Setup, d_qkv, d_gqkv):
    """Gradients of the local queries' attention, added in place; returns the bias gradient."""
    n, heads, rescale = len(qkv), setup.heads, setup.rescale
    d_out = d_out.contiguous()
    # rowsum(dA * A) of the softmax backward, divided by the dropout rescale: the local
    # gradients below are computed without the rescale, which is applied once at the end.
    delta = (d_out * out).view(n, heads, -1).sum(-1).div_(rescale)  # (N, H)
    d_bias = None if bias is None else torch.zeros_like(bias)
    windows = _Windows(qkv, bias, cells, setup)
    delta_heads = _head_major(delta, 0.0)
    for part in setup.partitions:
        windows.backward(part, d_out, lse, delta_heads, d_qkv, d_bias)
    if rescale != 1.0:
        d_qkv.mul_(rescale)
        if d_bias is not None:
            d_bias.mul_(rescale)
    if gqkv is not None and setup.joint:
        _global_key_backward(qkv, gqkv, d_out, lse[:, :n].t(), delta, setup, d_qkv, d_gqkv)
    return d_bias


def _global_key_backward(qkv, gqkv, d_out, lse, delta, setup: _Setup, d_qkv, d_gqkv) -> None:
    """Gradients of the local queries' attention to the global keys, added in place."""
    heads, rescale = setup.heads, setup.rescale
    q = qkv.chunk(3, dim=1)[0]
    n, g = len(q), gqkv.shape[2]
    a = _global_key_logits(qkv, gqkv).sub_(lse[..., None]).exp_()
    da = _per_token(d_out, gqkv[2]).view(n, heads, g)
    drop = _global_key_drop(setup, n, g, qkv.device)
    if drop is not None:
        da.masked_fill_(drop, 0.0)
    ds = a * (da - delta[..., None]) * rescale
    if drop is not None:
        a.masked_fill_(drop, 0.0)
    a.mul_(rescale)
    d_gqkv[1] += _diagonal_blocks(ds.flatten(1).T @ q, heads)
    d_gqkv[2] += _diagonal_blocks(a.flatten(1).T @ d_out, heads)
    d_qkv.chunk(3, dim=1)[0].addmm_(ds.flatten(1), _block_diagonal(gqkv[1]))


def _global_query_logits(qkv: torch.Tensor, gqkv: torch.Tensor) -> torch.Tensor:
    """(H, G, N + G) logits of the global queries over all tokens, then the global tokens."""
    gq, gk = gqkv[0], gqkv[1]
    heads, g, _ = gq.shape
    local = _per_token(qkv.chunk(3, dim=1)[1], gq).T.view(heads, g, -1)
    return torch.cat([local, gq @ gk.transpose(-1, -2)], dim=-1)


def _global_forward(qkv, gqkv, setup: _Setup) -> tuple[torch.Tensor, torch.Tensor]:
    """Global queries over all tokens and the global tokens: softmax weights (H, G, N + G)
    before dropout (kept for the backward pass) and output (G, D)."""
    n = len(qkv)
    weights = _global_query_logits(qkv, gqkv).softmax(dim=-1)
    keep = setup.keep(weights, len(setup.partitions) + 1)
    kept = weights if keep is None else weights * keep
    out = _diagonal_blocks(kept[..., :n].flatten(0, 1) @ qkv.chunk(3, dim=1)[2], setup.heads)
    out += kept[..., n:] @ gqkv[2]  # (H, G, dh)
    return weights, out.transpose(0, 1).flatten(1)


def _global_backward(qkv, gqkv, weights, d_gout, setup: _Setup, d_qkv, d_gqkv) -> None:
    """Gradients of the global queries' attention, added in place."""
    n, heads = len(qkv), setup.heads
    _, k, v = qkv.chunk(3, dim=1)
    gq, gk, gv = gqkv
    dg = d_gout.view(len(d_gout), heads, -1).transpose(0, 1)  # (H, G, dh)
    d_kept = torch.cat(
        [_per_token(v, dg).T.view(*weights.shape[:2], n), dg @ gv.transpose(-1, -2)], -1
    )
    keep = setup.keep(weights, len(setup.partitions) + 1)
    kept = weights if keep is None else weights * keep
    if keep is not None:
        d_kept.mul_(keep)
    d_logits = weights * (d_kept - (d_kept * weights).sum(-1, keepdim=True))
    d_local, d_global = d_logits[..., :n].flatten(0, 1), d_logits[..., n:]
    d_gqkv[0] += _diagonal_blocks(d_local @ k, heads) + d_global @ gk
    d_gqkv[1] += d_global.transpose(-1, -2) @ gq
    d_gqkv[2] += kept[..., n:].transpose(-1, -2) @ dg
    _, d_k, d_v = d_qkv.chunk(3, dim=1)
    d_k.addmm_(d_local.T, _block_diagonal(gq))
    d_v.addmm_(kept[..., :n].flatten(0, 1).T, _block_diagonal(dg))


class _WindowAttention(torch.autograd.Function):
    """softmax over (regular window  U  shifted window  U  global tokens), then values, for
    the local queries; softmax over all tokens and the global tokens for the global queries.

    Takes token-major (N, 3 D) qkv with pre-scaled queries and (3, H, G, dh) global qkv;
    returns the local output (N, D) and the global one (G, D) (None without global tokens).
    The forward pass merges the partitions' and the global keys' (max, sum, output) per
    token and head, as online softmax does; the backward pass recomputes each chunk's
    probabilities from the saved log-sum-exp. The local dropout rescale is applied once to
    the output (and once to the gradients), not per chunk. Global tokens get no position term.
    """

    @staticmethod
    def forward(ctx, qkv, gqkv, bias, cells, setup: _Setup):
        out, lse = _local_forward(qkv, gqkv, bias, cells, setup)
        weights, g_out = (None, None) if gqkv is None else _global_forward(qkv, gqkv, setup)
        ctx.save_for_backward(qkv, gqkv, bias, cells, out, lse, weights)
        ctx.setup = setup
        ctx.set_materialize_grads(False)  # an unused output costs no backward work
        return out, g_out

    @staticmethod
    def backward(ctx, d_out, d_gout):
        qkv, gqkv, bias, cells, out, lse, weights = ctx.saved_tensors
        d_qkv = torch.zeros_like(qkv)
        d_gqkv = None if gqkv is None else torch.zeros_like(gqkv)
        d_bias = None
        if d_out is not None:
            args = (qkv, gqkv, bias, cells, out, lse, d_out, ctx.setup, d_qkv, d_gqkv)
            d_bias = _local_backward(*args)
        if d_gout is not None:
            _global_backward(qkv, gqkv, weights, d_gout, ctx.setup, d_qkv, d_gqkv)
        return d_qkv, d_gqkv, d_bias, None, None


#: How local queries weigh the global tokens: "joint" = in the one softmax of their window
#: keys (this project's default); "separate" = the SPAN authors' released code: a second softmax
#: over the global keys alone, its output added to the window attention's (one global token
#: then reaches every patch with weight 1), and global tokens with their own q/k/v projection.
GLOBAL_ATTENTION = ("joint", "separate")


class SparseWindowAttention(nn.Module):
    """Pre-norm multi-head attention over window neighbourhoods plus global tokens."""

    def __init__(
        self,
        dim: int,
        heads: int,
        side: int,
        position: str = "rpb",
        rope_theta: float = 10000.0,
        attn_dropout: float = 0.0,
        proj_dropout: float = 0.0,
        global_attention: str = "joint",
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"embedding dim {dim} is not divisible by {heads} heads")
        if global_attention not in GLOBAL_ATTENTION:
            raise ValueError(
                f"global_attention must be one of {GLOBAL_ATTENTION}, got {global_attention!r}"
            )
        self.heads, self.head_dim, self.side = heads, dim // heads, side
        self.scale = self.head_dim**-0.5
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.joint = global_attention == "joint"
        if not self.joint:  # the global tokens' own projection
            self.global_norm = nn.LayerNorm(dim)
            self.global_qkv = nn.Linear(dim, 3 * dim)
        self.proj = DropoutLinear(dim, dim, proj_dropout)
        self.attn_dropout = attn_dropout
        self.position = position_encoding(position, heads, side, self.head_dim, rope_theta)

    def project(self, x: torch.Tensor, tokens: bool = False) -> torch.Tensor:
        """(N, D) residual stream -> token-major (N, 3 D) queries (already multiplied by
        1 / sqrt(dh)), keys and values; `tokens`: of global tokens (their own projection
        under separate global attention)."""
        norm, qkv = (
            (self.global_norm, self.global_qkv)
            if tokens and not self.joint
            else (
                self.norm,
                self.qkv,
            )
        )
        # Scaling the query rows of the weights avoids a pass over q or over the logits.
        dim = self.heads * self.head_dim
        weight, bias = (torch.cat([t[:dim] * self.scale, t[dim:]]) for t in (qkv.weight, qkv.bias))
        return F.linear(norm(x), weight, bias)

    def split_heads(self, qkv: torch.Tensor) -> torch.Tensor:
        """(N, 3 D) from `project` -> (3, H, N, dh) view of q, k and v per head."""
        return _split_heads(qkv, self.heads)

    def forward(
        self,
        x: torch.Tensor,
        tokens: torch.Tensor | None,
        grid: torch.Tensor,
        layout: WindowLayout,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (N, D) local tokens, tokens (G, D) global tokens or None -> updated (x, tokens)."""
        qkv = self.project(x)
        partitions = [_Partition(layout.regular, None, self.heads, 0, qkv.dtype)]
        if layout.shifted is not None:
            shifted = _Partition(layout.shifted, layout.duplicate, self.heads, 1, qkv.dtype)
            partitions.append(shifted)
        gqkv = None if tokens is None else self.split_heads(self.project(tokens, tokens=True))
        cells = (grid - grid.min(dim=0).values).float() if self.position.rotates else None
        p = self.attn_dropout if self.training else 0.0
        seed = int(torch.randint(0, 2**62, (1,))) if p > 0 else 0
        setup = _Setup(self.heads, self.position, partitions, p, seed, self.joint)
        bias = self.position.block_bias()
        out, g_out = _WindowAttention.apply(qkv, gqkv, bias, cells, setup)
        if gqkv is not None and not self.joint:
            out = out + self._separate_global_values(qkv, gqkv, p)
        return self.proj(out), (None if g_out is None else self.proj(g_out))

    def _separate_global_values(
        self, qkv: torch.Tensor, gqkv: torch.Tensor, p: float
    ) -> torch.Tensor:
        """(N, D): each local query's own softmax over the global keys, times their values (G
        is small: plain autograd)."""
        q = qkv[:, : self.heads * self.head_dim].view(len(qkv), self.heads, self.head_dim)
        weights = torch.einsum("nhd,hgd->nhg", q, gqkv[1]).softmax(dim=-1)
        weights = F.dropout(weights, p, training=p > 0)
        return torch.einsum("nhg,hgd->nhd", weights, gqkv[2]).reshape(len(qkv), -1)
