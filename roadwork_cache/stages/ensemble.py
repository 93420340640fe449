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

import concurrent.futures as cf
import datetime as dt
import hashlib
import json
import multiprocessing as mp
import os
import re
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from rich.table import Table
from safetensors.numpy import load_file as load_arrays
from safetensors.numpy import save_file as save_arrays
from safetensors.torch import save_file

from roadwork_cache import __version__
from roadwork_cache.bundle import load_head
from roadwork_cache.ensemble_bundle import FORMAT_VERSION, MANIFEST, load_ensemble
from roadwork_cache.errors import UserError
from roadwork_cache.heads import HeadConfig, RoadworkHead
from roadwork_cache.progress import console, progress_bar
from roadwork_cache.stages.extract import resolve_device
from roadwork_cache.stages.train_head import (
    DEFAULT_BRACKETS,
    TrainHeadOptions,
    evaluation_variants,
    head_config,
    leakage,
    sampling_weights,
    train_variants,
)
from roadwork_cache.training.dataset import CacheData, load_cache_data, metadata_batch
from roadwork_cache.training.distill import DistillConfig, distill
from roadwork_cache.training.dora import DoraSettings, adapt
from roadwork_cache.training.loop import TrainConfig, Trainer
from roadwork_cache.training.losses import LossWeights
from roadwork_cache.training.metrics import best_threshold, binary_metrics
from roadwork_cache.training.splits import grouped_folds, grouped_split
from roadwork_cache.training.stacking import (
    METHODS,
    Calibration,
    Combination,
    LogitNorm,
    apply_folds,
    calibrate,
    cross_fitted_cuts,
    fit_combination,
    fold_combinations,
    head_logits,
    logit,
    sigmoid,
)

METAS = ("none", "all")  # all metadata NULL (what a validator sends) / every field the head reads
CLEAN = "clean:none"  # the key everything is fitted and tuned on: the deployment setting

# ---- member specs ---------------------------------------------------------------------------


@dataclass
class MemberSpec:
    """One ensemble member: overrides of the head and training settings, its own seed."""

    name: str
    seed: int = 0
    head: dict[str, Any] = field(default_factory=dict)  # HeadConfig overrides
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig overrides
    gps_strength: float = 1.0  # exponent on the GPS sampling weights: 0 off, 2 sharper
    variants: list[str] | None = None  # cached variants it trains on (default: the run's)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, where: str = "the members file") -> MemberSpec:
        if not isinstance(data, dict):
            raise UserError(f"every member in {where} must be a mapping, got {data!r}")
        name = data.get("name")
        label = f"member {name!r}" if name else "a member"
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise UserError(f"{label} in {where} has unknown key(s) {', '.join(unknown)} "
                            f"(known: {', '.join(known)})")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            raise UserError(f"{label} in {where} needs a 'name' of letters, digits, '_', '.' "
                            "or '-' (it names the member's folder)")
        head, train = data.get("head") or {}, data.get("train") or {}
        if not isinstance(head, dict) or not isinstance(train, dict):
            raise UserError(f"{label} in {where}: 'head' and 'train' must be mappings")
        bad = [f"head.{k}" for k in sorted(set(head) - {f.name for f in fields(HeadConfig)})]
        bad += [f"train.{k}" for k in sorted(set(train) - TRAIN_KEYS)]
        loss = train.get("loss") or {}
        if not isinstance(loss, dict):
            raise UserError(f"{label} in {where}: 'train.loss' must be a mapping")
        bad += [f"train.loss.{k}" for k in sorted(set(loss) - {f.name for f in
                                                                fields(LossWeights)})]
        if bad:
            raise UserError(f"{label} in {where} has unknown key(s) {', '.join(bad)}")
        variants = data.get("variants")
        try:
            return cls(name=name, seed=int(data.get("seed", 0)), head=dict(head),
                       train=dict(train), gps_strength=float(data.get("gps_strength", 1.0)),
                       variants=None if variants is None else [str(v) for v in variants])
        except (TypeError, ValueError):
            raise UserError(f"{label} in {where} has a seed, gps_strength or variants of the "
                            "wrong type") from None


# The member seed is `seed`; a fold's training seed derives from it.
TRAIN_KEYS = {f.name for f in fields(TrainConfig)} - {"seed"}

# DESIGN.md section 6: seeds, no pruning, deeper, wider, more heads, stronger GPS weighting.
DEFAULT_MEMBERS: list[dict[str, Any]] = [
    {"name": "baseline", "seed": 1},
    {"name": "no-pruning", "seed": 2, "head": {"keep": None}},
    {"name": "deep", "seed": 3, "head": {"layers": 6}},
    {"name": "wide", "seed": 4, "head": {"dim": 768}},
    {"name": "heads16", "seed": 5, "head": {"heads": 16}},
    {"name": "gps-strong", "seed": 6, "gps_strength": 2.0},
]


