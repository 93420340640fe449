"""Running an ensemble's fold jobs: one at a time (`members.run_fold`), or with the folds of
one member, and of members with the same head and training settings, trained together as
one batched computation (`training.batched`); in this process or in spawned worker
processes that each load the cache once. Each job seeds itself, so the results do not
depend on the order or the process (up to float summation order across thread counts).
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import multiprocessing as mp
import os
import time
from collections.abc import Callable
from dataclasses import replace

import torch

from roadwork_cache.heads import HeadConfig, RoadworkHead
from roadwork_cache.runtime.processes import die_with_parent
from roadwork_cache.training.batched import FoldBatchTrainer
from roadwork_cache.training.dataset import load_cache_data, metadata_batch
from roadwork_cache.training.loop import EpochLog, TrainConfig
from roadwork_cache.training.members import (
    Context,
    ContextSpec,
    FoldJob,
    FoldOutput,
    fold_output,
    run_fold,
)
from roadwork_cache.training.selection import SelectionData

OnEpoch = Callable[[FoldJob, EpochLog], None]


def batch_groups(jobs: list[FoldJob]) -> list[list[FoldJob]]:
    """Jobs that can train as one batched computation: head members' folds with the same
    head config, training settings and variants (the folds of a member, and members that
    differ only in seed or GPS weighting). Probes stay alone."""
    groups: dict[str, list[FoldJob]] = {}
    for i, job in enumerate(jobs):
        key = (
            json.dumps([job.head, job.train, job.variants], sort_keys=True)
            if job.kind == "head"
            else f"single {i}"
        )
        groups.setdefault(key, []).append(job)
    return list(groups.values())


def run_fold_group(ctx: Context, jobs: list[FoldJob], on_epoch: OnEpoch | None = None):
    """The jobs of one `batch_groups` group, trained together; each fold's weights and
    outputs as `run_fold` gives them (dropout masks aside: see training.batched). A fold's
    `seconds` is its share of the group's training plus its own evaluation."""
    if len(jobs) == 1 or jobs[0].kind != "head":
        return [
            run_fold(ctx, job, (lambda log, job=job: on_epoch(job, log)) if on_epoch else None)
            for job in jobs
        ]
    start = time.perf_counter()
    config = HeadConfig.from_dict(jobs[0].head)
    models = []
    for job in jobs:
        torch.manual_seed(job.seed)  # each fold's init, as run_fold makes it
        models.append(RoadworkHead(config))
    torch.manual_seed(jobs[0].seed)  # the dropout masks of the group
    data = ctx.data
    trainer = FoldBatchTrainer(
        models,
        TrainConfig.from_dict({**jobs[0].train, "seed": jobs[0].seed}),
        [job.seed for job in jobs],
        ctx.train_features(jobs[0].variants),
        data.labels,
        metadata_batch(config, data),
        ctx.device,
        selection=SelectionData.of(ctx.spec.selection, data.features),
    )
    results = trainer.fit(
        [job.train_rows for job in jobs],
        [job.stop_rows for job in jobs],
        [job.weights for job in jobs],
        (lambda k, log: on_epoch(jobs[k], log)) if on_epoch else None,
    )
    share = (time.perf_counter() - start) / len(jobs)
    return [
        fold_output(
            ctx,
            job,
            model,
            config,
            result.best_epoch,
            result.best_val_mcc,
            len(result.history),
            time.perf_counter() - share,  # "started" so that seconds = share + evaluation
        )
        for job, model, result in zip(jobs, models, results, strict=True)
    ]


_WORKER: Context | None = None


def _init_worker(spec: ContextSpec, parent: int) -> None:
    global _WORKER
    die_with_parent(parent)  # a killed ensemble leaves no worker training for no one
    if spec.threads:
        torch.set_num_threads(spec.threads)
    data = load_cache_data(spec.cache, spec.variants)
    target = load_cache_data(spec.target_cache, spec.target_variants) if spec.target_cache else None
    _WORKER = Context(spec, data, target, torch.device(spec.device))


def _run_in_worker(jobs: list[FoldJob]) -> list[FoldOutput]:
    assert _WORKER is not None, "worker not initialised"
    return run_fold_group(_WORKER, jobs)


def run_folds(
    ctx: Context,
    jobs: list[FoldJob],
    n_workers: int,
    on_epoch: OnEpoch | None = None,
    on_done: Callable[[FoldOutput], None] | None = None,
    batch_folds: bool = False,
) -> list[FoldOutput]:
    """All fold jobs, one after another here or in `n_workers` spawned processes; with
    `batch_folds` the unit of work is a `batch_groups` group instead of one job."""
    units = batch_groups(jobs) if batch_folds else [[job] for job in jobs]
    outputs: list[FoldOutput] = []
    if n_workers <= 1 or len(units) <= 1:
        for unit in units:
            for out in run_fold_group(ctx, unit, on_epoch):
                outputs.append(out)
                if on_done:
                    on_done(out)
        return outputs
    # replace, not asdict: asdict would turn the nested selection setting into a dict
    spec = replace(ctx.spec, threads=max(1, (os.cpu_count() or 1) // n_workers))
    with cf.ProcessPoolExecutor(
        n_workers,
        mp_context=mp.get_context("spawn"),
        initializer=_init_worker,
        initargs=(spec, os.getpid()),
    ) as pool:
        futures = [pool.submit(_run_in_worker, unit) for unit in units]
        for future in cf.as_completed(futures):
            for out in future.result():
                outputs.append(out)
                if on_done:
                    on_done(out)
    return outputs
