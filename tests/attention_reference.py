"""Reference implementations that the model tests hold SPAN's modules to: random grids, the
window neighbourhoods by brute force and dense masked attention (test_span, test_span_fused)."""

from __future__ import annotations

import torch

from span.models.window_attention import SparseWindowAttention


def random_grid(n: int, extent: int, seed: int, offset: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    cells = torch.randperm(extent * extent, generator=g)[:n]
    return torch.stack([cells % extent, cells // extent], dim=1) + offset


def brute_force_pairs(grid: torch.Tensor, side: int, shift: bool) -> set[tuple[int, int]]:
    """Pairs sharing a regular window (anchored at 0) or a shifted one (anchored at -side/2)."""
    pairs = set()
    cells = grid.tolist()
    w = side // 2
    for i, (xi, yi) in enumerate(cells):
        for j, (xj, yj) in enumerate(cells):
            regular = (xi // side, yi // side) == (xj // side, yj // side)
            shifted = ((xi + w) // side, (yi + w) // side) == ((xj + w) // side, (yj + w) // side)
            if regular or (shift and shifted):
                pairs.add((i, j))
    return pairs


def rope_reference(t: torch.Tensor, cells: torch.Tensor, theta: float) -> torch.Tensor:
    """Axial RoPE by complex multiplication at absolute cells (the module uses relative ones)."""
    n, h, dh = t.shape
    half = dh // 2
    freq = theta ** (-torch.arange(0, half, 2, dtype=torch.float64) / half)
    out = []
    for axis, part in ((0, t[..., :half]), (1, t[..., half:])):
        angle = cells[:, axis, None].double() * freq  # (N, half/2)
        z = torch.view_as_complex(part.double().reshape(n, h, half // 2, 2).contiguous())
        z = z * torch.polar(torch.ones_like(angle), angle)[:, None]
        out.append(torch.view_as_real(z).reshape(n, h, half))
    return torch.cat(out, dim=-1).to(t.dtype)


def dense_reference(attn: SparseWindowAttention, x, tokens, grid, side, shift, position):
    """Dense masked multi-head attention over N local + G global tokens (joint or separate
    global attention, as the module)."""
    n, dim = x.shape
    g = 0 if tokens is None else len(tokens)
    h, dh = attn.heads, attn.head_dim
    separate = tokens is not None and not attn.joint
    if separate:  # the global tokens' own projection
        rows = torch.cat([attn.qkv(attn.norm(x)), attn.global_qkv(attn.global_norm(tokens))])
    else:
        rows = attn.qkv(attn.norm(x if tokens is None else torch.cat([x, tokens])))
    q, k, v = rows.view(n + g, 3, h, dh).unbind(1)
    q = q * dh**-0.5
    logits = torch.einsum("ihd,jhd->hij", q, k)  # global pairs: no position term
    if position == "rope":  # local pairs: rotated at absolute cells, far from 0
        cells = grid.double() + 1000
        q_rot, k_rot = rope_reference(q[:n], cells, 10000.0), rope_reference(k[:n], cells, 10000.0)
        logits[:, :n, :n] = torch.einsum("ihd,jhd->hij", q_rot, k_rot)
    allowed = torch.ones(n + g, n + g, dtype=torch.bool)
    local = torch.zeros(n, n, dtype=torch.bool)
    for i, j in brute_force_pairs(grid, side, shift):
        local[i, j] = True
    allowed[:n, :n] = local
    dx = grid[None, :, 0] - grid[:, None, 0]
    dy = grid[None, :, 1] - grid[:, None, 1]
    if position == "rpb":
        index = ((dy + side - 1) * (2 * side - 1) + dx + side - 1).clamp(0, (2 * side - 1) ** 2 - 1)
        bias = attn.position.table[index].permute(2, 0, 1)
        logits[:, :n, :n] = logits[:, :n, :n] + torch.where(local, bias, torch.zeros_like(bias))
    elif position == "alibi":
        slopes = torch.tensor([2 ** (-8 * (i + 1) / h) for i in range(h)])
        distance = torch.sqrt((dx**2 + dy**2).float())
        logits[:, :n, :n] = logits[:, :n, :n] - slopes[:, None, None] * distance
    logits = logits.masked_fill(~allowed, float("-inf"))
    if separate:  # local queries: window and global softmaxes apart, outputs summed
        local = torch.einsum("hij,jhd->ihd", logits[:, :n, :n].softmax(-1), v[:n])
        local = local + torch.einsum("hij,jhd->ihd", logits[:, :n, n:].softmax(-1), v[n:])
        glob = torch.einsum("hij,jhd->ihd", logits[:, n:].softmax(-1), v)
        out = torch.cat([local, glob]).reshape(n + g, dim)
    else:
        out = torch.einsum("hij,jhd->ihd", logits.softmax(-1), v).reshape(n + g, dim)
    out = attn.proj(out)
    return out[:n], (None if tokens is None else out[n:])
