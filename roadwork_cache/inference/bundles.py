"""A trained model as inference sees it: load a `train-head` run folder, get probabilities
with the validation-tuned threshold folded in (so 0.5 is the cut) and head embeddings.

`roadwork ensemble` folders load through the same `load_bundle` (see `ensemble` kind), so
`tta`, `predict` and the miner's detector never care which kind they were given.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors.torch import load_file

from roadwork_cache.heads import HeadConfig, MetadataBatch, RoadworkHead
from roadwork_cache.heads.combine import Calibration, Combination, LogitNorm, fold_threshold
from roadwork_cache.heads.forward import head_logits, head_outputs
from roadwork_cache.heads.io import WEIGHTS_FILE
from roadwork_cache.runtime.errors import UserError

RUN_FILES = ("config.json", WEIGHTS_FILE)


class Bundle(Protocol):
    """What every loadable model offers."""

    config: dict[str, Any]  # the run's config.json (backbone, views, threshold, ...)

    def predict(self, features: np.ndarray, meta: MetadataBatch | None = None) -> np.ndarray:
        """Features float [n, V, D] -> folded probability [n] (cut at 0.5)."""
        ...

    def embed(self, features: np.ndarray) -> np.ndarray:
        """Features [n, V, D] -> head embeddings [n, E] (for FOODS distances)."""
        ...


def load_head(folder: Path, device: torch.device | str = "cpu") -> tuple[RoadworkHead, dict]:
    """A head and its config.json from a folder holding config.json + model.safetensors."""
    missing = [name for name in RUN_FILES if not (folder / name).is_file()]
    if missing:
        raise UserError(f"model folder {folder} is missing {', '.join(missing)}")
    try:
        config = json.loads((folder / "config.json").read_text())
    except ValueError:
        raise UserError(f"{folder / 'config.json'} is not valid JSON") from None
    if "head" not in config:
        raise UserError(f"{folder / 'config.json'} has no 'head' section")
    model = RoadworkHead(HeadConfig.from_dict(config["head"]))
    try:
        model.load_state_dict(load_file(folder / WEIGHTS_FILE))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise UserError(f"weights in {folder} do not match its config.json: {first}") from None
    return model.to(device).eval(), config


@dataclass
class HeadBundle:
    """One trained head (a `train-head` run)."""

    model: RoadworkHead
    config: dict[str, Any]
    device: torch.device

    @property
    def threshold(self) -> float:
        return float(self.config.get("threshold", 0.5))

    def raw_predict(self, features: np.ndarray, meta: MetadataBatch | None = None) -> np.ndarray:
        return head_outputs(self.model, features, meta, self.device)[0]

    def predict(self, features: np.ndarray, meta: MetadataBatch | None = None) -> np.ndarray:
        return fold_threshold(self.raw_predict(features, meta), self.threshold)

    def embed(self, features: np.ndarray) -> np.ndarray:
        return head_outputs(self.model, features, None, self.device)[1]


def load_bundle(path: str | Path, device: torch.device | str = "cpu") -> Bundle:
    """A `train-head` run folder (or an `ensemble` folder) ready for inference."""
    folder = Path(path)
    if not folder.is_dir():
        raise UserError(f"model {path} is not a folder")
    if (folder / "manifest.json").is_file():
        from roadwork_cache.inference.bundles import load_ensemble

        return load_ensemble(folder, device)
    model, config = load_head(folder, device)
    return HeadBundle(model, config, torch.device(device))


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
        return head_outputs(self.members[0][1][0][0], features, None, self.device)[1]


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
