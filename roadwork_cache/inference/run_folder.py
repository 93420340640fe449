"""A `roadwork train-head` run folder: the only writer and reader of its files.

config.json           the head folder's record (kind train-head), see `head_folder`
model.safetensors     the head's weights
metrics.json          the tables' rows, the training history, the selection setting
predictions.parquet   one row per cache row: id, set, label and one probability column
                      per (model, variant, metadata), named by `prob_column`
audit.json            the metadata leakage audit
curve.png             learning curves
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from roadwork_cache.heads.io import WEIGHTS_FILE
from roadwork_cache.inference.ensemble_folder import is_ensemble_folder
from roadwork_cache.inference.foods import STATS_FILE
from roadwork_cache.inference.head_folder import CONFIG_FILE, HeadRecord, read_record, write_head
from roadwork_cache.runtime.errors import UserError
from roadwork_cache.runtime.files import check_folder_path, read_json, write_json

METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.parquet"
AUDIT_FILE = "audit.json"
CURVE_FILE = "curve.png"
REPORT_FILE = "report.html"
# Every file a run folder may hold (`roadwork tta` adds FOODS statistics, `report` a page).
RUN_FILES = (
    CONFIG_FILE,
    WEIGHTS_FILE,
    METRICS_FILE,
    PREDICTIONS_FILE,
    AUDIT_FILE,
    CURVE_FILE,
    REPORT_FILE,
    STATS_FILE,
)


def prob_column(model: str, variant: str, metadata: str) -> str:
    """The predictions column of one (model, cached variant, metadata setting)."""
    return f"{model}_{variant}_{metadata}"


@dataclass
class RunFolder:
    """A finished train-head run, as `report`, `tta` and `predict` read it."""

    root: Path
    record: HeadRecord
    metrics: dict[str, Any]
    audit: list[dict[str, Any]]
    predictions: dict[str, list[Any]]

    @property
    def config(self) -> dict[str, Any]:
        """The record as JSON (what config.json holds)."""
        return self.record.to_dict()

    @property
    def threshold(self) -> float:
        return float(self.record.threshold)

    @property
    def random_init(self) -> bool:
        return bool(
            self.record.backbone.get("random_init") or self.metrics.get("random_init_backbone")
        )

    def rows_of_set(self, set_name: str) -> list[int]:
        """Positions in the predictions of the labelled rows of one set (train, val, test)."""
        preds = self.predictions
        return [
            i
            for i, (s, y) in enumerate(zip(preds["set"], preds["label"], strict=True))
            if s == set_name and y is not None
        ]


def claim_run_folder(root: Path, overwrite: bool) -> None:
    """Refuse, before any work, an --out that would lose something: a file, a folder under a
    file, an ensemble (never mixed with a run, even with --overwrite), or a non-empty folder
    without --overwrite. Creates nothing: a refused run leaves no folder behind."""
    check_folder_path(root, "--out", "a run folder")
    if not root.is_dir() or not any(root.iterdir()):
        return
    if is_ensemble_folder(root):
        raise UserError(
            f"--out {root} holds an ensemble; choose another --out for a train-head run"
        )
    if overwrite:
        return
    what = "a train-head run" if (root / CONFIG_FILE).is_file() else "files"
    raise UserError(
        f"--out {root} already holds {what}; pass --overwrite to replace it, or choose "
        "another --out"
    )


def start_run_folder(root: Path) -> Path:
    """The run folder, made, without an earlier run's files (a stale report or FOODS
    statistics would describe another model); other files are left alone."""
    root.mkdir(parents=True, exist_ok=True)
    for name in RUN_FILES:
        (root / name).unlink(missing_ok=True)
    return root


def write_run(
    root: Path,
    model: Any,
    record: HeadRecord,
    metrics: dict[str, Any],
    audit: list[dict[str, Any]],
    predictions: dict[str, list[Any]],
) -> None:
    """Everything but the curve (drawn by the stage into `root / CURVE_FILE`)."""
    if record.kind != "train-head":
        raise ValueError(f"a run folder holds a train-head record, not {record.kind}")
    write_head(root, model, record)
    write_json(root / METRICS_FILE, metrics)
    write_json(root / AUDIT_FILE, audit)
    pq.write_table(pa.table(predictions), root / PREDICTIONS_FILE)


def read_run(root: Path, probability: str | None = None) -> RunFolder:
    """A finished train-head run; `probability` names a column that must be present."""
    if not root.is_dir():
        raise UserError(f"run folder {root} does not exist")
    needed = (CONFIG_FILE, METRICS_FILE, PREDICTIONS_FILE)
    missing = [name for name in needed if not (root / name).is_file()]
    if missing:
        raise UserError(f"{root} is not a train-head run folder (it has no {', '.join(missing)})")
    record = read_record(root)
    if record.kind != "train-head":
        raise UserError(f"{root / CONFIG_FILE} was not written by `roadwork train-head`")
    metrics = read_json(root / METRICS_FILE)
    if not isinstance(metrics, dict):
        raise UserError(f"{root / METRICS_FILE} is not a train-head metrics file")
    audit = read_json(root / AUDIT_FILE) if (root / AUDIT_FILE).is_file() else []
    try:
        predictions = pq.read_table(root / PREDICTIONS_FILE).to_pydict()
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise UserError(f"cannot read {root / PREDICTIONS_FILE}: {exc}") from None
    columns = {"id", "set", "label"} | ({probability} if probability else set())
    if not columns <= set(predictions):
        raise UserError(
            f"{root / PREDICTIONS_FILE} lacks the columns "
            f"{', '.join(sorted(columns - set(predictions)))}"
        )
    return RunFolder(root, record, metrics, audit if isinstance(audit, list) else [], predictions)


def read_row_sets(path: Path) -> dict[str, str]:
    """Row id -> the set it played in a model's training ("train" rows were fitted on; "val",
    "test", "unlabelled" as named), from the `id` and `set` columns that run and ensemble
    predictions files share; empty when the file is absent."""
    if not path.is_file():
        return {}
    table = pq.read_table(path, columns=["id", "set"]).to_pydict()
    return dict(zip(map(str, table["id"]), table["set"], strict=True))
