"""DoRA folds of one ensemble member on the target set: each fold's adapted model scores only
the target rows it never saw, so the adapted logits are honest out-of-fold."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from roadwork_cache.heads import RoadworkHead
from roadwork_cache.heads.combine import LogitNorm, sigmoid
from roadwork_cache.heads.forward import head_logits
from roadwork_cache.training.dataset import metadata_batch
from roadwork_cache.training.dora import adapt
from roadwork_cache.training.loop import stacked_features
from roadwork_cache.training.members import MemberResult, eval_keys, logits_by_key
from roadwork_cache.training.plan import EnsembleOptions, Prepared
from roadwork_cache.training.selection import SelectionData
from roadwork_cache.training.splits import grouped_split


@dataclass
class DoraRun:
    member: str
    oof: dict[str, np.ndarray]  # key -> adapted logit on each target row, from its own fold
    full: np.ndarray  # the adapted bag on every source row (clean, no metadata)
    test: dict[str, np.ndarray] | None  # the bag on the source's test rows (separate target)
    folders: list[str]
    info: dict[str, Any]


# (fold folder of the member, relative to the ensemble folder) -> that fold model
LoadBase = Callable[[str], RoadworkHead]


# (DoRA fold from 1, merged model, its record's fields) -> its folder, relative
SaveFold = Callable[[int, RoadworkHead, dict[str, Any]], str]


def run_dora(
    opts: EnsembleOptions,
    p: Prepared,
    member: MemberResult,
    device: torch.device,
    load_base: LoadBase,
    save_fold: SaveFold,
    bar,
    task,
) -> DoraRun:
    """DoRA folds of `member` on the target: fold j adapts the member's fold model j (mod K)
    on the other target folds, stopping early on whole videos held back from them, merges the
    adapter, and scores fold j's rows, which it never saw."""
    target, data = p.target, p.data
    t, config, y_t = target.data, member.config, target.labels
    meta = metadata_batch(config, t)
    # stacked once for every DoRA fold (a trainer would otherwise stack its own copy)
    variants = stacked_features([t.features[v] for v in target.train_variants], device)
    oof = {k: np.zeros(len(target.rows)) for k in eval_keys(target.eval_variants)}
    full, test_bag, folds_info, folders = [], [], [], []
    start = time.perf_counter()
    for j, (rest, held) in enumerate(target.folds):
        tr, stop = grouped_split(
            y_t[rest], t.groups()[target.rows[rest]], opts.dora.stop_fraction, opts.seed + j
        )
        base_folder = member.folders[j % len(member.folders)]
        base = load_base(base_folder)

        def on_epoch(log, j=j):
            bar.update(task, rate=f"DoRA fold {j + 1} epoch {log.epoch} val MCC {log.val_mcc:+.3f}")

        res = adapt(
            base,
            opts.dora,
            variants,
            t.labels,
            meta,
            device,
            target.rows[rest[tr]],
            target.rows[rest[stop]],
            opts.seed * 1000 + j,
            selection=SelectionData.of(target.selection, t.features),
            on_epoch=on_epoch,
        )
        stop_rows = target.rows[rest[stop]]
        stop_probs = [
            sigmoid(head_logits(res.model, t.features[v][stop_rows], None, device))
            for v in target.selection.variants
        ]
        norm = LogitNorm.fit(
            head_logits(res.model, t.features["clean"][target.rows[rest]], None, device)
        )
        fields = {
            "member": member.name,
            "fold": j + 1,
            "base": base_folder,
            "adapted_on": target.name,
            "dora": opts.dora.to_dict(),
            "logit_norm": norm.to_dict(),
            # on its own (as a train-head bundle): the cut tuned on its stopping rows, in
            # the target's selection setting
            "threshold": target.selection.threshold(y_t[rest[stop]], stop_probs),
        }
        folders.append(save_fold(j + 1, res.model, fields))
        for k, v in logits_by_key(
            res.model, t, config, target.rows[held], target.eval_variants, device
        ).items():
            oof[k][held] = norm.apply(v)
        full.append(norm.apply(head_logits(res.model, data.features["clean"], None, device)))
        if target.separate:
            test_bag.append(
                {
                    k: norm.apply(v)
                    for k, v in logits_by_key(
                        res.model, data, config, p.test_idx, p.eval_variants, device
                    ).items()
                }
            )
        folds_info.append(
            {
                "fold": j + 1,
                "best_epoch": res.train.best_epoch,
                "best_stop_mcc": res.train.best_val_mcc,
                "epochs_run": len(res.train.history),
                "merge_error": res.merge_error,
                "train_rows": len(tr),
                "stop_rows": len(stop),
                "held_rows": len(held),
            }
        )
        bar.update(task, advance=1)
    test = {k: np.mean([b[k] for b in test_bag], axis=0) for k in test_bag[0]} if test_bag else None
    info = {
        "member": member.name,
        "folds": folds_info,
        "folders": folders,
        "settings": opts.dora.to_dict(),
        "target": target.name,
        "seconds": time.perf_counter() - start,
        "max_merge_error": max(f["merge_error"] for f in folds_info),
    }
    return DoraRun(member.name, oof, np.mean(full, axis=0), test, folders, info)
