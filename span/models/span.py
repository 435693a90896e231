"""SPAN: sparse pyramid attention network (Wu et al.), pure PyTorch, CPU and CUDA.

Input features are embedded by a 1x1 convolution (a Linear, D = in_dim x `embed_ratio`, 1/4 by
default as in the paper, at least `MIN_EMBED_DIM`; the authors' code: 1/2 without bias), then
`stages` stages each run one pre-norm transformer layer of sparse window attention (regular +
shifted windows + global tokens), with a sparse 2x2 stride-2 convolution before every stage but
the first. The head pools the last stage by gated attention (or aggregates the global tokens).
Every switch of the paper's ablations is a constructor argument.

With `center` (the default) the patches enter as their deviation from the slide's mean feature,
and the mean itself enters through the global tokens' initial state: every patch of a slide
carries the same stain/scanner offset, and a model that sees it in every token tells its
training slides apart by it long before it learns anything else (measured on the spatial
benchmark: docs/benchmarks.md). What the whole slide looks like stays available through the
global tokens, which every patch attends to; without global tokens it enters the head
(`mean_embed`), so that the no-global-token ablation removes only the tokens. With
`slide_mean=False` a centred SPAN never sees the mean: it is then exactly invariant to a
per-slide offset of every feature.
"""

from __future__ import annotations

import torch
from torch import nn

from span.models.base import MILModel, ModelOutput
from span.models.layers import AttentionPool, FeedForward, centered_linear, feed_forward_residual
from span.models.sparse import check_grid, downsampling, window_layout
from span.models.sparse_conv import SparseDownsample
from span.models.window_attention import SparseWindowAttention

#: The narrowest default embedding. The paper's D = in_dim / 4 (512 for ResNet-50's 2048-d) would
#: give 128 for ResNet-18's 512-d features, at which SPAN stayed near chance on the demo cohort
#: (test AUC 0.67, 0.60, 0.51 over 3 seeds; 1.00, 0.94, 0.96 at 256: docs/encoders.md).
MIN_EMBED_DIM = 256