def load_members(spec: str) -> list[MemberSpec]:
    """'default' or a YAML / JSON file: a list of member mappings (or {'members': [...]})."""
    if spec == "default":
        raw, where = DEFAULT_MEMBERS, "the default set"
    else:
        path = Path(spec)
        if not path.is_file():
            raise UserError(f"--members {spec} is neither 'default' nor an existing file")
        where = str(path)
        try:
            if path.suffix.lower() in {".yaml", ".yml"}:
                import yaml

                raw = yaml.safe_load(path.read_text())
            else:
                raw = json.loads(path.read_text())
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"members file {path} is not valid JSON/YAML: {first}") from None
        if isinstance(raw, dict) and set(raw) == {"members"}:
            raw = raw["members"]
        if not isinstance(raw, list) or not raw:
            raise UserError(f"members file {path} must hold a non-empty list of members")
    specs = [MemberSpec.from_dict(item, where) for item in raw]
    names = [s.name for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UserError(f"member name(s) {', '.join(dupes)} occur twice in {where}")
    return specs


def train_config(values: dict[str, Any]) -> TrainConfig:
    values = dict(values)
    loss = values.pop("loss", None) or {}
    try:
        return TrainConfig(**values, loss=LossWeights(**loss))
    except TypeError as exc:
        raise UserError(f"invalid train config: {exc}") from None


# ---- options --------------------------------------------------------------------------------


@dataclass
class EnsembleOptions:
    cache: Path
    out: Path
    members: str = "default"  # 'default' or a YAML / JSON members file
    folds: int = 5  # grouped folds of the members' out-of-fold logits
    seed: int = 42  # of the folds (members have their own seeds)
    head: dict[str, Any] = field(default_factory=dict)  # under every member's head overrides
    train: TrainConfig = field(default_factory=TrainConfig)  # under every member's overrides
    variants: list[str] | None = None  # None: every clean / aug-* / natix-* variant
    target: str | None = None  # cache (DoRA + GPS target) or CSV (GPS only); default test split
    dora_folds: int = 0
    dora_member: str | None = None  # default: the member with the best OOF MCC
    dora: DoraSettings = field(default_factory=DoraSettings)
    combine: str = "auto"  # auto (best cross-fitted OOF MCC), mean, weighted, stacked
    distill: bool = False
    distill_cfg: DistillConfig = field(default_factory=DistillConfig)
    jobs: int = 1  # worker processes for the member folds
    gps_brackets: tuple[tuple[float, float], ...] = DEFAULT_BRACKETS
    gps_beyond: float = 0.3
    gps_k: int = 5
    leak_bound: float = 0.3
    allow_leaky: bool = False
    device: str = "auto"
    progress: bool = True

    def head_options(self, spec: MemberSpec | None = None) -> TrainHeadOptions:
        """The train-head options a member would have had: train-head's helpers take them."""
        head = {**self.head, **(spec.head if spec else {})}
        return TrainHeadOptions(
            cache=self.cache, out=self.out, head=head, train=self.train,
            variants=self.variants, target=self.target, gps_brackets=self.gps_brackets,
            gps_beyond=self.gps_beyond, gps_k=self.gps_k, leak_bound=self.leak_bound,
            allow_leaky=self.allow_leaky, device=self.device, progress=self.progress)


def cache_fingerprint(data: CacheData) -> dict[str, Any]:
    """What identifies a cache beyond its path (a rebuilt cache at the same path differs)."""
    backbone = data.attrs.get("backbone") or {}
    return {"path": str(Path(data.root).resolve()), "created": data.attrs.get("created"),
            "n_rows": int(data.attrs.get("n_rows", len(data))), "feature_dim": data.in_dim,
            "backbone": backbone.get("preset"), "weights_sha256": backbone.get("sha256")}


def digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=lambda a: np.asarray(a).tolist())
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def eval_keys(variants: list[str]) -> list[str]:
    return [f"{v}:{m}" for v in variants for m in METAS]


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


def resolve_target(opts: EnsembleOptions, data: CacheData, test_idx: np.ndarray,
                   eval_variants: list[str], base_variants: list[str]) -> TargetSet | None:
    """The target set, checked before any training: same backbone, labels for DoRA."""
    k = opts.dora_folds or opts.folds
    if opts.target is None:
        if opts.dora_folds and len(test_idx) == 0:
            raise UserError(f"--dora-folds needs a labelled target set: cache {opts.cache} has "
                            "no labelled test rows, so pass --target with a labelled cache")
        if not opts.dora_folds:
            return None
        folds = grouped_folds(data.labels[test_idx], data.groups()[test_idx], k, opts.seed)
        return TargetSet("test split", data, test_idx, False, folds, base_variants,
                         eval_variants)
    path = Path(opts.target)
    if not (path / "zarr.json").is_file():
        if opts.dora_folds:
            raise UserError(f"--target {opts.target} is not a cache; DoRA folds need a labelled "
                            "target cache (a CSV of lat,lon only steers GPS weighting)")
        return None  # a CSV: GPS weighting only (train-head's read_target checks it)
    from roadwork_cache.store import Cache

    available = Cache.open(path).variants()
    t_train = train_variants(available, None)
    t_eval = [v for v in available if v == "clean" or v.startswith("natix-")]
    if "clean" not in available:
        raise UserError(f"target cache {path} has no 'clean' variant")
    target = load_cache_data(path, sorted(set(t_train) | set(t_eval)))
    ours, theirs = cache_fingerprint(data), cache_fingerprint(target)
    if (ours["feature_dim"], ours["backbone"]) != (theirs["feature_dim"], theirs["backbone"]) \
            or target.attrs.get("n_views") != data.attrs.get("n_views"):
        raise UserError(f"target cache {path} was made with backbone {theirs['backbone']} "
                        f"({theirs['feature_dim']}-d, {target.attrs.get('n_views')} views), the "
                        f"members' cache {opts.cache} with {ours['backbone']} "
                        f"({ours['feature_dim']}-d, {data.attrs.get('n_views')} views)")
    rows = np.flatnonzero(target.labels >= 0)
    if len(rows) == 0:
        if opts.dora_folds:
            raise UserError(f"target cache {path} has no labels; DoRA folds need labelled "
                            "target rows (without --dora-folds it only steers GPS weighting)")
        return None
    folds = grouped_folds(target.labels[rows], target.groups()[rows], k, opts.seed)
    return TargetSet(str(path), target, rows, True, folds, t_train, t_eval)


