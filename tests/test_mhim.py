"""MHIM-MIL: masking selection against a sort-based reference, schedules, EMA teacher,
checkpoint initialisation, training and evaluation passes."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from span.models.abmil import ABMIL
from span.models.mhim import MHIM, cosine_schedule, select_masked


def grid(n: int) -> torch.Tensor:
    return torch.zeros(n, 2, dtype=torch.long)


def reference_mask(scores, ratio_h, ratio_hr, ratio_l, ratio_random, seed):
    """The reference's rules by plain sorting, drawing the same random numbers in order."""
    g = torch.Generator().manual_seed(seed)
    n = len(scores)
    ranked = sorted(range(n), key=lambda i: -float(scores[i]))
    masked = set()
    if ratio_h > 0:
        pool = ranked[: math.ceil(n * ratio_h / ratio_hr)]
        take = torch.randperm(len(pool), generator=g)[: math.ceil(len(pool) * ratio_hr)]
        masked |= {pool[i] for i in take.tolist()}
    if ratio_l > 0:
        masked |= set(ranked[n - math.ceil(n * ratio_l) :])
    if ratio_random > 0:
        masked |= {ranked[i] for i in torch.randperm(n, generator=g)[: math.ceil(n * ratio_random)]}
    return masked


@pytest.mark.parametrize(
    ("h", "hr", "low", "rand"),
    [(0.01, 0.5, 0.0, 0.5), (0.1, 0.5, 0.2, 0.0), (0.05, 1.0, 0.0, 0.0), (0.0, 0.5, 0.3, 0.1)],
)
@pytest.mark.parametrize("seed", [0, 1])
def test_selection_matches_a_sort_based_reference(h, hr, low, rand, seed):
    scores = torch.rand(1000, generator=torch.Generator().manual_seed(seed + 10)).softmax(0)
    got = select_masked(scores, h, hr, low, rand, torch.Generator().manual_seed(seed))
    assert set(got.nonzero().squeeze(1).tolist()) == reference_mask(scores, h, hr, low, rand, seed)


def test_high_masking_hides_the_teachers_top_instances():
    scores = torch.randperm(200).float()
    top = set(scores.argsort(descending=True)[:20].tolist())
    g = torch.Generator().manual_seed(0)
    masked = set(select_masked(scores, 0.05, 0.5, 0.0, 0.0, g).nonzero().squeeze(1).tolist())
    assert len(masked) == 10 and masked <= top  # half of the top 10% (0.05 / 0.5)
    exact = select_masked(scores, 0.05, 1.0, 0.0, 0.0, g).nonzero().squeeze(1).tolist()
    assert set(exact) == set(scores.argsort(descending=True)[:10].tolist())
    bottom = select_masked(scores, 0.0, 1.0, 0.1, 0.0, g).nonzero().squeeze(1).tolist()
    assert set(bottom) == set(scores.argsort()[:20].tolist())


def test_one_instance_always_stays():
    for n in (1, 2, 3):
        masked = select_masked(torch.rand(n), 0.5, 0.5, 0.5, 0.9)
        assert int((~masked).sum()) >= 1


def test_mask_ratio_h_decays_to_zero():
    model = MHIM(32, 2, mask_ratio=0.0, mask_ratio_h=0.2, mask_ratio_hr=1.0)
    ratios = []
    for progress in (0.0, 0.25, 0.5, 1.0):
        model.loss(model(torch.randn(100, 32), grid(100)), torch.tensor(0), progress)
        ratios.append(model.current_mask_ratio_h())
    assert ratios == pytest.approx(
        [0.2 * (1 + math.cos(math.pi * p)) / 2 for p in (0, 0.25, 0.5, 1)]
    )
    assert ratios[-1] == 0.0
    assert not model(torch.randn(100, 32), grid(100)).extras["masked"].any()
    assert cosine_schedule(0.9999, 1.0, 1.0) == 1.0


