"""SPAN end to end against an independent, slow float64 reference of its forward pass.

The reference reads only the constructor arguments and the model's state dict and recomputes
everything with explicit loops and dense masks, sharing no code with `span.models` (not even
the index helpers of `span.models.sparse`):

- stage grids: parent cell = cell // 2, found with a dictionary; a 2 x 2 convolution (LayerNorm
  first, one weight per child position) sums the occupied children and divides by their number;
- neighbourhoods by brute force from the cell coordinates: the tokens sharing the query's
  regular window (windows of `side` cells anchored at 0) or its shifted window (offset side/2);
- one pre-norm layer per stage: each local query takes ONE softmax over its neighbourhood plus
  the global tokens (position term on local-local pairs only), each global query over all local
  and global tokens; residual; pre-norm feed-forward; residual; for local and global tokens;
  with `global_attention="separate"` (the authors' code) the global tokens have their own
  LayerNorm and q/k/v, and a local query's softmax over its neighbourhood and its softmax over
  the global keys are computed apart and their outputs summed;
- centring (`center`): the slide's mean feature is subtracted from every patch and added to
  the global tokens' seed (without global tokens: projected by `mean_embed` and added to the
  pooled embedding; with `slide_mean=False`, nowhere);
- global tokens: global_embed(seed) before the first stage, carried to the next stage through
  that stage's token LayerNorm;
- heads: gated attention pooling of the last stage, or the sum over stages of the global tokens
  after each stage's layer, averaged over tokens.

Three deliberately broken models (attention residual dropped, global tokens re-created at every
stage, global head reading the last stage only) show that the comparison catches each mistake.
"""

from __future__ import annotations

import math

import pytest
import torch

from span.models.span import SPAN

LN_EPS = 1e-5  # nn.LayerNorm's default
ROPE_THETA = 10000.0
TOL = {"rtol": 1e-9, "atol": 1e-9}

BASE = {
    "in_dim": 24,
    "n_classes": 3,
    "embed_dim": 16,
    "heads": 4,
    "stages": 3,
    "window_side": 4,
    "shift": True,
    "global_tokens": 1,
    "center": False,
    "downsample": True,
    "depthwise_conv": True,
    "conv_bias": False,
    "position": "rpb",
    "rope_theta": ROPE_THETA,
    "head": "attention",
    "ffn_ratio": 2.0,
}


# --------------------------------------------------------------------------- reference pieces


def linear(sd: dict, name: str, x: torch.Tensor) -> torch.Tensor:
    out = x @ sd[f"{name}.weight"].T
    bias = sd.get(f"{name}.bias")
    return out if bias is None else out + bias


def layer_norm(sd: dict, name: str, x: torch.Tensor) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)  # biased variance, as nn.LayerNorm
    return (x - mean) / torch.sqrt(var + LN_EPS) * sd[f"{name}.weight"] + sd[f"{name}.bias"]


