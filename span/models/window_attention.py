"""Sparse window attention with shifted windows and global tokens (SPAN's transformer layer).

Each token attends, in ONE softmax, to the union of its regular and its shifted window
(deduplicated, itself included) and to the global tokens; each global token attends to all
tokens and to the global tokens. Keys and values are gathered once per window partition
(the index maps of `span.models.sparse`), so features are never copied per neighbour.
"""

from __future__ import annotations

import torch
from torch import nn

from span.models.position import position_encoding
from span.models.sparse import WindowLayout, Windows


def _blocks(t: torch.Tensor, windows: Windows) -> torch.Tensor:
    """(N, H, dh) -> (W, side^2, H, dh), empty slots zero."""
    padded = torch.cat([t, t.new_zeros((1, *t.shape[1:]))])
    return padded[windows.index_map]


def _window_logits(q, k, windows: Windows, bias, extra_mask=None) -> torch.Tensor:
    """Per-token logits over its window's slots: (N, H, side^2), -inf where masked."""
    logits = torch.einsum("wqhd,wkhd->whqk", _blocks(q, windows), _blocks(k, windows))
    if bias is not None:
        logits = logits + bias
    per_token = logits.permute(0, 2, 1, 3)[windows.window, windows.slot]  # (N, H, side^2)
    mask = windows.empty[windows.window]
    if extra_mask is not None:
        mask = mask | extra_mask
    return per_token.masked_fill(mask[:, None, :], float("-inf"))


def _window_values(weights: torch.Tensor, v: torch.Tensor, windows: Windows) -> torch.Tensor:
    """Weighted sums over each token's window: weights (N, H, side^2) -> (N, H, dh)."""
    w, s2 = windows.index_map.shape
    blocks = weights.new_zeros((w, s2, *weights.shape[1:]))
    blocks = blocks.index_put((windows.window, windows.slot), weights)  # (W, side^2q, H, side^2k)
    out = torch.einsum("wqhk,wkhd->wqhd", blocks, _blocks(v, windows))
    return out[windows.window, windows.slot]


class SparseWindowAttention(nn.Module):
    """Multi-head attention over window neighbourhoods plus global tokens."""

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
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = nn.Dropout(attn_dropout)
        self.proj_drop = nn.Dropout(proj_dropout)
        self.position = position_encoding(position, heads, side, self.head_dim, rope_theta)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = self.qkv(x).view(len(x), 3, self.heads, self.head_dim).unbind(1)
        return q * self.scale, k, v

    def forward(
        self,
        x: torch.Tensor,
        tokens: torch.Tensor | None,
        grid: torch.Tensor,
        layout: WindowLayout,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (N, D) local tokens, tokens (G, D) global tokens or None -> updated (x, tokens)."""
        n, dim = x.shape
        q, k, v = self.project(x)
        q_pos, k_pos = self.position.rotate(q, grid), self.position.rotate(k, grid)
        bias = self.position.block_bias()
        parts = [_window_logits(q_pos, k_pos, layout.regular, bias)]
        if layout.shifted is not None:
            parts.append(_window_logits(q_pos, k_pos, layout.shifted, bias, layout.duplicate))
        if tokens is not None:
            gq, gk, gv = self.project(tokens)
            parts.append(torch.einsum("nhd,ghd->nhg", q, gk))  # no position term
        weights = self.attn_drop(torch.cat(parts, dim=-1).softmax(dim=-1))
        s2 = self.side * self.side
        out = _window_values(weights[..., :s2], v, layout.regular)
        if layout.shifted is not None:
            out = out + _window_values(weights[..., s2 : 2 * s2], v, layout.shifted)
        if tokens is None:
            return self.proj_drop(self.proj(out.reshape(n, dim))), None
        g = len(tokens)
        out = out + torch.einsum("nhg,ghd->nhd", weights[..., -g:], gv)
        # Global tokens attend to every token and to each other.
        g_logits = torch.cat(
            [torch.einsum("ghd,nhd->hgn", gq, k), torch.einsum("ghd,jhd->hgj", gq, gk)], dim=-1
        )
        g_weights = self.attn_drop(g_logits.softmax(dim=-1))
        g_out = torch.einsum("hgn,nhd->ghd", g_weights[..., :n], v) + torch.einsum(
            "hgj,jhd->ghd", g_weights[..., n:], gv
        )
        x_out = self.proj_drop(self.proj(out.reshape(n, dim)))
        return x_out, self.proj_drop(self.proj(g_out.reshape(g, dim)))