@pytest.mark.parametrize("n_classes", [2, 3])
@pytest.mark.parametrize("n", [1, 7, 5000])
def test_training_step_with_abmil_student(n, n_classes):
    torch.manual_seed(0)
    model = MHIM(64, n_classes).train()
    features = torch.randn(n, 64)
    seen = {}
    model.student.encoder.register_forward_pre_hook(lambda _, a: seen.setdefault("x", a[0]))
    out = model(features, grid(n))
    masked = out.extras["masked"]
    assert out.logits.shape == (n_classes,) and out.patch_scores.shape == (n,)
    assert torch.equal(seen["x"], features[~masked])  # the student sees the unmasked ones only
    assert (out.patch_scores[masked] == 0).all()
    if n == 5000:
        assert 2500 <= int(masked.sum()) <= 2550  # random 50% united with ~1% high
    loss = model.loss(out, torch.tensor(n_classes - 1), 0.0)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is None for p in model.teacher.parameters())
    assert all(p.grad is not None for p in model.student.parameters())
    assert model.gradient_groups() == [list(model.student.parameters())]


def test_transmil_student_smoke():
    torch.manual_seed(0)
    model = MHIM(32, 2, student="transmil", mask_ratio_l=0.2).train()
    out = model(torch.randn(40, 32), grid(40))
    model.loss(out, torch.tensor(1), 0.3).backward()
    assert out.embedding.shape == (512,) and out.extras["masked"].sum() >= 8
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(40, 32), grid(40)).patch_scores.shape == (40,)


def test_teacher_changes_only_through_ema():
    torch.manual_seed(0)
    model = MHIM(32, 2, momentum=0.9)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    before = [p.clone() for p in model.teacher.parameters()]
    out = model(torch.randn(30, 32), grid(30))
    model.loss(out, torch.tensor(1), 0.0).backward()
    optimiser.step()
    for t, b in zip(model.teacher.parameters(), before, strict=True):
        assert torch.equal(t, b)
    student = [p.detach().clone() for p in model.student.parameters()]
    assert any(not torch.equal(s, b) for s, b in zip(student, before, strict=True))
    model.after_step()
    for t, b, s in zip(model.teacher.parameters(), before, student, strict=True):
        torch.testing.assert_close(t, 0.9 * b + 0.1 * s)


def test_cosine_momentum_reaches_one():
    model = MHIM(32, 2, momentum=0.99, momentum_cosine=True)
    assert model.current_momentum() == pytest.approx(0.99)
    model.progress = 0.5
    assert model.current_momentum() == pytest.approx(0.995)
    model.progress = 1.0
    before = [p.clone() for p in model.teacher.parameters()]
    with torch.no_grad():
        for p in model.student.parameters():
            p.add_(1.0)
    model.after_step()
    assert all(torch.equal(t, b) for t, b in zip(model.teacher.parameters(), before, strict=True))


def test_teacher_and_student_start_from_the_checkpoint(tmp_path, caplog):
    torch.manual_seed(0)
    baseline = ABMIL(32, 2)
    path = tmp_path / "abmil.pt"
    torch.save(baseline.state_dict(), path)
    expected = baseline.state_dict()
    model = MHIM(32, 2, teacher_checkpoint=str(path))
    for key, value in model.teacher.state_dict().items():
        assert torch.equal(value, expected[key]), key
    student = model.student.state_dict()
    assert torch.equal(student["encoder.0.weight"], expected["encoder.0.weight"])
    assert not torch.equal(student["classifier.weight"], expected["classifier.weight"])
    full = MHIM(32, 2, teacher_checkpoint=str(path), student_init="all").student.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in full.items())
    assert all(not p.requires_grad for p in model.teacher.parameters())
    with caplog.at_level(logging.WARNING):
        MHIM(32, 2)
    assert "teacher_checkpoint" in caplog.text


def test_evaluation_runs_the_student_on_every_instance():
    torch.manual_seed(0)
    model = MHIM(32, 2, mask_ratio=0.9).eval()
    features = torch.randn(50, 32)
    with torch.no_grad():
        out = model(features, grid(50))
        direct = model.student(features, grid(50))
    assert "masked" not in out.extras
    torch.testing.assert_close(out.patch_scores, direct.patch_scores)
    torch.testing.assert_close(out.logits, direct.logits)
    assert model.loss(out, torch.tensor(0), 0.5) == model.classification_loss(
        out.logits, torch.tensor(0)
    )
    model.train()
    assert model.student.training and not model.teacher.training
