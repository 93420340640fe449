"""Small building blocks: input projection with view embedding, multi-scale pyramid, SwiGLU."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class InputProjection(nn.Module):
    """(views [B, k, D], view_index [B, k]) -> [B, k, dim].

    The embedding is looked up by the ORIGINAL view index (0 = global, 1-9 = grid tiles,
    10-11 = squares), so a view keeps its identity after pruning reorders the set.
    """

    def __init__(self, in_dim: int, dim: int, n_views: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, dim)
        self.view_embed = nn.Embedding(n_views, dim)
        nn.init.normal_(self.view_embed.weight, std=0.02)

    def forward(self, x: Tensor, view_index: Tensor) -> Tensor:
        return self.proj(x) + self.view_embed(view_index)


class MultiScalePyramid(nn.Module):
    """[B, k, dim] -> [B, k, dim]: parallel Linear+GELU branches at several widths
    (512, 256, 128), concatenated, projected back, added to the input, normalised."""

    def __init__(self, dim: int, dims: Sequence[int] = (512, 256, 128), dropout: float = 0.0):
        super().__init__()
        self.branches = nn.ModuleList(nn.Sequential(nn.Linear(dim, d), nn.GELU()) for d in dims)
        self.merge = nn.Linear(sum(dims), dim)
        self.drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        y = torch.cat([branch(x) for branch in self.branches], dim=-1)  # [B, k, sum(dims)]
        return self.norm(x + self.drop(self.merge(y)))


class SwiGLU(nn.Module):
    """[..., dim] -> [..., dim]: fc2(silu(fc1_g(x)) * fc1_x(x)), as timm's SwiGLU.

    The names avoid `gate_proj`, which belongs to the attention gate (DoRA targets by name).
    """

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1_g = nn.Linear(dim, hidden)
        self.fc1_x = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(F.silu(self.fc1_g(x)) * self.fc1_x(x)))
