"""DTFD-MIL: shapes and gradients per distillation mode, the pseudo-bag split, permutation
invariance, the detached tier 2, distilled features, per-module clipping, parameter count."""

from __future__ import annotations

import pytest
import torch

from span.models.dtfd import DISTILL, DTFD, pseudo_bags

DIM = 32


def bag(n: int, seed: int = 0, dim: int = DIM) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g), torch.zeros(n, 2, dtype=torch.long)


def tier1_parameters(model: DTFD) -> list[torch.nn.Parameter]:
    return [
        *model.encoder.parameters(),
        *model.attention.parameters(),
        *model.classifier.parameters(),
    ]


def tier2_parameters(model: DTFD) -> list[torch.nn.Parameter]:
    return [*model.tier2_pool.parameters(), *model.tier2_classifier.parameters()]


@pytest.mark.parametrize("distill", DISTILL)
@pytest.mark.parametrize("n_classes", [2, 3])
@pytest.mark.parametrize("n", [1, 7, 5000])
def test_forward_backward(distill, n_classes, n):
    torch.manual_seed(0)
    model = DTFD(DIM, n_classes, distill=distill, seed=0)
    out = model(*bag(n))
    groups = min(4, n)
    assert out.logits.shape == (n_classes,)
    assert out.extras["sub_logits"].shape == (groups, n_classes)
    assert out.embedding.shape == (512,)
    assert out.patch_scores.shape == (n,)
    assert ((out.patch_scores >= 0) & (out.patch_scores <= 1)).all()  # probabilities
    loss = model.loss(out, torch.tensor(n_classes - 1), 0.0)
    assert torch.isfinite(loss)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize(("n", "groups"), [(1, 4), (3, 4), (4, 4), (7, 4), (5000, 4), (10, 1)])
def test_pseudo_bags_partition_the_instances(n, groups):
    bags = pseudo_bags(n, groups, torch.Generator().manual_seed(n))
    assert len(bags) == min(n, groups)
    assert sorted(torch.cat(bags).tolist()) == list(range(n))
    sizes = [len(b) for b in bags]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_pseudo_bags_follow_the_generator():
    def split(seed):
        return torch.cat(pseudo_bags(100, 4, torch.Generator().manual_seed(seed)))

    assert torch.equal(split(1), split(1)) and not torch.equal(split(1), split(2))
    with pytest.raises(ValueError):
        pseudo_bags(0, 4)


def test_seed_makes_training_forward_reproducible():
    torch.manual_seed(1)
    model = DTFD(DIM, 2, seed=5).train()
    model.encoder.eval()  # no dropout: only the shuffle is random
    features, grid = bag(50)
    with torch.no_grad():
        first = model(features, grid)
        second = model(features, grid)
        model.generator.manual_seed(5)
        again = model(features, grid)
    torch.testing.assert_close(first.logits, again.logits)
    assert not torch.equal(first.patch_scores, second.patch_scores)  # a new shuffle each step


def test_evaluation_is_deterministic_whatever_the_global_random_state():
    """A checkpoint's predictions must not depend on what drew random numbers before them."""
    model = DTFD(DIM, 2).eval()
    features, grid = bag(50)
    with torch.no_grad():
        torch.manual_seed(0)
        first = model(features, grid)
        torch.manual_seed(123)
        torch.rand(7)
        again = model(features, grid)
    assert torch.equal(first.logits, again.logits)
    assert torch.equal(first.patch_scores, again.patch_scores)


@pytest.mark.parametrize("distill", DISTILL)
def test_one_pseudo_bag_is_invariant_to_row_permutation(distill):
    """With num_groups=1 the shuffle cannot matter: the public forward is invariant."""
    torch.manual_seed(2)
    model = DTFD(DIM, 3, num_groups=1, distill=distill).eval()
    features, grid = bag(200, seed=2)
    perm = torch.randperm(200)
    with torch.no_grad():
        a, b = model(features, grid), model(features[perm], grid[perm])
    torch.testing.assert_close(a.logits, b.logits)
    torch.testing.assert_close(a.patch_scores[perm], b.patch_scores)


@pytest.mark.parametrize("distill", DISTILL)
def test_same_pseudo_bags_give_same_output_under_row_permutation(distill):
    """Permuting the rows and re-indexing the pseudo-bags so they hold the same instances
    (bags' = inverse[bag]) leaves logits unchanged and permutes patch_scores alike."""
    torch.manual_seed(3)
    model = DTFD(DIM, 3, distill=distill).eval()
    features, _ = bag(203, seed=3)
    bags = pseudo_bags(203, 4, torch.Generator().manual_seed(0))
    perm = torch.randperm(203)
    inverse = perm.argsort()
    with torch.no_grad():
        a = model.forward_pseudo_bags(features, bags)
        b = model.forward_pseudo_bags(features[perm], [inverse[x] for x in bags])
    torch.testing.assert_close(a.logits, b.logits)
    torch.testing.assert_close(a.extras["sub_logits"], b.extras["sub_logits"])
    torch.testing.assert_close(a.patch_scores, b.patch_scores[inverse])


