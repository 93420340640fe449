"""`roadwork ensemble`: diverse members, DoRA folds and a stacking meta-learner, from the cache.

Read top to bottom: load the cache, make K folds of the labelled non-test rows grouped by
video, and train every member once per fold (validation and early stopping on the held-out
fold), so each member has an out-of-fold (OOF) logit on every training row. A member is then
the bag of its K fold models: its test logit is their mean, and that bag is what is deployed
(no refit on all rows: it would cost one more training per member and lose the early-stopping
signal). Mean, MCC-weighted and stacked (logistic regression) combinations are fitted on the
OOF logits and scored cross-fitted over the same folds; the chosen one is temperature-scaled
and its MCC-best threshold folded in so that 0.5 is the cut.

DoRA folds: one member (the best, or --dora-member) is adapted to a labelled target set (a
cache given with --target, else the test split) per fold of that set, grouped by video; each
fold's adapter trains on the other folds (minus whole videos held back for early stopping),
so every target row gets an honest adapted logit. Adapted or not, every model is scored on
the target with cross-fitted thresholds, so DoRA has to beat a re-tuned threshold to win.
The adapted bag is deployed only where it wins. Optional: a distilled student.

Everything lands in the output folder (see `roadwork_cache.ensemble_bundle`), with one table.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from rich.table import Table
from safetensors.numpy import load_file as load_arrays
from safetensors.numpy import save_file as save_arrays

from roadwork_cache import __version__
from roadwork_cache.heads import HeadConfig, RoadworkHead
from roadwork_cache.heads.combine import Calibration, Combination, LogitNorm, logit, sigmoid
from roadwork_cache.heads.forward import head_logits
from roadwork_cache.heads.io import save_weights
from roadwork_cache.inference.bundles import FORMAT_VERSION, MANIFEST, load_ensemble, load_head
from roadwork_cache.runtime.devices import resolve_device
from roadwork_cache.runtime.errors import UserError
from roadwork_cache.runtime.progress import console, progress_bar
from roadwork_cache.stages.train_head import (
    TrainHeadOptions,
    evaluation_variants,
    head_config,
    leakage,
    sampling_weights,
    train_variants,
)
from roadwork_cache.training.dataset import (
    CacheData,
    labelled_rows,
    load_cache_data,
    metadata_batch,
    random_backbone,
)
from roadwork_cache.training.distill import DistillConfig, distill
from roadwork_cache.training.dora import DoraSettings, adapt
from roadwork_cache.training.loop import EpochLog, TrainConfig
from roadwork_cache.training.members import (
    METAS,
    Context,
    ContextSpec,
    FoldJob,
    FoldOutput,
    MemberSpec,
    eval_keys,
    load_members,
    logits_by_key,
    run_folds,
)
from roadwork_cache.training.metrics import best_threshold, binary_metrics
from roadwork_cache.training.splits import grouped_folds, grouped_split
from roadwork_cache.training.stacking import (
    METHODS,
    apply_folds,
    calibrate,
    cross_fitted_cuts,
    fit_combination,
    fold_combinations,
)

CLEAN = "clean:none"  # the key everything is fitted and tuned on: the deployment setting

# ---- options --------------------------------------------------------------------------------


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


def cache_fingerprint(data: CacheData) -> dict[str, Any]:
    """What identifies a cache beyond its path (a rebuilt cache at the same path differs)."""
    backbone = data.attrs.get("backbone") or {}
    return {
        "path": str(Path(data.root).resolve()),
        "created": data.attrs.get("created"),
        "n_rows": int(data.attrs.get("n_rows", len(data))),
        "feature_dim": data.in_dim,
        "backbone": backbone.get("preset"),
        "weights_sha256": backbone.get("sha256"),
    }


def digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=lambda a: np.asarray(a).tolist())
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ---- the target set -------------------------------------------------------------------------


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


def resolve_target(
    opts: EnsembleOptions,
    data: CacheData,
    test_idx: np.ndarray,
    eval_variants: list[str],
    base_variants: list[str],
) -> TargetSet | None:
    """The target set, checked before any training: same backbone, labels for DoRA."""
    k = opts.dora_folds or opts.folds
    if opts.target is None:
        if opts.dora_folds and len(test_idx) == 0:
            raise UserError(
                f"--dora-folds needs a labelled target set: cache {opts.cache} has "
                "no labelled test rows, so pass --target with a labelled cache"
            )
        if not opts.dora_folds:
            return None
        folds = grouped_folds(data.labels[test_idx], data.groups()[test_idx], k, opts.seed)
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
    ours, theirs = cache_fingerprint(data), cache_fingerprint(target)
    if (ours["feature_dim"], ours["backbone"]) != (
        theirs["feature_dim"],
        theirs["backbone"],
    ) or target.attrs.get("n_views") != data.attrs.get("n_views"):
        raise UserError(
            f"target cache {path} was made with backbone {theirs['backbone']} "
            f"({theirs['feature_dim']}-d, {target.attrs.get('n_views')} views), the "
            f"members' cache {opts.cache} with {ours['backbone']} "
            f"({ours['feature_dim']}-d, {data.attrs.get('n_views')} views)"
        )
    rows = np.flatnonzero(target.labels >= 0)
    if len(rows) == 0:
        if opts.dora_folds:
            raise UserError(
                f"target cache {path} has no labels; DoRA folds need labelled "
                "target rows (without --dora-folds it only steers GPS weighting)"
            )
        return None
    folds = grouped_folds(target.labels[rows], target.groups()[rows], k, opts.seed)
    return TargetSet(str(path), target, rows, True, folds, t_train, t_eval)


# ---- members: train (or reuse) and assemble -------------------------------------------------


@dataclass
class MemberResult:
    name: str
    config: HeadConfig
    oof: dict[str, np.ndarray]  # key -> OOF logits over the pool rows
    test: dict[str, np.ndarray]  # key -> mean fold-model logits on the test rows
    target: dict[str, np.ndarray]  # key -> the same on a separate target's labelled rows
    full: np.ndarray  # clean:none mean fold-model logits on every cache row
    folders: list[str]  # fold folders relative to the output folder
    info: dict[str, Any]  # member.json


def member_dir(out: Path, name: str) -> Path:
    return out / "members" / name


def reuse_member(out: Path, name: str, fingerprint: dict, signature: str) -> MemberResult | None:
    """A member finished by an earlier run into the same folder with the same settings."""
    folder = member_dir(out, name)
    if not (folder / "member.json").is_file() or not (folder / "logits.safetensors").is_file():
        return None
    info = json.loads((folder / "member.json").read_text())
    if info.get("cache_fingerprint") != fingerprint:
        old = info.get("cache_fingerprint") or {}
        raise UserError(
            f"member {name} in {out} was trained on cache {old.get('path')} "
            f"(created {old.get('created')}), not on {fingerprint['path']} "
            f"(created {fingerprint['created']}); use a new --out"
        )
    if info.get("signature") != signature:
        console.print(f"member {name}: settings changed since the last run, retraining")
        return None
    arrays = load_arrays(folder / "logits.safetensors")
    parts: dict[str, dict[str, np.ndarray]] = {"oof": {}, "test": {}, "target": {}}
    for key, value in arrays.items():
        kind, _, rest = key.partition("/")
        if kind in parts:
            parts[kind][rest] = value
    config = HeadConfig.from_dict(info["head"])
    console.print(f"member {name}: reusing the folds trained by an earlier run")
    return MemberResult(
        name,
        config,
        parts["oof"],
        parts["test"],
        parts["target"],
        arrays["full"],
        info["folders"],
        info,
    )


def assemble_member(
    out: Path,
    name: str,
    config: HeadConfig,
    outputs: list[FoldOutput],
    folds: list[tuple[np.ndarray, np.ndarray]],
    n_pool: int,
    info: dict[str, Any],
) -> MemberResult:
    outputs = sorted(outputs, key=lambda o: o.fold)
    oof = {key: np.zeros(n_pool) for key in outputs[0].val}
    for o in outputs:
        for key, value in o.val.items():
            oof[key][folds[o.fold][1]] = value
    test = {key: np.mean([o.test[key] for o in outputs], axis=0) for key in outputs[0].test}
    target = {key: np.mean([o.target[key] for o in outputs], axis=0) for key in outputs[0].target}
    full = np.mean([o.full for o in outputs], axis=0)
    folders = [f"members/{name}/fold-{o.fold + 1}" for o in outputs]
    info = {
        **info,
        "folders": folders,
        "folds": [
            {
                "fold": o.fold + 1,
                "best_epoch": o.best_epoch,
                "best_val_mcc": o.best_val_mcc,
                "epochs_run": o.epochs_run,
                "seconds": o.seconds,
                "logit_norm": o.norm.to_dict(),
            }
            for o in outputs
        ],
    }
    arrays = {f"oof/{k}": v for k, v in oof.items()}
    arrays.update({f"test/{k}": v for k, v in test.items()})
    arrays.update({f"target/{k}": v for k, v in target.items()})
    arrays["full"] = full
    folder = member_dir(out, name)
    save_arrays(
        {k: np.ascontiguousarray(v, dtype=np.float64) for k, v in arrays.items()},
        folder / "logits.safetensors",
    )
    (folder / "member.json").write_text(json.dumps(info, indent=2, default=float))
    return MemberResult(name, config, oof, test, target, full, folders, info)


def write_head_config(folder: Path, values: dict[str, Any]) -> None:
    """config.json of a head folder, in the train-head layout `bundle.load_head` reads."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(values, indent=2, default=float))


