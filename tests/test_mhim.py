"""MHIM-MIL: masking selection against a sort-based reference, schedules, EMA teacher,
the reference's ABMIL student and train-mode teacher, checkpoint initialisation (plain and
reference ABMIL checkpoints), training and evaluation passes."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from span.models import build_model
from span.models.abmil import ABMIL
from span.models.mhim import MHIM, cosine_schedule, select_masked

#: The attention biases of a plain ABMIL, which the reference's DAttention has not.
ATTENTION_BIASES = {"pool.scores.tanh.0.bias", "pool.scores.score.bias"}


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
    """The previous architecture (reference_attention=False) loads a plain ABMIL exactly."""
    torch.manual_seed(0)
    baseline = ABMIL(32, 2)
    path = tmp_path / "abmil.pt"
    torch.save(baseline.state_dict(), path)
    expected = baseline.state_dict()
    with caplog.at_level(logging.WARNING):
        model = MHIM(32, 2, teacher_checkpoint=str(path), reference_attention=False)
    assert caplog.text == ""
    assert model.teacher.state_dict().keys() == expected.keys()
    for key, value in model.teacher.state_dict().items():
        assert torch.equal(value, expected[key]), key
    student = model.student.state_dict()
    assert torch.equal(student["encoder.0.weight"], expected["encoder.0.weight"])
    assert not torch.equal(student["classifier.weight"], expected["classifier.weight"])
    full = MHIM(
        32, 2, teacher_checkpoint=str(path), student_init="all", reference_attention=False
    ).student.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in full.items())
    assert all(not p.requires_grad for p in model.teacher.parameters())
    with caplog.at_level(logging.WARNING):
        MHIM(32, 2)
    assert "teacher_checkpoint" in caplog.text


def reference_dattention(model: ABMIL, features: torch.Tensor):
    """MHIM-MIL v1's ABMIL by hand (eval mode): h = ReLU(W x + b), a = w^T ReLU(V h) without
    biases, softmax over instances, logits = C (a @ h) + c; -> (attention, logits)."""
    enc, scores = model.encoder[0], model.pool.scores
    h = torch.relu(features @ enc.weight.T + enc.bias)
    a = (torch.relu(h @ scores.tanh[0].weight.T) @ scores.score.weight.T)[:, 0].softmax(0)
    return a, (a @ h) @ model.classifier.weight.T + model.classifier.bias


def test_default_abmil_student_is_the_references_dattention():
    torch.manual_seed(0)
    model = MHIM(32, 2).eval()
    for net in (model.student, model.teacher):
        biases = {n for n, _ in net.named_parameters() if n.endswith("bias")}
        assert biases == {"encoder.0.bias", "classifier.bias"}  # none in the attention
        assert isinstance(net.pool.scores.tanh[1], torch.nn.ReLU)
    features = torch.randn(40, 32)
    with torch.no_grad():
        out = model(features, grid(40))
        weights, logits = reference_dattention(model.student, features)
    torch.testing.assert_close(out.patch_scores, weights)
    torch.testing.assert_close(out.logits, logits)
    # The previous student (plain ABMIL: tanh attention with biases) on request ...
    previous = MHIM(32, 2, reference_attention=False).student
    names = [n for n, _ in previous.named_parameters()]
    assert names == [n for n, _ in ABMIL(32, 2).named_parameters()]
    assert set(names) >= ATTENTION_BIASES
    assert isinstance(previous.pool.scores.tanh[1], torch.nn.Tanh)
    # ... explicit student hyperparameters win over the reference's, and plain ABMIL is as was.
    explicit = MHIM(32, 2, student_hparams={"attention_bias": True}).student
    assert explicit.pool.scores.score.bias is not None
    assert isinstance(explicit.pool.scores.tanh[1], torch.nn.ReLU)
    assert isinstance(ABMIL(32, 2).pool.scores.tanh[1], torch.nn.Tanh)
    with pytest.raises(ValueError, match="attention activation"):
        ABMIL(32, 2, attention_activation="gelu")


def teacher_calls(model: MHIM, features: torch.Tensor, calls: int = 2) -> list:
    """(teacher in train mode, gradients on, its attention) of each training forward pass."""
    seen = []
    model.teacher.register_forward_hook(
        lambda m, _a, out: seen.append((m.training, torch.is_grad_enabled(), out.patch_scores))
    )
    model.train()
    for _ in range(calls):
        model(features, grid(len(features)))
    return seen


def test_teacher_ranks_in_train_mode_by_default():
    torch.manual_seed(0)
    features = torch.randn(60, 32)
    seen = teacher_calls(MHIM(32, 2), features)
    assert all(training and not grad for training, grad, _ in seen)
    assert not torch.equal(seen[0][2], seen[1][2])  # dropout on: one bag, two rankings
    frozen = teacher_calls(MHIM(32, 2, teacher_mode="eval"), features)
    assert all(not training and not grad for training, grad, _ in frozen)
    assert torch.equal(frozen[0][2], frozen[1][2])  # the previous, deterministic ranking
    with pytest.raises(ValueError, match="teacher_mode"):
        MHIM(32, 2, teacher_mode="frozen")


def test_plain_abmil_checkpoint_initialises_the_reference_student(tmp_path, caplog):
    """The pipeline's teacher is the plain `abmil` variant: its checkpoint still loads into
    the bias-free default, less its attention biases (with a warning)."""
    torch.manual_seed(0)
    baseline = build_model("abmil", 32, 2)
    path = tmp_path / "abmil.pt"
    torch.save(baseline.state_dict(), path)
    expected = baseline.state_dict()
    with caplog.at_level(logging.WARNING):
        model = build_model("mhim", 32, 2, student="abmil", teacher_checkpoint=str(path))
    assert all(key in caplog.text for key in ATTENTION_BIASES)
    teacher = model.teacher.state_dict()
    assert set(expected) - set(teacher) == ATTENTION_BIASES
    for key, value in teacher.items():
        assert torch.equal(value, expected[key]), key
    student = model.student.state_dict()
    for key in ("encoder.0.weight", "encoder.0.bias"):
        assert torch.equal(student[key], expected[key])
    full = MHIM(32, 2, teacher_checkpoint=str(path), student_init="all").student.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in full.items())
    out = model(torch.randn(30, 32), grid(30))  # and it trains
    model.loss(out, torch.tensor(1), 0.0).backward()
    assert torch.isfinite(out.logits).all()
    # Only missing biases are forgiven: any other mismatch is still an error.
    torch.save({**expected, "pool.scores.extra.weight": torch.zeros(1)}, path)
    with pytest.raises(RuntimeError, match="extra"):
        MHIM(32, 2, teacher_checkpoint=str(path))


def test_reference_abmil_checkpoint_loads_exactly(tmp_path, caplog):
    torch.manual_seed(0)
    reference = ABMIL(32, 2, attention_activation="relu", attention_bias=False).eval()
    path = tmp_path / "abmil.pt"
    torch.save(reference.state_dict(), path)
    with caplog.at_level(logging.WARNING):
        model = MHIM(32, 2, teacher_checkpoint=str(path)).eval()
    assert caplog.text == ""
    features = torch.randn(25, 32)
    with torch.no_grad():
        teacher, direct = model.teacher(features, grid(25)), reference(features, grid(25))
    torch.testing.assert_close(teacher.patch_scores, direct.patch_scores, rtol=0, atol=0)
    torch.testing.assert_close(teacher.embedding, direct.embedding, rtol=0, atol=0)


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
    assert model.student.training and model.teacher.training  # the reference's teacher mode
    model.eval()
    assert not model.teacher.training
    model = MHIM(32, 2, teacher_mode="eval").train()
    assert model.student.training and not model.teacher.training