# ---- one member fold: the unit of work (in this process or a worker) -----------------------


@dataclass
class ContextSpec:
    """What a worker process needs to load the same data as the main process."""

    cache: str
    variants: list[str]
    eval_variants: list[str]
    test_rows: np.ndarray
    target_cache: str | None  # a separate target cache whose rows get member logits
    target_variants: list[str]
    target_rows: np.ndarray
    device: str
    threads: int | None = None


@dataclass
class Context:
    spec: ContextSpec
    data: CacheData
    target: CacheData | None
    device: torch.device


@dataclass
class FoldJob:
    member: str
    fold: int  # 0-based
    seed: int
    head: dict[str, Any]
    train: dict[str, Any]
    variants: list[str]
    train_rows: np.ndarray
    val_rows: np.ndarray
    weights: np.ndarray | None
    folder: str


@dataclass
class FoldOutput:
    member: str
    fold: int
    best_epoch: int
    best_val_mcc: float
    epochs_run: int
    seconds: float
    val: dict[str, np.ndarray]  # key -> logits on the held-out rows
    test: dict[str, np.ndarray]  # key -> logits on the test rows
    target: dict[str, np.ndarray]  # key -> logits on a separate target's labelled rows
    full: np.ndarray  # clean, no metadata, every row of the cache (for the deployed output)
    norm: LogitNorm  # every logit above is normalised with it


def logits_by_key(model: RoadworkHead, data: CacheData, config: HeadConfig, rows: np.ndarray,
                  variants: list[str], device: torch.device) -> dict[str, np.ndarray]:
    meta = metadata_batch(config, data).select(torch.from_numpy(rows))
    return {f"{v}:{m}": head_logits(model, data.features[v][rows],
                                    meta if m == "all" else None, device)
            for v in variants for m in METAS}


def run_fold(ctx: Context, job: FoldJob, on_epoch=None) -> FoldOutput:
    """Train one member on one fold, save its weights, return its logits."""
    start = time.perf_counter()
    torch.manual_seed(job.seed)  # init and dropout: the same in a worker as in-process
    config = HeadConfig.from_dict(job.head)
    model = RoadworkHead(config)
    data = ctx.data
    cfg = train_config({**job.train, "seed": job.seed})
    trainer = Trainer(model, cfg, [data.features[v] for v in job.variants], data.labels,
                      metadata_batch(config, data), ctx.device,
                      eval_features=data.features["clean"])
    result = trainer.fit(job.train_rows, job.val_rows, job.weights, on_epoch)
    folder = Path(job.folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
              folder / "model.safetensors")
    spec = ctx.spec
    full = head_logits(model, data.features["clean"], None, ctx.device)
    norm = LogitNorm.fit(full[job.train_rows])

    def normed(logits: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: norm.apply(v) for k, v in logits.items()}

    target = {}
    if ctx.target is not None:
        target = logits_by_key(model, ctx.target, config, spec.target_rows,
                               spec.target_variants, ctx.device)
    return FoldOutput(
        job.member, job.fold, result.best_epoch, result.best_val_mcc, len(result.history),
        time.perf_counter() - start,
        val=normed(logits_by_key(model, data, config, job.val_rows, spec.eval_variants,
                                 ctx.device)),
        test=normed(logits_by_key(model, data, config, spec.test_rows, spec.eval_variants,
                                  ctx.device)),
        target=normed(target), full=norm.apply(full), norm=norm,
    )


_WORKER: Context | None = None


def _init_worker(spec: ContextSpec) -> None:
    global _WORKER
    if spec.threads:
        torch.set_num_threads(spec.threads)
    data = load_cache_data(spec.cache, spec.variants)
    target = load_cache_data(spec.target_cache, spec.target_variants) if spec.target_cache \
        else None
    _WORKER = Context(spec, data, target, torch.device(spec.device))


def _run_in_worker(job: FoldJob) -> FoldOutput:
    assert _WORKER is not None, "worker not initialised"
    return run_fold(_WORKER, job)


