"""Ensemble members: their specs, and one member trained on one fold as a unit of work.

A member is a name, a seed and overrides of the head and training settings (docs/design.md
§8: seeds, no pruning, deeper, wider, more heads, stronger GPS weighting). The unit of
work is (member, fold): train on the other folds, early-stopping on whole videos held back
from them (never on the fold it predicts), save the weights, return normalised logits on
the held-out fold, the test rows, a separate target and every row. `training.fold_runs`
runs the jobs (here or in worker processes, one at a time or a member's folds batched).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from roadwork_cache.heads import HeadConfig, RoadworkHead
from roadwork_cache.heads.combine import LogitNorm
from roadwork_cache.heads.forward import head_logits, head_outputs
from roadwork_cache.heads.io import save_weights
from roadwork_cache.heads.probe import ProbeConfig
from roadwork_cache.runtime.errors import UserError
from roadwork_cache.training.baselines import ALL_VIEWS, fit_probe
from roadwork_cache.training.dataset import CacheData, metadata_batch
from roadwork_cache.training.loop import TrainConfig, Trainer, stacked_features
from roadwork_cache.training.losses import LossWeights
from roadwork_cache.training.selection import Selection, SelectionData

METAS = ("none", "all")  # all metadata NULL (what a validator sends) / every field the head reads


# ---- member specs -----------------------------------------------------------------------------


@dataclass
class MemberSpec:
    """One ensemble member: overrides of the head and training settings, its own seed."""

    name: str
    seed: int = 0
    kind: str = "head"  # "head" (RoadworkHead), or "probe" (the 12-view linear probe)
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
            raise UserError(
                f"{label} in {where} has unknown key(s) {', '.join(unknown)} "
                f"(known: {', '.join(known)})"
            )
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            raise UserError(
                f"{label} in {where} needs a 'name' of letters, digits, '_', '.' "
                "or '-' (it names the member's folder)"
            )
        head, train = data.get("head") or {}, data.get("train") or {}
        if not isinstance(head, dict) or not isinstance(train, dict):
            raise UserError(f"{label} in {where}: 'head' and 'train' must be mappings")
        bad = [f"head.{k}" for k in sorted(set(head) - {f.name for f in fields(HeadConfig)})]
        bad += [f"train.{k}" for k in sorted(set(train) - TRAIN_KEYS)]
        loss = train.get("loss") or {}
        if not isinstance(loss, dict):
            raise UserError(f"{label} in {where}: 'train.loss' must be a mapping")
        bad += [
            f"train.loss.{k}" for k in sorted(set(loss) - {f.name for f in fields(LossWeights)})
        ]
        if bad:
            raise UserError(f"{label} in {where} has unknown key(s) {', '.join(bad)}")
        variants = data.get("variants")
        kind = data.get("kind", "head")
        if kind not in MEMBER_KINDS:
            raise UserError(f"{label} in {where} has kind {kind!r}; use head or probe")
        try:
            return cls(
                name=name,
                seed=int(data.get("seed", 0)),
                kind=kind,
                head=dict(head),
                train=dict(train),
                gps_strength=float(data.get("gps_strength", 1.0)),
                variants=None if variants is None else [str(v) for v in variants],
            )
        except (TypeError, ValueError):
            raise UserError(
                f"{label} in {where} has a seed, gps_strength or variants of the wrong type"
            ) from None


# The member seed is `seed`; a fold's training seed derives from it.
TRAIN_KEYS = {f.name for f in fields(TrainConfig)} - {"seed"}

# docs/design.md §8: seeds, no pruning, deeper, wider, more heads, stronger GPS weighting.
DEFAULT_MEMBERS: list[dict[str, Any]] = [
    {"name": "baseline", "seed": 1},
    {"name": "no-pruning", "seed": 2, "head": {"keep": None}},
    {"name": "deep", "seed": 3, "head": {"layers": 6}},
    {"name": "wide", "seed": 4, "head": {"dim": 768}},
    {"name": "heads16", "seed": 5, "head": {"heads": 16}},
    {"name": "gps-strong", "seed": 6, "gps_strength": 2.0},
    # DINOv3's own evaluation: if the heads cannot beat it, the stack will say so.
    {"name": "probe", "seed": 7, "kind": "probe"},
]
MEMBER_KINDS = ("head", "probe")


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


def eval_keys(variants: list[str]) -> list[str]:
    return [f"{v}:{m}" for v in variants for m in METAS]


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
    selection: Selection  # what early stopping scores (natix levels, no metadata, 50/50)
    threads: int | None = None


@dataclass
class Context:
    spec: ContextSpec
    data: CacheData
    target: CacheData | None
    device: torch.device
    _stacked: dict[tuple[str, ...], torch.Tensor] = field(default_factory=dict, repr=False)

    def train_features(self, variants: list[str]) -> torch.Tensor:
        """The variants' features stacked for a trainer, once per process for every fold
        model that trains on them (`stacked_features`)."""
        key = tuple(variants)
        if key not in self._stacked:
            self._stacked[key] = stacked_features([self.data.features[v] for v in key], self.device)
        return self._stacked[key]


@dataclass
class FoldJob:
    member: str
    fold: int  # 0-based
    seed: int
    kind: str  # head or probe
    head: dict[str, Any]
    train: dict[str, Any]
    variants: list[str]
    train_rows: np.ndarray  # the fold's training rows minus `stop_rows`
    stop_rows: np.ndarray  # whole videos of the fold's training rows: early stopping only
    val_rows: np.ndarray  # the held-out fold: its logits are strictly out-of-fold
    weights: np.ndarray | None  # GPS sampling weights of `train_rows`
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


def logits_by_key(
    model: RoadworkHead,
    data: CacheData,
    config: HeadConfig,
    rows: np.ndarray,
    variants: list[str],
    device: torch.device,
) -> dict[str, np.ndarray]:
    if isinstance(config, ProbeConfig):  # a probe reads no metadata
        meta = None
    else:
        meta = metadata_batch(config, data).select(torch.from_numpy(rows))
    return {
        f"{v}:{m}": head_logits(model, data.features[v][rows], meta if m == "all" else None, device)
        for v in variants
        for m in METAS
    }


def run_fold(ctx: Context, job: FoldJob, on_epoch=None) -> FoldOutput:
    """Train one member on one fold, save its weights, return its logits."""
    start = time.perf_counter()
    if job.kind == "probe":
        return run_probe_fold(ctx, job, start)
    torch.manual_seed(job.seed)  # init and dropout: the same in a worker as in-process
    config = HeadConfig.from_dict(job.head)
    model = RoadworkHead(config)
    data = ctx.data
    cfg = TrainConfig.from_dict({**job.train, "seed": job.seed})
    trainer = Trainer(
        model,
        cfg,
        ctx.train_features(job.variants),
        data.labels,
        metadata_batch(config, data),
        ctx.device,
        selection=SelectionData.of(ctx.spec.selection, data.features),
    )
    # Early stopping never sees the held-out fold, so its logits are strictly out-of-fold.
    result = trainer.fit(job.train_rows, job.stop_rows, job.weights, on_epoch)
    return fold_output(
        ctx, job, model, config, result.best_epoch, result.best_val_mcc, len(result.history), start
    )


def run_probe_fold(ctx: Context, job: FoldJob, start: float) -> FoldOutput:
    """A probe member on one fold: a logistic regression on the fold's training rows (clean
    views); its stopping rows, which it never fits, give the MCC it reports, as a head's."""
    data = ctx.data
    rows = job.train_rows
    probe = fit_probe(data.features["clean"][rows], data.labels[rows], ALL_VIEWS, job.seed)
    setting = ctx.spec.selection
    y = data.labels[job.stop_rows]
    probs = [
        head_outputs(probe, data.features[v][job.stop_rows], None, ctx.device)[0]
        for v in setting.variants
    ]
    return fold_output(
        ctx, job, probe, probe.config, 0, setting.at_best_cut(y, probs)[0]["mcc"], 0, start
    )


