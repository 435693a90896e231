"""Patch scores for heatmaps: one per input patch, aligned with the rows, for every model;
gradient x input exact on a model linear in each patch, integrated gradients complete."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from span.inference.attribution import METHODS, margin, patch_scores, resolve_method
from span.models import MODELS, build_model
from span.models.base import ModelOutput

DIM = 16


def slide(n: int = 48, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    side = 8
    grid = torch.stack([torch.arange(n) % side, torch.arange(n) // side], 1)
    return torch.randn(n, DIM, generator=g), grid


class PlacedLinear(nn.Module):
    """logits = W sum_i c_i x_i with c_i = 1 + the patch's column: patch i moves the margin
    from the slide of mean patches exactly by c_i w.(x_i - m)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(3, DIM, generator=torch.Generator().manual_seed(1)))

    def forward(self, x: torch.Tensor, grid: torch.Tensor) -> ModelOutput:
        pooled = ((1.0 + grid[:, :1]) * x).sum(0)
        return ModelOutput(self.w @ pooled, torch.full((len(x),), 1 / len(x)), pooled)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("method", METHODS)
def test_every_model_gets_one_finite_score_per_patch(name, method):
    torch.manual_seed(0)
    model = build_model(name, DIM, 2).eval()
    features, grid = slide()
    logits, scores = patch_scores(model, features, grid, method, steps=4)
    assert logits.shape == (2,) and scores.shape == (len(features),)
    assert torch.isfinite(scores).all()
    if method == "attention":
        with torch.no_grad():
            torch.testing.assert_close(scores, model(features, grid).patch_scores.float())


def test_gradient_x_input_is_each_patchs_exact_share_of_a_linear_margin():
    model = PlacedLinear().eval()
    features, grid = slide()
    _, scores = patch_scores(model, features, grid, "gradient", target=2)
    w = model.w.detach()
    centred = features - features.mean(0)
    expected = (1.0 + grid[:, 0]) * (centred @ (w[2] - w[:2].mean(0)))
    torch.testing.assert_close(scores, expected)
    logits, _ = patch_scores(model, features, grid, "attention")
    same = features.mean(0).expand_as(features)
    with torch.no_grad():
        change = margin(logits, 2) - margin(model(same, grid).logits, 2)
    torch.testing.assert_close(scores.sum(), change, rtol=1e-5, atol=1e-4)


def test_integrated_gradients_sum_to_the_margins_change():
    """Completeness: over the path from a slide of identical mean patches to the slide, the
    scores add up to the margin's change, which plain gradient x input does not."""
    torch.manual_seed(3)
    model = build_model("transmil", DIM, 2).eval()
    features, grid = slide(seed=3)
    with torch.no_grad():
        change = margin(model(features, grid).logits, 1) - margin(
            model(features.mean(0).expand_as(features), grid).logits, 1
        )
    _, ig = patch_scores(model, features, grid, "integrated_gradients", target=1, steps=64)
    _, plain = patch_scores(model, features, grid, "gradient", target=1)
    assert ig.sum().item() == pytest.approx(change.item(), rel=0.01)
    assert plain.sum().item() != pytest.approx(change.item(), rel=0.1)


def test_scores_follow_their_patches_when_rows_are_permuted():
    torch.manual_seed(4)
    model = build_model("span", DIM, 2, heads=2, window_side=2).eval()
    features, grid = slide(seed=4)
    perm = torch.randperm(len(features), generator=torch.Generator().manual_seed(0))
    for method in ("gradient", "integrated_gradients"):
        _, a = patch_scores(model, features, grid, method, target=0, steps=4)
        _, b = patch_scores(model, features[perm], grid[perm], method, target=0, steps=4)
        torch.testing.assert_close(a[perm], b, rtol=1e-4, atol=1e-6)


def test_a_training_model_and_unknown_methods_are_refused():
    model = build_model("abmil", DIM, 2)
    features, grid = slide()
    with pytest.raises(ValueError, match="eval mode"):
        patch_scores(model, features, grid, "gradient")
    with pytest.raises(ValueError, match="unknown patch score method"):
        patch_scores(model.eval(), features, grid, "occlusion")
    with pytest.raises(ValueError, match="unknown patch score method"):
        resolve_method("occlusion", "span")
    assert resolve_method("auto", "span") == "gradient"
    assert resolve_method("auto", "dtfd") == "attention"
    assert resolve_method("gradient", "abmil") == "gradient"
