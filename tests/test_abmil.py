"""ABMIL: plain and gated attention, any bag size, permutation invariance."""

from __future__ import annotations

import pytest
import torch

from span.models.abmil import ABMIL


@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("n", [1, 7, 5000])
@pytest.mark.parametrize("n_classes", [2, 3])
def test_forward_backward_any_bag(gated, n, n_classes):
    torch.manual_seed(0)
    model = ABMIL(64, n_classes, gated=gated)
    out = model(torch.randn(n, 64), torch.zeros(n, 2, dtype=torch.long))
    assert out.logits.shape == (n_classes,) and out.embedding.shape == (512,)
    assert out.patch_scores.sum().item() == pytest.approx(1.0, abs=1e-5)
    model.loss(out, torch.tensor(0), 0.0).backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("gated", [False, True])
def test_row_order_does_not_change_logits(gated):
    torch.manual_seed(0)
    model = ABMIL(64, 2, gated=gated).eval()
    x = torch.randn(300, 64)
    grid = torch.zeros(300, 2, dtype=torch.long)
    perm = torch.randperm(300)
    a, b = model(x, grid), model(x[perm], grid)
    torch.testing.assert_close(a.logits, b.logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a.patch_scores[perm], b.patch_scores)


def test_gated_attention_adds_the_gate():
    plain = sum(p.numel() for p in ABMIL(1024, 2).parameters())
    gated = sum(p.numel() for p in ABMIL(1024, 2, gated=True).parameters())
    assert gated - plain == 512 * 128 + 128
