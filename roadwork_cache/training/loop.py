"""The training loop of a head: weighted sampling, one cached variant per row per epoch,
AdamW with warmup and cosine decay, gradient accumulation, clipping, bf16 on CUDA, and early
stopping on the validation MCC in the deployment setting (`training.selection`: natix
challenges, no metadata, labels 50/50), which is what a validator measures."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from roadwork_cache.heads import HeadOutput, MetadataBatch, RoadworkHead
from roadwork_cache.heads.forward import head_outputs
from roadwork_cache.runtime.devices import autocast
from roadwork_cache.runtime.errors import UserError
from roadwork_cache.training.losses import LossParts, LossWeights, mask_losses, total_loss
from roadwork_cache.training.selection import SelectionData


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 128
    lr: float = 3e-4
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    accum_steps: int = 1
    clip: float = 1.0
    patience: int = 8  # epochs without a better validation MCC before stopping
    seed: int = 42
    focal_gamma: float = 2.0
    focal_alpha: float | None = 0.25
    smoothing: float = 0.1
    loss: LossWeights = field(default_factory=LossWeights)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """From JSON / YAML (`loss` as a nested dict); unknown keys are one clear sentence."""
        values = dict(values)
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise UserError(f"unknown train config key(s): {', '.join(unknown)}")
        loss = values.pop("loss", None) or {}
        try:
            return cls(**values, loss=LossWeights(**loss))
        except TypeError as exc:
            raise UserError(f"invalid train config: {exc}") from None


@dataclass
class EpochLog:
    epoch: int
    loss: float
    focal: float
    consistency: float
    weather: float
    val_mcc: float  # in the selection setting (natix, no metadata, 50/50), at its best cut
    val_auc: float
    lr: float
    seconds: float
    mask: float = 0.0  # the coverage loss (0 without masks)
    mask_pruning: float = 0.0  # the pruning scorer's supervision by the masks


@dataclass
class TrainResult:
    history: list[EpochLog]
    best_epoch: int
    best_val_mcc: float
    stopped_early: bool


def head_loss(
    out: HeadOutput,
    y: torch.Tensor,
    weather: torch.Tensor,
    weather_mask: torch.Tensor,
    cfg: TrainConfig,
    valid: torch.Tensor | None = None,
) -> LossParts:
    """`total_loss` of a head's output [B, ...] under the training config; `valid` [B]: only
    these rows count (the batched fold trainer's padding)."""
    return total_loss(
        out.logits.float(),
        y,
        out.view_logits.float(),
        out.weather_logits.float(),
        weather,
        weather_mask,
        cfg.loss,
        cfg.focal_gamma,
        cfg.focal_alpha,
        cfg.smoothing,
        valid=valid,
    )


def resident(features: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Where a trainer keeps its features: on a CUDA device when they take at most half of
    its free memory, else on the host. (Pinning the host copy would buy nothing: a batch is
    gathered from it into fresh pageable memory either way.)"""
    if device.type != "cuda":
        return features
    free, _ = torch.cuda.mem_get_info(device)
    return features.to(device) if features.nbytes <= free // 2 else features


def stacked_features(
    variants: Sequence[np.ndarray] | torch.Tensor, device: torch.device
) -> torch.Tensor:
    """The variants' features as one tensor [n_variants, n, V, D], `resident`. A tensor is
    taken as already stacked: an ensemble stacks once for all its fold models (stacking a
    full cache's variants copies gigabytes)."""
    if isinstance(variants, torch.Tensor):
        return variants
    return resident(torch.from_numpy(np.stack(variants)), device)


def default_selection(
    variants: Sequence[np.ndarray] | torch.Tensor, selection: SelectionData | None
) -> SelectionData:
    """What a trainer scores validation rows on when no selection setting is given (tests,
    benches): the first variant, labels balanced; read from the host arrays when given."""
    if selection is not None:
        return selection
    first = variants[0]
    return SelectionData.single(first.cpu().numpy() if isinstance(first, torch.Tensor) else first)


def lr_lambda(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """Linear warmup to 1, then cosine decay to 0."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return factor


class Trainer:
    """Fits one head on in-memory cached features.

    `variants` is a list of float16 arrays [n, V, D] (one per cached variant, same rows), or
    them stacked already (`stacked_features`);
    every epoch each drawn row is read from one variant chosen at random, so augmentation
    costs an index, not a backbone pass. `masks` (one coverage array [n, V, G*G] or None per
    variant) and `mask_present` [n] feed the auxiliary mask losses: a row drawn in a
    variant without masks, or without a mask itself, adds nothing to them.
    """

    def __init__(
        self,
        model: RoadworkHead,
        cfg: TrainConfig,
        variants: Sequence[np.ndarray] | torch.Tensor,
        labels: np.ndarray,
        meta: MetadataBatch,
        device: torch.device,
        selection: SelectionData | None = None,
        soft_targets: np.ndarray | None = None,
        masks: Sequence[np.ndarray | None] | None = None,
        mask_present: np.ndarray | None = None,
    ):
        self.model = model.to(device)
        self.cfg = cfg
        self.device = device
        # One stacked tensor [n_variants, n, V, D], on the device when it fits (a batch is
        # then a gather there), else on the host. Rows, labels and metadata live on
        # the device: a step reads nothing from the host but its row indices.
        self.features = stacked_features(variants, device)
        self.host_labels = labels.astype(np.int64)  # for metrics, which run on the host
        self.labels = torch.from_numpy(self.host_labels).to(device)
        self.meta = meta.to(device)
        self.weather_mask = self.meta.weather.sum(dim=1) > 0
        # What validation rows are scored on: the deployment setting (training.selection).
        self.selection = default_selection(variants, selection)
        # Distillation: a target probability per row replaces the focal / consistency /
        # weather objective with binary cross-entropy against it.
        self.soft = (
            None
            if soft_targets is None
            else torch.from_numpy(soft_targets.astype(np.float32)).to(device)
        )
        self.masks, self.mask_weight = mask_tensors(masks, mask_present, len(labels), device)
        self.drawn: list[np.ndarray] = []  # the rows each epoch drew, in order

    def _loss(
        self, out, rows: torch.Tensor, meta: MetadataBatch, y, wmask, variant=None
    ) -> LossParts:
        if self.soft is not None:
            z = (out.logits[:, 1] - out.logits[:, 0]).float()
            bce = F.binary_cross_entropy_with_logits(z, self.soft[rows])
            zero = bce.detach() * 0.0
            return LossParts(total=bce, focal=bce, consistency=zero, weather=zero)
        cfg = self.cfg
        parts = head_loss(out, y, meta.weather, wmask, cfg)
        if self.masks is not None and variant is not None:
            variant = variant.to(self.device)
            parts.mask, parts.mask_pruning = mask_losses(
                out, self.masks[variant, rows].float(), self.mask_weight[variant, rows], cfg.loss
            )
            parts.total = (
                parts.total
                + cfg.loss.mask * parts.mask
                + cfg.loss.mask_pruning * parts.mask_pruning
            )
        return parts

    def _batch(self, rows: torch.Tensor, variant: torch.Tensor):
        """Row and variant indices (where the features are) -> (features, metadata, labels,
        weather mask) on the device, and the rows there."""
        x = self.features[variant, rows].to(self.device, non_blocking=True).float()
        rows = rows.to(self.device)
        return x, self.meta.select(rows), self.labels[rows], self.weather_mask[rows], rows

    def fit(
        self,
        train_idx: np.ndarray,
        val_idx: np.ndarray,
        sample_weights: np.ndarray | None = None,
        on_epoch: Callable[[EpochLog], None] | None = None,
    ) -> TrainResult:
        cfg, model = self.cfg, self.model
        gen = torch.Generator().manual_seed(cfg.seed)
        weights = torch.ones(len(train_idx), dtype=torch.float64)
        if sample_weights is not None:
            weights = torch.as_tensor(sample_weights, dtype=torch.float64)
        train_rows = torch.from_numpy(train_idx)
        steps_per_epoch = max(1, math.ceil(len(train_idx) / cfg.batch_size / cfg.accum_steps))
        total = steps_per_epoch * cfg.epochs
        decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
        no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "embed" in n]
        optim = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": cfg.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=cfg.lr,
        )
        warmup = max(1, round(cfg.warmup_epochs * steps_per_epoch))
        sched = torch.optim.lr_scheduler.LambdaLR(optim, lr_lambda(warmup, total))
        val_y = self.host_labels[val_idx]

        history: list[EpochLog] = []
        best = (-math.inf, -1)
        best_state = copy.deepcopy(model.state_dict())
        for epoch in range(1, cfg.epochs + 1):
            start = time.perf_counter()
            model.train()
            draw = train_rows[torch.multinomial(weights, len(train_idx), True, generator=gen)]
            variant = torch.randint(len(self.features), (len(draw),), generator=gen)
            self.drawn.append(draw.numpy())  # what sampling really did (GPS share, tests)
            # Drawn on the CPU (the same stream on any device), moved once per epoch: a copy
            # from pageable memory inside the step would wait for the queued kernels.
            draw, variant = draw.to(self.features.device), variant.to(self.features.device)
            sums = torch.zeros(4, device=self.device)  # read once per epoch: no sync per step
            mask_sums = torch.zeros(2, device=self.device)
            n_batches = 0
            optim.zero_grad(set_to_none=True)
            for i, lo in enumerate(range(0, len(draw), cfg.batch_size)):
                rows = draw[lo : lo + cfg.batch_size]
                drawn = variant[lo : lo + cfg.batch_size]
                x, meta, y, wmask, rows = self._batch(rows, drawn)
                with autocast(self.device):
                    out = model(x, meta)
                parts = self._loss(out, rows, meta, y, wmask, drawn)
                (parts.total / cfg.accum_steps).backward()
                last = lo + cfg.batch_size >= len(draw)
                if (i + 1) % cfg.accum_steps == 0 or last:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
                    optim.step()
                    optim.zero_grad(set_to_none=True)
                    sched.step()
                sums += (
                    torch.stack([parts.total, parts.focal, parts.consistency, parts.weather])
                    .detach()
                    .float()
                )
                if parts.mask is not None:
                    mask_sums += torch.stack([parts.mask, parts.mask_pruning]).detach().float()
                n_batches += 1

            if len(val_idx):
                probs = [
                    head_outputs(model, f[val_idx], None, self.device)[0]
                    for f in self.selection.features
                ]
                setting = self.selection.selection
                m, _ = setting.at_best_cut(val_y, probs)
            else:  # no rows to stop on: fixed epochs, the last one kept
                m = {"mcc": float("nan"), "auc": float("nan")}
            log = EpochLog(
                epoch,
                *(sums / max(n_batches, 1)).tolist(),
                m["mcc"],
                m["auc"],
                sched.get_last_lr()[0],
                time.perf_counter() - start,
                *(mask_sums / max(n_batches, 1)).tolist(),
            )
            history.append(log)
            if on_epoch:
                on_epoch(log)
            score = -1.0 if math.isnan(m["mcc"]) else m["mcc"]
            if not len(val_idx):
                score = float(epoch)  # every epoch beats the last: the final one is kept
            if score > best[0]:
                best = (score, epoch)
                best_state = copy.deepcopy(model.state_dict())
            elif epoch - best[1] >= cfg.patience:
                break
        model.load_state_dict(best_state)
        return TrainResult(history, best[1], best[0], stopped_early=len(history) < cfg.epochs)


def mask_tensors(
    masks: Sequence[np.ndarray | None] | None,
    present: np.ndarray | None,
    n_rows: int,
    device: torch.device,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(coverage [n_variants, n, V, C] float16, weight [n_variants, n] float) on the device,
    the weight 1 where a row has a mask in that variant; (None, None) without any masks."""
    if masks is None or all(m is None for m in masks):
        return None, None
    shape = next(m for m in masks if m is not None).shape
    stack = np.stack(
        [np.zeros(shape, np.float16) if m is None else m.astype(np.float16) for m in masks]
    )
    has = np.array([m is not None for m in masks])[:, None]
    rows = np.ones(n_rows, bool) if present is None else np.asarray(present, bool)
    weight = torch.from_numpy((has & rows[None, :]).astype(np.float32))
    return torch.from_numpy(stack).to(device), weight.to(device)
