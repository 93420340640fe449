"""The heads of one config run as one computation at inference: their parameters stacked
(`torch.func.stack_module_state`) and the head's forward vmapped over them, so every kernel
does the work of all K heads (an ensemble member's fold heads: K launches become one).

The heads keep working on their own: after stacking, each head's parameters are views of
its slice of the stack, so the weights are held once.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from roadwork_cache.heads.head import RoadworkHead
from roadwork_cache.heads.metadata import MetadataBatch

# Rows per forward on the CPU up to which the stack runs: five default heads ran 1.57x
# faster stacked on 1 row (a challenge), 1.11x on 9 (a challenge with its TTA variants),
# 1.07-1.10x on 12, 0.85-0.95x on 24 and 0.83x on 72 (2-core CPU, bench/predict.py "heads
# alone", docs/benchmarks.md): once the rows fill the kernels, vmap's batched matmuls cost
# more there than K plain ones. On CUDA, where launches dominate, the stack always runs.
CPU_STACK_MAX_ROWS = 12


class StackedHeads:
    """K RoadworkHeads of one HeadConfig -> (x [n, V, D], meta | None) ->
    (logits [K, n, 2], embedding [K, n, dim]), as the K heads give them one by one."""

    def __init__(self, heads: Sequence[RoadworkHead], cpu_max_rows: int = CPU_STACK_MAX_ROWS):
        heads = list(heads)
        if not heads or any(h.config != heads[0].config for h in heads):
            raise ValueError("stacked heads share one head config")
        params, buffers = stack_module_state(heads)
        self.params = {name: p.detach() for name, p in params.items()}
        self.buffers = buffers
        for k, head in enumerate(heads):  # hold the weights once: each head views its slice
            for name, p in head.named_parameters():
                p.data = self.params[name][k]
        self.heads, self.cpu_max_rows = heads, cpu_max_rows
        self.base = heads[0]  # the module functional_call runs with the stacked weights

    @classmethod
    def of(cls, heads: Sequence[nn.Module]) -> StackedHeads | None:
        """The heads as one stack where they can be one: two or more RoadworkHeads of one
        config (an ensemble member's folds); None otherwise (one head, a probe, mixed)."""
        heads = list(heads)
        if len(heads) < 2 or not all(isinstance(h, RoadworkHead) for h in heads):
            return None
        return cls(heads) if all(h.config == heads[0].config for h in heads) else None

    def __len__(self) -> int:
        return len(self.heads)

    def runs_stacked(self, rows: int, device: torch.device) -> bool:
        """Whether the stack beats the heads one after another for `rows` rows there."""
        return len(self.heads) > 1 and (device.type == "cuda" or rows <= self.cpu_max_rows)

    def __call__(self, x: Tensor, meta: MetadataBatch | None = None) -> tuple[Tensor, Tensor]:
        self.base.eval()
        if not self.runs_stacked(len(x), x.device):
            outs = [h.eval()(x, meta) for h in self.heads]
            return (
                torch.stack([o.logits for o in outs]),
                torch.stack([o.embedding for o in outs]),
            )

        def one(params: dict[str, Tensor], buffers: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
            out = functional_call(self.base, (params, buffers), (x, meta))
            return out.logits, out.embedding

        # The math kernel batches under vmap everywhere; the fused ones have no batching rule
        # on the CPU (nor in every torch a miner runs), and vmap would loop over the heads.
        # On a head's 8-12 tokens it costs nothing.
        with sdpa_kernel(SDPBackend.MATH):
            return vmap(one)(self.params, self.buffers)
