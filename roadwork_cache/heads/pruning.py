"""Token pruning: score each view, keep the top-k, so attention runs on the informative ones."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class TokenPruning(nn.Module):
    """[B, V, D] -> (kept [B, k, D], kept_index [B, k], scores [B, V] or None).

    An importance MLP (D -> D/4 -> 1) scores every view; the k best are kept in their
    original order and multiplied by sigmoid(score). Top-k itself has no gradient, the
    multiplication is what trains the scorer. `keep` None means no pruning and no scorer;
    keep >= V passes the views through unchanged (the scores are still returned).
    """

    def __init__(self, dim: int, keep: int | None = 8) -> None:
        super().__init__()
        self.keep = keep
        self.scorer = None
        if keep is not None:
            hidden = max(1, dim // 4)
            self.scorer = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        B, V, _ = x.shape
        if self.scorer is None:
            index = torch.arange(V, device=x.device).expand(B, V)
            return x, index, None
        scores = self.scorer(x).squeeze(-1)  # [B, V]
        if self.keep >= V:
            return x, torch.arange(V, device=x.device).expand(B, V), scores
        # Sorting the chosen indices keeps views in layout order (global first, then tiles).
        index = scores.topk(self.keep, dim=1).indices.sort(dim=1).values  # [B, k]
        kept = x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # [B, k, D]
        weight = F.sigmoid(scores.gather(1, index)).unsqueeze(-1)  # [B, k, 1]
        return kept * weight, index, scores
