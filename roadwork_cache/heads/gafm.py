"""GAFM: gated attention fusion of the kept views into one embedding."""

from __future__ import annotations

from torch import Tensor, nn

from roadwork_cache.heads.attention import GatedAttentionBlock, MultiHeadAttention


class GAFM(nn.Module):
    """[B, k, dim] -> (pooled [B, dim], view_logits [B, k, n_classes], gates [B, k]).

    1. view gates: dim -> gate_dim -> 1, sigmoid: how much each view matters;
    2. cross-view attention: the gated views query all (ungated) views, so a view the
       gate dims can still be read by the others; residual on the ungated views;
    3. self-attention refinement: one GatedAttentionBlock;
    4. gate-weighted mean over views, then LayerNorm.
    A shared linear head gives per-view logits for the multi-view consistency loss.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        gate_dim: int = 128,
        mlp_ratio: float = 8 / 3,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        n_classes: int = 2,
    ) -> None:
        super().__init__()
        self.gate = nn.Sequential(nn.Linear(dim, gate_dim), nn.GELU(), nn.Linear(gate_dim, 1))
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.cross = MultiHeadAttention(dim, heads, attn_dropout, gated=False)
        self.drop = nn.Dropout(dropout)
        self.refine = GatedAttentionBlock(dim, heads, mlp_ratio, dropout, attn_dropout)
        self.norm = nn.LayerNorm(dim)
        self.view_head = nn.Linear(dim, n_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        gates = self.gate(x).sigmoid()  # [B, k, 1]
        # Gate after the norm: LayerNorm would undo a gate applied before it. A low gate
        # shrinks a view's query, flattening its attention over the other views.
        x = x + self.drop(self.cross(self.norm_q(x) * gates, self.norm_kv(x)))  # [B, k, dim]
        x = self.norm(self.refine(x))  # [B, k, dim]
        pooled = (x * gates).sum(1) / gates.sum(1).clamp_min(1e-6)  # [B, dim]
        return pooled, self.view_head(x), gates.squeeze(-1)
