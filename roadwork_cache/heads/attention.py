"""Multi-head attention on SDPA, with the output gate of "Gated Attention for LLMs"
(Qiu et al. 2025): sigmoid(W_g x) multiplies the SDPA output elementwise per head before
the output projection, which adds non-linearity and lets a head output nothing.

q, k, v and the output are separate nn.Linear named q_proj, k_proj, v_proj, out_proj
(and the gate gate_proj) so that peft's DoRA can target them by name.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from roadwork_cache.heads.layers import SwiGLU


class MultiHeadAttention(nn.Module):
    """(x [B, N, dim], context [B, M, dim] or None) -> [B, N, dim].

    Queries come from x, keys and values from context (x itself when None). With
    `gated`, the gate is computed from x (the block input the queries see).
    """

    def __init__(self, dim: int, heads: int, attn_dropout: float = 0.0, gated: bool = True):
        super().__init__()
        assert dim % heads == 0, "dim must be divisible by heads"
        self.heads = heads
        self.attn_dropout = attn_dropout
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.gate_proj = nn.Linear(dim, dim) if gated else None
        self.out_proj = nn.Linear(dim, dim)

    def _split(self, t: Tensor) -> Tensor:  # [B, N, dim] -> [B, H, N, dim/H]
        B, N, C = t.shape
        return t.view(B, N, self.heads, C // self.heads).transpose(1, 2)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        B, N, C = x.shape
        context = x if context is None else context
        q, k, v = (
            self._split(self.q_proj(x)),
            self._split(self.k_proj(context)),
            self._split(self.v_proj(context)),
        )
        dropout = self.attn_dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)  # [B, H, N, C/H]
        y = y.transpose(1, 2).reshape(B, N, C)
        if self.gate_proj is not None:
            # Elementwise gate: channel c of the concatenated heads belongs to head c // (C/H),
            # so this is the per-head, per-channel gate of the paper (G1 position).
            y = y * F.sigmoid(self.gate_proj(x))
        return self.out_proj(y)


class GatedAttentionBlock(nn.Module):
    """[B, N, dim] -> [B, N, dim]: x + attn(norm(x)), then x + swiglu(norm(x))."""

    def __init__(
        self,
        dim: int,
        heads: int,
        mlp_ratio: float = 8 / 3,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, heads, attn_dropout, gated=True)
        self.drop = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = SwiGLU(dim, int(dim * mlp_ratio), dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop(self.attn(self.norm1(x)))
        return x + self.mlp(self.norm2(x))


class GatedAttentionStack(nn.Module):
    """[B, N, dim] -> [B, N, dim]: `layers` GatedAttentionBlocks."""

    def __init__(
        self,
        dim: int,
        heads: int,
        layers: int,
        mlp_ratio: float = 8 / 3,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            GatedAttentionBlock(dim, heads, mlp_ratio, dropout, attn_dropout) for _ in range(layers)
        )

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return x