# ---- scoring ----------------------------------------------------------------------------------


@dataclass
class Scored:
    """One model's logits on a set, per key, with the logit cut (scalar or per row)."""

    logits: dict[str, np.ndarray]
    cut: float | np.ndarray


def score_rows(
    model: str, set_name: str, scored: Scored, y: np.ndarray, variants: list[str]
) -> list[dict[str, Any]]:
    """Metric rows per variant and metadata setting, plus 'natix' (every natix-* level
    pooled, as a validator mixes them)."""
    rows = []
    cut = np.broadcast_to(np.asarray(scored.cut, dtype=np.float64), y.shape)
    natix = [v for v in variants if v.startswith("natix-")]
    for meta in METAS:
        groups = [(v, [v]) for v in variants] + ([("natix", natix)] if natix else [])
        for name, members in groups:
            keys = [f"{v}:{meta}" for v in members if f"{v}:{meta}" in scored.logits]
            if not keys:
                continue
            z = np.concatenate([scored.logits[k] for k in keys])
            # z > cut is the decision; sigmoid(z - cut) keeps AUC and the 0.5 cut meaningful.
            prob = sigmoid(z - np.tile(cut, len(keys)))
            m = binary_metrics(np.tile(y, len(keys)), prob, 0.5)
            rows.append({"model": model, "set": set_name, "variant": name, "metadata": meta, **m})
    return rows


