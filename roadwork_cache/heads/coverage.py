"""The roadwork-coverage predictor: an auxiliary head on each view's embedding."""

from __future__ import annotations

from torch import Tensor, nn


class CoveragePredictor(nn.Module):
    """[B, V, dim] -> [B, V, grid * grid] logits of the share of roadwork in each cell of
    each view (row-major), trained against the cache's masks (training/losses.py)."""

    def __init__(self, dim: int, grid: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or max(grid * grid, dim // 2)
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, grid * grid)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))