def softmax(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension; -inf entries get weight 0."""
    e = torch.exp(logits - logits.max(-1, keepdim=True).values)
    return e / e.sum(-1, keepdim=True)


def downsample_cells(cells: list) -> tuple[list, list]:
    """Parent cells (first-appearance order; the order is irrelevant) and each cell's parent."""
    index, parents, parent_of = {}, [], []
    for col, row in cells:
        key = (col // 2, row // 2)
        if key not in index:
            index[key] = len(parents)
            parents.append(key)
        parent_of.append(index[key])
    return parents, parent_of


def convolve(sd: dict, name: str, cfg: dict, x, cells, parents, parent_of) -> torch.Tensor:
    """LayerNorm, then per parent: sum over occupied children of (child @ weight of its
    position 2 dy + dx), divided by the number of children, plus the bias when there is one."""
    h = layer_norm(sd, f"{name}.norm", x)
    weight = sd[f"{name}.weight"]
    out = torch.zeros(len(parents), x.shape[1], dtype=x.dtype)
    count = [0] * len(parents)
    for c, ((col, row), p) in enumerate(zip(cells, parent_of, strict=True)):
        pcol, prow = parents[p]
        position = 2 * (row - 2 * prow) + (col - 2 * pcol)
        if cfg["depthwise_conv"]:
            out[p] += h[c] * weight[position]
        else:
            out[p] += h[c] @ weight[position]
        count[p] += 1
    out = out / torch.tensor(count, dtype=x.dtype)[:, None]
    return out + sd[f"{name}.bias"] if cfg["conv_bias"] else out


def neighbourhoods(cells: list, side: int, shift: bool) -> torch.Tensor:
    """(N, N) True where key j is in query i's regular or (when shifting) shifted window."""
    n = len(cells)

    def window(cell, offset):
        return ((cell[0] + offset) // side, (cell[1] + offset) // side)

    allowed = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        for j in range(n):
            same = window(cells[i], 0) == window(cells[j], 0)
            if shift:
                same = same or window(cells[i], side // 2) == window(cells[j], side // 2)
            allowed[i, j] = same
    return allowed


def f32(value: float) -> float:
    """Round to float32: the model's fixed (non-learned) tables are float32 buffers that
    `.double()` casts after rounding; the reference rounds the same way."""
    return float(torch.tensor(value, dtype=torch.float32))


def position_bias(sd: dict, prefix: str, cfg: dict, cells: list, head: int) -> torch.Tensor:
    """(N, N) additive term of head `head` on local-local logits (rpb, alibi), else zeros."""
    n, side, heads = len(cells), cfg["window_side"], cfg["heads"]
    bias = torch.zeros(n, n, dtype=torch.float64)
    for i, (ci, ri) in enumerate(cells):
        for j, (cj, rj) in enumerate(cells):
            dx, dy = cj - ci, rj - ri  # key cell - query cell
            if cfg["position"] == "rpb":
                if abs(dx) < side and abs(dy) < side:  # other pairs are masked anyway
                    entry = (dy + side - 1) * (2 * side - 1) + dx + side - 1
                    bias[i, j] = sd[f"{prefix}.attn.position.table"][entry, head]
            elif cfg["position"] == "alibi":
                slope = f32(2.0 ** (-8.0 * (head + 1) / heads))
                bias[i, j] = -f32(slope * f32(math.sqrt(dx * dx + dy * dy)))
    return bias


def rope(t: torch.Tensor, cells: list) -> torch.Tensor:
    """Axial RoPE of (N, dh) rows at their (absolute) cells: in the first half of the dims the
    pair (2k, 2k+1) turns by column * theta^(-2k / half), in the second half by row * the same."""
    half = t.shape[1] // 2
    # The model's frequency table is a float32 buffer: the same float32 computation here.
    freq = (ROPE_THETA ** (-torch.arange(0, half, 2, dtype=torch.float32) / half)).tolist()
    out = t.clone()
    for i, (col, row) in enumerate(cells):
        for start, coordinate in ((0, col), (half, row)):
            for k, f in enumerate(freq):
                a, b = t[i, start + 2 * k], t[i, start + 2 * k + 1]
                angle = torch.tensor(coordinate * f, dtype=t.dtype)
                out[i, start + 2 * k] = a * torch.cos(angle) - b * torch.sin(angle)
                out[i, start + 2 * k + 1] = a * torch.sin(angle) + b * torch.cos(angle)
    return out


def qkv_heads(sd: dict, prefix: str, cfg: dict, x: torch.Tensor, tokens: bool = False):
    """Per head: (queries * dh^-1/2, keys, values) of pre-normed rows (`tokens`: global tokens,
    with their own projection under separate global attention)."""
    dim, heads = x.shape[1], cfg["heads"]
    dh = dim // heads
    own = "global_" if tokens and cfg.get("global_attention") == "separate" else ""
    qkv = linear(sd, f"{prefix}.attn.{own}qkv", layer_norm(sd, f"{prefix}.attn.{own}norm", x))
    q, k, v = qkv[:, :dim] * dh**-0.5, qkv[:, dim : 2 * dim], qkv[:, 2 * dim :]
    cols = [slice(h * dh, (h + 1) * dh) for h in range(heads)]  # head h: columns h*dh..
    return [(q[:, c], k[:, c], v[:, c]) for c in cols]


def attention(sd: dict, prefix: str, cfg: dict, x, tokens, cells):
    """Multi-head attention of N local + G global rows, one dense masked softmax per head (two
    for local queries under separate global attention)."""
    n = len(x)
    g = 0 if tokens is None else len(tokens)
    separate = g and cfg.get("global_attention") == "separate"
    allowed = torch.ones(n + g, n + g, dtype=torch.bool)
    allowed[:n, :n] = neighbourhoods(cells, cfg["window_side"], cfg["shift"])
    heads = qkv_heads(sd, prefix, cfg, x)
    if g:
        token_heads = qkv_heads(sd, prefix, cfg, tokens, tokens=True)
        heads = [
            tuple(torch.cat([a, b]) for a, b in zip(local, glob, strict=True))
            for local, glob in zip(heads, token_heads, strict=True)
        ]
    outputs = []
    for h, (q, k, v) in enumerate(heads):
        logits = q @ k.T  # global queries and global keys: no position term
        if cfg["position"] == "rope":
            logits[:n, :n] = rope(q[:n], cells) @ rope(k[:n], cells).T
        logits[:n, :n] = logits[:n, :n] + position_bias(sd, prefix, cfg, cells, h)
        logits = logits.masked_fill(~allowed, float("-inf"))
        if separate:
            local = softmax(logits[:n, :n]) @ v[:n] + softmax(logits[:n, n:]) @ v[n:]
            outputs.append(torch.cat([local, softmax(logits[n:]) @ v]))
        else:
            outputs.append(softmax(logits) @ v)
    out = linear(sd, f"{prefix}.attn.proj", torch.cat(outputs, dim=1))
    return out[:n], (None if tokens is None else out[n:])


def feed_forward_residual(sd: dict, prefix: str, x: torch.Tensor) -> torch.Tensor:
    h = layer_norm(sd, f"{prefix}.norm", x)
    return x + linear(sd, f"{prefix}.ffn.fc2", torch.relu(linear(sd, f"{prefix}.ffn.fc1", h)))


def layer(sd: dict, prefix: str, cfg: dict, x, tokens, cells):
    ax, at = attention(sd, prefix, cfg, x, tokens, cells)
    x = feed_forward_residual(sd, prefix, x + ax)
    if tokens is not None:
        tokens = feed_forward_residual(sd, prefix, tokens + at)
    return x, tokens


def reference_forward(cfg: dict, sd: dict, features: torch.Tensor, grid: torch.Tensor) -> dict:
    """logits, embedding and patch_scores of SPAN(**cfg) with state dict `sd`, in float64."""
    sd = {k: v.detach().double() for k, v in sd.items()}
    cells = [tuple(c) for c in grid.tolist()]
    features, seed, mean = features.double(), sd.get("global_seed"), None
    if cfg["center"]:
        mean = features.sum(0) / len(features)
        features = features - mean
        if cfg.get("slide_mean", True):
            seed = None if seed is None else seed + mean
    x = linear(sd, "embed", features)
    tokens = linear(sd, "global_embed", seed) if cfg["global_tokens"] else None
    ancestor = list(range(len(cells)))  # input patch -> current stage's token
    stage_tokens = []
    for i in range(cfg["stages"]):
        if i > 0:
            if cfg["downsample"]:
                parents, parent_of = downsample_cells(cells)
                x = convolve(sd, f"convs.{i - 1}", cfg, x, cells, parents, parent_of)
                ancestor = [parent_of[a] for a in ancestor]
                cells = parents
            if tokens is not None:
                tokens = layer_norm(sd, f"token_norms.{i - 1}", tokens)
        x, tokens = layer(sd, f"layers.{i}", cfg, x, tokens, cells)
        if tokens is not None:
            stage_tokens.append(tokens)
    if cfg["head"] == "attention":
        h = layer_norm(sd, "head_norm", x)
        a = torch.tanh(linear(sd, "pool.scores.tanh.0", h))
        a = a * torch.sigmoid(linear(sd, "pool.scores.gate.0", h))
        weights = softmax(linear(sd, "pool.scores.score", a)[:, 0])
        embedding = weights @ h
        if cfg["center"] and cfg.get("slide_mean", True) and not cfg["global_tokens"]:
            embedding = embedding + linear(sd, "mean_embed", mean)
    else:
        embedding = layer_norm(sd, "head_norm", sum(stage_tokens).mean(0))
        # Heatmap: how much the global tokens look at each last-stage token, with the last
        # layer's projections, averaged over heads and tokens.
        last = f"layers.{cfg['stages'] - 1}"
        local = qkv_heads(sd, last, cfg, x)
        glob = qkv_heads(sd, last, cfg, tokens, tokens=True)
        per_head = [softmax(gq @ k.T) for (gq, _, _), (_, k, _) in zip(glob, local, strict=True)]
        weights = torch.stack(per_head).mean(dim=(0, 1))
    return {
        "logits": linear(sd, "classifier", embedding),
        "embedding": embedding,
        "patch_scores": weights[ancestor],
    }


# --------------------------------------------------------------------------- the comparison


def random_slide(n: int, extent: int, offset: int, seed: int, in_dim: int):
    """n distinct cells of an extent x extent square (with holes), shifted by offset."""
    gen = torch.Generator().manual_seed(seed)
    cells = torch.randperm(extent * extent, generator=gen)[:n]
    grid = torch.stack([cells % extent, cells // extent], dim=1) + offset
    features = torch.randn(n, in_dim, generator=gen, dtype=torch.float64)
    return features, grid


def perturbed_model(cfg: dict, seed: int) -> SPAN:
    """SPAN(**cfg) in float64 eval mode with noise added to every parameter (zero biases,
    unit LayerNorm scales and tiny initialisations would hide mistakes)."""
    torch.manual_seed(seed)
    model = SPAN(**cfg).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


def case(n: int, extent: int, offset: int, **overrides) -> tuple:
    """n tokens on an extent x extent square shifted by offset; constructor overrides."""
    return overrides, n, extent, offset


CASES = {
    "rpb w4 shift G1 attention-head 3 stages": case(50, 10, 3),
    "rpb w2 shift G2 global-head": case(40, 9, 1, window_side=2, global_tokens=2, head="global"),
    "no position, no shift, no global token, 2 stages": case(
        30, 8, 0, position="none", shift=False, global_tokens=0, stages=2
    ),
    "alibi w4 G2, full conv with bias": case(
        45, 9, 5, position="alibi", global_tokens=2, depthwise_conv=False, conv_bias=True
    ),
    "rope dh8 w2 G1 global-head 2 stages": case(
        35, 8, 2, position="rope", heads=2, window_side=2, head="global", stages=2
    ),
    "no downsampling, w4 G1": case(25, 7, 1, downsample=False, stages=2),
    "one stage, w2 no shift G1": case(20, 6, 0, stages=1, window_side=2, shift=False),
    "very sparse grid, depthwise conv with bias, G2 global-head": case(
        30, 16, 7, global_tokens=2, head="global", conv_bias=True
    ),
    "dense grid, rpb w2 G0 no shift": case(60, 8, 4, window_side=2, global_tokens=0, shift=False),
    "centred, w4 G2": case(50, 10, 3, center=True, global_tokens=2),
    "centred, no global token, global head off": case(40, 9, 2, center=True, global_tokens=0),
    "centred without the slide mean, G2": case(
        35, 8, 2, center=True, slide_mean=False, global_tokens=2
    ),
    "separate global attention G1 global-head (the authors')": case(
        45, 9, 3, global_attention="separate", head="global"
    ),
    "separate global attention G2, rope, no embedding bias": case(
        40, 8, 1, global_attention="separate", global_tokens=2, position="rope", embed_bias=False
    ),
}


def compare(model: SPAN, cfg: dict, features, grid) -> tuple[dict, dict]:
    with torch.no_grad():
        out = model(features, grid)
    got = {"logits": out.logits, "embedding": out.embedding, "patch_scores": out.patch_scores}
    return got, reference_forward(cfg, model.state_dict(), features, grid)


def max_diff(a: dict, b: dict, key: str) -> float:
    return float((a[key] - b[key]).abs().max())


@pytest.mark.parametrize(("overrides", "n", "extent", "offset"), CASES.values(), ids=CASES.keys())
def test_span_equals_the_float64_reference(overrides, n, extent, offset):
    cfg = {**BASE, **overrides}
    features, grid = random_slide(n, extent, offset, seed=n + extent, in_dim=cfg["in_dim"])
    model = perturbed_model(cfg, seed=extent)
    got, want = compare(model, cfg, features, grid)
    for key in ("logits", "embedding", "patch_scores"):
        torch.testing.assert_close(got[key], want[key], **TOL, msg=key)
    assert float(want["logits"].abs().max()) > 0.1  # not a degenerate, near-zero model


def test_the_reference_sees_shifted_windows_and_position():
    """Switching shift or the position term off in the reference alone changes its logits: the
    equality above is not blind to them."""
    cfg = {**BASE, "global_tokens": 0}
    features, grid = random_slide(50, 10, 3, seed=1, in_dim=cfg["in_dim"])
    model = perturbed_model(cfg, seed=1)
    got, want = compare(model, cfg, features, grid)
    torch.testing.assert_close(got["logits"], want["logits"], **TOL)
    for change in ({"shift": False}, {"position": "none"}):
        other = reference_forward({**cfg, **change}, model.state_dict(), features, grid)
        assert max_diff(other, want, "logits") > 1e-3, change


# --------------------------------------------------------------------------- broken models


MUTATION_CFG = {**BASE, "global_tokens": 2}


def mutation_setup(head: str = "attention"):
    cfg = {**MUTATION_CFG, "head": head}
    features, grid = random_slide(50, 10, 3, seed=11, in_dim=cfg["in_dim"])
    return cfg, perturbed_model(cfg, seed=11), features, grid


def test_reference_catches_a_dropped_attention_residual(monkeypatch):
    cfg, model, features, grid = mutation_setup()
    got, want = compare(model, cfg, features, grid)
    torch.testing.assert_close(got["logits"], want["logits"], **TOL)

    broken = model.layers[1]

    def forward_without_residual(x, tokens, grid, layout):
        ax, at = broken.attn(x, tokens, grid, layout)
        x = broken._ffn_residual(ax)  # x = attention output instead of x + attention output
        if tokens is not None:
            tokens = broken._ffn_residual(tokens + at)
        return x, tokens

    monkeypatch.setattr(broken, "forward", forward_without_residual)
    got, want = compare(model, cfg, features, grid)
    assert max_diff(got, want, "logits") > 1e-3


def test_reference_catches_global_tokens_recreated_at_every_stage():
    cfg, model, features, grid = mutation_setup()
    got, want = compare(model, cfg, features, grid)
    torch.testing.assert_close(got["logits"], want["logits"], **TOL)

    def fresh_tokens(_module, args):  # discard the carried tokens: embed the seed again
        x, _tokens, stage_grid, layout = args
        return x, model.global_embed(model.global_seed), stage_grid, layout

    for later in model.layers[1:]:
        later.register_forward_pre_hook(fresh_tokens)
    got, want = compare(model, cfg, features, grid)
    assert max_diff(got, want, "logits") > 1e-3


def test_reference_catches_a_global_head_reading_the_last_stage_only():
    cfg, model, features, grid = mutation_setup(head="global")
    got, want = compare(model, cfg, features, grid)
    torch.testing.assert_close(got["logits"], want["logits"], **TOL)
    torch.testing.assert_close(got["embedding"], want["embedding"], **TOL)

    last = {}
    model.layers[-1].register_forward_hook(lambda _m, _a, out: last.update(tokens=out[1]))
    # head_norm's input becomes the last stage's tokens averaged, not the sum over stages.
    model.head_norm.register_forward_pre_hook(lambda _m, _a: (last["tokens"].mean(0),))
    got, want = compare(model, cfg, features, grid)
    assert max_diff(got, want, "logits") > 1e-3
