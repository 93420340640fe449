"""A `roadwork ensemble` folder: the only writer and reader of its layout.

    manifest.json                 an `EnsembleManifest`: members, combination, calibration
    meta_learner.json             every combination method fitted, and their OOF MCCs
    members/<name>/member.json    a member's settings, signature and fold summaries
    members/<name>/logits.safetensors   its OOF / test / target logits (for reuse)
    members/<name>/fold-<k>/      a head folder (see `head_folder`)
    dora/fold-<j>/                a head folder: a merged DoRA-adapted fold model
    student/                      a head folder: the distilled student
    metrics.json, predictions.parquet, target_predictions.parquet, audit.json, table.txt

A member is a bag of head folders; its logit is the mean of theirs, each first normalised
with its record's `logit_norm`. The members' logits are combined linearly, temperature-scaled
and folded so that 0.5 is the cut (`heads.combine`).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file as load_arrays
from safetensors.numpy import save_file as save_arrays

from roadwork_cache.inference.foods import STATS_FILE
from roadwork_cache.inference.head_folder import CONFIG_FILE, check_version
from roadwork_cache.runtime.errors import UserError
from roadwork_cache.runtime.files import check_folder_path, read_json, write_json
from roadwork_cache.runtime.version import __version__

MANIFEST_FILE = "manifest.json"
META_LEARNER_FILE = "meta_learner.json"
METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.parquet"
TARGET_PREDICTIONS_FILE = "target_predictions.parquet"
AUDIT_FILE = "audit.json"
TABLE_FILE = "table.txt"
MEMBER_FILE = "member.json"
LOGITS_FILE = "logits.safetensors"
FORMAT = "roadwork-ensemble"
FORMAT_VERSION = 2  # version 1 had no format name
LOGIT_PARTS = ("oof", "test", "target")


def member_dir(out: Path, name: str) -> Path:
    return out / "members" / name


def fold_folder(name: str, fold: int) -> str:
    """A member's fold model, relative to the ensemble folder (fold counts from 1)."""
    return f"members/{name}/fold-{fold}"


def dora_folder(fold: int) -> str:
    return f"dora/fold-{fold}"


STUDENT_FOLDER = "student"


@dataclass
class MemberEntry:
    """One member of the deployed ensemble: the head folders whose logits it averages."""

    name: str
    folders: list[str]
    source: str = "members"  # or "dora": the adapted fold models replace the member's own


@dataclass
class EnsembleManifest:
    members: list[MemberEntry]
    method: str  # mean, weighted or stacked
    combination: dict[str, Any]  # heads.combine.Combination.to_dict()
    calibration: dict[str, float]  # heads.combine.Calibration.to_dict()
    cache: str
    backbone: dict[str, Any]
    views: dict[str, Any]
    cache_fingerprint: dict[str, Any] = field(default_factory=dict)
    temperature: float = 1.0
    threshold: float = 0.5  # folded in: 0.5 is the cut
    calibration_rows: str = "oof"  # where the temperature and threshold were fitted
    deployed: str = "ensemble"  # or "ensemble+dora"
    reason: str = ""
    selection: dict[str, Any] | None = None
    seen: dict[str, Any] | None = None  # labelled rows the deployed models were fitted on
    folds: int = 0
    seed: int = 0
    target: str | None = None
    dora: dict[str, Any] | None = None
    student: str | None = None
    leaky_fields: list[str] = field(default_factory=list)
    gps: dict[str, Any] = field(default_factory=dict)
    variants: dict[str, list[str]] = field(default_factory=dict)
    kind: str = "ensemble"
    tool_version: str = __version__
    created: str = field(
        default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    )
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: Any, where: str) -> EnsembleManifest:
        if not isinstance(data, dict) or data.get("kind") != "ensemble":
            raise UserError(f"{where} is not an ensemble manifest")
        check_version(data, FORMAT, FORMAT_VERSION, where)
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise UserError(f"{where} has unknown key(s) {', '.join(unknown)}")
        for key in ("members", "combination", "calibration", "method"):
            if key not in data:
                raise UserError(f"{where} has no '{key}'")
        try:
            members = [MemberEntry(**m) for m in data["members"]]
        except TypeError:
            raise UserError(f"{where}: every member needs a name and its folders") from None
        return cls(**{**data, "members": members})


