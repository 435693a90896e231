"""Sparse window attention with shifted windows and global tokens (SPAN's transformer layer).

Each token attends, in ONE softmax, to the union of its regular and its shifted window
(deduplicated, itself included) and to the global tokens; each global token attends to all
tokens and to the global tokens.

The local part is a fused, memory-efficient kernel written in plain PyTorch: windows are
processed in chunks, keys and values are gathered once per window partition through the
index maps of `span.models.sparse`, and only q, k, v, the output and one log-sum-exp per
token and head are kept for the backward pass, which recomputes the window logits chunk by
chunk (as flash attention does). Memory therefore grows with N x D, not with N x window^2.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from span.models.layers import DropoutLinear, drop_mask, dropout_rescale
from span.models.position import position_encoding
from span.models.sparse import WindowLayout, Windows

#: Elements of one chunk's (windows, heads, side^2, side^2) logits: bounds the working memory.
#: 2 MB of float32 (and blocks of q, k or v smaller still) stay below the 4 MB mmap threshold
#: of `span.memory`, so chunk buffers are reused from the heap instead of being mapped (and
#: page-faulted) afresh for every chunk, which on CPU costs more than the arithmetic.
CHUNK_ELEMENTS = 1 << 19


class _Partition:
    """One window partition, processed in chunks of windows."""

    def __init__(self, windows: Windows, duplicate: torch.Tensor | None, heads: int, part: int):
        self.index_map, self.part = windows.index_map, part
        s2 = self.index_map.shape[1]
        self.per_chunk = max(1, CHUNK_ELEMENTS // (heads * s2 * s2))
        self.n = len(windows.window)
        self.duplicate = duplicate  # (N, side^2) keys already seen (shifted partition only)

    def chunks(self):
        """(number, token indices (c, side^2) clamped into range, key mask (c, s^2, s^2),
        valid query slots (c, side^2)): empty slots point at token N - 1 and are masked."""
        for number, start in enumerate(range(0, len(self.index_map), self.per_chunk)):
            idx = self.index_map[start : start + self.per_chunk]
            valid = idx < self.n
            safe = idx.clamp(max=self.n - 1)
            mask = ~valid[:, None, :]
            if self.duplicate is not None:
                mask = mask | self.duplicate[safe]
            yield number, safe, mask, valid


def _drop_mask(shape, p: float, seed: int, part: int, number: int, device):
    """The dropout mask of one chunk (dropped = True), regenerated identically in the
    backward pass from (seed, partition, chunk); None without dropout."""
    if p == 0.0:
        return None
    gen = torch.Generator(device=device)
    gen.manual_seed((seed + 7919 * part + 104729 * number) % (2**63))
    return drop_mask(shape, p, gen, device)[0]


def _gather(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """(H, N, ...) head-major tensor, (c, side^2) indices -> (H, c, side^2, ...)."""
    return t.index_select(1, idx.reshape(-1)).view(t.shape[0], *idx.shape, *t.shape[2:])


class _Blocks:
    """Window blocks of the head-major (3, H, N, dh) qkv; q and k rotated when RoPE is on."""

    def __init__(self, qkv: torch.Tensor, position, cells: torch.Tensor | None) -> None:
        self.qkv, self.position, self.cells = qkv, position, cells

    def get(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(c, side^2) token indices -> (H, c, side^2, dh) blocks of q, k and v (three gathers:
        each stays below the mmap threshold, one for all three would not)."""
        q, k, v = (_gather(t, idx) for t in self.qkv)
        if self.position.rotates:
            cells = self.cells[idx]
            q, k = self.position.rotate(q, cells), self.position.rotate(k, cells)
        return q, k, v

    def unrotate(self, grad: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
        """(H, rows, dh) gradient w.r.t. rotated q or k -> w.r.t. the stored ones."""
        if not self.position.rotates:
            return grad
        return self.position.rotate(grad, self.cells[flat], inverse=True)


def _logits(qb, kb, mask, bias) -> torch.Tensor:
    """Biased, masked window logits (H, c, side^2, side^2) of one chunk (a new tensor the
    caller may modify in place); queries come pre-scaled."""
    s = qb @ kb.transpose(-1, -2)
    if bias is not None:
        s.add_(bias)
    return s.masked_fill_(mask, float("-inf"))


def _local_stats(blocks, part: _Partition, bias, p: float, seed: int):
    """Softmax statistics of one window partition per head and token: (max logit, sum of
    exp, unnormalised output with dropped weights zeroed and NOT rescaled)."""
    heads, n, dh = blocks.qkv.shape[1:]
    top = blocks.qkv.new_empty((heads, n))
    total = blocks.qkv.new_empty((heads, n))
    out = blocks.qkv.new_empty((heads, n, dh))
    for number, idx, mask, valid in part.chunks():
        qb, kb, vb = blocks.get(idx)
        e = _logits(qb, kb, mask, bias)  # (H, c, side^2, side^2)
        m = e.amax(dim=-1)
        e.sub_(torch.nan_to_num(m, neginf=0.0)[..., None]).exp_()  # in place: no temporaries
        rows = valid.reshape(-1)
        tokens = idx.reshape(-1)[rows]
        top[:, tokens] = m.flatten(1)[:, rows]
        total[:, tokens] = e.sum(-1).flatten(1)[:, rows]
        drop = _drop_mask(e.shape, p, seed, part.part, number, e.device)
        if drop is not None:
            e.masked_fill_(drop, 0.0)
        out[:, tokens] = (e @ vb).flatten(1, 2)[:, rows]
    return top, total, out


def _merge_into(stats, top_b, total_b, out_b=None, weights_b=None, values_b=None):
    """Combine running softmax statistics with those of a disjoint key set (online-softmax
    rule), in place. The second set's output is out_b, or weights_b @ values_b. The running
    maximum is finite for every row (a token always sees itself)."""
    top_a, total_a, out_a = stats
    top = torch.maximum(top_a, top_b)
    wa, wb = (top_a - top).exp_(), (top_b - top).exp_()  # exp(-inf) = 0: no keys in b
    total_a.mul_(wa).add_(total_b * wb)
    out_a.mul_(wa[..., None])
    if out_b is not None:
        out_a.addcmul_(out_b, wb[..., None])
    else:
        out_a.baddbmm_(weights_b * wb[..., None], values_b)
    return top, total_a, out_a


class _WindowAttention(torch.autograd.Function):
    """softmax over (regular window  U  shifted window  U  global tokens), then values.

    Works on head-major (3, H, N, dh) qkv with pre-scaled queries (blocks gather
    contiguously) and returns its gradient in the same layout. The forward pass merges the
    partitions' and the global tokens' (max, sum, output) per head and token, as online
    softmax does; the backward pass recomputes each chunk's probabilities from the saved
    log-sum-exp. The dropout rescale is applied once to the output (and once to the
    gradients), not per chunk. Global tokens get no position term.
    """

    @staticmethod
    def forward(ctx, qkv, gqkv, bias, position, cells, partitions, p, seed):
        blocks = _Blocks(qkv, position, cells)
        bias = None if bias is None else bias[:, None]
        stats = None
        for part in partitions:  # each token sits in exactly one window of a partition
            part_stats = _local_stats(blocks, part, bias, p, seed)
            stats = part_stats if stats is None else _merge_into(stats, *part_stats)
        if gqkv is not None:
            e = qkv[0] @ gqkv[1].transpose(-1, -2)  # (H, N, G)
            top = e.amax(dim=-1)
            e.sub_(top[..., None]).exp_()
            total = e.sum(-1)
            drop = _drop_mask(e.shape, p, seed, len(partitions), 0, qkv.device)
            if drop is not None:
                e.masked_fill_(drop, 0.0)
            stats = _merge_into(stats, top, total, weights_b=e, values_b=gqkv[2])
        top, total, out = stats
        rescale = dropout_rescale(p)
        out.div_((total / rescale)[..., None])
        lse = top + torch.log(total)
        ctx.save_for_backward(qkv, gqkv, bias, cells, out, lse)
        ctx.position, ctx.partitions, ctx.p, ctx.seed = position, partitions, p, seed
        ctx.rescale = rescale
        return out

    @staticmethod
    def backward(ctx, d_out):
        qkv, gqkv, bias, cells, out, lse = ctx.saved_tensors
        p, seed, rescale = ctx.p, ctx.seed, ctx.rescale
        blocks = _Blocks(qkv, ctx.position, cells)
        d_out = d_out.contiguous()
        # rowsum(dA * A) of the softmax backward, divided by the dropout rescale: the local
        # gradients below are computed without the rescale, which is applied once at the end.
        delta = (d_out * out).sum(-1).div_(rescale)  # (H, N)
        d_qkv = torch.zeros_like(qkv)
        dbias = None if bias is None else torch.zeros_like(bias)
        for part in ctx.partitions:
            for number, idx, mask, valid in part.chunks():
                qb, kb, vb = blocks.get(idx)
                dob = _gather(d_out, idx)
                a = _logits(qb, kb, mask, bias)
                row_lse = torch.where(valid, _gather(lse, idx), float("inf"))
                a.sub_(row_lse[..., None]).exp_()  # probabilities; empty query slots: 0
                drop = _drop_mask(a.shape, p, seed, part.part, number, qkv.device)
                ds = dob @ vb.transpose(-1, -2)  # d(kept probabilities) / rescale
                if drop is not None:
                    ds.masked_fill_(drop, 0.0)
                ds.sub_(_gather(delta, idx)[..., None]).mul_(a)  # d(logits) / rescale
                if drop is not None:
                    a.masked_fill_(drop, 0.0)
                flat = idx.reshape(-1)
                d_qkv[2].index_add_(1, flat, (a.transpose(-1, -2) @ dob).flatten(1, 2))
                if dbias is not None:
                    dbias += ds.sum(1, keepdim=True)
                d_qkv[0].index_add_(1, flat, blocks.unrotate((ds @ kb).flatten(1, 2), flat))
                d_qkv[1].index_add_(
                    1, flat, blocks.unrotate((ds.transpose(-1, -2) @ qb).flatten(1, 2), flat)
                )
        if rescale != 1.0:
            d_qkv.mul_(rescale)
            if dbias is not None:
                dbias.mul_(rescale)
        d_gqkv = None
        if gqkv is not None:
            q, gk, gv = qkv[0], gqkv[1], gqkv[2]
            a = torch.exp(q @ gk.transpose(-1, -2) - lse[..., None])  # (H, N, G)
            drop = _drop_mask(a.shape, p, seed, len(ctx.partitions), 0, qkv.device)
            da = d_out @ gv.transpose(-1, -2)
            if drop is not None:
                da.masked_fill_(drop, 0.0)
            ds = a * (da - delta[..., None]) * rescale
            if drop is not None:
                a.masked_fill_(drop, 0.0)
            a.mul_(rescale)
            d_gqkv = torch.zeros_like(gqkv)
            d_gqkv[1] = ds.transpose(-1, -2) @ q
            d_gqkv[2] = a.transpose(-1, -2) @ d_out
            d_qkv[0] += ds @ gk
        dbias = None if dbias is None else dbias[:, 0]
        return d_qkv, d_gqkv, dbias, None, None, None, None, None


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
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"embedding dim {dim} is not divisible by {heads} heads")
        self.heads, self.head_dim, self.side = heads, dim // heads, side
        self.scale = self.head_dim**-0.5
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = DropoutLinear(dim, dim, proj_dropout)
        self.attn_dropout = attn_dropout
        self.position = position_encoding(position, heads, side, self.head_dim, rope_theta)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D) residual stream -> head-major (3, H, N, dh) queries (already multiplied by
        1 / sqrt(dh)), keys and values."""
        # Scaling the query rows of the weights avoids a pass over q or over the logits.
        dim = self.heads * self.head_dim
        weight, bias = (
            torch.cat([t[:dim] * self.scale, t[dim:]]) for t in (self.qkv.weight, self.qkv.bias)
        )
        qkv = F.linear(self.norm(x), weight, bias).view(len(x), 3, self.heads, self.head_dim)
        return qkv.permute(1, 2, 0, 3).contiguous()

    def forward(
        self,
        x: torch.Tensor,
        tokens: torch.Tensor | None,
        grid: torch.Tensor,
        layout: WindowLayout,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (N, D) local tokens, tokens (G, D) global tokens or None -> updated (x, tokens)."""
        n, dim = x.shape
        qkv = self.project(x)
        partitions = [_Partition(layout.regular, None, self.heads, 0)]
        if layout.shifted is not None:
            partitions.append(_Partition(layout.shifted, layout.duplicate, self.heads, 1))
        gqkv = None if tokens is None else self.project(tokens)
        cells = (grid - grid.min(dim=0).values).float() if self.position.rotates else None
        p = self.attn_dropout if self.training else 0.0
        seed = int(torch.randint(0, 2**62, (1,))) if p > 0 else 0
        out = _WindowAttention.apply(
            qkv,
            gqkv,
            self.position.block_bias(),
            self.position,
            cells,
            partitions,
            p,
            seed,
        )  # (H, N, dh)
        x_out = self.proj(out.transpose(0, 1).reshape(n, dim))
        if tokens is None:
            return x_out, None
        # Global tokens attend to every token and to each other (no position term).
        gq, gk, gv = gqkv
        g_logits = torch.cat(
            [gq @ qkv[1].transpose(-1, -2), gq @ gk.transpose(-1, -2)], dim=-1
        )  # (H, G, N + G)
        g_weights = nn.functional.dropout(g_logits.softmax(dim=-1), p, self.training)
        g_out = g_weights[..., :n] @ qkv[2] + g_weights[..., n:] @ gv  # (H, G, dh)
        return x_out, self.proj(g_out.transpose(0, 1).reshape(len(tokens), dim))