def run_folds(ctx: Context, jobs: list[FoldJob], n_workers: int, bar, task) -> list[FoldOutput]:
    """All fold jobs: one after another here, or in spawned worker processes that each load
    the cache once (--jobs); each job seeds itself, so the order does not matter."""
    outputs: list[FoldOutput] = []
    if n_workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            def on_epoch(log, job=job):
                bar.update(task, rate=f"{job.member} fold {job.fold + 1} epoch {log.epoch} "
                                      f"val MCC {log.val_mcc:+.3f}")
            outputs.append(run_fold(ctx, job, on_epoch))
            bar.update(task, advance=1)
        return outputs
    spec = ContextSpec(**{**asdict(ctx.spec),
                          "threads": max(1, (os.cpu_count() or 1) // n_workers)})
    with cf.ProcessPoolExecutor(n_workers, mp_context=mp.get_context("spawn"),
                                initializer=_init_worker, initargs=(spec,)) as pool:
        futures = [pool.submit(_run_in_worker, job) for job in jobs]
        for future in cf.as_completed(futures):
            out = future.result()
            outputs.append(out)
            bar.update(task, advance=1, rate=f"{out.member} fold {out.fold + 1} val MCC "
                                             f"{out.best_val_mcc:+.3f}")
    return outputs


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
        raise UserError(f"member {name} in {out} was trained on cache {old.get('path')} "
                        f"(created {old.get('created')}), not on {fingerprint['path']} "
                        f"(created {fingerprint['created']}); use a new --out")
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
    return MemberResult(name, config, parts["oof"], parts["test"], parts["target"],
                        arrays["full"], info["folders"], info)


def assemble_member(out: Path, name: str, config: HeadConfig, outputs: list[FoldOutput],
                    folds: list[tuple[np.ndarray, np.ndarray]], n_pool: int,
                    info: dict[str, Any]) -> MemberResult:
    outputs = sorted(outputs, key=lambda o: o.fold)
    oof = {key: np.zeros(n_pool) for key in outputs[0].val}
    for o in outputs:
        for key, value in o.val.items():
            oof[key][folds[o.fold][1]] = value
    test = {key: np.mean([o.test[key] for o in outputs], axis=0) for key in outputs[0].test}
    target = {key: np.mean([o.target[key] for o in outputs], axis=0)
              for key in outputs[0].target}
    full = np.mean([o.full for o in outputs], axis=0)
    folders = [f"members/{name}/fold-{o.fold + 1}" for o in outputs]
    info = {**info, "folders": folders,
            "folds": [{"fold": o.fold + 1, "best_epoch": o.best_epoch,
                       "best_val_mcc": o.best_val_mcc, "epochs_run": o.epochs_run,
                       "seconds": o.seconds, "logit_norm": o.norm.to_dict()}
                      for o in outputs]}
    arrays = {f"oof/{k}": v for k, v in oof.items()}
    arrays.update({f"test/{k}": v for k, v in test.items()})
    arrays.update({f"target/{k}": v for k, v in target.items()})
    arrays["full"] = full
    folder = member_dir(out, name)
    save_arrays({k: np.ascontiguousarray(v, dtype=np.float64) for k, v in arrays.items()},
                folder / "logits.safetensors")
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


def score_rows(model: str, set_name: str, scored: Scored, y: np.ndarray,
               variants: list[str]) -> list[dict[str, Any]]:
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
            rows.append({"model": model, "set": set_name, "variant": name, "metadata": meta,
                         **m})
    return rows


def ensemble_table(rows: list[dict[str, Any]], random_init: bool, target_name: str | None
                   ) -> Table:
    title = ("ensemble: MCC / accuracy / reward (metadata 'none' is what a validator sends; "
             "'natix' pools the natix-* levels)")
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
            cells += ([f"{r['mcc']:+.3f}", f"{r['accuracy']:.3f}", f"{r['reward']:.3f}"]
                      if r else ["-", "-", "-"])
        n = index.get((model, set_name, meta, "clean"), {}).get("n", "-")
        table.add_row(model, set_name, meta, *cells, str(n))
    return table


# ---- the stage --------------------------------------------------------------------------------


def run_ensemble(opts: EnsembleOptions) -> dict[str, Any]:
    started = time.perf_counter()
    device = resolve_device(opts.device)
    specs = load_members(opts.members)
    names = [s.name for s in specs]
    if opts.combine != "auto" and opts.combine not in METHODS:
        raise UserError(f"--combine {opts.combine!r} must be auto, {', '.join(METHODS)}")
    if opts.folds < 2 or opts.jobs < 1 or opts.dora_folds < 0 or opts.dora_folds == 1:
        raise UserError("--folds must be at least 2, --dora-folds 0 or at least 2, and --jobs "
                        "at least 1")
    if opts.dora_member is not None and opts.dora_member not in names:
        raise UserError(f"--dora-member {opts.dora_member} is not a member "
                        f"(members: {', '.join(names)})")
    from roadwork_cache.store import Cache

    available = Cache.open(opts.cache).variants()
    base_variants = train_variants(available, opts.variants)
    member_variants = {s.name: s.variants or base_variants for s in specs}
    data = load_cache_data(opts.cache, sorted(
        {"clean", *base_variants, *(v for vs in member_variants.values() for v in vs),
         *(v for v in available if v.startswith("natix-"))}))
    eval_variants = evaluation_variants(data)
    random_init = bool(data.attrs.get("backbone", {}).get("random_init"))
    if random_init:
        console.print("[yellow]warning: this cache was made with random backbone weights; "
                      "scores demonstrate the machinery, not quality")
    fingerprint = cache_fingerprint(data)

    # ---- rows and folds (grouped by video) ----------------------------------------------------
    labelled = np.flatnonzero(data.labels >= 0)
    if len(labelled) == 0:
        raise UserError(f"cache {opts.cache} has no labelled rows to train on")
    split = data.split_names()
    test_idx = labelled[np.isin(split[labelled], ["test"])]
    pool = labelled[~np.isin(split[labelled], ["test"])]
    if len(pool) == 0:
        raise UserError(f"cache {opts.cache} has no labelled rows outside the test split")
    y_pool = data.labels[pool]
    folds = grouped_folds(y_pool, data.groups()[pool], opts.folds, opts.seed)
    target = resolve_target(opts, data, test_idx, eval_variants, base_variants)
    console.print(f"rows: {len(pool)} in {opts.folds} folds grouped by video, {len(test_idx)} "
                  f"test; members: {', '.join(names)}"
                  + (f"; target: {target.name} ({len(target.rows)} labelled rows)"
                     if target else ""))

    audits, leaky = leakage(data, pool, opts.head_options())
    configs: dict[str, HeadConfig] = {}
    for i, spec in enumerate(specs):
        console.quiet = i > 0  # the leaky-field note once, not once per member
        try:
            configs[spec.name] = head_config(data, opts.head_options(spec), leaky)
        finally:
            console.quiet = False
    base_weights, gps_info = sampling_weights(data, pool, test_idx, opts.head_options())

    opts.out.mkdir(parents=True, exist_ok=True)
    folds_signature = digest({"ids": [data.ids[i] for i in pool], "folds": [
        va.tolist() for _, va in folds]})
    target_separate = target is not None and target.separate
    ctx_spec = ContextSpec(
        cache=str(opts.cache), variants=sorted(data.features), eval_variants=eval_variants,
        test_rows=test_idx, target_cache=str(target.data.root) if target_separate else None,
        target_variants=target.eval_variants if target_separate else [],
        target_rows=target.rows if target_separate else np.zeros(0, np.int64),
        device=str(device))
    ctx = Context(ctx_spec, data, target.data if target_separate else None, device)

    # ---- members: K folds each ----------------------------------------------------------------
    results: dict[str, MemberResult] = {}
    jobs: list[FoldJob] = []
    member_info: dict[str, dict[str, Any]] = {}
    base_train = opts.train.to_dict()
    for spec in specs:
        train = {**base_train, **spec.train,
                 "loss": {**base_train["loss"], **(spec.train.get("loss") or {})}}
        train_config(train)  # fail on a bad value now, not in a worker
        weights = None if base_weights is None else base_weights ** spec.gps_strength
        info = {"spec": spec.to_dict(), "head": configs[spec.name].to_dict(), "train": train,
                "variants": member_variants[spec.name], "cache_fingerprint": fingerprint,
                "gps_strength": spec.gps_strength}
        info["signature"] = digest({**info, "folds": folds_signature, "weights": digest(
            weights), "target": ctx_spec.target_cache, "eval": eval_variants})
        member_info[spec.name] = info
        reused = reuse_member(opts.out, spec.name, fingerprint, info["signature"])
        if reused is not None:
            results[spec.name] = reused
            continue
        for k, (tr, va) in enumerate(folds):
            jobs.append(FoldJob(
                spec.name, k, spec.seed * 1000 + k, configs[spec.name].to_dict(), train,
                member_variants[spec.name], pool[tr], pool[va],
                None if weights is None else weights[tr],
                str(member_dir(opts.out, spec.name) / f"fold-{k + 1}")))

    n_dora = opts.dora_folds
    with progress_bar(disable=not opts.progress) as bar:
        task = bar.add_task("ensemble", total=len(jobs) + n_dora + int(opts.distill), rate="")
        t0 = time.perf_counter()
        outputs = run_folds(ctx, jobs, opts.jobs, bar, task)
        member_seconds = time.perf_counter() - t0
        for spec in specs:
            if spec.name in results:
                continue
            mine = [o for o in outputs if o.member == spec.name]
            results[spec.name] = assemble_member(opts.out, spec.name, configs[spec.name], mine,
                                                 folds, len(pool), member_info[spec.name])

        # ---- members' thresholds and the folds' config.json (train-head layout) ------------
        member_cal = {n: calibrate(results[n].oof[CLEAN], y_pool, temperature=False)
                      for n in names}
        for n in names:
            res = results[n]
            for k, rel in enumerate(res.folders):
                norm = LogitNorm.from_dict(res.info["folds"][k]["logit_norm"])
                write_head_config(opts.out / rel, {
                    "kind": "ensemble-member", "member": n, "fold": k + 1,
                    "tool_version": __version__, "cache": fingerprint["path"],
                    "cache_fingerprint": fingerprint, "backbone": data.attrs.get("backbone"),
                    "views": data.attrs.get("views"), "head": res.config.to_dict(),
                    "train": res.info["train"], "variants": res.info["variants"],
                    # the member's OOF-tuned cut, on this fold model's own probability
                    "threshold": norm.raw_threshold(member_cal[n].cut()),
                    "logit_norm": norm.to_dict(), "leaky_fields": leaky})

        # ---- combinations: fitted on OOF logits, scored cross-fitted ------------------------
        keys = list(results[names[0]].oof)
        z_oof = {k: np.stack([results[n].oof[k] for n in names], 1) for k in keys}
        z_test = {k: np.stack([results[n].test[k] for n in names], 1) for k in keys}
        combos = {m: fit_combination(m, z_oof[CLEAN], y_pool, names, opts.seed)
                  for m in METHODS}
        per_fold = {m: fold_combinations(m, z_oof[CLEAN], y_pool, folds, names, opts.seed)
                    for m in METHODS}
        combo_oof = {m: {k: apply_folds(per_fold[m], folds, z_oof[k]) for k in keys}
                     for m in METHODS}
        combo_cal = {m: calibrate(combo_oof[m][CLEAN], y_pool) for m in METHODS}
        oof_mcc = {m: binary_metrics(y_pool, combo_cal[m].prob(combo_oof[m][CLEAN]),
                                     combo_cal[m].threshold)["mcc"] for m in METHODS}
        # Ties go to the simpler method (METHODS is ordered simplest first).
        method = opts.combine if opts.combine != "auto" else max(
            METHODS, key=lambda m: (round(oof_mcc[m], 6), -METHODS.index(m)))
        member_mcc = {n: binary_metrics(y_pool, sigmoid(results[n].oof[CLEAN]),
                                        member_cal[n].threshold)["mcc"] for n in names}
        console.print("OOF MCC (no metadata): " + ", ".join(
            f"{n} {member_mcc[n]:+.3f}" for n in names) + " | " + ", ".join(
            f"{m} {oof_mcc[m]:+.3f}" for m in METHODS) + f" -> {method}")

        # ---- scored entries: members and combinations on oof / test / target ---------------
        entries: dict[str, dict[str, Scored]] = {}
        y_t = target.labels if target else None
        z_target: dict[str, np.ndarray] = {}
        if target is not None:
            z_target = ({k: np.stack([results[n].target[k] for n in names], 1)
                         for k in results[names[0]].target} if target.separate else z_test)

        def target_scored(logits: dict[str, np.ndarray]) -> Scored:
            return Scored(logits, cross_fitted_cuts(logits[CLEAN], y_t, target.folds))

        for i, n in enumerate(names):
            entries[n] = {"oof": Scored(results[n].oof, member_cal[n].cut()),
                          "test": Scored(results[n].test, member_cal[n].cut())}
            if target is not None:
                entries[n]["target"] = target_scored({k: v[:, i] for k, v in z_target.items()})
        for m in METHODS:
            entries[m] = {"oof": Scored(combo_oof[m], combo_cal[m].cut()),
                          "test": Scored({k: combos[m].apply(v) for k, v in z_test.items()},
                                         combo_cal[m].cut())}
            if target is not None:
                entries[m]["target"] = target_scored(
                    {k: combos[m].apply(v) for k, v in z_target.items()})

        # ---- DoRA folds on the target ----------------------------------------------------------
        dora_info: dict[str, Any] | None = None
        dora_full = dora_test_bag = dora_oof = None
        if n_dora:
            base = opts.dora_member or max(names, key=lambda n: member_mcc[n])
            dora_oof, dora_full, dora_test_bag, dora_info = run_dora(
                opts, target, results[base], data, device, bar, task, test_idx)
            dora_info["member"] = base
            col = names.index(base)
            entries["dora"] = {"target": target_scored(dora_oof)}
            swapped = {k: v.copy() for k, v in z_target.items()}
            for k in swapped:
                swapped[k][:, col] = dora_oof[k]
            entries[f"{method}+dora"] = {"target": target_scored(
                {k: combos[method].apply(v) for k, v in swapped.items()})}
            if target.separate:  # what adaptation costs on the source's own test rows
                dora_cut = calibrate(dora_oof[CLEAN], y_t, temperature=False).cut()
                entries["dora"]["test"] = Scored(dora_test_bag, dora_cut)
                swapped_test = {k: v.copy() for k, v in z_test.items()}
                for k in swapped_test:
                    swapped_test[k][:, col] = dora_test_bag[k]
                entries[f"{method}+dora"]["test"] = Scored(
                    {k: combos[method].apply(v) for k, v in swapped_test.items()},
                    combo_cal[method].cut())

        # ---- what is deployed, and its calibration -----------------------------------------
        deployed, reason = "ensemble", f"{method} combination of {len(names)} members"
        calibration = combo_cal[method]
        calibration_rows = ("oof", combo_oof[method][CLEAN], y_pool)
        if n_dora:
            plain = score_rows(method, "target", entries[method]["target"], y_t, ["clean"])
            adapted = score_rows("+dora", "target", entries[f"{method}+dora"]["target"], y_t,
                                 ["clean"])
            plain_mcc, adapted_mcc = plain[0]["mcc"], adapted[0]["mcc"]
            dora_info.update(target_mcc_plain=plain_mcc, target_mcc_adapted=adapted_mcc)
            if adapted_mcc > plain_mcc:
                deployed = "ensemble+dora"
                reason = (f"DoRA folds raise the target MCC from {plain_mcc:+.3f} to "
                          f"{adapted_mcc:+.3f}")
                z_cal = entries[f"{method}+dora"]["target"].logits[CLEAN]
                calibration = calibrate(z_cal, y_t)
                calibration_rows = ("target", z_cal, y_t)
            else:
                reason += (f"; DoRA folds did not help on the target ({adapted_mcc:+.3f} vs "
                           f"{plain_mcc:+.3f}), so they are reported, not deployed")
        console.print(f"deployed: {deployed} ({reason}); temperature "
                      f"{calibration.temperature:.3f}, threshold {calibration.threshold:.3f} "
                      f"folded to 0.5")

        z_full = np.stack([results[n].full for n in names], 1)
        if deployed == "ensemble+dora":
            z_full[:, names.index(dora_info["member"])] = dora_full
        deployed_prob = calibration.folded(combos[method].apply(z_full))

        # ---- distilled student ------------------------------------------------------------
        student_info = None
        if opts.distill:
            student_info = run_student(opts, data, configs[names[0]], base_variants, pool,
                                       folds, combo_cal[method].prob(combo_oof[method][CLEAN]),
                                       device, fingerprint, leaky, entries, test_idx, target,
                                       bar, task)

    # ---- the output folder ----------------------------------------------------------------
    members_manifest = []
    for n in names:
        folders = results[n].folders
        if deployed == "ensemble+dora" and n == dora_info["member"]:
            folders = dora_info["folders"]
        members_manifest.append({"name": n, "folders": folders,
                                 "source": "members" if folders == results[n].folders
                                 else "dora"})
    combination = combos[method]
    meta_learner = {"method": method, "combination": combination.to_dict(),
                    "all_methods": {m: combos[m].to_dict() for m in METHODS},
                    "calibration": calibration.to_dict(),
                    "oof_mcc": {**member_mcc, **oof_mcc}}
    (opts.out / "meta_learner.json").write_text(json.dumps(meta_learner, indent=2))
    manifest = {
        "kind": "ensemble", "format_version": FORMAT_VERSION, "tool_version": __version__,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cache": fingerprint["path"], "cache_fingerprint": fingerprint,
        "backbone": data.attrs.get("backbone"), "views": data.attrs.get("views"),
        "members": members_manifest, "method": method, "combination": combination.to_dict(),
        "calibration": calibration.to_dict(), "temperature": calibration.temperature,
        "threshold": calibration.threshold, "calibration_rows": calibration_rows[0],
        "deployed": deployed, "reason": reason, "folds": opts.folds, "seed": opts.seed,
        "target": target.name if target else None, "dora": dora_info,
        "student": "student" if student_info else None, "leaky_fields": leaky,
        "gps": gps_info, "variants": {n: member_variants[n] for n in names},
    }
    (opts.out / MANIFEST).write_text(json.dumps(manifest, indent=2, default=float))
    (opts.out / "audit.json").write_text(json.dumps([a.to_dict() for a in audits], indent=2))

    # The bundle must reproduce what this stage computed (same weights, same arithmetic).
    bundle = load_ensemble(opts.out, device)
    check_rows = np.arange(min(len(data), 256))
    bundle_diff = float(np.max(np.abs(
        bundle.predict(data.features["clean"][check_rows]) - deployed_prob[check_rows])))
    if bundle_diff > 1e-4:
        raise RuntimeError(f"the saved ensemble does not reproduce the stage's predictions "
                           f"(max difference {bundle_diff:.2e})")

    if student_info is not None:
        student_info.update(speed(bundle, opts.out / "student", data, test_idx, device))

    rows: list[dict[str, Any]] = []
    sets = {"oof": (y_pool, eval_variants), "test": (data.labels[test_idx], eval_variants)}
    if target is not None:
        sets["target"] = (y_t, target.eval_variants)
    for model_name, by_set in entries.items():
        for set_name, scored in by_set.items():
            y, variants = sets[set_name]
            if len(y):
                rows.extend(score_rows(model_name, set_name, scored, y, variants))
    table = ensemble_table(rows, random_init, target.name if target else None)

    write_predictions(opts.out, data, pool, test_idx, names, results, combo_oof, combos,
                      method, z_test, deployed_prob, calibration, calibration_rows)
    if target is not None and target.separate:
        cols = {"id": [target.data.ids[i] for i in target.rows],
                "label": target.labels.tolist()}
        for i, n in enumerate(names):
            cols[n] = z_target[CLEAN][:, i]
        for name, by_set in entries.items():
            if name not in names and "target" in by_set:
                cols[name] = by_set["target"].logits[CLEAN]
        pq.write_table(pa.table(cols), opts.out / "target_predictions.parquet")

    metrics = {
        "deployed": deployed, "reason": reason, "method": method,
        "calibration": calibration.to_dict(), "calibration_rows": calibration_rows[0],
        "oof_mcc": {**member_mcc, **oof_mcc}, "members": {n: results[n].info for n in names},
        "dora": dora_info, "student": student_info, "bundle_max_diff": bundle_diff,
        "seconds": {"members": member_seconds, "total": time.perf_counter() - started},
        "random_init_backbone": random_init, "rows": rows,
    }
    (opts.out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
    from rich.console import Console

    with open(opts.out / "table.txt", "w") as handle:
        Console(file=handle, width=160).print(table)
    return {"table": table, "metrics": metrics, "manifest": manifest, "out": opts.out}


def write_predictions(out: Path, data: CacheData, pool: np.ndarray, test_idx: np.ndarray,
                      names: list[str], results: dict[str, MemberResult],
                      combo_oof: dict, combos: dict[str, Combination], method: str,
                      z_test: dict, deployed_prob: np.ndarray, calibration: Calibration,
                      calibration_rows: tuple) -> None:
    """One row per cache row: member and combination logits (OOF on training rows), the
    deployed folded probability (what the bundle returns) and, on the calibration rows, the
    folded OOF probability the threshold was tuned on."""
    n = len(data)
    set_of = np.full(n, "unlabelled", dtype=object)
    set_of[pool], set_of[test_idx] = "oof", "test"
    cols: dict[str, Any] = {"id": data.ids, "set": set_of.tolist(),
                            "label": [None if v < 0 else int(v) for v in data.labels]}
    for name in names:
        z = results[name].full.copy()
        z[pool] = results[name].oof[CLEAN]
        cols[name] = z
    for m in METHODS:
        z = np.full(n, np.nan)
        z[pool] = combo_oof[m][CLEAN]
        z[test_idx] = combos[m].apply(z_test[CLEAN])
        cols[m] = z
    cols["deployed"] = deployed_prob
    cal = np.full(n, np.nan)
    if calibration_rows[0] == "oof":
        cal[pool] = calibration.folded(calibration_rows[1])
    cols["calibration"] = cal
    pq.write_table(pa.table(cols), out / "predictions.parquet")


def run_dora(opts: EnsembleOptions, target: TargetSet, member: MemberResult, data: CacheData,
             device: torch.device, bar, task, test_idx: np.ndarray):
    """DoRA folds of `member` on the target: fold j adapts the member's fold model j (mod K)
    on the other target folds, stopping early on whole videos held back from them, and scores
    fold j's rows. Returns OOF target logits, the adapted bag's logits on every source row
    (clean) and on the source test rows (a separate target only), and a summary."""
    t = target.data
    config = member.config
    meta = metadata_batch(config, t)
    variants = [t.features[v] for v in target.train_variants]
    y_t = target.labels
    oof = {k: np.zeros(len(target.rows)) for k in eval_keys(target.eval_variants)}
    full, test_bag, folds_info, folders = [], [], [], []
    start = time.perf_counter()
    for j, (rest, held) in enumerate(target.folds):
        tr, stop = grouped_split(y_t[rest], t.groups()[target.rows[rest]],
                                 opts.dora.stop_fraction, opts.seed + j)
        base, _ = load_head(opts.out / member.folders[j % len(member.folders)], device)

        def on_epoch(log, j=j):
            bar.update(task, rate=f"DoRA fold {j + 1} epoch {log.epoch} "
                                  f"val MCC {log.val_mcc:+.3f}")

        res = adapt(base, opts.dora, variants, t.labels, meta, device,
                    target.rows[rest[tr]], target.rows[rest[stop]], opts.seed * 1000 + j,
                    eval_features=t.features["clean"], on_epoch=on_epoch)
        folder = opts.out / "dora" / f"fold-{j + 1}"
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in res.model.state_dict().items()},
                  folder / "model.safetensors")
        stop_z = head_logits(res.model, t.features["clean"][target.rows[rest[stop]]], None,
                             device)
        norm = LogitNorm.fit(head_logits(res.model, t.features["clean"][target.rows[rest]],
                                         None, device))
        write_head_config(folder, {
            "kind": "dora-fold", "member": member.name, "fold": j + 1,
            "base": member.folders[j % len(member.folders)], "tool_version": __version__,
            "cache": member.info["cache_fingerprint"]["path"],
            "cache_fingerprint": member.info["cache_fingerprint"],
            "adapted_on": target.name, "backbone": data.attrs.get("backbone"),
            "views": data.attrs.get("views"), "head": config.to_dict(),
            "dora": opts.dora.to_dict(), "logit_norm": norm.to_dict(),
            # on its own (as a train-head bundle): the cut tuned on its stopping rows
            "threshold": best_threshold(y_t[rest[stop]], sigmoid(stop_z))})
        folders.append(f"dora/fold-{j + 1}")
        held_keys = logits_by_key(res.model, t, config, target.rows[held],
                                  target.eval_variants, device)
        for k, v in held_keys.items():
            oof[k][held] = norm.apply(v)
        full.append(norm.apply(head_logits(res.model, data.features["clean"], None, device)))
        if target.separate:
            test_bag.append({k: norm.apply(v) for k, v in logits_by_key(
                res.model, data, config, test_idx, evaluation_variants(data), device).items()})
        folds_info.append({"fold": j + 1, "best_epoch": res.train.best_epoch,
                           "best_stop_mcc": res.train.best_val_mcc,
                           "epochs_run": len(res.train.history), "merge_error": res.merge_error,
                           "train_rows": len(tr), "stop_rows": len(stop),
                           "held_rows": len(held)})
        bar.update(task, advance=1)
    bag = ({k: np.mean([b[k] for b in test_bag], axis=0) for k in test_bag[0]}
           if test_bag else None)
    info = {"folds": folds_info, "folders": folders, "settings": opts.dora.to_dict(),
            "target": target.name, "seconds": time.perf_counter() - start,
            "max_merge_error": max(f["merge_error"] for f in folds_info)}
    return oof, np.mean(full, axis=0), bag, info


def run_student(opts: EnsembleOptions, data: CacheData, config: HeadConfig,
                variants: list[str], pool: np.ndarray, folds, soft_pool: np.ndarray,
                device: torch.device, fingerprint: dict, leaky: list[str],
                entries: dict[str, dict[str, Scored]], test_idx: np.ndarray,
                target: TargetSet | None, bar, task) -> dict[str, Any]:
    """One head distilled from the ensemble's OOF soft labels; the first fold's rows are held
    back (true labels) for early stopping and its threshold."""
    torch.manual_seed(opts.distill_cfg.seed)
    student = RoadworkHead(config)
    soft = np.zeros(len(data))
    soft[pool] = soft_pool
    stop_pos = folds[0][1]
    train_rows = np.setdiff1d(pool, pool[stop_pos])
    start = time.perf_counter()
    res = distill(student, opts.distill_cfg, [data.features[v] for v in variants], soft,
                  data.labels, metadata_batch(config, data), device, train_rows,
                  pool[stop_pos], eval_features=data.features["clean"],
                  on_epoch=lambda log: bar.update(task, rate=f"student epoch {log.epoch}"))
    seconds = time.perf_counter() - start
    stop_z = head_logits(student, data.features["clean"][pool[stop_pos]], None, device)
    threshold = best_threshold(data.labels[pool[stop_pos]], sigmoid(stop_z))
    folder = opts.out / "student"
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in student.state_dict().items()},
              folder / "model.safetensors")
    write_head_config(folder, {
        "kind": "distilled-student", "tool_version": __version__, "cache": fingerprint["path"],
        "cache_fingerprint": fingerprint, "backbone": data.attrs.get("backbone"),
        "views": data.attrs.get("views"), "head": config.to_dict(),
        "distill": opts.distill_cfg.to_dict(), "variants": variants, "threshold": threshold,
        "leaky_fields": leaky})
    cut = logit(threshold)
    entries["student"] = {"test": Scored(logits_by_key(student, data, config, test_idx,
                                                       evaluation_variants(data), device), cut)}
    if target is not None:
        z = logits_by_key(student, target.data, config, target.rows, target.eval_variants,
                          device)
        entries["student"]["target"] = Scored(z, cross_fitted_cuts(z[CLEAN], target.labels,
                                                                   target.folds))
    bar.update(task, advance=1)
    return {"best_epoch": res.best_epoch, "best_stop_mcc": res.best_val_mcc,
            "threshold": threshold, "train_seconds": seconds, "folder": "student"}


def speed(bundle, student_folder: Path, data: CacheData, test_idx: np.ndarray,
          device: torch.device) -> dict[str, float]:
    """Rows per second of the deployed ensemble (every head of every member) and of the
    student, on the same rows and device (metadata-free, as deployed)."""
    from roadwork_cache.bundle import load_bundle

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
