"""An ensemble run's plan: its options, and everything decided before the first epoch
(rows, grouped folds, the target set, each member's head config and sampling weights)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch

from roadwork_cache.heads import HeadConfig
from roadwork_cache.heads.probe import ProbeConfig
from roadwork_cache.runtime.errors import UserError
from roadwork_cache.runtime.progress import console
from roadwork_cache.training.baselines import ALL_VIEWS
from roadwork_cache.training.dataset import (
    CacheData,
    labelled_rows,
    load_cache_data,
    random_backbone,
)
from roadwork_cache.training.distill import DistillConfig
from roadwork_cache.training.dora import DoraSettings
from roadwork_cache.training.loop import TrainConfig
from roadwork_cache.training.members import (
    Context,
    ContextSpec,
    FoldJob,
    MemberResult,
    MemberSpec,
    digest,
    load_members,
)
from roadwork_cache.training.prepare import (
    TrainHeadOptions,
    audit_leakage,
    evaluation_variants,
    head_config,
    sampling_weights,
    selection_for,
    train_variants,
)
from roadwork_cache.training.selection import Selection
from roadwork_cache.training.splits import choose_folds, choose_split
from roadwork_cache.training.stacking import METHODS
from roadwork_cache.training.targets import TargetSet, resolve_target

# Share of a fold's training rows (whole videos) its models early-stop on.
INNER_STOP_FRACTION = 0.2


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
    # a member's folds (and same-config members') trained as one batched computation; off
    # by default until it is measured faster (on a 2-core CPU it is not: docs/benchmarks.md)
    batch_folds: bool = False

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
    configs: dict[str, HeadConfig | ProbeConfig]
    gps_weights: np.ndarray | None  # over `pool`
    gps_info: dict[str, Any]
    selection: Selection  # what every validation choice scores
    # Per fold, (fit, stop): its training positions into `pool` split by video; fold models
    # early-stop on `stop`, so the fold they predict stays strictly out-of-fold.
    inner: list[tuple[np.ndarray, np.ndarray]]

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.specs]

    @property
    def head_names(self) -> list[str]:
        """Members that are heads (not probes): DoRA adapts, and the student copies, those."""
        return [s.name for s in self.specs if s.kind == "head"]

    @property
    def y_pool(self) -> np.ndarray:
        return self.data.labels[self.pool]


def check_options(opts: EnsembleOptions, specs: list[MemberSpec]) -> None:
    names = [s.name for s in specs]
    heads = [s.name for s in specs if s.kind == "head"]
    if not heads and (opts.dora_folds or opts.distill):
        raise UserError("DoRA folds and the student need at least one head member (not a probe)")
    if opts.combine != "auto" and opts.combine not in METHODS:
        raise UserError(f"--combine {opts.combine!r} must be auto, {', '.join(METHODS)}")
    if opts.folds < 2 or opts.jobs < 1 or opts.dora_folds < 0 or opts.dora_folds == 1:
        raise UserError(
            "--folds must be at least 2, --dora-folds 0 or at least 2, and --jobs at least 1"
        )
    if opts.dora_member is not None and opts.dora_member not in heads:
        raise UserError(
            f"--dora-member {opts.dora_member} is not a head member (heads: {', '.join(heads)}; "
            f"members: {', '.join(names)})"
        )


def plan_ensemble(opts: EnsembleOptions) -> Prepared:
    """Load the cache, split rows, make folds, check the target and every member's config:
    all bad input is refused here, before the first epoch."""
    specs = load_members(opts.members)
    check_options(opts, specs)
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
    configs: dict[str, HeadConfig | ProbeConfig] = {}
    for i, spec in enumerate(specs):
        console.quiet = i > 0  # the leaky-field note once, not once per member
        try:
            configs[spec.name] = (
                ProbeConfig(data.in_dim, data.meta.n_views, ALL_VIEWS)
                if spec.kind == "probe"
                else head_config(data, opts.head_options(spec), leaky)
            )
        finally:
            console.quiet = False
    weights, gps_info = sampling_weights(data, pool, test_idx, opts.head_options())
    inner = []
    for k, (tr, _) in enumerate(folds):
        try:
            inner_split = choose_split(
                data.labels[pool[tr]], data.groups()[pool[tr]], INNER_STOP_FRACTION, opts.seed + k
            )
            inner.append((tr[inner_split.train], tr[inner_split.val]))
        except UserError:  # too few videos to hold some back: fixed epochs, no early stopping
            console.print(
                f"fold {k + 1}: too few videos to hold some back for early stopping; "
                f"its models train for the full {opts.train.epochs} epochs"
            )
            inner.append((tr, tr[:0]))
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
        selection_for(data),
        inner,
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
        selection=p.selection,
    )
    return Context(spec, p.data, p.target.data if separate else None, device)


def plan_members(
    opts: EnsembleOptions,
    p: Prepared,
    ctx: Context,
    reuse: Callable[[str, str], MemberResult | None],
    fold_folder: Callable[[str, int], str],
) -> tuple[dict[str, MemberResult], list[FoldJob], dict[str, dict]]:
    """Members an earlier run into the same folder finished (same cache, same settings) are
    reused (`reuse(name, signature)` finds one); every other member gets one job per fold,
    writing to `fold_folder(name, fold from 1)`."""
    folds_signature = digest(
        {"ids": [p.data.ids[i] for i in p.pool], "folds": [va.tolist() for _, va in p.folds]}
    )
    base_train = opts.train.to_dict()
    reused: dict[str, MemberResult] = {}
    jobs: list[FoldJob] = []
    infos: dict[str, dict] = {}
    for spec in p.specs:
        train = {
            **base_train,
            **spec.train,
            "loss": {**base_train["loss"], **(spec.train.get("loss") or {})},
        }
        TrainConfig.from_dict(train)  # fail on a bad value now, not in a worker
        weights = None if p.gps_weights is None else p.gps_weights**spec.gps_strength
        info = {
            "spec": spec.to_dict(),
            "head": p.configs[spec.name].to_dict(),
            "train": train,
            "variants": p.member_variants[spec.name],
            "cache_fingerprint": p.fingerprint,
            "gps_strength": spec.gps_strength,
        }
        info["signature"] = digest(
            {
                **info,
                "folds": folds_signature,
                "weights": digest(weights),
                "target": ctx.spec.target_cache,
                "eval": p.eval_variants,
            }
        )
        infos[spec.name] = info
        done = reuse(spec.name, info["signature"])
        if done is not None:
            reused[spec.name] = done
            continue
        for k, ((_, va), (fit, stop)) in enumerate(zip(p.folds, p.inner, strict=True)):
            jobs.append(
                FoldJob(
                    spec.name,
                    k,
                    spec.seed * 1000 + k,
                    spec.kind,
                    p.configs[spec.name].to_dict(),
                    train,
                    p.member_variants[spec.name],
                    p.pool[fit],
                    p.pool[stop],
                    p.pool[va],
                    None if weights is None else weights[fit],
                    fold_folder(spec.name, k + 1),
                )
            )
    return reused, jobs, infos
