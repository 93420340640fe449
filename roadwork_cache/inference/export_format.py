"""An exported model folder (`roadwork export`): the only writer and reader of its config.

    config.json            an `ExportConfig`: the backbone's timm architecture and pooling,
                           every head's config, how their outputs combine (member
                           normalisation, combination, calibration, the folded threshold),
                           the TTA variants and FOODS settings, the view layout, and the
                           sha256 of every file the detector runs
    backbone.safetensors   the backbone in timm's layout (converted from the format given)
    heads.safetensors      `heads.<i>.<name>`: every head's weights; `foods.mean` and
                           `foods.precision`: the FOODS statistics, when TTA combines by FOODS
    detector.py            `RoadworkDetector`, standing alone (inference/amalgamate)
    model_card.json        the subnet's fields (model_name, description, version,
                           submitted_by, submission_time)
    README.md              the model card

The exported detector.py reads the config through this very module (it is amalgamated into
it), so this module imports only the standard library and `UserError`.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from roadwork_cache.runtime.errors import UserError
from roadwork_cache.runtime.files import files_sha256, read_json

EXPORT_FORMAT = "roadwork-export"
EXPORT_VERSION = 1
EXPORT_CONFIG = "config.json"
BACKBONE_WEIGHTS = "backbone.safetensors"
HEAD_WEIGHTS = "heads.safetensors"
DETECTOR_SOURCE = "detector.py"
MODEL_CARD_JSON = "model_card.json"
MODEL_CARD = "README.md"
EXPORT_KINDS = ("train-head", "ensemble")
COMBINE_METHODS = ("foods", "mean")
CARD_FIELDS = ("model_name", "description", "version", "submitted_by", "submission_time")
_TTA_NAME = re.compile(r"^(clean|tta-\d+)$")


def sha256_of(path: Path) -> str:
    return files_sha256([path])


@dataclass
class ExportConfig:
    """What `config.json` of an exported folder says; every field is JSON."""

    kind: str  # "train-head" (one head) or "ensemble"
    # timm: the `timm.create_model` arguments; pool, view_size, feature_dim, preset, format
    # (of the weights it was converted from), normalisation (the pixel statistics: lvd or
    # sat; absent in earlier exports, which all used lvd), random_init, state_sha256,
    # weights_sha256
    backbone: dict[str, Any]
    views: dict[str, Any]  # layout, n_views, view_size, draft_side
    heads: list[dict[str, Any]]  # per head: config (HeadConfig), logit_norm (ensembles), source
    threshold: float  # folded in: 0.5 is the cut of the returned probability
    # ensembles: members [{name, heads: [index, ...]}], combination, calibration
    members: list[dict[str, Any]] | None = None
    combination: dict[str, Any] | None = None
    calibration: dict[str, float] | None = None
    # enabled (the detector's default), variants (clean first), combine (foods / mean),
    # foods (keep, distance, temperature, n_fit, shrinkage) when combine is foods
    tta: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # file name -> sha256
    source: dict[str, Any] = field(default_factory=dict)  # model folder, tool version, time
    format: str = EXPORT_FORMAT
    format_version: int = EXPORT_VERSION

    @property
    def normalisation(self) -> str:
        """The backbone's pixel statistics (backbone/presets NORMALISATIONS); an export
        written before it was recorded used ImageNet's, lvd."""
        return str(self.backbone.get("normalisation", "lvd"))

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: Any, where: str) -> ExportConfig:
        if not isinstance(data, dict) or data.get("format") != EXPORT_FORMAT:
            raise UserError(f"{where} is not the config of a model exported by roadwork-cache")
        version = data.get("format_version")
        if version != EXPORT_VERSION:
            raise UserError(
                f"{where} has {EXPORT_FORMAT} version {version}, but this detector reads "
                f"version {EXPORT_VERSION}; export the model again with this version"
            )
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise UserError(f"{where} has unknown key(s) {', '.join(unknown)}")
        missing = [k for k in ("kind", "backbone", "views", "heads", "threshold") if k not in data]
        if missing:
            raise UserError(f"{where} has no {', '.join(missing)}")
        config = cls(**data)
        config.check(where)
        return config

    def check(self, where: str) -> None:
        """One sentence for the first thing that does not fit together."""
        problem = self._problem()
        if problem:
            raise UserError(f"{where} is inconsistent: {problem}")

    def _problem(self) -> str | None:
        if self.kind not in EXPORT_KINDS:
            return f"kind {self.kind!r} is not one of {', '.join(EXPORT_KINDS)}"
        if not isinstance(self.backbone.get("timm"), dict):
            return "the backbone has no timm architecture"
        for key in ("view_size", "pool", "feature_dim"):
            if key not in self.backbone:
                return f"the backbone has no {key}"
        if not self.heads or not all(isinstance(h.get("config"), dict) for h in self.heads):
            return "every head needs its config"
        if not 0.0 < float(self.threshold) < 1.0:
            return f"the threshold {self.threshold} does not lie strictly between 0 and 1"
        if self.kind == "ensemble":
            if not self.members or self.combination is None or self.calibration is None:
                return "an ensemble needs members, a combination and a calibration"
            used = [i for m in self.members for i in m.get("heads", [])]
            if sorted(used) != list(range(len(self.heads))) or not all(
                m.get("heads") for m in self.members
            ):
                return "the members must use every head exactly once"
        variants = self.tta.get("variants") or []
        if not variants or variants[0] != "clean":
            return "the TTA variants must start with clean"
        bad = [v for v in variants if not _TTA_NAME.match(str(v))]
        if bad:
            return f"TTA variant {bad[0]!r} is not clean or tta-K"
        if self.tta.get("combine") not in COMBINE_METHODS:
            return f"TTA combine {self.tta.get('combine')!r} is not foods or mean"
        if self.tta["combine"] == "foods" and not isinstance(self.tta.get("foods"), dict):
            return "TTA combines by FOODS but its settings are missing"
        return None


def read_export_config(folder: Path) -> ExportConfig:
    """The config of an exported folder, or one sentence saying why it is not one."""
    folder = Path(folder)
    path = folder / EXPORT_CONFIG
    if not folder.is_dir():
        raise UserError(f"exported model {folder} is not a folder")
    if not path.is_file():
        raise UserError(f"{folder} is not an exported model folder: it has no {EXPORT_CONFIG}")
    return ExportConfig.from_dict(read_json(path), str(path))


def verify_files(folder: Path, config: ExportConfig, names: tuple[str, ...] | None = None) -> None:
    """Every file the config lists (or `names` of them) is there, with its recorded sha256."""
    folder = Path(folder)
    for name in names or tuple(config.files):
        path = folder / name
        if name not in config.files:
            raise UserError(f"{folder / EXPORT_CONFIG} records no sha256 for {name}")
        if not path.is_file():
            raise UserError(f"exported model {folder} is missing {name}")
        if sha256_of(path) != config.files[name]:
            raise UserError(
                f"{path} is corrupted or was changed after export: its sha256 differs from "
                f"the one {EXPORT_CONFIG} records"
            )
