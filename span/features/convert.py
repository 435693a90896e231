"""Checkpoints published in another library's layout, renamed to timm's ViT tensors, and the
position-grid resampling those libraries do at run time:

- transformers' `Dinov2Model` (Phikon-v2, Midnight-12k) -> `timm.models.VisionTransformer`:
  the transformers 4 attention names (`attention.attention.query`, `attention.output.dense`;
  the published checkpoints) and the transformers 5 ones (`attention.q_proj`, ...), SwiGLU
  (`mlp.weights_in`/`weights_out`);
- facebookresearch/dinov2 with registers (OpenMidnight) -> timm's `vit_*_reg4_dinov2`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import torch
import torch.nn.functional as F

#: DINO's and iBOT's interpolation offset (github.com/facebookresearch/dino issue 8), which
#: CONCH v1.5's vendored iBOT ViT still uses: the grid is scaled by (n + 0.1) / m.
DINO_OFFSET = 0.1

_BLOCK = {
    "norm1": "norm1",
    "norm2": "norm2",
    "attention.output.dense": "attn.proj",
    "attention.o_proj": "attn.proj",
    "layer_scale1.lambda1": "ls1.gamma",
    "layer_scale2.lambda1": "ls2.gamma",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "mlp.weights_in": "mlp.fc1",  # SwiGLU: both halves packed, the SiLU-gated half first
    "mlp.weights_out": "mlp.fc2",
}
_QKV = {
    "attention.attention.query": "query",
    "attention.attention.key": "key",
    "attention.attention.value": "value",
    "attention.q_proj": "query",
    "attention.k_proj": "key",
    "attention.v_proj": "value",
}
_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
#: facebookresearch/dinov2 names that differ from timm's (anywhere in the key).
_META = {".mlp.w12.": ".mlp.fc1.", ".mlp.w3.": ".mlp.fc2.", "register_tokens": "reg_token"}


def resample_grid(
    pos: torch.Tensor, grid: tuple[int, int], antialias: bool = False, offset: float = 0.0
) -> torch.Tensor:
    """Bicubic resampling (in float32) of the position embeddings of a square patch grid,
    shaped (1, m * m, dim), to `grid` (rows, columns), as the reference code does at run time:
    to the output size, or, with `offset`, by the scale factor (n + offset) / m (DINO's
    kludge, which samples slightly differently). Unchanged when the grid already fits."""
    m = math.isqrt(pos.shape[1])
    if (m, m) == tuple(grid):
        return pos
    square = pos.float().reshape(1, m, m, -1).permute(0, 3, 1, 2)
    if offset:
        sizing = {"scale_factor": ((grid[0] + offset) / m, (grid[1] + offset) / m)}
    else:
        sizing = {"size": tuple(grid)}
    out = F.interpolate(square, mode="bicubic", align_corners=False, antialias=antialias, **sizing)
    return out.permute(0, 2, 3, 1).reshape(1, -1, pos.shape[-1]).to(pos.dtype)


def _with_grid(pos: torch.Tensor, grid: tuple[int, int], antialias: bool) -> torch.Tensor:
    """Position embeddings (class token's first) with the patch grid resampled to `grid`."""
    return torch.cat([pos[:, :1], resample_grid(pos[:, 1:], grid, antialias)], dim=1)


def dinov2_hf_to_timm(state: dict[str, torch.Tensor], grid: tuple[int, int]) -> dict:
    """Rename a transformers Dinov2 state dict to timm's ViT: query/key/value are stacked into
    `qkv`, the position grid is resampled to the model's `grid` as transformers does at run
    time (bicubic, not antialiased), the masked-image-modelling `mask_token` (unused at
    inference) is dropped, and any tensor without a counterpart keeps its name (so the fit
    check reports it)."""
    state = {k.removeprefix("dinov2."): v for k, v in state.items()}
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        block = re.fullmatch(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias|lambda1)", key)
        if key == "embeddings.mask_token":
            continue
        if key in _TOP:
            out[_TOP[key]] = value
        elif block and block[2] in _QKV:
            qkv.setdefault((block[1], block[3]), {})[_QKV[block[2]]] = value
        elif block and f"{block[2]}.{block[3]}" in _BLOCK:
            out[f"blocks.{block[1]}.{_BLOCK[f'{block[2]}.{block[3]}']}"] = value
        elif block and block[2] in _BLOCK:
            out[f"blocks.{block[1]}.{_BLOCK[block[2]]}.{block[3]}"] = value
        else:
            out[key] = value
    for (i, kind), parts in qkv.items():
        if set(parts) == {"query", "key", "value"}:
            out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat(
                [parts["query"], parts["key"], parts["value"]]
            )
        else:  # incomplete: left under its own names for the fit check to report
            out.update(
                {f"encoder.layer.{i}.attention.attention.{p}.{kind}": v for p, v in parts.items()}
            )
    if "pos_embed" in out:
        out["pos_embed"] = _with_grid(out["pos_embed"], grid, antialias=False)
    return out


def dinov2_meta_to_timm(state: dict[str, torch.Tensor], grid: tuple[int, int]) -> dict:
    """Rename a facebookresearch/dinov2 ViT with registers to timm's `vit_*_reg4_dinov2`:
    SwiGLU `w12`/`w3` become `fc1`/`fc2` and `register_tokens` `reg_token`; timm adds no
    position to the class token, so the class position is folded into it (as timm's own
    DINOv2 conversion does), and the patch grid is resampled to the model's `grid` as DINOv2's
    register models do at run time (bicubic, antialiased). `mask_token` is dropped."""
    out = {}
    for key, value in state.items():
        if key != "mask_token":
            for meta, timm_name in _META.items():
                key = key.replace(meta, timm_name)
            out[key] = value
    if "pos_embed" in out and "cls_token" in out:
        pos = out["pos_embed"]
        out["cls_token"] = out["cls_token"] + pos[:, :1]
        out["pos_embed"] = resample_grid(pos[:, 1:], grid, antialias=True)
    return out


#: Renaming of each published layout (`EncoderInfo.layout`) to timm's, given the model's grid.
TO_TIMM: dict[str, Callable[[dict, tuple[int, int]], dict]] = {
    "dinov2-hf": dinov2_hf_to_timm,
    "dinov2-meta": dinov2_meta_to_timm,
}
