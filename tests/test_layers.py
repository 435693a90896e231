"""Shared layers: chunked recomputation (`rowwise`) and the fused dropout layers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from span.models.layers import DropoutLinear, FeedForward, MaskDropout, drop_mask, rowwise


def ffn_block(dim: int = 16, dropout: float = 0.3) -> tuple[nn.Module, callable]:
    torch.manual_seed(0)
    block = nn.ModuleDict({"norm": nn.LayerNorm(dim), "ffn": FeedForward(dim, 2 * dim, dropout)})
    block = block.double().train()
    return block, lambda t: t + block["ffn"](block["norm"](t))


@pytest.mark.parametrize("rows", [7, 64, 1000])
def test_rowwise_equals_the_plain_chunked_computation_with_the_same_dropout(rows):
    """Output and every gradient equal autograd through the same chunks (same RNG order),
    whatever the chunk size; the recomputed backward reuses the forward's dropout masks."""
    block, fn = ffn_block()
    x = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    probe = torch.randn(50, 16, dtype=torch.float64)
    params = list(block.parameters())

    torch.manual_seed(5)
    out = rowwise(fn, x, params, rows=rows)
    grads = torch.autograd.grad((out * probe).sum(), [x, *params])

    torch.manual_seed(5)
    ref = torch.cat([fn(part) for part in x.split(rows)])
    ref_grads = torch.autograd.grad((ref * probe).sum(), [x, *params])

    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_rowwise_with_frozen_parameters_and_an_input_without_gradient():
    block, fn = ffn_block(dropout=0.0)
    block["norm"].requires_grad_(False)
    x = torch.randn(20, 16, dtype=torch.float64)
    out = rowwise(fn, x, block.parameters(), rows=6)
    out.sum().backward()
    assert block["norm"].weight.grad is None
    assert block["ffn"].fc1.weight.grad is not None and block["ffn"].fc1.weight.grad.abs().sum() > 0


def test_rowwise_gradcheck_and_no_grad_path():
    block, fn = ffn_block(dropout=0.0)
    x = torch.randn(20, 16, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: rowwise(fn, t, block.parameters(), rows=6), (x,))
    with torch.no_grad():
        torch.testing.assert_close(rowwise(fn, x, block.parameters(), rows=6), fn(x))


def test_drop_mask_rate_and_rescale():
    drop, rescale = drop_mask((1000, 1000), 0.25, torch.Generator().manual_seed(0))
    assert drop.dtype == torch.bool and abs(drop.float().mean().item() - 0.25) < 0.005
    assert rescale == pytest.approx(1 / 0.75)
    assert not drop_mask((100,), 0.0)[0].any()


def test_dropout_linear_equals_linear_then_dropout():
    """The rescale folded into the weights gives dropout(linear(x)) with the same mask."""
    torch.manual_seed(0)
    layer = DropoutLinear(8, 6, dropout=0.4).double()
    x = torch.randn(30, 8, dtype=torch.float64)
    torch.manual_seed(1)
    got = layer(x, input_rescale=2.0)
    torch.manual_seed(1)
    drop, rescale = drop_mask((30, 6), 0.4)
    want = nn.functional.linear(2.0 * x, layer.weight, layer.bias).masked_fill(drop, 0) * rescale
    torch.testing.assert_close(got, want)
    layer.eval()
    torch.testing.assert_close(layer(x), nn.functional.linear(x, layer.weight, layer.bias))


def test_feed_forward_and_mask_dropout_keep_the_expectation():
    torch.manual_seed(0)
    x = torch.rand(4000, 32, dtype=torch.float64) + 1
    dropout = MaskDropout(0.3).train()
    assert abs(dropout(x).mean().item() / x.mean().item() - 1) < 0.02
    ffn = FeedForward(32, 64, 0.3).double()
    trained, evaluated = ffn.train()(x).mean().item(), ffn.eval()(x).mean().item()
    assert abs(trained - evaluated) < 0.05 * abs(evaluated) + 0.01