class SpanLayer(nn.Module):
    """Pre-norm transformer layer; local and global tokens share its weights.

    In training the feed-forward half keeps only its input: the backward pass recomputes its
    normalisation and hidden layer chunk by chunk (same results; the layer's memory roughly
    halves).
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        side: int,
        ffn_ratio: float,
        dropout: float,
        attn_dropout: float,
        position: str,
        rope_theta: float,
        global_attention: str,
    ) -> None:
        super().__init__()
        self.attn = SparseWindowAttention(
            dim, heads, side, position, rope_theta, attn_dropout, dropout, global_attention
        )
        self.norm = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, int(dim * ffn_ratio), dropout)

    def _ffn_residual(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.ffn(self.norm(x))

    def forward(self, x, tokens, grid, layout):
        ax, at = self.attn(x, tokens, grid, layout)
        x = feed_forward_residual(self.norm, self.ffn, x + ax)
        if tokens is not None:
            tokens = self._ffn_residual(tokens + at)
        return x, tokens


class SPAN(MILModel):
    """Sparse pyramid attention network over a slide's (features, grid)."""

    def __init__(
        self,
        in_dim: int,
        n_classes: int,
        embed_dim: int | None = None,
        embed_ratio: float = 0.25,
        embed_bias: bool = True,
        heads: int = 8,
        stages: int = 3,
        window_side: int = 6,
        shift: bool = True,
        global_tokens: int = 1,
        global_attention: str = "joint",
        center: bool = True,
        slide_mean: bool = True,
        downsample: bool = True,
        depthwise_conv: bool = True,
        conv_bias: bool = False,
        conv_init: str = "mean",
        position: str = "rpb",
        rope_theta: float = 10000.0,
        head: str = "attention",
        ffn_ratio: float = 2.0,
        dropout: float = 0.05,
        attn_dropout: float = 0.05,
        grad_clip: float | None = None,
    ) -> None:
        super().__init__(grad_clip)
        if not 0 < embed_ratio <= 4:
            raise ValueError(f"embed_ratio must be in (0, 4], got {embed_ratio}")
        dim = embed_dim or max(int(in_dim * embed_ratio), MIN_EMBED_DIM)
        if head not in ("attention", "global"):
            raise ValueError(f"head must be 'attention' or 'global', got {head!r}")
        if head == "global" and global_tokens < 1:
            raise ValueError("the global-token head needs global_tokens >= 1")
        if stages < 1 or global_tokens < 0:
            raise ValueError("stages must be >= 1 and global_tokens >= 0")
        self.window_side, self.shift, self.downsample, self.head = (
            window_side,
            shift,
            downsample,
            head,
        )
        self.center = center
        self.embed = nn.Linear(in_dim, dim, bias=embed_bias)  # the paper's 1x1 convolution
        # Centred without global tokens, the slide's mean reaches the head through its own
        # projection: removing global tokens must not also remove what the whole slide looks like.
        self.slide_mean = slide_mean or not center
        self.mean_embed = (
            nn.Linear(in_dim, dim) if center and slide_mean and not global_tokens else None
        )
        # Global tokens live in input space with their own projection, as in the authors' code.
        self.global_seed = (
            nn.Parameter(torch.randn(global_tokens, in_dim) * 1e-4) if global_tokens else None
        )
        self.global_embed = nn.Linear(in_dim, dim) if global_tokens else None
        self.layers = nn.ModuleList(
            SpanLayer(
                dim,
                heads,
                window_side,
                ffn_ratio,
                dropout,
                attn_dropout,
                position,
                rope_theta,
                global_attention,
            )
            for _ in range(stages)
        )
        self.convs = (
            nn.ModuleList(
                SparseDownsample(dim, depthwise_conv, conv_bias, conv_init)
                for _ in range(stages - 1)
            )
            if downsample
            else nn.ModuleList()
        )
        self.token_norms = (
            nn.ModuleList(nn.LayerNorm(dim) for _ in range(stages - 1))
            if global_tokens
            else nn.ModuleList()
        )
        self.pool = (
            AttentionPool(dim, dim, gated=True, dropout=dropout) if head == "attention" else None
        )
        self.head_norm = nn.LayerNorm(dim)  # pre-norm layers leave the residual stream unnormalised
        self.head_drop = nn.Dropout(dropout)
        self.classifier = nn.Linear(dim, n_classes)
        self.apply(self._init)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def stage_grids(self, grid: torch.Tensor) -> list:
        """Per stage: (grid, downsampling into it or None). Index work only, no features."""
        grid = check_grid(grid)
        plan = [(grid, None)]
        for _ in range(len(self.layers) - 1):
            if self.downsample:
                down = downsampling(plan[-1][0])
                plan.append((down.parent_grid, down))
            else:
                plan.append((plan[-1][0], None))
        return plan

    def forward(self, features: torch.Tensor, grid: torch.Tensor) -> ModelOutput:
        if len(features) != len(grid) or len(features) == 0:
            raise ValueError(
                f"need N >= 1 features aligned with the grid, got "
                f"{tuple(features.shape)} and {tuple(grid.shape)}"
            )
        plan = self.stage_grids(grid.to(features.device))
        seed, mean = self.global_seed, None
        if self.center:
            mean = features.mean(dim=0, keepdim=True)
            x = centered_linear(self.embed, features, mean)
            if self.slide_mean:
                seed = None if seed is None else seed + mean
        else:
            x = self.embed(features)
        tokens = self.global_embed(seed) if seed is not None else None
        stage_tokens = []
        ancestor = torch.arange(len(features), device=features.device)
        for i, (layer, (g, down)) in enumerate(zip(self.layers, plan, strict=True)):
            if i > 0:
                if down is not None:
                    x = self.convs[i - 1](x, down)
                    ancestor = down.parent[ancestor]
                if tokens is not None:
                    tokens = self.token_norms[i - 1](tokens)
            x, tokens = layer(x, tokens, g, window_layout(g, self.window_side, self.shift))
            if tokens is not None:
                stage_tokens.append(tokens)
        if self.pool is not None:
            embedding, weights = self.pool(self.head_norm(x))
            if self.mean_embed is not None:
                embedding = embedding + self.mean_embed(mean)[0]
        else:
            embedding = self.head_norm(torch.stack(stage_tokens).sum(0).mean(0))
            weights = self._global_attention(x, tokens)
        logits = self.classifier(self.head_drop(embedding))
        return ModelOutput(logits=logits, patch_scores=weights[ancestor], embedding=embedding)

    def _global_attention(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """How much the global tokens look at each last-stage token (mean over heads/tokens)."""
        attn = self.layers[-1].attn
        with torch.no_grad():
            k = attn.split_heads(attn.project(x))[1]
            gq = attn.split_heads(attn.project(tokens, tokens=True))[0]
            logits = gq @ k.transpose(-1, -2)  # (H, G, N); queries come pre-scaled
            return logits.softmax(dim=-1).mean(dim=(0, 1))
