"""An `ensemble` folder as inference sees it (`bundle.load_bundle` comes here when the folder
holds a manifest.json).

Layout written by `roadwork ensemble`:

    manifest.json                 members, combination, temperature, threshold, cache, ...
    members/<name>/fold-<k>/      config.json + model.safetensors (a train-head layout)
    dora/fold-<j>/                the same, merged DoRA heads (no peft needed)
    student/                      the same, the distilled student (its own HeadBundle)

A member is a bag of heads (its fold models, or the DoRA folds that replace it); its logit
is the mean of their logits, each first normalised with the head's `logit_norm` (the mean
and sd of its logits on the rows it was trained on, from its config.json). The members'
logits are combined linearly (mean, MCC-weighted or stacked: all are ``z @ weights + bias``),
temperature-scaled and folded so that 0.5 is the cut. `embed` returns the first head of the
first member: one fixed embedding space, which is all FOODS distances need (concatenating
members would multiply the dimension for no gain).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from roadwork_cache.heads import MetadataBatch, RoadworkHead
from roadwork_cache.inference.bundles import load_head
from roadwork_cache.runtime.errors import UserError
from roadwork_cache.training.loop import predict
from roadwork_cache.training.stacking import Calibration, Combination, LogitNorm, head_logits

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


@dataclass
class EnsembleBundle:
    members: list[tuple[str, list[tuple[RoadworkHead, LogitNorm]]]]
    combination: Combination
    calibration: Calibration
    config: dict[str, Any]
    device: torch.device

    @property
    def threshold(self) -> float:
        return self.calibration.threshold

    def member_logits(self, features: np.ndarray, meta: MetadataBatch | None = None) -> np.ndarray:
        """[n, M]: each member's mean normalised logit over its heads."""
        cols = [
            np.mean(
                [norm.apply(head_logits(h, features, meta, self.device)) for h, norm in heads],
                axis=0,
            )
            for _, heads in self.members
        ]
        return np.stack(cols, axis=1)

    def logits(self, features: np.ndarray, meta: MetadataBatch | None = None) -> np.ndarray:
        return self.combination.apply(self.member_logits(features, meta))

    def raw_predict(self, features: np.ndarray, meta: MetadataBatch | None = None) -> np.ndarray:
        """Temperature-scaled probability before the threshold is folded in."""
        return self.calibration.prob(self.logits(features, meta))

    def predict(self, features: np.ndarray, meta: MetadataBatch | None = None) -> np.ndarray:
        return self.calibration.folded(self.logits(features, meta))

    def embed(self, features: np.ndarray) -> np.ndarray:
        return predict(self.members[0][1][0][0], features, None, self.device)[1]


def read_manifest(folder: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except ValueError:
        raise UserError(f"{folder / MANIFEST} is not valid JSON") from None
    if not isinstance(manifest, dict) or manifest.get("kind") != "ensemble":
        raise UserError(f"{folder / MANIFEST} is not an ensemble manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise UserError(
            f"{folder / MANIFEST} has format version "
            f"{manifest.get('format_version')}, this tool reads {FORMAT_VERSION}"
        )
    for key in ("members", "combination", "calibration"):
        if key not in manifest:
            raise UserError(f"{folder / MANIFEST} has no '{key}'")
    return manifest


def cache_identity(config: dict[str, Any]) -> Any:
    """What says two heads were trained on the same cache: its fingerprint when recorded."""
    return config.get("cache_fingerprint") or config.get("cache")


def load_ensemble(folder: str | Path, device: torch.device | str = "cpu") -> EnsembleBundle:
    folder = Path(folder)
    manifest = read_manifest(folder)
    device = torch.device(device)
    members: list[tuple[str, list[tuple[RoadworkHead, LogitNorm]]]] = []
    configs: list[tuple[str, dict]] = []
    for entry in manifest["members"]:
        heads = []
        for rel in entry["folders"]:
            model, config = load_head(folder / rel, device)
            heads.append((model, LogitNorm.from_dict(config.get("logit_norm"))))
            configs.append((f"{entry['name']} ({rel})", config))
        if not heads:
            raise UserError(f"member {entry['name']} of {folder} has no model folders")
        members.append((entry["name"], heads))
    first_name, first = configs[0]
    for name, config in configs[1:]:
        if cache_identity(config) != cache_identity(first):
            raise UserError(
                f"the members of ensemble {folder} were trained on different caches: "
                f"{first_name} on {first.get('cache')}, {name} on "
                f"{config.get('cache')}"
            )
    combination = Combination.from_dict(manifest["combination"])
    if len(combination.weights) != len(members):
        raise UserError(
            f"{folder / MANIFEST} combines {len(combination.weights)} members but "
            f"lists {len(members)}"
        )
    calibration = Calibration(
        float(manifest["calibration"]["temperature"]), float(manifest["calibration"]["threshold"])
    )
    config = {
        **manifest,
        "head": first["head"],
        "threshold": calibration.threshold,
        "backbone": manifest.get("backbone", first.get("backbone")),
        "views": manifest.get("views", first.get("views")),
    }
    return EnsembleBundle(members, combination, calibration, config, device)
