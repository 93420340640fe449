"""One trained head on disk: `config.json` (a `HeadRecord`) beside `model.safetensors`.

Every model folder is built from head folders: a `train-head` run is one (plus its metrics),
an ensemble holds one per member fold, DoRA fold and student. This module is the only
writer and reader of `config.json`; the weights file belongs to `heads.io`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from roadwork_cache.heads import HeadConfig, RoadworkHead
from roadwork_cache.heads.io import WEIGHTS_FILE, save_weights
from roadwork_cache.heads.probe import LinearProbe, ProbeConfig
from roadwork_cache.runtime.errors import UserError
from roadwork_cache.runtime.files import read_json, write_json
from roadwork_cache.runtime.version import __version__

CONFIG_FILE = "config.json"
FORMAT = "roadwork-head"
FORMAT_VERSION = 2  # version 1 had no format fields
KINDS = ("train-head", "ensemble-member", "dora-fold", "distilled-student")
ARCHITECTURES = ("head", "probe")


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


@dataclass
class HeadRecord:
    """What a head folder's `config.json` says: the head, the features it reads, the cut."""

    kind: str  # one of KINDS
    head: dict[str, Any]  # HeadConfig.to_dict(), or ProbeConfig.to_dict() for a probe
    backbone: dict[str, Any]  # the cache's backbone record: which features the head reads
    views: dict[str, Any]  # the cache's view layout
    cache: str  # the cache folder it was trained on
    threshold: float = 0.5  # folded into the output, so that 0.5 is the cut
    cache_fingerprint: dict[str, Any] | None = None
    logit_norm: dict[str, float] | None = None  # ensemble heads: shift and scale of the logit
    variants: list[str] = field(default_factory=list)  # cached variants it trained on
    leaky_fields: list[str] = field(default_factory=list)
    allow_leaky_metadata: bool = False
    selection: dict[str, Any] | None = None  # how validation rows chose the epoch and the cut
    seen: dict[str, Any] | None = None  # labelled rows it was trained or adapted on
    gps: dict[str, Any] | None = None  # train-head: GPS weighting
    train: dict[str, Any] | None = None  # TrainConfig.to_dict()
    member: str | None = None  # ensemble heads: the member it belongs to
    fold: int | None = None
    base: str | None = None  # dora-fold: the member fold it adapted
    adapted_on: str | None = None
    dora: dict[str, Any] | None = None
    distill: dict[str, Any] | None = None
    architecture: str = "head"  # "head" (RoadworkHead) or "probe" (LinearProbe)
    tool_version: str = __version__
    created: str = field(default_factory=now)
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UserError(f"unknown head folder kind {self.kind!r} (known: {', '.join(KINDS)})")
        if self.architecture not in ARCHITECTURES:
            raise UserError(
                f"unknown head architecture {self.architecture!r} (known: "
                f"{', '.join(ARCHITECTURES)})"
            )

    @property
    def config(self) -> HeadConfig | ProbeConfig:
        if self.architecture == "probe":
            return ProbeConfig.from_dict(self.head)
        return HeadConfig.from_dict(self.head)

    def build(self) -> RoadworkHead | LinearProbe:
        """The untrained module this record describes."""
        config = self.config
        return LinearProbe(config) if isinstance(config, ProbeConfig) else RoadworkHead(config)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: Any, where: str) -> HeadRecord:
        if not isinstance(data, dict):
            raise UserError(f"{where} is not a head config (a JSON object)")
        check_version(data, FORMAT, FORMAT_VERSION, where)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"{where} has unknown key(s) {', '.join(unknown)}")
        missing = [k for k in ("kind", "head", "backbone", "views", "cache") if k not in data]
        if missing:
            raise UserError(f"{where} has no {', '.join(missing)}")
        return cls(**data)


def check_version(data: dict[str, Any], name: str, version: int, where: str) -> None:
    """One sentence naming both versions when a file is not of the version this tool reads."""
    have = data.get("format_version") if data.get("format") == name else None
    if have != version:
        found = f"format version {have}" if have is not None else "no format version"
        raise UserError(
            f"{where} has {found} of {name}; this tool reads version {version}; "
            "re-create it with this version of roadwork-cache"
        )


def write_head(folder: Path, model: torch.nn.Module | None, record: HeadRecord) -> Path:
    """config.json (and the weights, unless `model` is None: they are already there)."""
    folder.mkdir(parents=True, exist_ok=True)
    if model is not None:
        save_weights(model, folder)
    return write_json(folder / CONFIG_FILE, record.to_dict())


def read_record(folder: Path) -> HeadRecord:
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise UserError(f"model folder {folder} is missing {CONFIG_FILE}")
    return HeadRecord.from_dict(read_json(path), str(path))


def load_head(
    folder: Path, device: torch.device | str = "cpu"
) -> tuple[RoadworkHead | LinearProbe, HeadRecord]:
    """A head and its record from a head folder; one sentence when anything does not fit."""
    record = read_record(folder)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise UserError(f"model folder {folder} is missing {WEIGHTS_FILE}")
    model = record.build()
    try:
        model.load_state_dict(load_file(weights))
    except SafetensorError as exc:
        raise UserError(f"{weights} is not a readable safetensors file: {exc}") from None
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise UserError(f"weights in {folder} do not match its {CONFIG_FILE}: {first}") from None
    return model.to(device).eval(), record


def seen_record(
    cache: str, splits: list[str], target: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Which labelled rows a model was fitted, stopped, calibrated or adapted on: the split
    names of its own cache, and a separate target cache's rows."""
    out: dict[str, Any] = {"cache": cache, "splits": sorted(set(splits))}
    if target:
        out["target"] = target
    return out


def seen_splits(seen: dict[str, Any] | None, cache: str | Path) -> set[str]:
    """The splits of `cache` whose rows a model saw: as its own cache, or as the separate
    target it was adapted to (empty for any other cache)."""
    if not seen:
        return set()

    def same(path: str) -> bool:
        return Path(path).resolve() == Path(cache).resolve()

    out = set(seen.get("splits", [])) if same(seen.get("cache", "")) else set()
    target = seen.get("target") or {}
    if target and same(target.get("cache", "")):
        out |= set(target.get("splits", []))
    return out