def fold_output(
    ctx: Context,
    job: FoldJob,
    model,
    config,
    best_epoch: int,
    best_val_mcc: float,
    epochs_run: int,
    start: float,
) -> FoldOutput:
    """Save a trained fold model, return its normalised logits on every set."""
    data, spec = ctx.data, ctx.spec
    save_weights(model, Path(job.folder))
    full = head_logits(model, data.features["clean"], None, ctx.device)
    norm = LogitNorm.fit(full[job.train_rows])

    def normed(logits: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: norm.apply(v) for k, v in logits.items()}

    target = {}
    if ctx.target is not None:
        target = logits_by_key(
            model, ctx.target, config, spec.target_rows, spec.target_variants, ctx.device
        )
    return FoldOutput(
        job.member,
        job.fold,
        best_epoch,
        best_val_mcc,
        epochs_run,
        time.perf_counter() - start,
        val=normed(
            logits_by_key(model, data, config, job.val_rows, spec.eval_variants, ctx.device)
        ),
        test=normed(
            logits_by_key(model, data, config, spec.test_rows, spec.eval_variants, ctx.device)
        ),
        target=normed(target),
        full=norm.apply(full),
        norm=norm,
    )


def digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=lambda a: np.asarray(a).tolist())
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class MemberResult:
    name: str
    config: HeadConfig | ProbeConfig
    oof: dict[str, np.ndarray]  # key -> OOF logits over the pool rows
    test: dict[str, np.ndarray]  # key -> mean fold-model logits on the test rows
    target: dict[str, np.ndarray]  # key -> the same on a separate target's labelled rows
    full: np.ndarray  # clean:none mean fold-model logits on every cache row
    folders: list[str]  # fold folders relative to the output folder
    info: dict[str, Any]  # member.json


def assemble_member(
    name: str,
    config: HeadConfig | ProbeConfig,
    outputs: list[FoldOutput],
    folds: list[tuple[np.ndarray, np.ndarray]],
    n_pool: int,
    folders: list[str],
    info: dict[str, Any],
) -> MemberResult:
    """A member from its fold outputs: OOF logits where each row comes from the fold model
    that did not train on it; test, target and full logits as the mean over fold models."""
    outputs = sorted(outputs, key=lambda o: o.fold)
    oof = {key: np.zeros(n_pool) for key in outputs[0].val}
    for o in outputs:
        for key, value in o.val.items():
            oof[key][folds[o.fold][1]] = value
    test = {key: np.mean([o.test[key] for o in outputs], axis=0) for key in outputs[0].test}
    target = {key: np.mean([o.target[key] for o in outputs], axis=0) for key in outputs[0].target}
    full = np.mean([o.full for o in outputs], axis=0)
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
    return MemberResult(name, config, oof, test, target, full, folders, info)


CLEAN = "clean:none"  # the clean, metadata-free key: soft labels and the predictions file
