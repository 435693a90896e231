"""SPAN's fused, chunked autograd functions against plain autograd: outputs and gradients,
with chunks small enough that every loop runs several times (a shorter last chunk included)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import span.models.layers as layers
import span.models.sparse_conv as sparse_conv
import span.models.window_attention as window_attention
from span.models.layers import (
    FeedForward,
    centered_linear,
    feed_forward_residual,
    rowwise,
)
from span.models.sparse import downsampling, window_layout
from span.models.sparse_conv import SparseDownsample
from span.models.window_attention import SparseWindowAttention
from tests.attention_reference import dense_reference, random_grid


def grads_of(out: torch.Tensor, probe: torch.Tensor, inputs: list) -> tuple:
    return torch.autograd.grad((out * probe).sum(), inputs, allow_unused=True)


def assert_all_close(got, want, tol: float = 1e-10) -> None:
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=tol, atol=tol)


@pytest.mark.parametrize(
    ("position", "global_attention"), [("rpb", "joint"), ("rope", "joint"), ("rpb", "separate")]
)
def test_attention_in_many_chunks_equals_the_dense_reference(
    monkeypatch, position, global_attention
):
    """3 windows per chunk, so the buffers shared by all chunks are reused by a shorter last
    chunk; outputs of local and global tokens and all gradients as the dense reference."""
    side, dim, heads = 4, 16, 2
    monkeypatch.setattr(window_attention, "CHUNK_ELEMENTS", 3 * heads * side**4)
    torch.manual_seed(3)
    grid = random_grid(90, 14, 6, offset=1)
    attn = SparseWindowAttention(
        dim, heads, side, position, global_attention=global_attention
    ).double()
    layout = window_layout(grid, side)
    assert layout.regular.num_windows % 3 and layout.regular.num_windows > 6
    x = torch.randn(len(grid), dim, dtype=torch.float64, requires_grad=True)
    tokens = torch.randn(2, dim, dtype=torch.float64, requires_grad=True)
    out, out_tokens = attn(x, tokens, grid, layout)
    ref, ref_tokens = dense_reference(attn, x, tokens, grid, side, True, position)
    assert_all_close((out, out_tokens), (ref, ref_tokens), 1e-9)
    inputs = [x, tokens, *attn.parameters()]
    probe = torch.randn_like(ref)
    got = torch.autograd.grad((out * probe).sum() + out_tokens.sum(), inputs, allow_unused=True)
    want = torch.autograd.grad((ref * probe).sum() + ref_tokens.sum(), inputs, allow_unused=True)
    for g, w in zip(got, want, strict=True):
        if w is None:  # RoPE has no parameters; rpb's table is used by both
            assert g is None or not g.any()
        else:
            torch.testing.assert_close(g, w, rtol=1e-7, atol=1e-9)


def test_attention_with_only_the_global_output_used_leaves_the_local_part_alone():
    """When only the global tokens' output reaches the loss, the local queries' backward
    pass is skipped: the position table gets no gradient at all."""
    grid = random_grid(30, 8, 2)
    attn = SparseWindowAttention(8, 2, 4, "rpb").double()
    x = torch.randn(len(grid), 8, dtype=torch.float64, requires_grad=True)
    tokens = torch.randn(1, 8, dtype=torch.float64, requires_grad=True)
    _, out_tokens = attn(x, tokens, grid, window_layout(grid, 4))
    out_tokens.sum().backward()
    assert attn.position.table.grad is None
    assert x.grad is not None and x.grad.any()


def ffn_block(dim: int, dropout: float):
    torch.manual_seed(0)
    norm, ffn = nn.LayerNorm(dim).double(), FeedForward(dim, 2 * dim, dropout).double()
    with torch.no_grad():
        for p in [*norm.parameters(), *ffn.parameters()]:
            p.add_(0.1 * torch.randn_like(p))
    return norm, ffn


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_feed_forward_residual_equals_rowwise(monkeypatch, dropout):
    """Same chunks and dropout masks as `rowwise` over x + ffn(norm(x)): same output, same
    gradients, though only the hidden layer is recomputed."""
    dim = 8
    monkeypatch.setattr(layers, "ROW_BYTES", 64 * dim * 8)  # 64 rows per chunk
    norm, ffn = ffn_block(dim, dropout)
    x = torch.randn(200, dim, dtype=torch.float64, requires_grad=True)
    probe = torch.randn_like(x)
    params = [*norm.parameters(), *ffn.parameters()]
    torch.manual_seed(7)
    out = feed_forward_residual(norm, ffn, x)
    got = grads_of(out, probe, [x, *params])
    torch.manual_seed(7)
    ref = rowwise(lambda t: t + ffn(norm(t)), x, params)
    want = grads_of(ref, probe, [x, *params])
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    assert_all_close(got, want)


def test_feed_forward_residual_gradcheck_and_frozen_parameters(monkeypatch):
    monkeypatch.setattr(layers, "ROW_BYTES", 64 * 4 * 8)
    norm, ffn = ffn_block(4, 0.0)
    x = torch.randn(150, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: feed_forward_residual(norm, ffn, t), (x,))
    norm.requires_grad_(False)
    feed_forward_residual(norm, ffn, x.detach()).sum().backward()
    assert norm.weight.grad is None and ffn.fc1.weight.grad.abs().sum() > 0


def test_centered_linear_equals_linear_of_the_centred_input(monkeypatch):
    monkeypatch.setattr(layers, "CENTERED_ROWS", 16)
    torch.manual_seed(0)
    linear = nn.Linear(12, 5).double()
    x = torch.randn(70, 12, dtype=torch.float64, requires_grad=True) + 3
    center = x.mean(dim=0, keepdim=True)
    probe = torch.randn(70, 5, dtype=torch.float64)
    inputs = [x, linear.weight, linear.bias]
    out = centered_linear(linear, x, center)
    ref = linear(x - center)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    assert_all_close(grads_of(out, probe, inputs), grads_of(ref, probe, inputs), 1e-12)


@pytest.mark.parametrize("depthwise", [True, False])
def test_sparse_conv_gradients_equal_plain_autograd(monkeypatch, depthwise):
    """The chunked sum over children (recomputed in the backward pass) against autograd
    through one index_add over all children."""
    dim = 6
    monkeypatch.setattr(sparse_conv, "ROW_BYTES", 64 * dim * 8)
    torch.manual_seed(0)
    grid = random_grid(300, 30, 3, offset=3)
    conv = SparseDownsample(dim, depthwise=depthwise, bias=True, init="random").double()
    down = downsampling(grid)
    x = torch.randn(len(grid), dim, dtype=torch.float64, requires_grad=True)
    inputs = [x, *conv.parameters()]
    out = conv(x, down)
    plain = torch.zeros_like(out).index_add(0, down.parent, conv.contribution(x, down.child))
    ref = plain / down.children[:, None].double() + conv.bias
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    probe = torch.randn_like(ref)
    assert_all_close(grads_of(out, probe, inputs), grads_of(ref, probe, inputs), 1e-12)
