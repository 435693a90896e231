"""TransMIL: Nystrom attention against the package's formula and dense softmax attention,
token alignment after padding, square padding, training steps and parameter count."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from span.models.transmil import NystromAttention, TransMIL, iterative_pinv, square_padding


def heads_qkv(attn: NystromAttention, x: torch.Tensor):
    q, k, v = attn.to_qkv(x).view(len(x), 3, attn.heads, -1).permute(1, 2, 0, 3)
    return q * attn.scale, k, v


def merge(attn: NystromAttention, out: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    out = out + attn.res_conv(v[None])[0]
    return attn.to_out(out.transpose(0, 1).reshape(out.shape[1], -1))


def package_formula(attn: NystromAttention, x: torch.Tensor, keep_last: bool = True):
    """nystrom-attention 0.0.9 with every kernel materialised: outputs and the full attention
    matrix; keep_last=False reproduces its bug (the first n outputs after left padding)."""
    n, m = len(x), attn.landmarks
    xp = F.pad(x, (0, 0, -n % m, 0))
    q, k, v = heads_qkv(attn, xp)
    segment = math.ceil(n / m)
    q_l = q.reshape(attn.heads, m, segment, -1).sum(2) / segment
    k_l = k.reshape(attn.heads, m, segment, -1).sum(2) / segment
    k1, k2, k3 = (
        (a @ b.transpose(-1, -2)).softmax(-1) for a, b in ((q, k_l), (q_l, k_l), (q_l, k))
    )
    pinv = iterative_pinv(k2, attn.pinv_iterations)
    out = merge(attn, (k1 @ pinv) @ (k3 @ v), v)
    return (out[-n:] if keep_last else out[:n]), k1 @ pinv @ k3


def dense_attention(attn: NystromAttention, x: torch.Tensor) -> torch.Tensor:
    """Exact softmax attention over the same left-padded sequence (zero tokens as keys)."""
    n = len(x)
    q, k, v = heads_qkv(attn, F.pad(x, (0, 0, -n % attn.landmarks, 0)))
    return merge(attn, (q @ k.transpose(-1, -2)).softmax(-1) @ v, v)[-n:]


def attention(landmarks: int, conv: bool = True, pinv_iterations: int = 6) -> NystromAttention:
    torch.manual_seed(1)
    attn = NystromAttention(64, 4, 16, landmarks, pinv_iterations).eval()
    if not conv:
        attn.res_conv.weight.data.zero_()
    return attn


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize(("n", "landmarks"), [(300, 64), (200, 256), (256, 32), (7, 4)])
@torch.no_grad()
def test_matches_the_package_formula_with_the_last_n_outputs(n, landmarks):
    attn = attention(landmarks)
    x = torch.randn(n, 64)
    out, scores = attn(x, row=3)
    expected, full = package_formula(attn, x)
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=1e-4)
    pad = -n % landmarks
    torch.testing.assert_close(scores, full[:, pad + 3, pad:].mean(0), atol=1e-5, rtol=1e-4)
    if pad:  # the package's first-n outputs are misaligned: a test of that bug would see it
        assert relative_error(package_formula(attn, x, keep_last=False)[0], expected) > 0.3


@torch.no_grad()
def test_output_i_is_token_i_at_full_landmark_count():
    """n < landmarks and not a multiple: one landmark per token, close to exact attention
    over the padded sequence, token by token (the first-n bug shifts tokens by 56)."""
    attn = attention(256, conv=False)
    x = torch.randn(200, 64)
    out, ref = attn(x)[0], dense_attention(attn, x)
    assert relative_error(out, ref) < 0.05
    nearest = torch.cdist(out, ref).argmin(1)
    assert torch.equal(nearest, torch.arange(200))


@torch.no_grad()
def test_converges_to_softmax_attention_as_landmarks_reach_the_length():
    x = torch.randn(256, 64)
    errors = []
    for m in (8, 32, 128, 256):
        attn = attention(m, conv=False)
        errors.append(relative_error(attn(x)[0], dense_attention(attn, x)))
    assert all(a > b for a, b in itertools.pairwise(errors)), errors
    assert errors[-1] < 0.03
    # The remaining error is the iterative pseudo-inverse's; more iterations shrink it.
    exact = attention(256, conv=False, pinv_iterations=30)
    assert relative_error(exact(x)[0], dense_attention(exact, x)) < 5e-3


def test_iterative_pinv_inverts_a_well_conditioned_matrix():
    x = (torch.eye(16) * 4 + torch.rand(2, 16, 16)).softmax(-1)
    torch.testing.assert_close(iterative_pinv(x, 12) @ x, torch.eye(16).expand(2, 16, 16))


@pytest.mark.parametrize(
    ("n", "side", "order"),
    [(1, 1, [0]), (4, 2, [0, 1, 2, 3]), (7, 3, [0, 1, 2, 3, 4, 5, 6, 0, 1]), (2, 2, [0, 1, 0, 1])],
)
def test_square_padding_repeats_the_first_tokens(n, side, order):
    got_side, got_order = square_padding(n)
    assert got_side == side and got_order.tolist() == order


def test_model_pads_with_the_first_tokens_behind_the_cls_token():
    model = TransMIL(32, 2).eval()
    seen = {}
    model.layer1.register_forward_pre_hook(lambda _, args: seen.setdefault("x", args[0]))
    features = torch.randn(7, 32)
    with torch.no_grad():
        model(features, torch.zeros(7, 2, dtype=torch.long))
        h = model.encoder(features)
    expected = torch.cat([model.cls_token, h, h[:2]])
    torch.testing.assert_close(seen["x"], expected)


@pytest.mark.parametrize("n_classes", [2, 3])
@pytest.mark.parametrize("n", [1, 7, 5000])
def test_forward_backward(n, n_classes):
    torch.manual_seed(0)
    model = TransMIL(64, n_classes)
    out = model(torch.randn(n, 64), torch.zeros(n, 2, dtype=torch.long))
    assert out.logits.shape == (n_classes,) and out.embedding.shape == (512,)
    assert out.patch_scores.shape == (n,) and torch.isfinite(out.patch_scores).all()
    model.loss(out, torch.tensor(n_classes - 1), 0.0).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.cls_token.grad.abs().sum() > 0


def test_parameter_count_matches_the_paper():
    count = sum(p.numel() for p in TransMIL(1024, 2).parameters())
    assert abs(count - 2.67e6) / 2.67e6 < 0.01
