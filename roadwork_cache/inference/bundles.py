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
from roadwork_cache.heads.io import WEIGHTS_FILE
from roadwork_cache.runtime.errors import UserError
from roadwork_cache.training.loop import predict
from roadwork_cache.training.metrics import fold_threshold

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
        return predict(self.model, features, meta, self.device)[0]

    def predict(self, features: np.ndarray, meta: MetadataBatch | None = None) -> np.ndarray:
        return fold_threshold(self.raw_predict(features, meta), self.threshold)

    def embed(self, features: np.ndarray) -> np.ndarray:
        return predict(self.model, features, None, self.device)[1]


def load_bundle(path: str | Path, device: torch.device | str = "cpu") -> Bundle:
    """A `train-head` run folder (or an `ensemble` folder) ready for inference."""
    folder = Path(path)
    if not folder.is_dir():
        raise UserError(f"model {path} is not a folder")
    if (folder / "manifest.json").is_file():
        from roadwork_cache.inference.ensemble_bundle import load_ensemble

        return load_ensemble(folder, device)
    model, config = load_head(folder, device)
    return HeadBundle(model, config, torch.device(device))
