"""The target set of an ensemble: labelled rows it is adapted to (DoRA) and judged on with
re-tuned cuts; a separate labelled cache, or the cache's own test split."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from roadwork_cache.runtime.errors import UserError
from roadwork_cache.training.dataset import CacheData, load_cache_data
from roadwork_cache.training.prepare import train_variants
from roadwork_cache.training.selection import Selection
from roadwork_cache.training.splits import choose_folds


@dataclass
class TargetSet:
    """Labelled rows the ensemble is adapted to (DoRA) and judged on with re-tuned cuts."""

    name: str
    data: CacheData  # the source cache itself when the target is its test split
    rows: np.ndarray  # labelled rows of `data`
    separate: bool  # a cache of its own (else the source cache's test split)
    folds: list[tuple[np.ndarray, np.ndarray]]  # positions into `rows`, grouped by video
    train_variants: list[str]
    eval_variants: list[str]

    @property
    def labels(self) -> np.ndarray:
        return self.data.labels[self.rows]

    @property
    def selection(self) -> Selection:
        """The deployment setting on the target's own cached variants."""
        return Selection.for_variants(self.eval_variants)


TEST_TARGET = "test"  # --target test: the cache's own test split


class TargetOptions(Protocol):
    """The options that choose a target set (an ensemble run's options have them all)."""

    target: str | None  # "test", a labelled cache, a CSV of lat,lon, or None
    cache: Path
    folds: int
    dora_folds: int
    seed: int


def resolve_target(
    opts: TargetOptions,
    data: CacheData,
    test_idx: np.ndarray,
    eval_variants: list[str],
    base_variants: list[str],
) -> TargetSet | None:
    """The target set, checked before any training: same backbone, labels for DoRA."""
    k = opts.dora_folds or opts.folds
    if opts.target is None:
        if opts.dora_folds:
            raise UserError(
                "--dora-folds needs a labelled target: --target test adapts to this cache's "
                "test split (scored cross-fitted; the deployed model then has seen those "
                "rows), or --target CACHE names another labelled cache"
            )
        return None
    if opts.target == TEST_TARGET:
        if not opts.dora_folds:
            return None  # GPS weighting toward the test split: the default anyway
        if len(test_idx) == 0:
            raise UserError(f"--target test: cache {opts.cache} has no labelled test rows")
        folds = choose_folds(data.labels[test_idx], data.groups()[test_idx], k, opts.seed).folds
        return TargetSet("test split", data, test_idx, False, folds, base_variants, eval_variants)
    path = Path(opts.target)
    if not (path / "zarr.json").is_file():
        if opts.dora_folds:
            raise UserError(
                f"--target {opts.target} is not a cache; DoRA folds need a labelled "
                "target cache (a CSV of lat,lon only steers GPS weighting)"
            )
        return None  # a CSV: GPS weighting only (train-head's read_target checks it)
    if path.resolve() == Path(data.root).resolve():
        raise UserError(
            f"--target {opts.target} is the members' own cache, whose training rows "
            "they have seen; leave --target out to adapt to its test split"
        )
    from roadwork_cache.store.cache import Cache

    available = Cache.open(path).variants()
    t_train = train_variants(available, None)
    t_eval = [v for v in available if v == "clean" or v.startswith("natix-")]
    if "clean" not in available:
        raise UserError(f"target cache {path} has no 'clean' variant")
    target = load_cache_data(path, sorted(set(t_train) | set(t_eval)))
    ours, theirs = data.fingerprint(), target.fingerprint()
    if (ours["feature_dim"], ours["backbone"]) != (
        theirs["feature_dim"],
        theirs["backbone"],
    ) or target.meta.n_views != data.meta.n_views:
        raise UserError(
            f"target cache {path} was made with backbone {theirs['backbone']} "
            f"({theirs['feature_dim']}-d, {target.meta.n_views} views), the "
            f"members' cache {opts.cache} with {ours['backbone']} "
            f"({ours['feature_dim']}-d, {data.meta.n_views} views)"
        )
    rows = np.flatnonzero(target.labels >= 0)
    if len(rows) == 0:
        if opts.dora_folds:
            raise UserError(
                f"target cache {path} has no labels; DoRA folds need labelled "
                "target rows (without --dora-folds it only steers GPS weighting)"
            )
        return None
    folds = choose_folds(target.labels[rows], target.groups()[rows], k, opts.seed).folds
    return TargetSet(str(path), target, rows, True, folds, t_train, t_eval)