def write_manifest(out: Path, manifest: EnsembleManifest, meta_learner: dict[str, Any]) -> None:
    write_json(out / META_LEARNER_FILE, meta_learner)
    write_json(out / MANIFEST_FILE, manifest.to_dict())


def read_manifest(out: Path) -> EnsembleManifest:
    return EnsembleManifest.from_dict(read_json(out / MANIFEST_FILE), str(out / MANIFEST_FILE))


def is_ensemble(folder: Path) -> bool:
    return (folder / MANIFEST_FILE).is_file()


def is_ensemble_folder(folder: Path) -> bool:
    """A finished ensemble, or one an interrupted run left (members, no manifest yet)."""
    return is_ensemble(folder) or (folder / "members").is_dir()


# What one run writes at the top of the folder; members/ stay, for reuse.
RUN_OUTPUTS = (
    MANIFEST_FILE,
    META_LEARNER_FILE,
    METRICS_FILE,
    PREDICTIONS_FILE,
    TARGET_PREDICTIONS_FILE,
    AUDIT_FILE,
    TABLE_FILE,
    STATS_FILE,  # `roadwork tta`'s statistics of the deployed ensemble
)


def claim_ensemble_folder(root: Path, overwrite: bool) -> None:
    """Refuse, before any work, an --out that would lose something. An unfinished ensemble
    (members, no manifest: a run was stopped) is resumed, its finished members reused. A
    finished ensemble is replaced only with --overwrite (it may be deployed; its members are
    still reused where cache and settings match). A train-head run is never mixed with an
    ensemble; other files need --overwrite."""
    check_folder_path(root, "--out", "an ensemble folder")
    if not root.is_dir() or not any(root.iterdir()):
        return
    if (root / CONFIG_FILE).is_file() and not is_ensemble_folder(root):
        raise UserError(f"--out {root} holds a train-head run; choose another --out")
    if is_ensemble(root) and not overwrite:
        raise UserError(
            f"--out {root} holds a finished ensemble; pass --overwrite to replace it (members "
            "trained on the same cache with the same settings are reused), or choose another --out"
        )
    if not is_ensemble_folder(root) and not overwrite:
        raise UserError(
            f"--out {root} holds files that are not an ensemble; pass --overwrite to write into "
            "it anyway, or choose another --out"
        )


def start_ensemble_folder(root: Path) -> Path:
    """The folder, made, without an earlier run's top-level outputs: until this run writes
    its manifest the folder is an unfinished ensemble, never a mix of two runs."""
    root.mkdir(parents=True, exist_ok=True)
    for name in RUN_OUTPUTS:
        (root / name).unlink(missing_ok=True)
    return root


@dataclass
class MemberFile:
    """A trained member as a later run into the same folder reuses it."""

    info: dict[str, Any]  # member.json: spec, head, train, signature, folders, fold summaries
    logits: dict[str, dict[str, np.ndarray]]  # part (oof, test, target) -> key -> logits
    full: np.ndarray  # the member's logit on every cache row


def write_member(out: Path, name: str, member: MemberFile) -> None:
    arrays = {
        f"{part}/{key}": value
        for part, by_key in member.logits.items()
        for key, value in by_key.items()
    }
    arrays["full"] = member.full
    folder = member_dir(out, name)
    folder.mkdir(parents=True, exist_ok=True)
    save_arrays(
        {k: np.ascontiguousarray(v, dtype=np.float64) for k, v in arrays.items()},
        str(folder / LOGITS_FILE),
    )
    write_json(folder / MEMBER_FILE, member.info)


def read_member(out: Path, name: str) -> MemberFile | None:
    """The member an earlier run finished into this folder, or None."""
    folder = member_dir(out, name)
    if not (folder / MEMBER_FILE).is_file() or not (folder / LOGITS_FILE).is_file():
        return None
    info = read_json(folder / MEMBER_FILE)
    arrays = load_arrays(str(folder / LOGITS_FILE))
    logits: dict[str, dict[str, np.ndarray]] = {part: {} for part in LOGIT_PARTS}
    for key, value in arrays.items():
        part, _, rest = key.partition("/")
        if part in logits:
            logits[part][rest] = value
    return MemberFile(info, logits, arrays["full"])
