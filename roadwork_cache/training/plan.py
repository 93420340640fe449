"""An ensemble run's plan: its options, and everything decided before the first epoch
(rows, grouped folds, the target set, each member's head config and sampling weights)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from roadwork_cache.heads import HeadConfig
from roadwork_cache.runtime.errors import UserError
from roadwork_cache.training.dataset import CacheData
from roadwork_cache.training.distill import DistillConfig
from roadwork_cache.training.dora import DoraSettings
from roadwork_cache.training.members import MemberSpec
from roadwork_cache.training.prepare import TrainHeadOptions
from roadwork_cache.training.stacking import METHODS
from roadwork_cache.training.targets import TargetSet


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