def ensemble_table(rows: list[dict[str, Any]], random_init: bool, target_name: str | None) -> Table:
    title = (
        "ensemble: MCC / accuracy / reward (metadata 'none' is what a validator sends; "
        "'natix' pools the natix-* levels)"
    )
    if target_name:
        title += f"\ntarget = {target_name}, every model's threshold cross-fitted on its folds"
    if random_init:
        title += "\n[yellow]random backbone weights: this measures the machinery, not quality"
    table = Table(title=title)
    for col in ("model", "set", "metadata"):
        table.add_column(col)
    for col in ("clean MCC", "acc", "reward", "natix MCC", "acc ", "reward ", "n"):
        table.add_column(col, justify="right")
    index = {(r["model"], r["set"], r["metadata"], r["variant"]): r for r in rows}
    seen = []
    for r in rows:
        k = (r["model"], r["set"], r["metadata"])
        if k not in seen:
            seen.append(k)
    order = {"oof": 0, "test": 1, "target": 2}
    for model, set_name, meta in sorted(seen, key=lambda k: order.get(k[1], 9)):
        cells = []
        for variant in ("clean", "natix"):
            r = index.get((model, set_name, meta, variant))
            cells += (
                [f"{r['mcc']:+.3f}", f"{r['accuracy']:.3f}", f"{r['reward']:.3f}"]
                if r
                else ["-", "-", "-"]
            )
        n = index.get((model, set_name, meta, "clean"), {}).get("n", "-")
        table.add_row(model, set_name, meta, *cells, str(n))
    return table


# ---- the stage --------------------------------------------------------------------------------


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


def prepare(opts: EnsembleOptions) -> Prepared:
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
    folds = grouped_folds(data.labels[pool], data.groups()[pool], opts.folds, opts.seed)
    target = resolve_target(opts, data, test_idx, eval_variants, base_variants)
    console.print(
        f"rows: {len(pool)} in {opts.folds} folds grouped by video, {len(test_idx)} "
        f"test; members: {', '.join(s.name for s in specs)}"
        + (f"; target: {target.name} ({len(target.rows)} labelled rows)" if target else "")
    )

    audits, leaky = leakage(data, pool, opts.head_options())
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
        cache_fingerprint(data),
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


def plan_members(
    opts: EnsembleOptions, p: Prepared, ctx: Context
) -> tuple[dict[str, MemberResult], list[FoldJob], dict[str, dict]]:
    """Members an earlier run into the same folder finished (same cache, same settings) are
    reused; every other member gets one job per fold."""
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
        done = reuse_member(opts.out, spec.name, p.fingerprint, info["signature"])
        if done is not None:
            reused[spec.name] = done
            continue
        for k, (tr, va) in enumerate(p.folds):
            jobs.append(
                FoldJob(
                    spec.name,
                    k,
                    spec.seed * 1000 + k,
                    p.configs[spec.name].to_dict(),
                    train,
                    p.member_variants[spec.name],
                    p.pool[tr],
                    p.pool[va],
                    None if weights is None else weights[tr],
                    str(member_dir(opts.out, spec.name) / f"fold-{k + 1}"),
                )
            )
    return reused, jobs, infos


