"""RoadworkHead: cached per-view features (+ optional metadata) -> roadwork logits."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from roadwork_cache.heads.attention import GatedAttentionStack
from roadwork_cache.heads.config import HeadConfig
from roadwork_cache.heads.coverage import CoveragePredictor
from roadwork_cache.heads.gafm import GAFM
from roadwork_cache.heads.layers import InputProjection, MultiScalePyramid
from roadwork_cache.heads.metadata import MetadataBatch, MetadataEncoder
from roadwork_cache.heads.pruning import TokenPruning
from roadwork_cache.runtime.errors import UserError


@dataclass
class HeadOutput:
    logits: Tensor  # [B, 2] the prediction (class 1 = roadwork)
    view_logits: Tensor  # [B, k, 2] per kept view, for the multi-view consistency loss
    embedding: Tensor  # [B, dim] pooled vision embedding (FOODS TTA distances)
    view_scores: Tensor | None  # [B, V] pruning scores, None without pruning
    weather_logits: Tensor  # [B, n_weather] auxiliary multi-label weather from vision only
    view_index: Tensor  # [B, k] original index of each kept view
    view_gates: Tensor  # [B, k] GAFM gate of each kept view
    coverage_logits: Tensor | None = None  # [B, V, G*G] roadwork share per cell, every view


class RoadworkHead(nn.Module):
    """forward(views [B, V, D], meta: MetadataBatch | None) -> HeadOutput.

    pruning -> projection + view embedding -> pyramid -> gated attention stack -> GAFM
    -> concat(vision, metadata) -> fusion -> classifier. meta None means all fields NULL.
    With `mask_grid`, a coverage predictor reads every view's own embedding (projection,
    view embedding and pyramid, before pruning and before any view sees another) and
    predicts its roadwork share per grid cell: the auxiliary mask loss's input. It sees
    all views unscaled, so the loss gives pruning no reason to keep views whose coverage
    is easy to predict.
    """

    def __init__(self, config: HeadConfig) -> None:
        super().__init__()
        c = self.config = config
        self.pruning = TokenPruning(c.in_dim, c.keep) if c.pruning else None
        self.input = InputProjection(c.in_dim, c.dim, c.n_views)
        self.pyramid = MultiScalePyramid(c.dim, c.pyramid_dims, c.dropout)
        self.blocks = GatedAttentionStack(
            c.dim, c.heads, c.layers, c.mlp_ratio, c.dropout, c.attn_dropout
        )
        self.gafm = GAFM(
            c.dim, c.heads, c.gate_dim, c.mlp_ratio, c.dropout, c.attn_dropout, c.n_classes
        )
        self.weather_head = nn.Linear(c.dim, c.n_weather)
        self.meta = MetadataEncoder(c)
        self.fusion = nn.Sequential(
            nn.Linear(c.dim + c.meta_dim, c.fusion_dim), nn.GELU(), nn.Dropout(c.dropout)
        )
        self.classifier = nn.Sequential(
            nn.Linear(c.fusion_dim, c.classifier_dim),
            nn.GELU(),
            nn.Dropout(c.dropout),
            nn.Linear(c.classifier_dim, c.n_classes),
        )
        # Built last, so a head with and one without it start from the same weights.
        self.coverage = CoveragePredictor(c.dim, c.mask_grid) if c.mask_grid else None

    def forward(self, views: Tensor, meta: MetadataBatch | None = None) -> HeadOutput:
        c = self.config
        if views.ndim != 3 or views.shape[1] != c.n_views or views.shape[2] != c.in_dim:
            raise UserError(
                f"The head expects features of shape [B, {c.n_views}, {c.in_dim}] "
                f"but got {list(views.shape)}; was it trained on another cache?"
            )
        B = views.shape[0]
        x = views.to(self.input.proj.weight.dtype)  # the cache stores float16
        coverage = None
        if self.coverage is not None and self.training:  # a training target only
            every = torch.arange(c.n_views, device=x.device).expand(B, -1)
            coverage = self.coverage(self.pyramid(self.input(x, every)))  # [B, V, G*G]
        if self.pruning is not None:
            x, index, scores = self.pruning(x)  # [B, k, D], [B, k], [B, V]
        else:
            index, scores = torch.arange(c.n_views, device=x.device).expand(B, -1), None
        x = self.input(x, index)  # [B, k, dim]
        x = self.pyramid(x)
        x = self.blocks(x)
        embedding, view_logits, gates = self.gafm(x)  # [B, dim], [B, k, 2], [B, k]

        if meta is None:
            meta = MetadataBatch.null(B, c.n_weather, c.text_dim, device=views.device)
        fused = self.fusion(torch.cat([embedding, self.meta(meta)], dim=-1))  # [B, fusion_dim]
        return HeadOutput(
            logits=self.classifier(fused),
            view_logits=view_logits,
            embedding=embedding,
            view_scores=scores,
            weather_logits=self.weather_head(embedding),
            view_index=index,
            view_gates=gates,
            coverage_logits=coverage,
        )
