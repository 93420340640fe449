"""The distilled student of an ensemble: one head trained on the ensemble's out-of-fold soft
labels, scored beside the ensemble."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from roadwork_cache.heads import RoadworkHead
from roadwork_cache.heads.combine import logit, sigmoid
from roadwork_cache.heads.forward import head_logits
from roadwork_cache.training.dataset import metadata_batch
from roadwork_cache.training.distill import distill
from roadwork_cache.training.ensemble_scores import Scored, target_scored
from roadwork_cache.training.members import logits_by_key
from roadwork_cache.training.plan import EnsembleOptions, Prepared
from roadwork_cache.training.selection import SelectionData


def run_student(
    opts: EnsembleOptions,
    p: Prepared,
    soft_pool: np.ndarray,
    device: torch.device,
    entries: dict[str, dict[str, Scored]],
    save: Callable[[RoadworkHead, dict[str, Any]], str],
    bar,
    task,
) -> dict[str, Any]:
    """One head (the first head member's config) distilled from the ensemble's OOF soft labels;
    the first fold's rows are held back (true labels) for early stopping and its threshold."""
    data, pool, config = p.data, p.pool, p.configs[p.head_names[0]]
    torch.manual_seed(opts.distill_cfg.seed)
    student = RoadworkHead(config)
    soft = np.zeros(len(data))
    soft[pool] = soft_pool
    stop_rows = pool[p.folds[0][1]]
    train_rows = np.setdiff1d(pool, stop_rows)
    start = time.perf_counter()
    res = distill(
        student,
        opts.distill_cfg,
        [data.features[v] for v in p.base_variants],
        soft,
        data.labels,
        metadata_batch(config, data),
        device,
        train_rows,
        stop_rows,
        selection=SelectionData.of(p.selection, data.features),
        on_epoch=lambda log: bar.update(task, rate=f"student epoch {log.epoch}"),
    )
    seconds = time.perf_counter() - start
    # its folded cut, tuned on its stopping rows in the selection setting, as every head's
    threshold = p.selection.threshold(
        data.labels[stop_rows],
        [
            sigmoid(head_logits(student, data.features[v][stop_rows], None, device))
            for v in p.selection.variants
        ],
    )
    folder = save(
        student,
        {
            "distill": opts.distill_cfg.to_dict(),
            "variants": p.base_variants,
            "threshold": threshold,
            "leaky_fields": p.leaky,
        },
    )
    cut = logit(threshold)
    entries["student"] = {
        "test": Scored(
            logits_by_key(student, data, config, p.test_idx, p.eval_variants, device), cut
        )
    }
    if p.target is not None:
        entries["student"]["target"] = target_scored(
            logits_by_key(
                student, p.target.data, config, p.target.rows, p.target.eval_variants, device
            ),
            p.target,
        )
    bar.update(task, advance=1)
    return {
        "best_epoch": res.best_epoch,
        "best_stop_mcc": res.best_val_mcc,
        "threshold": threshold,
        "train_seconds": seconds,
        "folder": folder,
    }