def test_tier2_does_not_backpropagate_into_tier1():
    torch.manual_seed(4)
    model = DTFD(DIM, 2, distill="MaxMinS", seed=0)
    out = model(*bag(40))
    model.classification_loss(out.logits, torch.tensor(1)).backward()
    assert all(p.grad is None for p in tier1_parameters(model))
    assert all(p.grad is not None for p in tier2_parameters(model))


def capture_tier2_input(model: DTFD, features: torch.Tensor, bags) -> torch.Tensor:
    seen = []
    hook = model.tier2_pool.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    with torch.no_grad():
        model.forward_pseudo_bags(features, bags)
    hook.remove()
    return seen[0]


@pytest.mark.parametrize("distill", DISTILL)
@pytest.mark.parametrize("n_classes", [2, 3])
def test_distilled_features(distill, n_classes):
    """AFS: attention-pooled feature; MaxS / MaxMinS: the instances with the highest (and
    lowest) instance-CAM probability of the positive class (binary) or predicted class."""
    torch.manual_seed(5)
    model = DTFD(DIM, n_classes, distill=distill).eval()
    features, _ = bag(30, seed=5)
    bags = pseudo_bags(30, 4, torch.Generator().manual_seed(1))
    expected = []
    with torch.no_grad():
        h = model.encoder(features)
        for b in bags:
            weights = model.attention(h[b]).squeeze(1).softmax(0)
            pooled = weights @ h[b]
            if distill == "AFS":
                expected.append(pooled[None])
                continue
            cls = 1 if n_classes == 2 else int(model.classifier(pooled).argmax())
            cam = (weights[:, None] * h[b] @ model.classifier.weight.T).softmax(1)[:, cls]
            ranked = cam.argsort(descending=True)
            picks = ranked[:1] if distill == "MaxS" else ranked[[0, -1]]
            expected.append(h[b][picks])
    torch.testing.assert_close(capture_tier2_input(model, features, bags), torch.cat(expected))


def test_gradient_groups_partition_the_parameters():
    model = DTFD(DIM, 2)
    groups = model.gradient_groups()
    assert len(groups) == 4
    ids = [id(p) for group in groups for p in group]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters()}
    assert {id(p) for p in groups[-1]} == {id(p) for p in tier2_parameters(model)}


def test_clip_gradients_clips_each_group_separately():
    torch.manual_seed(6)
    model = DTFD(DIM, 2)
    assert model.grad_clip == 5.0
    groups = model.gradient_groups()
    wanted = [100.0, 3.0, 50.0, 7.0]  # norms before clipping, per group
    for group, norm in zip(groups, wanted, strict=True):
        for p in group:
            p.grad = torch.randn_like(p)
        scale = norm / torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in group]))
        for p in group:
            p.grad *= scale
    model.clip_gradients()
    for group, norm in zip(groups, wanted, strict=True):
        after = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in group]))
        assert after.item() == pytest.approx(min(norm, 5.0), rel=1e-4)


def test_rejects_unknown_distillation():
    with pytest.raises(ValueError):
        DTFD(DIM, 2, distill="topk")


@pytest.mark.parametrize("in_dim", [1024, 2048])
def test_parameter_count(in_dim):
    model = DTFD(in_dim, 2)
    gated_attention = 2 * (512 * 128 + 128) + 128 + 1
    expected = in_dim * 512 + 2 * (gated_attention + 512 * 2 + 2)
    assert sum(p.numel() for p in model.parameters()) == expected
    if in_dim == 1024:
        assert expected == 789_254  # paper Table 1: 0.79M


@pytest.mark.parametrize("n_classes", [2, 3])
def test_patch_scores_are_the_references_instance_probability(n_classes):
    """Per pseudo-bag, as hrzhang1123/DTFD-MIL derives it: softmax of the tier-1 classifier's
    weights (no bias) on each attention-weighted instance; the positive class when binary,
    else the slide's predicted class."""
    torch.manual_seed(5)
    model = DTFD(DIM, n_classes).eval()
    features, _ = bag(60, seed=5)
    bags = pseudo_bags(60, 4, torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model.forward_pseudo_bags(features, bags)
        h = model.encoder(features)
        expected = torch.empty(60)
        c = 1 if n_classes == 2 else int(out.logits.argmax())
        for b in bags:
            a = model.attention(h[b]).squeeze(1).softmax(0)
            cam = torch.einsum("ns,cs->nc", a[:, None] * h[b], model.classifier.weight)
            expected[b] = cam.softmax(1)[:, c]
    torch.testing.assert_close(out.patch_scores, expected)
