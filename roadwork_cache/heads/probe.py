"""LinearProbe: a logistic regression on cached view features, the baseline every table
carries (with all 12 views concatenated it is the linear probe of DINOv3's own evaluation;
with the global view alone, the plainest baseline). A module, so it is saved, loaded and
combined like a head; training fits it with scikit-learn (`training.baselines`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from roadwork_cache.runtime.errors import UserError


@dataclass
class ProbeConfig:
    in_dim: int  # backbone feature size D
    n_views: int = 12
    views: tuple[int, ...] = tuple(range(12))  # the views concatenated, in this order

    def __post_init__(self) -> None:
        self.views = tuple(int(v) for v in self.views)
        if not self.views or min(self.views) < 0 or max(self.views) >= self.n_views:
            raise UserError(f"a probe's views must lie in 0..{self.n_views - 1}")

    @property
    def width(self) -> int:
        return len(self.views) * self.in_dim

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "views": list(self.views)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProbeConfig:
        try:
            return cls(**data)
        except TypeError as exc:
            raise UserError(f"invalid probe config: {exc}") from None


@dataclass
class ProbeOutput:
    logits: Tensor  # [B, 2]: (0, z), so softmax gives sigmoid(z)
    embedding: Tensor  # [B, 1]: the logit (a probe has no embedding space of its own)


class LinearProbe(nn.Module):
    """forward(views [B, V, D], meta ignored) -> ProbeOutput: z = ((x - mean) / scale) . w + b
    with x the chosen views concatenated [B, len(views) * D]."""

    def __init__(self, config: ProbeConfig) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("mean", torch.zeros(config.width))
        self.register_buffer("scale", torch.ones(config.width))
        self.weight = nn.Parameter(torch.zeros(config.width))
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, views: Tensor, meta: Any = None) -> ProbeOutput:
        c = self.config
        if views.ndim != 3 or views.shape[1] != c.n_views or views.shape[2] != c.in_dim:
            raise UserError(
                f"the probe expects features of shape [B, {c.n_views}, {c.in_dim}] but got "
                f"{list(views.shape)}; was it trained on another cache?"
            )
        x = views[:, list(c.views)].flatten(1).to(self.weight.dtype)  # [B, len(views) * D]
        z = ((x - self.mean) / self.scale) @ self.weight + self.bias  # [B]
        return ProbeOutput(torch.stack([torch.zeros_like(z), z], dim=-1), z[:, None])
