"""A trained model as inference sees it: features in, the probability a miner returns out.

`load_bundle` takes a `train-head` run folder or an `ensemble` folder and gives the same
interface for both (`Bundle`), so `tta`, `predict` and the miner's detector never care which
kind they were given. The threshold tuned on validation is folded in: 0.5 is the cut.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from roadwork_cache.heads import MetadataBatch, RoadworkHead
from roadwork_cache.heads.combine import Calibration, Combination, LogitNorm, fold_threshold
from roadwork_cache.heads.forward import head_logits, head_outputs, stacked_logits
from roadwork_cache.heads.stacked import StackedHeads
from roadwork_cache.inference import ensemble_folder, run_folder
from roadwork_cache.inference.ensemble_folder import MANIFEST_FILE, is_ensemble, read_manifest
from roadwork_cache.inference.head_folder import HeadRecord, load_head
from roadwork_cache.runtime.errors import UserError


class Bundle(Protocol):
    """What every loadable model offers."""

    # The record of what the model reads and how it cuts: backbone, views, head, threshold.
    config: dict[str, Any]

    def predict(self, features: np.ndarray, meta: MetadataBatch | None = None) -> np.ndarray:
        """Features float [n, V, D] -> folded probability [n] (cut at 0.5)."""
        ...

    def embed(self, features: np.ndarray) -> np.ndarray:
        """Features [n, V, D] -> head embeddings [n, E] (for FOODS distances)."""
        ...


@dataclass
class HeadBundle:
    """One trained head (a `train-head` run, or any head folder on its own)."""

    model: RoadworkHead
    record: HeadRecord
    device: torch.device

    @property
    def config(self) -> dict[str, Any]:
        return self.record.to_dict()

    @property
    def threshold(self) -> float:
        return float(self.record.threshold)

    def raw_predict(self, features: np.ndarray, meta: MetadataBatch | None = None) -> np.ndarray:
        return head_outputs(self.model, features, meta, self.device)[0]

    def predict(self, features: np.ndarray, meta: MetadataBatch | None = None) -> np.ndarray:
        return fold_threshold(self.raw_predict(features, meta), self.threshold)

    def embed(self, features: np.ndarray) -> np.ndarray:
        return head_outputs(self.model, features, None, self.device)[1]


@dataclass
class EnsembleBundle:
    """Members, each a bag of normalised heads, combined linearly and calibrated."""

    members: list[tuple[str, list[tuple[RoadworkHead, LogitNorm]]]]
    combination: Combination
    calibration: Calibration
    config: dict[str, Any]
    device: torch.device
    # member -> its heads as one computation, where it has several of one config (its folds)
    stacks: dict[str, StackedHeads] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for name, bag in self.members:
            stack = StackedHeads.of([h for h, _ in bag])
            if stack is not None:
                self.stacks[name] = stack

    @property
    def threshold(self) -> float:
        return self.calibration.threshold

    def member_logits(self, features: np.ndarray, meta: MetadataBatch | None = None) -> np.ndarray:
        """[n, M]: each member's mean normalised logit over its heads."""
        cols = []
        for name, bag in self.members:
            if name in self.stacks:
                logits = list(stacked_logits(self.stacks[name], features, meta, self.device))
            else:
                logits = [head_logits(h, features, meta, self.device) for h, _ in bag]
            cols.append(
                np.mean([norm.apply(z) for z, (_, norm) in zip(logits, bag, strict=True)], axis=0)
            )
        return np.stack(cols, axis=1)

    def logits(self, features: np.ndarray, meta: MetadataBatch | None = None) -> np.ndarray:
        return self.combination.apply(self.member_logits(features, meta))

    def raw_predict(self, features: np.ndarray, meta: MetadataBatch | None = None) -> np.ndarray:
        """Temperature-scaled probability before the threshold is folded in."""
        return self.calibration.prob(self.logits(features, meta))

    def predict(self, features: np.ndarray, meta: MetadataBatch | None = None) -> np.ndarray:
        return self.calibration.folded(self.logits(features, meta))

    def embed(self, features: np.ndarray) -> np.ndarray:
        """The first head (not a probe) of the members: one fixed embedding space is all FOODS
        needs (concatenating members would multiply the dimension for no gain)."""
        heads = [h for _, bag in self.members for h, _ in bag if isinstance(h, RoadworkHead)]
        first = heads[0] if heads else self.members[0][1][0][0]
        return head_outputs(first, features, None, self.device)[1]


def cache_identity(record: HeadRecord) -> Any:
    """What says two heads were trained on the same cache: its fingerprint when recorded."""
    return record.cache_fingerprint or record.cache


def load_ensemble(folder: Path, device: torch.device) -> EnsembleBundle:
    manifest = read_manifest(folder)
    where = folder / MANIFEST_FILE
    members: list[tuple[str, list[tuple[RoadworkHead, LogitNorm]]]] = []
    records: list[tuple[str, HeadRecord]] = []
    for entry in manifest.members:
        heads = []
        for rel in entry.folders:
            model, record = load_head(folder / rel, device)
            heads.append((model, LogitNorm.from_dict(record.logit_norm)))
            records.append((f"{entry.name} ({rel})", record))
        if not heads:
            raise UserError(f"member {entry.name} of {folder} has no model folders")
        members.append((entry.name, heads))
    if not members:
        raise UserError(f"{where} lists no members")
    first_name, first = records[0]
    for name, record in records[1:]:
        if cache_identity(record) != cache_identity(first):
            raise UserError(
                f"the members of ensemble {folder} were trained on different caches: "
                f"{first_name} on {first.cache}, {name} on {record.cache}"
            )
    combination = Combination.from_dict(manifest.combination)
    if len(combination.weights) != len(members):
        raise UserError(
            f"{where} combines {len(combination.weights)} members but lists {len(members)}"
        )
    calibration = Calibration(
        float(manifest.calibration["temperature"]), float(manifest.calibration["threshold"])
    )
    config = {**manifest.to_dict(), "head": first.head, "threshold": calibration.threshold}
    return EnsembleBundle(members, combination, calibration, config, device)


def load_bundle(path: str | Path, device: torch.device | str = "cpu") -> Bundle:
    """A `train-head` run folder (or an `ensemble` folder) ready for inference."""
    folder = Path(path)
    if not folder.is_dir():
        raise UserError(f"model {path} is not a folder")
    device = torch.device(device)
    if is_ensemble(folder):
        return load_ensemble(folder, device)
    model, record = load_head(folder, device)
    return HeadBundle(model, record, device)


def row_sets(path: str | Path) -> dict[str, str]:
    """Row id -> its set in the model's training (see the folder owners)."""
    folder = Path(path)
    owner = ensemble_folder if is_ensemble(folder) else run_folder
    return run_folder.read_row_sets(folder / owner.PREDICTIONS_FILE)


def speed(
    bundle: EnsembleBundle, student_folder: Path, feats: np.ndarray, device: torch.device
) -> dict[str, float]:
    """Rows per second of the deployed ensemble (every head of every member) and of the
    student, on the same rows and device (metadata-free, as deployed)."""
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
