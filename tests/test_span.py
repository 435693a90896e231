"""SPAN: index structures, sparse convolution and attention against brute-force references,
invariances, switches and parameter count."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from span.models.span import SPAN
from span.models.sparse import downsampling, neighbour_pairs, window_layout
from span.models.sparse_conv import SparseDownsample
from span.models.window_attention import SparseWindowAttention
from tests.attention_reference import brute_force_pairs, dense_reference, random_grid


def full_grid(side: int) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1)


GRIDS = [
    ("sparse", random_grid(60, 20, 0)),
    ("dense", random_grid(150, 14, 1, offset=5)),
    ("full 12x12 (multiple of the side)", full_grid(12)),
    ("one row", torch.stack([torch.arange(17), torch.full((17,), 3)], 1)),
    ("one token", torch.tensor([[7, 9]])),
]


@pytest.mark.parametrize(("name", "grid"), GRIDS, ids=[g[0] for g in GRIDS])
@pytest.mark.parametrize("side", [2, 4, 6])
@pytest.mark.parametrize("shift", [True, False])
def test_neighbourhoods_match_the_definition(name, grid, side, shift):
    pairs = neighbour_pairs(window_layout(grid, side, shift))
    as_set = set(map(tuple, pairs.tolist()))
    assert len(as_set) == len(pairs), "a pair is listed twice"
    assert as_set == brute_force_pairs(grid, side, shift)


def test_shifted_windows_differ_on_grids_that_are_multiples_of_the_side():
    layout = window_layout(full_grid(12), 6)
    assert layout.regular.num_windows == 4 and layout.shifted.num_windows == 9
    # Token (5, 5) and (6, 6) sit in different regular windows but share a shifted one.
    pairs = set(map(tuple, neighbour_pairs(layout).tolist()))
    assert (5 * 12 + 5, 6 * 12 + 6) in pairs


def test_window_sizes_bound_the_neighbourhood():
    layout = window_layout(full_grid(30), 6)
    counts = torch.bincount(neighbour_pairs(layout)[:, 0])
    assert int(counts.max()) == 2 * 36 - 9  # union of two 6x6 windows overlapping on 3x3


@pytest.mark.parametrize("depthwise", [True, False])
@pytest.mark.parametrize("bias", [False, True])
def test_sparse_conv_equals_dense_conv(depthwise, bias):
    torch.manual_seed(0)
    grid = random_grid(90, 15, 3, offset=3)  # odd offsets: parents with 1-4 children
    dim = 6
    conv = SparseDownsample(dim, depthwise=depthwise, bias=bias)
    with torch.no_grad():
        if bias:
            conv.bias.normal_()
    x = torch.randn(len(grid), dim)
    down = downsampling(grid)
    out = conv(x, down)

    h = int(grid[:, 1].max()) + 2
    w = int(grid[:, 0].max()) + 2
    dense = torch.zeros(1, dim, h, w)
    dense[0, :, grid[:, 1], grid[:, 0]] = conv.norm(x).T
    occupied = torch.zeros(1, 1, h, w)
    occupied[0, 0, grid[:, 1], grid[:, 0]] = 1
    if depthwise:  # weight[2*dy+dx, d] -> conv2d weight[d, 1, dy, dx]
        weight = conv.weight.T.reshape(dim, 1, 2, 2)
        result = F.conv2d(dense, weight, stride=2, groups=dim)
    else:  # weight[2*dy+dx, d_in, d_out] -> conv2d weight[d_out, d_in, dy, dx]
        weight = conv.weight.permute(2, 1, 0).reshape(dim, dim, 2, 2)
        result = F.conv2d(dense, weight, stride=2)
    count = F.conv2d(occupied, torch.ones(1, 1, 2, 2), stride=2)
    expected = (result / count.clamp(min=1))[0, :, down.parent_grid[:, 1], down.parent_grid[:, 0]].T
    if bias:
        expected = expected + conv.bias
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert (count[0, 0, down.parent_grid[:, 1], down.parent_grid[:, 0]] == down.children).all()


@pytest.mark.parametrize("position", ["rpb", "alibi", "rope", "none"])
@pytest.mark.parametrize("n_tokens", [0, 2])
@pytest.mark.parametrize("shift", [True, False])
def test_attention_equals_dense_masked_reference(position, n_tokens, shift):
    torch.manual_seed(1)
    side, dim, heads = 4, 32, 4
    grid = random_grid(70, 13, 5, offset=2)
    attn = SparseWindowAttention(dim, heads, side, position).double()
    if position == "rpb":
        with torch.no_grad():
            attn.position.table.normal_()
    x = torch.randn(len(grid), dim, dtype=torch.float64, requires_grad=True)
    tokens = (
        torch.randn(n_tokens, dim, dtype=torch.float64, requires_grad=True) if n_tokens else None
    )
    layout = window_layout(grid, side, shift)
    out, out_tokens = attn(x, tokens, grid, layout)
    ref, ref_tokens = dense_reference(attn, x, tokens, grid, side, shift, position)
    torch.testing.assert_close(out, ref, rtol=1e-8, atol=1e-8)
    if n_tokens:
        torch.testing.assert_close(out_tokens, ref_tokens, rtol=1e-8, atol=1e-8)
    else:
        assert out_tokens is None
    probe = torch.randn_like(ref)
    inputs = [x, attn.qkv.weight, attn.norm.weight] + ([tokens] if n_tokens else [])
    if position == "rpb":
        inputs.append(attn.position.table)
    loss = (out * probe).sum() + (0 if out_tokens is None else out_tokens.sum())
    ref_loss = (ref * probe).sum() + (0 if ref_tokens is None else ref_tokens.sum())
    grads = torch.autograd.grad(loss, inputs)
    ref_grads = torch.autograd.grad(ref_loss, inputs)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-8)


def test_each_encoding_adds_its_own_term():
    from span.models.position import ALiBi2D, AxialRoPE, PositionEncoding, RelativePositionBias

    rpb = RelativePositionBias(heads=2, side=4)
    bias = rpb.block_bias()
    assert bias.shape == (2, 16, 16)
    # Slot 0 -> slot 5 is offset (+1, +1); slot 10 -> slot 15 too: same learned entry.
    torch.testing.assert_close(bias[:, 0, 5], bias[:, 10, 15])
    torch.testing.assert_close(bias[:, 0, 5], rpb.table[(1 + 3) * 7 + 1 + 3])
    alibi = ALiBi2D(heads=8, side=4).block_bias()
    assert alibi[0, 0, 5].item() == pytest.approx(-(2**-1) * math.sqrt(2))
    assert alibi[7, 0, 3].item() == pytest.approx(-(2**-8) * 3)
    assert (alibi[:, range(16), range(16)] == 0).all()
    rope = AxialRoPE(head_dim=8)
    q, k = torch.randn(1, 1, 8), torch.randn(1, 1, 8)
    cells = torch.tensor([[3, 5], [10, 2]])

    def dot(a, b):  # q at cells[0], k at cells[1]
        rotated_q = rope.rotate(q.expand(2, 1, 8), a[:, None])
        rotated_k = rope.rotate(k.expand(2, 1, 8), b[:, None])
        return (rotated_q[0] * rotated_k[1]).sum().item()

    assert dot(cells, cells) == pytest.approx(dot(cells + 7, cells + 7), abs=1e-5)
    assert dot(cells, cells) != pytest.approx((q * k).sum().item(), abs=1e-3)
    none = PositionEncoding()
    assert none.block_bias() is None and none.rotate(q, cells[:1]) is q


def make_slide(n: int, seed: int = 0, dim: int = 64):
    grid = random_grid(n, int(math.sqrt(n) * 1.6) + 1, seed, offset=3)
    return torch.randn(len(grid), dim, generator=torch.Generator().manual_seed(seed)), grid


CONFIGS = {
    "default": {},
    "global head": {"head": "global", "global_tokens": 2},
    "alibi": {"position": "alibi"},
    "rope": {"position": "rope"},
    "none": {"position": "none"},
    "no global token": {"global_tokens": 0},
    "no downsampling": {"downsample": False},
    "no shift": {"shift": False},
    "full conv": {"depthwise_conv": False, "conv_bias": True},
    "window 2": {"window_side": 2},
    "centred, no global token": {"global_tokens": 0, "center": True},
    "centred, no slide mean": {"slide_mean": False},
    "the authors'": {
        "global_attention": "separate",
        "head": "global",
        "center": False,
        "conv_init": "random",
        "embed_bias": False,
    },
}


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_row_order_does_not_change_logits(config):
    torch.manual_seed(0)
    model = SPAN(64, 3, embed_dim=32, heads=4, **config).eval()
    x, grid = make_slide(120)
    perm = torch.randperm(len(x))
    out, out_perm = model(x, grid), model(x[perm], grid[perm])
    torch.testing.assert_close(out.logits, out_perm.logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.patch_scores[perm], out_perm.patch_scores, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
@pytest.mark.parametrize("shape", ["one token", "one row", "slide"])
def test_every_parameter_gets_a_gradient(config, shape):
    torch.manual_seed(0)
    model = SPAN(64, 2, embed_dim=32, heads=4, **config)
    if shape == "one token":
        x, grid = torch.randn(1, 64), torch.tensor([[5, 8]])
    elif shape == "one row":
        x, grid = torch.randn(9, 64), torch.stack([torch.arange(9) + 4, torch.full((9,), 2)], 1)
    else:
        x, grid = make_slide(80)
    out = model(x, grid)
    assert out.logits.shape == (2,) and out.patch_scores.shape == (len(x),)
    assert torch.isfinite(out.logits).all() and out.embedding.shape == (32,)
    model.loss(out, torch.tensor(1), 0.5).backward()
    # The global-token head reads only the global tokens, which get no position term: the
    # last layer's local-local bias cannot reach the logits.
    unused = {"layers.2.attn.position.table"} if config.get("head") == "global" else set()
    missing = {n for n, p in model.named_parameters() if p.grad is None}
    assert missing == unused
    if shape == "slide":  # the score bias shifts all softmax inputs alike: its gradient is 0
        shift_invariant = {"pool.scores.score.bias"}
        zero = {n for n, p in model.named_parameters() if n not in unused and not p.grad.any()}
        assert zero <= shift_invariant, zero


class Recorder:
    """Forward hooks on every attention layer: token counts, globals and layouts seen."""

    def __init__(self, model: SPAN) -> None:
        self.calls = []
        for layer in model.layers:
            layer.attn.register_forward_hook(self.hook)

    def hook(self, module, args, output):
        x, tokens, _, layout = args
        self.calls.append({"n": len(x), "tokens": tokens, "layout": layout})


def test_switches_have_their_structural_effect():
    x, grid = make_slide(200)
    runs = {}
    for name in ("default", "no shift", "no global token", "no downsampling"):
        model = SPAN(64, 2, embed_dim=32, heads=4, **CONFIGS[name])
        recorder = Recorder(model)
        model(x, grid)
        runs[name] = recorder.calls
    default = runs["default"]
    assert [c["n"] for c in default] == [
        len(grid),
        len(downsampling(grid).parent_grid),
        len(downsampling(downsampling(grid).parent_grid).parent_grid),
    ]
    assert all(c["tokens"] is not None and len(c["tokens"]) == 1 for c in default)
    assert all(c["layout"].shifted is not None for c in default)
    assert all(c["layout"].shifted is None for c in runs["no shift"])
    for call in runs["no shift"]:  # neighbourhoods = regular windows only
        pairs = set(map(tuple, neighbour_pairs(call["layout"]).tolist()))
        regular = call["layout"].regular.window
        assert pairs == {
            (i, j) for i in range(call["n"]) for j in range(call["n"]) if regular[i] == regular[j]
        }
    assert all(c["tokens"] is None for c in runs["no global token"])
    assert [c["n"] for c in runs["no downsampling"]] == [len(grid)] * 3


def test_patch_scores_map_last_stage_attention_to_input_patches():
    torch.manual_seed(0)
    model = SPAN(64, 2, embed_dim=32, heads=4).eval()
    x, grid = make_slide(150)
    out = model(x, grid)
    parents = downsampling(downsampling(grid).parent_grid)
    ancestor = parents.parent[downsampling(grid).parent]
    # Patches under the same last-stage cell share its score; scores over last-stage cells sum to 1.
    for cell in ancestor.unique():
        assert out.patch_scores[ancestor == cell].unique().numel() == 1
    first = torch.zeros(len(parents.parent_grid))
    first[ancestor] = out.patch_scores
    assert first.sum().item() == pytest.approx(1.0, abs=1e-5)


def test_parameter_count_matches_the_paper():
    count = sum(p.numel() for p in SPAN(1024, 2).parameters())
    assert abs(count - 2.37e6) / 2.37e6 < 0.10, count
    assert SPAN(2048, 2).embed.out_features == 512 and SPAN(1024, 2).embed.out_features == 256
    assert SPAN(512, 2).embed.out_features == 256  # at least MIN_EMBED_DIM, not the paper's 128


def test_bad_inputs_are_clear_errors():
    model = SPAN(64, 2, embed_dim=32, heads=4)
    with pytest.raises(ValueError, match="aligned"):
        model(torch.randn(3, 64), torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=">= 0"):
        model(torch.randn(1, 64), torch.tensor([[-1, 0]]))
    with pytest.raises(ValueError, match="even"):
        SPAN(64, 2, embed_dim=32, heads=4, window_side=5)(
            torch.randn(1, 64), torch.tensor([[1, 1]])
        )
    with pytest.raises(ValueError, match="global_tokens"):
        SPAN(64, 2, head="global", global_tokens=0)


def test_attention_dropout_is_reproducible_and_differentiable():
    torch.manual_seed(2)
    grid = random_grid(20, 7, 7)
    attn = SparseWindowAttention(8, 2, 4, "rpb", attn_dropout=0.3).double().train()
    layout = window_layout(grid, 4)
    x = torch.randn(len(grid), 8, dtype=torch.float64, requires_grad=True)
    tokens = torch.randn(1, 8, dtype=torch.float64, requires_grad=True)

    def run(x, tokens):
        torch.manual_seed(0)  # the same dropout masks on every call
        out, out_tokens = attn(x, tokens, grid, layout)
        return out, out_tokens

    a, b = run(x, tokens), run(x, tokens)
    torch.testing.assert_close(a, b)
    attn.eval()
    assert not torch.allclose(attn(x, tokens, grid, layout)[0], a[0])
    attn.train()
    assert torch.autograd.gradcheck(run, (x, tokens), eps=1e-6, atol=1e-5)


def test_centred_span_sees_the_slide_mean_with_or_without_global_tokens():
    """A per-slide offset of every feature (stain, scanner) changes the logits: centring moves
    the mean to the global tokens, or without them to the head, and never removes it."""
    x, grid = make_slide(100)
    offset = 0.5 * torch.randn(64, generator=torch.Generator().manual_seed(5))
    for tokens in (1, 0):
        torch.manual_seed(0)
        model = SPAN(64, 2, embed_dim=32, heads=4, global_tokens=tokens).eval()
        with torch.no_grad():
            moved = (model(x + offset, grid).logits - model(x, grid).logits).abs().max()
        assert moved > 1e-3, tokens
    for tokens in (1, 0):  # unless told not to: then exactly invariant
        torch.manual_seed(0)
        model = SPAN(64, 2, embed_dim=32, heads=4, global_tokens=tokens, slide_mean=False)
        with torch.no_grad():
            moved = (model.eval()(x + offset, grid).logits - model(x, grid).logits).abs().max()
        assert moved < 1e-5, tokens


def test_separate_global_attention_gives_every_patch_the_one_global_value():
    """The authors' attention: with one global token, each local query's separate softmax over
    it is 1, so every patch receives the same global value, whatever its query."""
    torch.manual_seed(0)
    attn = SparseWindowAttention(8, 2, 4, global_attention="separate").double().eval()
    grid = random_grid(30, 8, 1)
    x = torch.randn(len(grid), 8, dtype=torch.float64)
    token = torch.randn(1, 8, dtype=torch.float64)
    qkv = attn.project(x)
    gqkv = attn.split_heads(attn.project(token, tokens=True))
    added = attn._separate_global_values(qkv, gqkv, 0.0)
    torch.testing.assert_close(added, gqkv[2].transpose(0, 1).reshape(1, -1).expand_as(added))
    assert set(attn.state_dict()) >= {"global_qkv.weight", "global_norm.weight"}
    with pytest.raises(ValueError, match="global_attention"):
        SparseWindowAttention(8, 2, 4, global_attention="shared")


def test_embedding_width_follows_the_ratio():
    assert SPAN(1024, 2, embed_ratio=0.5).embed.out_features == 512  # the authors' in/2
    assert SPAN(1024, 2, embed_ratio=0.5, embed_bias=False).embed.bias is None
    with pytest.raises(ValueError, match="embed_ratio"):
        SPAN(1024, 2, embed_ratio=0)
