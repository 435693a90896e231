"""CONCH v1.5, Midnight-12k and OpenMidnight with random weights: the published layouts renamed
to timm's (transformers' Dinov2 with SwiGLU; facebookresearch/dinov2 with registers) and
checked against a DINOv2 forward written out here, position grids resampled as the published
code does, and CONCH's attentional pooler against a slow reference. Small widths and depths
stand in for the real sizes (the full architectures are built in
test_encoders_foundation.py)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from span.errors import SpanError
from span.features.convert import (
    DINO_OFFSET,
    dinov2_hf_to_timm,
    dinov2_meta_to_timm,
    resample_grid,
)
from span.features.encoders import (
    AttentionalPooler,
    ViTEmbedding,
    build_architecture,
    build_encoder,
    preflight,
)
from span.features.registry import ENCODERS

DIM, DEPTH, HEADS = 32, 2, 4
#: transformers' and DINOv2's SwiGLU width for mlp_ratio 4: (int(128 * 2 / 3) + 7) // 8 * 8.
SWIGLU_HIDDEN = 88
SMALL = {"embed_dim": DIM, "depth": DEPTH, "num_heads": HEADS, "mlp_ratio": 2 * SWIGLU_HIDDEN / DIM}


def _small(monkeypatch, name: str, **kwargs) -> None:
    """Replace a registry entry by the same architecture at a small size."""
    info = ENCODERS[name]
    monkeypatch.setitem(ENCODERS, name, dataclasses.replace(info, kwargs={**info.kwargs, **kwargs}))


def _params(grid: int, registers: int, seed: int) -> dict:
    """Random DINOv2 weights, layout-neutral: a `grid` x `grid` position grid (plus the class
    token's), SwiGLU blocks with layer scale."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int, scale: float = 0.2, mean: float = 0.0) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale + mean

    block = {
        "n1w": r(DIM, mean=1.0),
        "n1b": r(DIM),
        "qkv_w": r(3 * DIM, DIM),
        "qkv_b": r(3 * DIM),
        "proj_w": r(DIM, DIM),
        "proj_b": r(DIM),
        "ls1": r(DIM, mean=1.0),
        "n2w": r(DIM, mean=1.0),
        "n2b": r(DIM),
        "in_w": r(2 * SWIGLU_HIDDEN, DIM),
        "in_b": r(2 * SWIGLU_HIDDEN),
        "out_w": r(DIM, SWIGLU_HIDDEN),
        "out_b": r(DIM),
        "ls2": r(DIM, mean=1.0),
    }
    return {
        "patch_w": r(DIM, 3, 14, 14, scale=0.05),
        "patch_b": r(DIM),
        "cls": r(1, 1, DIM),
        "pos": r(1, 1 + grid * grid, DIM, scale=0.5),
        "reg": r(1, registers, DIM) if registers else None,
        "mask": r(1, DIM),
        "norm_w": r(DIM, mean=1.0),
        "norm_b": r(DIM),
        "blocks": [
            {k: v + r(*v.shape, scale=0.05) for k, v in block.items()} for _ in range(DEPTH)
        ],
    }


def _as_transformers(p: dict) -> dict:
    """The weights under transformers 4's Dinov2Model names (Midnight-12k's layout)."""
    state = {
        "embeddings.cls_token": p["cls"],
        "embeddings.mask_token": p["mask"],
        "embeddings.position_embeddings": p["pos"],
        "embeddings.patch_embeddings.projection.weight": p["patch_w"],
        "embeddings.patch_embeddings.projection.bias": p["patch_b"],
        "layernorm.weight": p["norm_w"],
        "layernorm.bias": p["norm_b"],
    }
    for i, b in enumerate(p["blocks"]):
        pre = f"encoder.layer.{i}."
        for part, w, bias in zip(
            ("query", "key", "value"), b["qkv_w"].chunk(3), b["qkv_b"].chunk(3), strict=True
        ):
            state[f"{pre}attention.attention.{part}.weight"] = w
            state[f"{pre}attention.attention.{part}.bias"] = bias
        state |= {
            f"{pre}norm1.weight": b["n1w"],
            f"{pre}norm1.bias": b["n1b"],
            f"{pre}attention.output.dense.weight": b["proj_w"],
            f"{pre}attention.output.dense.bias": b["proj_b"],
            f"{pre}layer_scale1.lambda1": b["ls1"],
            f"{pre}norm2.weight": b["n2w"],
            f"{pre}norm2.bias": b["n2b"],
            f"{pre}mlp.weights_in.weight": b["in_w"],
            f"{pre}mlp.weights_in.bias": b["in_b"],
            f"{pre}mlp.weights_out.weight": b["out_w"],
            f"{pre}mlp.weights_out.bias": b["out_b"],
            f"{pre}layer_scale2.lambda1": b["ls2"],
        }
    return state


def _as_dinov2(p: dict) -> dict:
    """The weights under facebookresearch/dinov2's names (OpenMidnight's layout)."""
    state = {
        "cls_token": p["cls"],
        "pos_embed": p["pos"],
        "register_tokens": p["reg"],
        "mask_token": p["mask"],
        "patch_embed.proj.weight": p["patch_w"],
        "patch_embed.proj.bias": p["patch_b"],
        "norm.weight": p["norm_w"],
        "norm.bias": p["norm_b"],
    }
    for i, b in enumerate(p["blocks"]):
        names = {
            "norm1.weight": "n1w",
            "norm1.bias": "n1b",
            "attn.qkv.weight": "qkv_w",
            "attn.qkv.bias": "qkv_b",
            "attn.proj.weight": "proj_w",
            "attn.proj.bias": "proj_b",
            "ls1.gamma": "ls1",
            "norm2.weight": "n2w",
            "norm2.bias": "n2b",
            "mlp.w12.weight": "in_w",
            "mlp.w12.bias": "in_b",
            "mlp.w3.weight": "out_w",
            "mlp.w3.bias": "out_b",
            "ls2.gamma": "ls2",
        }
        state |= {f"blocks.{i}.{name}": b[key] for name, key in names.items()}
    return state


def _dinov2_reference(p: dict, x: torch.Tensor, antialias: bool) -> torch.Tensor:
    """DINOv2's forward written out (float64): patches, the class token, positions (the grid
    resampled bicubically to the input's), registers after the class token, pre-norm blocks
    with layer scale and SwiGLU (SiLU on the first half), the final norm; all tokens."""
    p = {k: v for k, v in p.items() if v is not None}
    x = x.double()
    tokens = F.conv2d(x, p["patch_w"].double(), p["patch_b"].double(), stride=14)
    n = tokens.shape[-1]
    tokens = tokens.flatten(2).transpose(1, 2)
    pos = p["pos"].double()
    m = math.isqrt(pos.shape[1] - 1)
    grid = pos[:, 1:].reshape(1, m, m, DIM).permute(0, 3, 1, 2)
    if m != n:
        grid = F.interpolate(grid, size=(n, n), mode="bicubic", antialias=antialias)
    grid = grid.permute(0, 2, 3, 1).reshape(1, n * n, DIM)
    cls = p["cls"].double().expand(len(x), -1, -1)
    tokens = torch.cat([cls, tokens], 1) + torch.cat([pos[:, :1], grid], 1)
    if "reg" in p:
        regs = p["reg"].double().expand(len(x), -1, -1)
        tokens = torch.cat([tokens[:, :1], regs, tokens[:, 1:]], 1)
    for block in p["blocks"]:
        b = {k: v.double() for k, v in block.items()}
        h = F.layer_norm(tokens, (DIM,), b["n1w"], b["n1b"], eps=1e-6)
        q, k, v = F.linear(h, b["qkv_w"], b["qkv_b"]).unflatten(-1, (3, HEADS, -1)).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(DIM // HEADS), -1) @ v
        out = F.linear(attn.transpose(1, 2).flatten(2), b["proj_w"], b["proj_b"])
        tokens = tokens + b["ls1"] * out
        h = F.layer_norm(tokens, (DIM,), b["n2w"], b["n2b"], eps=1e-6)
        gate, value = F.linear(h, b["in_w"], b["in_b"]).chunk(2, -1)
        tokens = tokens + b["ls2"] * F.linear(F.silu(gate) * value, b["out_w"], b["out_b"])
    return F.layer_norm(tokens, (DIM,), p["norm_w"].double(), p["norm_b"].double(), eps=1e-6)


@pytest.mark.parametrize("grid", [16, 37])  # the 224-px grid, and the 518-px one shrunk to it
def test_midnight_transformers_layout_renamed_and_loaded(monkeypatch, tmp_path, grid):
    """Midnight-12k's published layout (transformers' Dinov2 with SwiGLU): renamed, loaded
    into the timm model with strict=True, and through the checkpoint loader, its class token +
    mean of the patch tokens equal DINOv2's forward with transformers' grid resampling."""
    from safetensors.torch import save_file

    _small(monkeypatch, "midnight-12k", **SMALL)
    info = ENCODERS["midnight-12k"]
    params = _params(grid, registers=0, seed=grid)
    state = _as_transformers(params)
    vit = build_architecture(info).eval()
    vit.load_state_dict(dinov2_hf_to_timm(state, (16, 16)), strict=True)
    x = torch.randn(2, 3, 224, 224)
    tokens = _dinov2_reference(params, x, antialias=False)
    expected = torch.cat([tokens[:, 0], tokens[:, 1:].mean(1)], 1).float()
    with torch.inference_mode():
        torch.testing.assert_close(ViTEmbedding(vit, "cls_mean")(x), expected)
    save_file(state, tmp_path / "model.safetensors")
    preflight("midnight-12k", None, str(tmp_path / "model.safetensors"))
    encoder = build_encoder("midnight-12k", None, str(tmp_path / "model.safetensors"))
    with torch.inference_mode():
        torch.testing.assert_close(encoder.model(x), expected)
    assert (encoder.layer, encoder.mean) == ("cls_mean", (0.5, 0.5, 0.5))


@pytest.mark.parametrize("grid", [16, 37])  # OpenMidnight's published 16 x 16, and 518 px's
def test_openmidnight_dinov2_layout_renamed_and_loaded(monkeypatch, tmp_path, grid):
    """OpenMidnight's published layout (facebookresearch/dinov2 with 4 registers, `w12`/`w3`):
    renamed (the class position folded into the class token), loaded strictly and through the
    loader, its class token equals DINOv2's forward with the register models' resampling."""
    _small(monkeypatch, "openmidnight", **SMALL)
    params = _params(grid, registers=4, seed=10 + grid)
    state = _as_dinov2(params)
    vit = build_architecture(ENCODERS["openmidnight"]).eval()
    vit.load_state_dict(dinov2_meta_to_timm(state, (16, 16)), strict=True)
    x = torch.randn(2, 3, 224, 224)
    expected = _dinov2_reference(params, x, antialias=True)[:, 0].float()
    with torch.inference_mode():
        torch.testing.assert_close(ViTEmbedding(vit, "cls")(x), expected)
    torch.save(state, tmp_path / "teacher_checkpoint_load.pt")
    preflight("openmidnight", None, str(tmp_path / "teacher_checkpoint_load.pt"))
    encoder = build_encoder("openmidnight", None, str(tmp_path / "teacher_checkpoint_load.pt"))
    with torch.inference_mode():
        torch.testing.assert_close(encoder.model(x), expected)
    no_registers = {k: v for k, v in state.items() if k != "register_tokens"}
    torch.save(no_registers, tmp_path / "plain.pt")
    with pytest.raises(SpanError, match=r"lacks 1 tensors, e.g. \['reg_token'\]"):
        preflight("openmidnight", None, str(tmp_path / "plain.pt"))


def test_midnight_equals_transformers_dinov2():
    """Against transformers' own Dinov2Model with SwiGLU and a 7 x 7 grid run at 224 px
    (skipped where transformers is absent)."""
    transformers = pytest.importorskip("transformers")
    config = transformers.Dinov2Config(
        hidden_size=DIM,
        num_hidden_layers=DEPTH,
        num_attention_heads=HEADS,
        patch_size=14,
        image_size=98,
        use_swiglu_ffn=True,
        layer_norm_eps=1e-6,
    )
    torch.manual_seed(12)
    hf = transformers.Dinov2Model(config).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0, 0.2)
    vit = build_architecture(
        dataclasses.replace(
            ENCODERS["midnight-12k"], kwargs={**ENCODERS["midnight-12k"].kwargs, **SMALL}
        )
    ).eval()
    vit.load_state_dict(dinov2_hf_to_timm(hf.state_dict(), (16, 16)), strict=True)
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        out = hf(pixel_values=x).last_hidden_state
        expected = torch.cat([out[:, 0], out[:, 1:].mean(1)], 1)
        torch.testing.assert_close(ViTEmbedding(vit, "cls_mean")(x), expected)


def _pooler_reference(pooler: AttentionalPooler, tokens: torch.Tensor) -> torch.Tensor:
    """CoCa's attentional pooler written out in float64: per head, softmax(q k^T / sqrt(d)) v
    over every token, heads concatenated, then the output projection."""
    w = {k: v.double() for k, v in pooler.state_dict().items()}
    dim = w["query"].shape[1]
    q = F.layer_norm(w["query"], (dim,), w["ln_q.weight"], w["ln_q.bias"]) @ w["to_q.weight"].T
    ctx = F.layer_norm(tokens.double(), (tokens.shape[-1],), w["ln_k.weight"], w["ln_k.bias"])
    k, v = (ctx @ w["to_kv.weight"].T).chunk(2, -1)
    d = dim // pooler.heads
    heads = []
    for h in range(pooler.heads):
        part = slice(h * d, (h + 1) * d)
        scores = torch.einsum("qd,bnd->bqn", q[:, part], k[..., part]) / math.sqrt(d)
        heads.append(torch.einsum("bqn,bnd->bqd", scores.softmax(-1), v[..., part]))
    return (torch.cat(heads, -1) @ w["to_out.weight"].T).float()


def test_conch_pooler_matches_the_slow_reference():
    torch.manual_seed(2)
    pooler = AttentionalPooler(dim=48, context_dim=40, heads=8, queries=2)
    with torch.no_grad():
        for p in pooler.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    tokens = torch.randn(3, 17, 40)
    with torch.inference_mode():
        got = pooler(tokens)
    assert got.shape == (3, 2, 48)
    torch.testing.assert_close(got, _pooler_reference(pooler, tokens), rtol=1e-4, atol=1e-5)


def test_conch_grid_is_resampled_the_dino_way():
    """The 14 x 14 grid reaches 448 px (28 x 28) by the scale factor 28.1 / 14, as TRIDENT's
    iBOT ViT does (not by the output size: the two differ), and stays as is at 224 px."""
    pos = torch.randn(1, 196, 8)
    dino = resample_grid(pos, (28, 28), offset=DINO_OFFSET)
    assert dino.shape == (1, 784, 8)
    assert (dino - resample_grid(pos, (28, 28))).abs().max() > 1e-2
    assert resample_grid(pos, (14, 14), offset=DINO_OFFSET) is pos


def test_conch_tower_round_trip_through_the_loader(monkeypatch, tmp_path):
    """A small trunk under CONCH's pooler (768-d, 8 heads): 768-d output at 448 px, its saved
    state dict (CONCH's tensor names) loaded back gives the same embedding, and a checkpoint
    whose position grid is not 14 x 14 is refused with its line."""
    _small(monkeypatch, "conch-v15", embed_dim=64, depth=1, num_heads=4)
    encoder = build_encoder("conch-v15", None, "random")
    state = encoder.model.state_dict()
    assert {"trunk.pos_embed", "attn_pool_contrast.query", "ln_contrast.weight"} <= set(state)
    assert state["trunk.pos_embed"].shape == (1, 197, 64)
    torch.save(state, tmp_path / "pytorch_model_vision.bin")
    loaded = build_encoder("conch-v15", None, str(tmp_path / "pytorch_model_vision.bin"))
    assert (loaded.input_size, loaded.feature_dim, loaded.layer) == (448, 768, "attn_pool")
    x = torch.randn(2, 3, 448, 448)
    with torch.inference_mode():
        out = loaded.model(x)
        torch.testing.assert_close(out, encoder.model(x))
    assert out.shape == (2, 768) and torch.isfinite(out).all()
    torch.save({**state, "trunk.pos_embed": torch.zeros(1, 785, 64)}, tmp_path / "grid28.bin")
    with pytest.raises(SpanError, match=r"not a conch-v15 checkpoint: .*another shape"):
        preflight("conch-v15", None, str(tmp_path / "grid28.bin"))