def write_member_configs(
    out: Path, p: Prepared, results: dict[str, MemberResult], member_cal: dict[str, Calibration]
) -> None:
    """Each fold folder's config.json, in the train-head layout (so `load_head` and
    `load_bundle` read a fold on its own), with the member's OOF-tuned cut."""
    for n, res in results.items():
        for k, rel in enumerate(res.folders):
            norm = LogitNorm.from_dict(res.info["folds"][k]["logit_norm"])
            write_head_config(
                out / rel,
                {
                    "kind": "ensemble-member",
                    "member": n,
                    "fold": k + 1,
                    "tool_version": __version__,
                    "cache": p.fingerprint["path"],
                    "cache_fingerprint": p.fingerprint,
                    "backbone": p.data.attrs.get("backbone"),
                    "views": p.data.attrs.get("views"),
                    "head": res.config.to_dict(),
                    "train": res.info["train"],
                    "variants": res.info["variants"],
                    "threshold": norm.raw_threshold(member_cal[n].cut()),
                    "logit_norm": norm.to_dict(),
                    "leaky_fields": p.leaky,
                },
            )


@dataclass
class Combined:
    """Member logits stacked [n, M] per key, the three combinations and their calibration."""

    z_oof: dict[str, np.ndarray]
    z_test: dict[str, np.ndarray]
    z_target: dict[str, np.ndarray]
    member_cal: dict[str, Calibration]
    member_mcc: dict[str, float]
    combos: dict[str, Combination]  # fitted on every OOF row: what is deployed
    oof: dict[str, dict[str, np.ndarray]]  # method -> key -> cross-fitted OOF logit
    cal: dict[str, Calibration]
    oof_mcc: dict[str, float]
    method: str


def combine(opts: EnsembleOptions, p: Prepared, results: dict[str, MemberResult]) -> Combined:
    names, y = p.names, p.y_pool
    member_cal = {n: calibrate(results[n].oof[CLEAN], y, temperature=False) for n in names}
    member_mcc = {
        n: binary_metrics(y, sigmoid(results[n].oof[CLEAN]), member_cal[n].threshold)["mcc"]
        for n in names
    }
    keys = list(results[names[0]].oof)
    z_oof = {k: np.stack([results[n].oof[k] for n in names], 1) for k in keys}
    z_test = {k: np.stack([results[n].test[k] for n in names], 1) for k in keys}
    z_target: dict[str, np.ndarray] = {}
    if p.target is not None:
        z_target = (
            {
                k: np.stack([results[n].target[k] for n in names], 1)
                for k in results[names[0]].target
            }
            if p.target.separate
            else z_test
        )
    combos = {m: fit_combination(m, z_oof[CLEAN], y, names, opts.seed) for m in METHODS}
    oof = {}
    for m in METHODS:
        per_fold = fold_combinations(m, z_oof[CLEAN], y, p.folds, names, opts.seed)
        oof[m] = {k: apply_folds(per_fold, p.folds, z_oof[k]) for k in keys}
    cal = {m: calibrate(oof[m][CLEAN], y) for m in METHODS}
    oof_mcc = {
        m: binary_metrics(y, cal[m].prob(oof[m][CLEAN]), cal[m].threshold)["mcc"] for m in METHODS
    }
    # Ties go to the simpler method (METHODS is ordered simplest first).
    method = (
        opts.combine
        if opts.combine != "auto"
        else max(METHODS, key=lambda m: (round(oof_mcc[m], 6), -METHODS.index(m)))
    )
    console.print(
        "OOF MCC (no metadata): "
        + ", ".join(f"{n} {member_mcc[n]:+.3f}" for n in names)
        + " | "
        + ", ".join(f"{m} {oof_mcc[m]:+.3f}" for m in METHODS)
        + f" -> {method}"
    )
    return Combined(
        z_oof, z_test, z_target, member_cal, member_mcc, combos, oof, cal, oof_mcc, method
    )


def target_scored(logits: dict[str, np.ndarray], target: TargetSet) -> Scored:
    """Scored on the target with cross-fitted cuts: every model may re-tune its threshold to
    the target, honestly, so adaptation must beat recalibration to count."""
    return Scored(logits, cross_fitted_cuts(logits[CLEAN], target.labels, target.folds))


