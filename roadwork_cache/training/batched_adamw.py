"""K fold models held as one flat parameter tensor [K, P], and AdamW on it (training.batched).

`FlatLayout` orders the P columns by optimiser group: weight decay | no weight decay |
frozen (parameters that never get a gradient in `Trainer`, whose AdamW then skips them,
weight decay included). `FoldAdamW` steps the rows (folds) that step at this iteration and
leaves the others bit for bit, with each fold's own learning rate and step count, clipping
each fold's gradient to its own norm as `clip_grad_norm_` does for one model:

* "flat": `_single_tensor_adam`'s operations, in its order, on [folds, columns] at once,
  per-fold scalars as [folds, 1] columns (about ten kernels per step for every fold);
* "fused": torch's fused AdamW kernel (`torch._fused_adamw_`, one pass over a fold's
  parameters) per fold and group.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from roadwork_cache.training.loop import TrainConfig

BETA1, BETA2, EPS = 0.9, 0.999, 1e-8  # torch.optim.AdamW's defaults, as Trainer uses them
KINDS = ("flat", "fused")


@dataclass
class FlatLayout:
    names: list[str]  # parameter names, in column order
    shapes: list[tuple[int, ...]]  # one fold's shape of each
    sizes: list[int]
    decay_end: int  # columns [0, decay_end) decay, [decay_end, train_end) do not
    train_end: int  # columns [train_end, P) are frozen

    @classmethod
    def of(cls, params: dict[str, torch.Tensor], frozen: set[str]) -> FlatLayout:
        """`params`: stacked [K, ...] per name (torch.func.stack_module_state). A parameter
        decays as in Trainer: two or more dimensions and not an embedding."""

        def group(name: str) -> int:
            if name in frozen:
                return 2
            return 0 if params[name].ndim >= 3 and "embed" not in name else 1  # +1: folds

        names = sorted(params, key=group)  # stable: module order inside a group
        sizes = [math.prod(params[n].shape[1:]) for n in names]
        ends = [sum(s for n, s in zip(names, sizes, strict=True) if group(n) <= g) for g in (0, 1)]
        return cls(names, [tuple(params[n].shape[1:]) for n in names], sizes, *ends)

    def flatten(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        k = len(params[self.names[0]])
        return torch.cat([params[n].detach().reshape(k, -1) for n in self.names], 1)

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """[K, P] -> name -> view [K, ...]; the backward of the split is one concatenation."""
        parts = torch.split(flat, self.sizes, dim=1)
        k = flat.shape[0]
        return {n: p.view(k, *s) for n, p, s in zip(self.names, parts, self.shapes, strict=True)}

    def state(self, row: torch.Tensor) -> dict[str, torch.Tensor]:
        """One fold's [P] -> its parameters by name (copies)."""
        parts = torch.split(row, self.sizes)
        return {
            n: t.view(s).clone() for n, t, s in zip(self.names, parts, self.shapes, strict=True)
        }


def to_device(values: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor onto `device` without waiting for the kernels already queued there (a
    pinned source, copied asynchronously)."""
    if device.type != "cuda":
        return values
    return values.pin_memory().to(device, non_blocking=True)


class FoldAdamW:
    """AdamW + gradient clipping for the rows of a flat [K, P] parameter tensor."""

    def __init__(self, flat: torch.Tensor, layout: FlatLayout, cfg: TrainConfig, kind: str):
        if kind not in KINDS:
            raise ValueError(f"optimizer {kind!r}: use one of {', '.join(KINDS)}")
        self.layout, self.cfg, self.kind = layout, cfg, kind
        self.exp_avg = torch.zeros_like(flat)
        self.exp_avg_sq = torch.zeros_like(flat)
        # the fused kernel reads each fold's step count from a tensor on the device
        self.steps = [torch.zeros((), device=flat.device) for _ in range(len(flat))]

    def keep(self, rows: torch.Tensor, kept: list[int]) -> None:
        """Keep only these folds (rows of the stack), in this order."""
        self.exp_avg, self.exp_avg_sq = self.exp_avg[rows], self.exp_avg_sq[rows]
        self.steps = [self.steps[a] for a in kept]

    @torch.no_grad()
    def step(self, flat: torch.Tensor, rows: list[int], lr: list[float], t: list[int]) -> None:
        """Clip and step the folds at `rows` (positions in the stack) with their learning
        rates `lr` and step counts `t` (1 on the first step); zero their gradients."""
        grad, everyone = flat.grad, len(rows) == len(flat)
        sel = None if everyone else to_device(torch.tensor(rows), flat.device)
        g = grad if everyone else grad.index_select(0, sel)
        norm = torch.linalg.vector_norm(g, dim=1, keepdim=True)  # frozen columns are 0
        g.mul_((self.cfg.clip / (norm + 1e-6)).clamp(max=1.0))
        if self.kind == "fused":
            self._fused(flat, g, rows, lr)
        else:
            self._flat(flat, g, sel, lr, t)
        if everyone:
            grad.zero_()
        else:
            grad.index_fill_(0, sel, 0.0)

    def _fused(self, flat, g, rows, lr) -> None:
        groups = ((0, self.layout.decay_end, self.cfg.weight_decay),)
        groups += ((self.layout.decay_end, self.layout.train_end, 0.0),)
        for j, (a, rate) in enumerate(zip(rows, lr, strict=True)):
            self.steps[a] += 1
            for lo, hi, wd in groups:
                if hi > lo:
                    torch._fused_adamw_(
                        [flat.data[a, lo:hi]],
                        [g[j, lo:hi]],
                        [self.exp_avg[a, lo:hi]],
                        [self.exp_avg_sq[a, lo:hi]],
                        [],
                        [self.steps[a]],
                        lr=rate,
                        beta1=BETA1,
                        beta2=BETA2,
                        weight_decay=wd,
                        eps=EPS,
                        amsgrad=False,
                        maximize=False,
                    )

    def _flat(self, flat, g, sel, lr, t) -> None:
        d1, d2 = self.layout.decay_end, self.layout.train_end
        dev = flat.device

        def col(values: list[float]) -> torch.Tensor:  # float32, as a Python scalar would be
            return to_device(torch.tensor(values, dtype=torch.float32)[:, None], dev)

        p = flat.data[:, :d2] if sel is None else flat.data[:, :d2].index_select(0, sel)
        m = self.exp_avg[:, :d2] if sel is None else self.exp_avg[:, :d2].index_select(0, sel)
        v = self.exp_avg_sq[:, :d2]
        v = v if sel is None else v.index_select(0, sel)
        g = g[:, :d2]
        if self.cfg.weight_decay != 0:
            p[:, :d1].mul_(col([1 - x * self.cfg.weight_decay for x in lr]))
        m.lerp_(g, 1 - BETA1)
        v.mul_(BETA2).addcmul_(g, g, value=1 - BETA2)
        denom = (v.sqrt() / col([(1 - BETA2**s) ** 0.5 for s in t])).add_(EPS)
        p.addcdiv_(m * col([-x / (1 - BETA1**s) for x, s in zip(lr, t, strict=True)]), denom)
        if sel is not None:
            flat.data[:, :d2].index_copy_(0, sel, p)
            self.exp_avg[:, :d2].index_copy_(0, sel, m)
            self.exp_avg_sq[:, :d2].index_copy_(0, sel, v)
