"""Distillation: one student head trained on an ensemble's soft labels, from the cache.

The loss is binary cross-entropy of the student's logit against
``alpha * teacher_prob + (1 - alpha) * label``; the teacher's probabilities are its
out-of-fold, temperature-scaled ones, so the student never learns from a teacher that saw
the row. Each epoch reads every training row from one cached variant drawn at random, as the
members' training does; early stopping on the metadata-free validation MCC.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from roadwork_cache.heads import MetadataBatch, RoadworkHead
from roadwork_cache.training.loop import EpochLog, TrainResult, autocast, lr_lambda, predict
from roadwork_cache.training.metrics import best_threshold, binary_metrics


@dataclass
class DistillConfig:
    epochs: int = 30
    batch_size: int = 128
    lr: float = 3e-4
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    clip: float = 1.0
    patience: int = 8
    alpha: float = 0.8  # weight of the teacher's soft label against the hard label
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def distill(
    model: RoadworkHead,
    cfg: DistillConfig,
    variants: Sequence[np.ndarray],
    soft: np.ndarray,
    labels: np.ndarray,
    meta: MetadataBatch,
    device: torch.device,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    eval_features: np.ndarray | None = None,
    on_epoch: Callable[[EpochLog], None] | None = None,
) -> TrainResult:
    """Fit `model` in place; rows index `variants`, `soft` (teacher probability), `labels`."""
    model.to(device)
    gen = torch.Generator().manual_seed(cfg.seed)
    features = torch.from_numpy(np.stack(variants))
    target = torch.from_numpy(
        (cfg.alpha * soft + (1.0 - cfg.alpha) * labels.clip(0, 1)).astype(np.float32))
    eval_features = variants[0] if eval_features is None else eval_features
    optim = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = max(1, math.ceil(len(train_idx) / cfg.batch_size))
    sched = torch.optim.lr_scheduler.LambdaLR(
        optim, lr_lambda(max(1, round(cfg.warmup_epochs * steps)), steps * cfg.epochs))
    rows = torch.from_numpy(np.asarray(train_idx))
    val_y = labels[val_idx]
    history: list[EpochLog] = []
    best, best_state = (-math.inf, -1), copy.deepcopy(model.state_dict())
    for epoch in range(1, cfg.epochs + 1):
        start = time.perf_counter()
        model.train()
        order = rows[torch.randperm(len(rows), generator=gen)]
        variant = torch.randint(len(features), (len(order),), generator=gen)
        total, n = 0.0, 0
        for lo in range(0, len(order), cfg.batch_size):
            r, v = order[lo : lo + cfg.batch_size], variant[lo : lo + cfg.batch_size]
            x = features[v, r].to(device).float()
            with autocast(device):
                out = model(x, meta.select(r).to(device))
            z = (out.logits[:, 1] - out.logits[:, 0]).float()
            loss = F.binary_cross_entropy_with_logits(z, target[r].to(device))
            optim.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            optim.step()
            sched.step()
            total, n = total + loss.item(), n + 1
        prob, _ = predict(model, eval_features[val_idx], None, device)
        m = binary_metrics(val_y, prob, best_threshold(val_y, prob))
        log = EpochLog(epoch, total / max(n, 1), total / max(n, 1), 0.0, 0.0, m["mcc"],
                       m["auc"], sched.get_last_lr()[0], time.perf_counter() - start)
        history.append(log)
        if on_epoch:
            on_epoch(log)
        score = -1.0 if math.isnan(m["mcc"]) else m["mcc"]
        if score > best[0]:
            best, best_state = (score, epoch), copy.deepcopy(model.state_dict())
        elif epoch - best[1] >= cfg.patience:
            break
    model.load_state_dict(best_state)
    return TrainResult(history, best[1], best[0], stopped_early=len(history) < cfg.epochs)
