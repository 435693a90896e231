"""Position encodings of sparse window attention: every kind acts on local-local pairs only
(global tokens get no position term). Additive ones give an (H, side^2, side^2) bias over
the slots of a window; RoPE rotates queries and keys by their grid cell."""

from __future__ import annotations

import torch
from torch import nn


def slot_offsets(side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(dx, dy) = key cell - query cell for every (query slot, key slot) of a window."""
    ys, xs = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    xs, ys = xs.reshape(-1), ys.reshape(-1)
    return xs[None, :] - xs[:, None], ys[None, :] - ys[:, None]


class PositionEncoding(nn.Module):
    """No position term (the `none` encoding, and the base of the others)."""

    rotates = False  # whether `rotate` does anything

    def block_bias(self) -> torch.Tensor | None:
        """Additive (H, side^2, side^2) bias on local-local logits, or None."""
        return None

    def rotate(self, t: torch.Tensor, cells: torch.Tensor, inverse: bool = False) -> torch.Tensor:
        """Rotate (..., dh) queries or keys by their cells (..., 2), broadcast over the leading
        dimensions (e.g. heads); identity here."""
        return t


class RelativePositionBias(PositionEncoding):
    """Learnable bias per head for every offset inside a window: a (2 side - 1)^2 table."""

    def __init__(self, heads: int, side: int) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.zeros((2 * side - 1) ** 2, heads))
        nn.init.trunc_normal_(self.table, std=0.02)
        dx, dy = slot_offsets(side)
        self.register_buffer("index", (dy + side - 1) * (2 * side - 1) + dx + side - 1, False)

    def block_bias(self) -> torch.Tensor:
        return self.table[self.index].permute(2, 0, 1)


class ALiBi2D(PositionEncoding):
    """-slope_h * Euclidean cell distance, slopes 2^(-8h/H) for heads h = 1..H (not learned)."""

    def __init__(self, heads: int, side: int) -> None:
        super().__init__()
        dx, dy = slot_offsets(side)
        slopes = 2.0 ** (-8.0 * torch.arange(1, heads + 1) / heads)
        distance = torch.sqrt((dx**2 + dy**2).float())
        self.register_buffer("bias", -slopes[:, None, None] * distance, False)

    def block_bias(self) -> torch.Tensor:
        return self.bias


class AxialRoPE(PositionEncoding):
    """Axial 2-D rotary embedding: the first half of each head's dims rotates with the column,
    the second half with the row; pairs (2k, 2k+1) turn by cell * theta^(-2k / (dh/2))."""

    def __init__(self, head_dim: int, theta: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 4:
            raise ValueError(f"axial RoPE needs a head dimension divisible by 4, got {head_dim}")
        half = head_dim // 2
        self.register_buffer("freq", theta ** (-torch.arange(0, half, 2).float() / half), False)

    rotates = True

    def rotate(self, t: torch.Tensor, cells: torch.Tensor, inverse: bool = False) -> torch.Tensor:
        """Pass cells relative to the slide (small numbers: exact angles); `inverse` rotates
        back (the transpose, for gradients)."""
        angles = [cells[..., axis, None].to(t.dtype) * self.freq for axis in (0, 1)]
        angle = torch.cat(angles, dim=-1)  # (..., dh/2): one angle per pair
        cos, sin = torch.cos(angle), torch.sin(angle)
        if inverse:
            sin = -sin
        pairs = t.reshape(*t.shape[:-1], -1, 2)
        even, odd = pairs[..., 0], pairs[..., 1]
        return torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).reshape(
            t.shape
        )


def position_encoding(kind: str, heads: int, side: int, head_dim: int, theta: float):
    """Build `rpb`, `alibi`, `rope` or `none`."""
    if kind == "rpb":
        return RelativePositionBias(heads, side)
    if kind == "alibi":
        return ALiBi2D(heads, side)
    if kind == "rope":
        return AxialRoPE(head_dim, theta)
    if kind == "none":
        return PositionEncoding()
    raise ValueError(f"unknown position encoding {kind!r}; choose rpb, alibi, rope or none")