def score_entries(
    p: Prepared, results: dict[str, MemberResult], c: Combined
) -> dict[str, dict[str, Scored]]:
    """Members and combinations on the OOF rows (cut tuned there), the test rows (same cut)
    and the target (cross-fitted cuts)."""
    entries: dict[str, dict[str, Scored]] = {}
    for i, n in enumerate(p.names):
        cut = c.member_cal[n].cut()
        entries[n] = {"oof": Scored(results[n].oof, cut), "test": Scored(results[n].test, cut)}
        if p.target is not None:
            entries[n]["target"] = target_scored(
                {k: v[:, i] for k, v in c.z_target.items()}, p.target
            )
    for m in METHODS:
        cut = c.cal[m].cut()
        entries[m] = {
            "oof": Scored(c.oof[m], cut),
            "test": Scored({k: c.combos[m].apply(v) for k, v in c.z_test.items()}, cut),
        }
        if p.target is not None:
            entries[m]["target"] = target_scored(
                {k: c.combos[m].apply(v) for k, v in c.z_target.items()}, p.target
            )
    return entries


def swap_member(
    z: dict[str, np.ndarray], col: int, logits: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Member logits with one member's column replaced (by its DoRA-adapted bag)."""
    out = {k: v.copy() for k, v in z.items()}
    for k in out:
        out[k][:, col] = logits[k]
    return out


def add_dora_entries(entries: dict, p: Prepared, c: Combined, dora: DoraRun) -> None:
    target, col, combo = p.target, p.names.index(dora.member), c.combos[c.method]
    entries["dora"] = {"target": target_scored(dora.oof, target)}
    entries[f"{c.method}+dora"] = {
        "target": target_scored(
            {k: combo.apply(v) for k, v in swap_member(c.z_target, col, dora.oof).items()}, target
        )
    }
    if dora.test is not None:  # a separate target: what adaptation costs on the source's test
        entries["dora"]["test"] = Scored(
            dora.test, calibrate(dora.oof[CLEAN], target.labels, temperature=False).cut()
        )
        entries[f"{c.method}+dora"]["test"] = Scored(
            {k: combo.apply(v) for k, v in swap_member(c.z_test, col, dora.test).items()},
            c.cal[c.method].cut(),
        )


@dataclass
class Deployment:
    kind: str  # "ensemble" or "ensemble+dora"
    reason: str
    calibration: Calibration
    calibration_set: str  # "oof" (source OOF rows) or "target" (cross-fitted target rows)
    calibration_logits: np.ndarray


def choose_deployment(p: Prepared, c: Combined, entries: dict, dora: DoraRun | None) -> Deployment:
    """The adapted ensemble only where DoRA beats the plain one on the target (both with
    cross-fitted cuts); its temperature and threshold are then fitted on the target rows."""
    method = c.method
    plain = Deployment(
        "ensemble",
        f"{method} combination of {len(p.names)} members",
        c.cal[method],
        "oof",
        c.oof[method][CLEAN],
    )
    if dora is None:
        return plain
    y_t = p.target.labels
    before = score_rows(method, "target", entries[method]["target"], y_t, ["clean"])[0]["mcc"]
    after = score_rows(method, "target", entries[f"{method}+dora"]["target"], y_t, ["clean"])[0][
        "mcc"
    ]
    dora.info.update(target_mcc_plain=before, target_mcc_adapted=after)
    if after <= before:
        plain.reason += (
            f"; DoRA folds did not help on the target ({after:+.3f} vs "
            f"{before:+.3f}), so they are reported, not deployed"
        )
        return plain
    z = entries[f"{method}+dora"]["target"].logits[CLEAN]
    return Deployment(
        "ensemble+dora",
        f"DoRA folds raise the target MCC from {before:+.3f} to {after:+.3f}",
        calibrate(z, y_t),
        "target",
        z,
    )


def run_ensemble(opts: EnsembleOptions) -> dict[str, Any]:
    started = time.perf_counter()
    device = resolve_device(opts.device)
    p = prepare(opts)
    names = p.names
    opts.out.mkdir(parents=True, exist_ok=True)
    ctx = context(p, device)
    results, jobs, infos = plan_members(opts, p, ctx)

    with progress_bar(disable=not opts.progress) as bar:
        task = bar.add_task(
            "ensemble", total=len(jobs) + opts.dora_folds + int(opts.distill), rate=""
        )
        # ---- members: K folds each, in this process or in workers ------------------------
        t0 = time.perf_counter()

        def on_epoch(job: FoldJob, log: EpochLog) -> None:
            bar.update(
                task,
                rate=f"{job.member} fold {job.fold + 1} epoch {log.epoch} "
                f"val MCC {log.val_mcc:+.3f}",
            )

        def on_done(out: FoldOutput) -> None:
            bar.update(
                task,
                advance=1,
                rate=f"{out.member} fold {out.fold + 1} val MCC {out.best_val_mcc:+.3f}",
            )

        outputs = run_folds(ctx, jobs, opts.jobs, on_epoch, on_done)
        member_seconds = time.perf_counter() - t0
        for n in names:
            if n not in results:
                results[n] = assemble_member(
                    opts.out,
                    n,
                    p.configs[n],
                    [o for o in outputs if o.member == n],
                    p.folds,
                    len(p.pool),
                    infos[n],
                )
        results = {n: results[n] for n in names}

        # ---- combinations on the OOF logits, then every model scored -------------------------
        c = combine(opts, p, results)
        write_member_configs(opts.out, p, results, c.member_cal)
        entries = score_entries(p, results, c)

        # ---- DoRA folds on the target, and what is deployed ----------------------------------
        dora = None
        if opts.dora_folds:
            member = opts.dora_member or max(names, key=lambda n: c.member_mcc[n])
            dora = run_dora(opts, p, results[member], device, bar, task)
            add_dora_entries(entries, p, c, dora)
        deploy = choose_deployment(p, c, entries, dora)
        console.print(
            f"deployed: {deploy.kind} ({deploy.reason}); temperature "
            f"{deploy.calibration.temperature:.3f}, threshold "
            f"{deploy.calibration.threshold:.3f} folded to 0.5"
        )
        z_full = np.stack([results[n].full for n in names], 1)
        if deploy.kind == "ensemble+dora":
            z_full[:, names.index(dora.member)] = dora.full
        deployed_prob = deploy.calibration.folded(c.combos[c.method].apply(z_full))

        # ---- distilled student ---------------------------------------------------------------
        student = None
        if opts.distill:
            soft = c.cal[c.method].prob(c.oof[c.method][CLEAN])
            student = run_student(opts, p, soft, device, entries, bar, task)

    # ---- the output folder ------------------------------------------------------------------
    manifest = write_manifest(opts, p, results, c, deploy, dora, student)
    # The bundle must reproduce what this stage computed (same weights, same arithmetic; on
    # CUDA bf16 autocast with other batch shapes moves the last digits, hence the wider bound).
    bundle = load_ensemble(opts.out, device)
    check = np.arange(min(len(p.data), 64))
    bundle_diff = float(
        np.max(np.abs(bundle.predict(p.data.features["clean"][check]) - deployed_prob[check]))
    )
    if bundle_diff > (1e-4 if device.type == "cpu" else 5e-2):
        raise RuntimeError(
            f"the saved ensemble does not reproduce the stage's predictions "
            f"(max difference {bundle_diff:.2e})"
        )
    if student is not None:
        student.update(speed(bundle, opts.out / "student", p.data, p.test_idx, device))

    rows = metric_rows(p, entries)
    table = ensemble_table(rows, p.random_init, p.target.name if p.target else None)
    write_predictions(opts.out, p, results, c, deployed_prob, deploy)
    write_target_predictions(opts.out, p, c, entries)
    metrics = {
        "deployed": deploy.kind,
        "reason": deploy.reason,
        "method": c.method,
        "calibration": deploy.calibration.to_dict(),
        "calibration_rows": deploy.calibration_set,
        "oof_mcc": {**c.member_mcc, **c.oof_mcc},
        "members": {n: results[n].info for n in names},
        "dora": dora.info if dora else None,
        "student": student,
        "bundle_max_diff": bundle_diff,
        "seconds": {
            "members": member_seconds,
            "dora": dora.info["seconds"] if dora else 0.0,
            "total": time.perf_counter() - started,
        },
        "random_init_backbone": p.random_init,
        "rows": rows,
    }
    (opts.out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
    from rich.console import Console

    with open(opts.out / "table.txt", "w") as handle:
        Console(file=handle, width=160).print(table)
    return {"table": table, "metrics": metrics, "manifest": manifest, "out": opts.out}


# ---- outputs ----------------------------------------------------------------------------------


def write_manifest(
    opts: EnsembleOptions,
    p: Prepared,
    results: dict[str, MemberResult],
    c: Combined,
    deploy: Deployment,
    dora: DoraRun | None,
    student: dict | None,
) -> dict[str, Any]:
    members = []
    for n in p.names:
        adapted = deploy.kind == "ensemble+dora" and n == dora.member
        members.append(
            {
                "name": n,
                "folders": dora.folders if adapted else results[n].folders,
                "source": "dora" if adapted else "members",
            }
        )
    combination = c.combos[c.method]
    meta_learner = {
        "method": c.method,
        "combination": combination.to_dict(),
        "all_methods": {m: c.combos[m].to_dict() for m in METHODS},
        "calibration": deploy.calibration.to_dict(),
        "oof_mcc": {**c.member_mcc, **c.oof_mcc},
    }
    (opts.out / "meta_learner.json").write_text(json.dumps(meta_learner, indent=2))
    manifest = {
        "kind": "ensemble",
        "format_version": FORMAT_VERSION,
        "tool_version": __version__,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cache": p.fingerprint["path"],
        "cache_fingerprint": p.fingerprint,
        "backbone": p.data.attrs.get("backbone"),
        "views": p.data.attrs.get("views"),
        "members": members,
        "method": c.method,
        "combination": combination.to_dict(),
        "calibration": deploy.calibration.to_dict(),
        "temperature": deploy.calibration.temperature,
        "threshold": deploy.calibration.threshold,  # folded in: 0.5 is the cut
        "calibration_rows": deploy.calibration_set,
        "deployed": deploy.kind,
        "reason": deploy.reason,
        "folds": opts.folds,
        "seed": opts.seed,
        "target": p.target.name if p.target else None,
        "dora": dora.info if dora else None,
        "student": "student" if student else None,
        "leaky_fields": p.leaky,
        "gps": p.gps_info,
        "variants": p.member_variants,
    }
    (opts.out / MANIFEST).write_text(json.dumps(manifest, indent=2, default=float))
    (opts.out / "audit.json").write_text(json.dumps([a.to_dict() for a in p.audits], indent=2))
    return manifest


def metric_rows(p: Prepared, entries: dict[str, dict[str, Scored]]) -> list[dict[str, Any]]:
    sets = {
        "oof": (p.y_pool, p.eval_variants),
        "test": (p.data.labels[p.test_idx], p.eval_variants),
    }
    if p.target is not None:
        sets["target"] = (p.target.labels, p.target.eval_variants)
    rows: list[dict[str, Any]] = []
    for model_name, by_set in entries.items():
        for set_name, scored in by_set.items():
            y, variants = sets[set_name]
            if len(y):
                rows.extend(score_rows(model_name, set_name, scored, y, variants))
    return rows


def write_predictions(
    out: Path,
    p: Prepared,
    results: dict[str, MemberResult],
    c: Combined,
    deployed_prob: np.ndarray,
    deploy: Deployment,
) -> None:
    """One row per cache row: member and combination logits (OOF on training rows), the
    deployed folded probability (what the bundle returns) and, on the calibration rows, the
    folded OOF probability the threshold was tuned on."""
    data, pool, test_idx = p.data, p.pool, p.test_idx
    n = len(data)
    set_of = np.full(n, "unlabelled", dtype=object)
    set_of[pool], set_of[test_idx] = "train", "test"  # train rows hold OOF logits
    cols: dict[str, Any] = {
        "id": data.ids,
        "set": set_of.tolist(),
        "label": [None if v < 0 else int(v) for v in data.labels],
    }
    for name in p.names:
        z = results[name].full.copy()
        z[pool] = results[name].oof[CLEAN]
        cols[name] = z
    for m in METHODS:
        z = np.full(n, np.nan)
        z[pool] = c.oof[m][CLEAN]
        z[test_idx] = c.combos[m].apply(c.z_test[CLEAN])
        cols[m] = z
    cols["deployed"] = deployed_prob
    cal = np.full(n, np.nan)
    if deploy.calibration_set == "oof":
        cal[pool] = deploy.calibration.folded(deploy.calibration_logits)
    cols["calibration"] = cal
    pq.write_table(pa.table(cols), out / "predictions.parquet")


def write_target_predictions(
    out: Path, p: Prepared, c: Combined, entries: dict[str, dict[str, Scored]]
) -> None:
    """A separate target's labelled rows: each model's clean, metadata-free logit."""
    if p.target is None or not p.target.separate:
        return
    cols: dict[str, Any] = {
        "id": [p.target.data.ids[i] for i in p.target.rows],
        "label": p.target.labels.tolist(),
    }
    for name, by_set in entries.items():
        if "target" in by_set:
            cols[name] = by_set["target"].logits[CLEAN]
    pq.write_table(pa.table(cols), out / "target_predictions.parquet")


@dataclass
class DoraRun:
    member: str
    oof: dict[str, np.ndarray]  # key -> adapted logit on each target row, from its own fold
    full: np.ndarray  # the adapted bag on every source row (clean, no metadata)
    test: dict[str, np.ndarray] | None  # the bag on the source's test rows (separate target)
    folders: list[str]
    info: dict[str, Any]


def run_dora(
    opts: EnsembleOptions, p: Prepared, member: MemberResult, device: torch.device, bar, task
) -> DoraRun:
    """DoRA folds of `member` on the target: fold j adapts the member's fold model j (mod K)
    on the other target folds, stopping early on whole videos held back from them, merges the
    adapter, and scores fold j's rows, which it never saw."""
    target, data = p.target, p.data
    t, config, y_t = target.data, member.config, target.labels
    meta = metadata_batch(config, t)
    variants = [t.features[v] for v in target.train_variants]
    oof = {k: np.zeros(len(target.rows)) for k in eval_keys(target.eval_variants)}
    full, test_bag, folds_info, folders = [], [], [], []
    start = time.perf_counter()
    for j, (rest, held) in enumerate(target.folds):
        tr, stop = grouped_split(
            y_t[rest], t.groups()[target.rows[rest]], opts.dora.stop_fraction, opts.seed + j
        )
        base_folder = member.folders[j % len(member.folders)]
        base, _ = load_head(opts.out / base_folder, device)

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
            eval_features=t.features["clean"],
            on_epoch=on_epoch,
        )
        folder = opts.out / "dora" / f"fold-{j + 1}"
        save_weights(res.model, folder)
        stop_z = head_logits(res.model, t.features["clean"][target.rows[rest[stop]]], None, device)
        norm = LogitNorm.fit(
            head_logits(res.model, t.features["clean"][target.rows[rest]], None, device)
        )
        write_head_config(
            folder,
            {
                "kind": "dora-fold",
                "member": member.name,
                "fold": j + 1,
                "base": base_folder,
                "tool_version": __version__,
                "cache": p.fingerprint["path"],
                "cache_fingerprint": p.fingerprint,
                "adapted_on": target.name,
                "backbone": data.attrs.get("backbone"),
                "views": data.attrs.get("views"),
                "head": config.to_dict(),
                "dora": opts.dora.to_dict(),
                "logit_norm": norm.to_dict(),
                # on its own (as a train-head bundle): the cut tuned on its stopping rows
                "threshold": best_threshold(y_t[rest[stop]], sigmoid(stop_z)),
            },
        )
        folders.append(f"dora/fold-{j + 1}")
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


def run_student(
    opts: EnsembleOptions,
    p: Prepared,
    soft_pool: np.ndarray,
    device: torch.device,
    entries: dict[str, dict[str, Scored]],
    bar,
    task,
) -> dict[str, Any]:
    """One head (the first member's config) distilled from the ensemble's OOF soft labels;
    the first fold's rows are held back (true labels) for early stopping and its threshold."""
    data, pool, config = p.data, p.pool, p.configs[p.names[0]]
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
        eval_features=data.features["clean"],
        on_epoch=lambda log: bar.update(task, rate=f"student epoch {log.epoch}"),
    )
    seconds = time.perf_counter() - start
    stop_z = head_logits(student, data.features["clean"][stop_rows], None, device)
    threshold = best_threshold(data.labels[stop_rows], sigmoid(stop_z))
    folder = opts.out / "student"
    save_weights(student, folder)
    write_head_config(
        folder,
        {
            "kind": "distilled-student",
            "tool_version": __version__,
            "cache": p.fingerprint["path"],
            "cache_fingerprint": p.fingerprint,
            "backbone": data.attrs.get("backbone"),
            "views": data.attrs.get("views"),
            "head": config.to_dict(),
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
        "folder": "student",
    }


def speed(
    bundle, student_folder: Path, data: CacheData, test_idx: np.ndarray, device: torch.device
) -> dict[str, float]:
    """Rows per second of the deployed ensemble (every head of every member) and of the
    student, on the same rows and device (metadata-free, as deployed)."""
    from roadwork_cache.inference.bundles import load_bundle

    rows = test_idx if len(test_idx) else np.arange(len(data))
    feats = data.features["clean"][rows[:2048]]
    student = load_bundle(student_folder, device)
    out = {}
    for name, model in (("ensemble", bundle), ("student", student)):
        model.predict(feats[:8])  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        model.predict(feats)
        if device.type == "cuda":
            torch.cuda.synchronize()
        out[f"{name}_rows_per_s"] = len(feats) / max(time.perf_counter() - start, 1e-9)
    out["speedup"] = out["student_rows_per_s"] / out["ensemble_rows_per_s"]
    out["ensemble_heads"] = sum(len(heads) for _, heads in bundle.members)
    return out
