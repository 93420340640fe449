"""Distillation: one student head trained on an ensemble's soft labels, from the cache.

The loss is binary cross-entropy of the student's logit against
``alpha * teacher_prob + (1 - alpha) * label``; the teacher's probabilities are its
out-of-fold, temperature-scaled ones, so the student never learns from a teacher that saw
the row. Training is the members' loop (`Trainer`): one cached variant per drawn row, early
stopping on the metadata-free validation MCC.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from roadwork_cache.heads import MetadataBatch, RoadworkHead
from roadwork_cache.training.loop import EpochLog, TrainConfig, Trainer, TrainResult
from roadwork_cache.training.selection import SelectionData


@dataclass
class DistillConfig(TrainConfig):
    """The student's training settings, plus how much it trusts the teacher."""

    alpha: float = 0.8  # weight of the teacher's soft label against the hard label


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
    selection: SelectionData | None = None,
    on_epoch: Callable[[EpochLog], None] | None = None,
) -> TrainResult:
    """Fit `model` in place with the shared training loop, its objective swapped for binary
    cross-entropy against the blended soft target; rows index `variants`, `soft`, `labels`."""
    target = cfg.alpha * soft + (1.0 - cfg.alpha) * labels.clip(0, 1)
    trainer = Trainer(model, cfg, variants, labels, meta, device, selection, soft_targets=target)
    return trainer.fit(np.asarray(train_idx), np.asarray(val_idx), on_epoch=on_epoch)
