"""CLAM-SB / CLAM-MB: shapes and gradients on tiny to large bags, permutation invariance,
clustering targets against a sort-based reference, the subtyping branch, parameter counts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from span.models.clam import CLAM_MB, CLAM_SB, instance_targets, out_of_class_targets

DIM = 32


def bag(n: int, seed: int = 0, dim: int = DIM) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g), torch.zeros(n, 2, dtype=torch.long)


def reference_order(scores: torch.Tensor) -> list[int]:
    """Indices by decreasing score, ties in index order (Python's sort is stable)."""
    values = scores.tolist()
    return sorted(range(len(values)), key=lambda i: -values[i])


def reference_instance_loss(model, scores, h, label: int) -> torch.Tensor:
    """CLAM's instance loss written out from sorted() orders, one class at a time."""
    k = min(model.k_sample, len(h) // 2)
    terms = []
    for c, classifier in enumerate(model.instance_classifiers):
        order = reference_order(scores[:, c if model.multi_branch else 0])
        if c == label:
            idx, tgt = order[:k] + order[len(order) - k :], [1] * k + [0] * k
        elif model.subtyping:
            idx, tgt = order[:k], [0] * k
        else:
            continue
        terms.append(F.cross_entropy(classifier(h[idx]), torch.tensor(tgt)))
    total = sum(terms)
    return total / len(model.instance_classifiers) if model.subtyping else total


@pytest.mark.parametrize("cls", [CLAM_SB, CLAM_MB])
@pytest.mark.parametrize("n_classes", [2, 3])
@pytest.mark.parametrize("n", [1, 7, 5000])
def test_forward_backward_and_gradients(cls, n_classes, n):
    torch.manual_seed(0)
    model = cls(DIM, n_classes)
    features, grid = bag(n)
    label = n_classes - 1
    out = model(features, grid)
    assert out.logits.shape == (n_classes,)
    assert out.patch_scores.shape == (n,)
    assert torch.isclose(out.patch_scores.sum(), torch.tensor(1.0))
    branches = n_classes if cls is CLAM_MB else 1
    assert out.embedding.shape == (branches * 512,)
    loss = model.loss(out, torch.tensor(label), 0.5)
    assert torch.isfinite(loss)
    loss.backward()
    unused = set()
    for c, classifier in enumerate(model.instance_classifiers):
        if n < 2 or (c != label and not model.subtyping):
            unused |= {id(p) for p in classifier.parameters()}
    for name, p in model.named_parameters():
        if id(p) in unused:
            assert p.grad is None, name
        else:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
            # Softmax ignores the score bias, and a 1-patch bag's attention weight is 1.
            if name != "attention.score.bias" and (n > 1 or not name.startswith("attention")):
                assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("cls", [CLAM_SB, CLAM_MB])
def test_logits_invariant_to_row_permutation(cls):
    torch.manual_seed(1)
    model = cls(DIM, 3).eval()
    features, grid = bag(300, seed=1)
    perm = torch.randperm(300)
    with torch.no_grad():
        a, b = model(features, grid), model(features[perm], grid[perm])
    torch.testing.assert_close(a.logits, b.logits)
    torch.testing.assert_close(a.patch_scores[perm], b.patch_scores)


@pytest.mark.parametrize("n", [1, 2, 7, 40])
@pytest.mark.parametrize("ties", [False, True])
def test_instance_targets_match_sorted_reference(n, ties):
    g = torch.Generator().manual_seed(n)
    scores = torch.randint(0, 3, (n,), generator=g).float() if ties else torch.randn(n)
    order = reference_order(scores)
    for k in range(n // 2 + 1):
        indices, targets = instance_targets(scores, k)
        assert indices.tolist() == order[:k] + order[n - k :]
        assert targets.tolist() == [1] * k + [0] * k
        top, _ = out_of_class_targets(scores, k)
        assert top.tolist() == order[:k]


def test_instance_targets_reject_overlapping_sets():
    with pytest.raises(ValueError):
        instance_targets(torch.randn(7), 4)


@pytest.mark.parametrize("cls", [CLAM_SB, CLAM_MB])
@pytest.mark.parametrize(("n_classes", "subtyping"), [(2, None), (2, True), (3, None), (3, False)])
@pytest.mark.parametrize("n", [1, 7, 30])
def test_instance_loss_matches_reference(cls, n_classes, subtyping, n):
    """k clipped to N // 2; the true class clusters its own branch's top/bottom k; with
    subtyping every other class's top k (its own branch for MB) gets target 0, averaged."""
    torch.manual_seed(2)
    model = cls(DIM, n_classes, subtyping=subtyping)
    assert model.subtyping == (n_classes > 2 if subtyping is None else subtyping)
    scores = torch.randn(n, n_classes if cls is CLAM_MB else 1)
    h = torch.randn(n, 512)
    for label in range(n_classes):
        expected = reference_instance_loss(model, scores, h, label) if n > 1 else torch.tensor(0.0)
        torch.testing.assert_close(model.instance_loss(scores, h, label), expected)


def test_subtyping_uses_other_classes_top_k_with_target_zero():
    """A 3-class MB model whose instance classifiers output constant logits: the loss then
    counts the 1- and 0-targets, which pins down the out-of-class terms."""
    model = CLAM_MB(DIM, 3, k_sample=2)
    for classifier in model.instance_classifiers:
        torch.nn.init.zeros_(classifier.weight)
        classifier.bias.data = torch.tensor([0.0, 1.0])  # p(target 1) = sigmoid(1)
    h = torch.randn(10, 512)
    loss = model.instance_loss(torch.randn(10, 3), h, label=0)
    ce1, ce0 = F.softplus(torch.tensor(-1.0)), F.softplus(torch.tensor(1.0))
    in_class = (2 * ce1 + 2 * ce0) / 4
    torch.testing.assert_close(loss, (in_class + 2 * ce0) / 3)


def test_loss_combines_bag_and_instance_terms():
    torch.manual_seed(3)
    model = CLAM_SB(DIM, 2, bag_weight=0.6).eval()
    out = model(*bag(20))
    label = torch.tensor(1)
    bag_ce = F.cross_entropy(out.logits.view(1, -1), label.view(1))
    inst = model.instance_loss(out.extras["scores"], out.extras["h"], 1)
    torch.testing.assert_close(model.loss(out, label, 0.0), 0.6 * bag_ce + 0.4 * inst)


def test_mb_logits_and_patch_scores_use_each_class_branch():
    torch.manual_seed(4)
    model = CLAM_MB(DIM, 3).eval()
    out = model(*bag(50))
    weights = out.extras["scores"].softmax(dim=0)
    pooled = weights.T @ out.extras["h"]
    expected = torch.cat([head(p) for head, p in zip(model.bag_classifier, pooled, strict=True)])
    torch.testing.assert_close(out.logits, expected)
    torch.testing.assert_close(out.patch_scores, weights[:, int(out.logits.argmax())])


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("in_dim", [1024, 2048])
@pytest.mark.parametrize(("cls", "score_columns"), [(CLAM_SB, 1), (CLAM_MB, 2)])
def test_parameter_counts(in_dim, cls, score_columns):
    model = cls(in_dim, 2)
    encoder = in_dim * 512 + 512
    attention = 2 * (512 * 256 + 256) + 256 * score_columns + score_columns
    bag_heads = 512 * 2 + 2  # Linear(512, 2) or two Linear(512, 1)
    instance_heads = 2 * (512 * 2 + 2)
    assert n_params(model) == encoder + attention + bag_heads + instance_heads
    if in_dim == 1024:
        assert abs(n_params(model) - 0.79e6) < 0.079e6  # paper Table 1
