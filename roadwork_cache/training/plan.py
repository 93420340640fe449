"""An ensemble run's plan: its options, and everything decided before the first epoch
(rows, grouped folds, the target set, each member's head config and sampling weights)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch

from roadwork_cache.heads import HeadConfig
from roadwork_cache.runtime.errors import UserError
from roadwork_cache.runtime.progress import console
from roadwork_cache.training.dataset import (
    CacheData,
    labelled_rows,
    load_cache_data,
    random_backbone,
)
from roadwork_cache.training.distill import DistillConfig
from roadwork_cache.training.dora import DoraSettings
from roadwork_cache.training.members import Context, ContextSpec, MemberSpec, load_members
from roadwork_cache.training.prepare import (
    TrainHeadOptions,
    audit_leakage,
    evaluation_variants,
    head_config,
    sampling_weights,
    train_variants,
)
from roadwork_cache.training.splits import choose_folds
from roadwork_cache.training.stacking import METHODS
from roadwork_cache.training.targets import TargetSet, resolve_target


@dataclass
class EnsembleOptions(TrainHeadOptions):
    """train-head's options, under every member (its `head` and `train` are the defaults a
    member's own overrides go over), plus the ensemble's own. A `target` that is a cache is
    also the DoRA folds' target set; a CSV steers GPS sampling only."""

    members: str = "default"  # 'default' or a YAML / JSON members file
    folds: int = 5  # grouped folds of the members' out-of-fold logits
    seed: int = 42  # of the folds (members have their own seeds)
    dora_folds: int = 0
    dora_member: str | None = None  # default: the member with the best OOF MCC
    dora: DoraSettings = field(default_factory=DoraSettings)
    combine: str = "auto"  # auto (best cross-fitted OOF MCC), mean, weighted, stacked
    distill: bool = False
    distill_cfg: DistillConfig = field(default_factory=DistillConfig)
    jobs: int = 1  # worker processes for the member folds

    def head_options(self, spec: MemberSpec | None = None) -> TrainHeadOptions:
        """The train-head options a member would have had: train-head's helpers take them."""
        shared = {f.name: getattr(self, f.name) for f in fields(TrainHeadOptions)}
        return TrainHeadOptions(**{**shared, "head": {**self.head, **(spec.head if spec else {})}})


@dataclass
class Prepared:
    """Everything decided before any training: rows, folds, target, member configs."""

    specs: list[MemberSpec]
    data: CacheData
    fingerprint: dict[str, Any]
    random_init: bool
    base_variants: list[str]
    member_variants: dict[str, list[str]]
    eval_variants: list[str]
    pool: np.ndarray  # labelled non-test rows: the members' folds cover them
    test_idx: np.ndarray
    folds: list[tuple[np.ndarray, np.ndarray]]  # positions into `pool`
    target: TargetSet | None
    audits: list
    leaky: list[str]
    configs: dict[str, HeadConfig]
    gps_weights: np.ndarray | None  # over `pool`
    gps_info: dict[str, Any]

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.specs]

    @property
    def y_pool(self) -> np.ndarray:
        return self.data.labels[self.pool]


def check_options(opts: EnsembleOptions, names: list[str]) -> None:
    if opts.combine != "auto" and opts.combine not in METHODS:
        raise UserError(f"--combine {opts.combine!r} must be auto, {', '.join(METHODS)}")
    if opts.folds < 2 or opts.jobs < 1 or opts.dora_folds < 0 or opts.dora_folds == 1:
        raise UserError(
            "--folds must be at least 2, --dora-folds 0 or at least 2, and --jobs at least 1"
        )
    if opts.dora_member is not None and opts.dora_member not in names:
        raise UserError(
            f"--dora-member {opts.dora_member} is not a member (members: {', '.join(names)})"
        )


def plan_ensemble(opts: EnsembleOptions) -> Prepared:
    """Load the cache, split rows, make folds, check the target and every member's config:
    all bad input is refused here, before the first epoch."""
    specs = load_members(opts.members)
    check_options(opts, [s.name for s in specs])
    from roadwork_cache.store.cache import Cache

    available = Cache.open(opts.cache).variants()
    base_variants = train_variants(available, opts.variants)
    member_variants = {s.name: s.variants or base_variants for s in specs}
    data = load_cache_data(
        opts.cache,
        sorted(
            {
                "clean",
                *base_variants,
                *(v for vs in member_variants.values() for v in vs),
                *(v for v in available if v.startswith("natix-")),
            }
        ),
    )
    eval_variants = evaluation_variants(data)
    random_init = random_backbone(data)
    if random_init:
        console.print(
            "[yellow]warning: this cache was made with random backbone weights; "
            "scores demonstrate the machinery, not quality"
        )

    pool, test_idx = labelled_rows(data)
    chosen = choose_folds(data.labels[pool], data.groups()[pool], opts.folds, opts.seed)
    folds = chosen.folds
    target = resolve_target(opts, data, test_idx, eval_variants, base_variants)
    console.print(
        f"rows: {len(pool)} in {chosen.k} folds grouped by video"
        + (f" ({chosen.note})" if chosen.note else "")
        + f", {len(test_idx)} "
        f"test; members: {', '.join(s.name for s in specs)}"
        + (f"; target: {target.name} ({len(target.rows)} labelled rows)" if target else "")
    )

    audits, leaky = audit_leakage(data, pool, opts.head_options())
    configs: dict[str, HeadConfig] = {}
    for i, spec in enumerate(specs):
        console.quiet = i > 0  # the leaky-field note once, not once per member
        try:
            configs[spec.name] = head_config(data, opts.head_options(spec), leaky)
        finally:
            console.quiet = False
    weights, gps_info = sampling_weights(data, pool, test_idx, opts.head_options())
    return Prepared(
        specs,
        data,
        data.fingerprint(),
        random_init,
        base_variants,
        member_variants,
        eval_variants,
        pool,
        test_idx,
        folds,
        target,
        audits,
        leaky,
        configs,
        weights,
        gps_info,
    )


def context(p: Prepared, device: torch.device) -> Context:
    separate = p.target is not None and p.target.separate
    spec = ContextSpec(
        cache=str(p.data.root),
        variants=sorted(p.data.features),
        eval_variants=p.eval_variants,
        test_rows=p.test_idx,
        target_cache=str(p.target.data.root) if separate else None,
        target_variants=p.target.eval_variants if separate else [],
        target_rows=p.target.rows if separate else np.zeros(0, np.int64),
        device=str(device),
    )
    return Context(spec, p.data, p.target.data if separate else None, device)
