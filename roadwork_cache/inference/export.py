"""Writing an exported model folder, and loading its detector back (docs/design.md §8).

`export_plan` turns a loaded `Predictor` (the model, the backbone its cache was made with,
the TTA plan) into the folder's `ExportConfig`; `write_export` writes the folder through
the format's owner (inference/export_format) with detector.py generated from the package
(inference/amalgamate); `import_detector` loads that detector.py as a module, the way a
miner does; `predict_bytes` scores image bytes on the `roadwork predict` path, to compare.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import re
import shutil
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

from roadwork_cache.heads.probe import LinearProbe
from roadwork_cache.inference.amalgamate import detector_source
from roadwork_cache.inference.bundles import EnsembleBundle, HeadBundle
from roadwork_cache.inference.export_format import (
    BACKBONE_WEIGHTS,
    CARD_FIELDS,
    DETECTOR_SOURCE,
    EXPORT_CONFIG,
    HEAD_WEIGHTS,
    MODEL_CARD,
    MODEL_CARD_JSON,
    ExportConfig,
    sha256_of,
)
from roadwork_cache.inference.predictor import Predictor
from roadwork_cache.readers.images import MAX_PIXELS, decode_image
from roadwork_cache.runtime.errors import UserError
from roadwork_cache.runtime.files import read_json, write_json
from roadwork_cache.runtime.version import __version__
from roadwork_cache.views.batching import draft_side, image_views
from roadwork_cache.views.geometry import LAYOUT, N_VIEWS

VERSION_PATTERN = re.compile(r"^\d+\.\d+\.\d+$")
SS58_PATTERN = re.compile(r"^[1-9A-HJ-NP-Za-km-z]{46,48}$")  # base58, a Bittensor hotkey


def model_card_fields(
    name: str, description: str, version: str, hotkey: str | None, now: float | None = None
) -> dict[str, Any]:
    """model_card.json as the subnet reads it; version X.Y.Z, the hotkey an ss58 address."""
    if not VERSION_PATTERN.match(version):
        raise UserError(f"--version must be X.Y.Z (three whole numbers), got {version!r}")
    if hotkey is not None and not SS58_PATTERN.match(hotkey):
        raise UserError(
            f"--hotkey {hotkey!r} is not an ss58 address (the miner's hotkey, e.g. 5F...)"
        )
    if not name.strip():
        raise UserError("--name must not be empty")
    card = {
        "model_name": name,
        "description": description,
        "version": version,
        "submitted_by": hotkey or "",
        "submission_time": int(time.time() if now is None else now),
    }
    assert tuple(card) == CARD_FIELDS
    return card


def _heads(predictor: Predictor) -> tuple[list[torch.nn.Module], dict[str, Any]]:
    """The bundle's heads in order, and the config fields that say how they combine."""
    bundle = predictor.bundle
    if isinstance(bundle, HeadBundle):
        entry = {"config": bundle.model.config.to_dict(), "source": "head"}
        return [bundle.model], {"kind": "train-head", "heads": [entry]}
    if not isinstance(bundle, EnsembleBundle):
        raise UserError(f"model {predictor.model} is neither a train-head run nor an ensemble")
    heads, entries, members = [], [], []
    for name, bag in bundle.members:
        indices = []
        for head, norm in bag:
            indices.append(len(heads))
            heads.append(head)
            entries.append(
                {
                    "config": head.config.to_dict(),
                    "architecture": "probe" if isinstance(head, LinearProbe) else "head",
                    "logit_norm": norm.to_dict(),
                    "source": name,
                }
            )
        members.append({"name": name, "heads": indices})
    return heads, {
        "kind": "ensemble",
        "heads": entries,
        "members": members,
        "combination": bundle.combination.to_dict(),
        "calibration": bundle.calibration.to_dict(),
    }


def export_plan(predictor: Predictor, tta_enabled: bool) -> ExportConfig:
    """The exported folder's config (its `files` are filled in by `write_export`).

    `predictor` is loaded with TTA on: its variants and FOODS statistics are the ones
    `roadwork predict --tta` uses; `tta_enabled` is the detector's default."""
    info = predictor.backbone.info
    timm_args = getattr(predictor.backbone.model, "timm_create_args", None)
    if timm_args is None:
        raise RuntimeError("the backbone does not record how timm built it")
    bad = [v for v in predictor.variants if not (v == "clean" or v.startswith("tta-"))]
    if bad or predictor.variants[0] != "clean":
        raise UserError(
            f"the exported detector computes clean and tta-K variants, clean first; "
            f"{', '.join(predictor.variants)} cannot be exported"
        )
    weights = info.get("weights")
    backbone = {
        "timm": timm_args,
        "preset": info.get("preset"),
        "format": info.get("format"),
        "pool": info.get("pool", "cls"),
        "normalisation": info.get("normalisation", "lvd"),  # the pixel statistics it was fed
        "view_size": int(info["view_size"]),
        "feature_dim": int(info["feature_dim"]),
        "patch_size": info.get("patch_size"),
        "random_init": bool(info.get("random_init")),
        "weights_name": Path(weights).name if weights else None,  # no local paths published
        "weights_sha256": info.get("weights_sha256"),
        "state_sha256": info.get("state_sha256"),
    }
    views = {
        "layout": LAYOUT,
        "n_views": N_VIEWS,
        "view_size": int(info["view_size"]),
        "draft_side": draft_side(int(info["view_size"])),
    }
    foods = predictor.foods
    tta = {
        "enabled": bool(tta_enabled),
        "variants": list(predictor.variants),
        "combine": "foods" if foods is not None else "mean",
        "foods": None
        if foods is None
        else {
            "keep": foods.settings.keep,
            "distance": foods.settings.distance,
            "temperature": foods.settings.temperature,
            "n_fit": foods.n_fit,
            "shrinkage": foods.shrinkage,
            "fitted_on": list(foods.variants),
        },
    }
    _, combine = _heads(predictor)
    source = {
        "model": Path(predictor.model).name,
        "tool_version": __version__,
        "exported": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    threshold = float(predictor.bundle.config.get("threshold", 0.5))
    config = ExportConfig(
        backbone=backbone, views=views, threshold=threshold, tta=tta, source=source, **combine
    )
    config.check("the export plan")
    return config


def write_export(
    out: Path,
    predictor: Predictor,
    config: ExportConfig,
    card: dict[str, Any],
    readme: str,
    force: bool = False,
    extra: dict[str, str] | None = None,
) -> ExportConfig:
    """Write the folder (built beside it, then moved into place); returns the config with
    every file's sha256. `extra`: more text files (relative path -> text). An existing folder
    is replaced only with `force`, and only when it is empty or an earlier export."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        earlier = (out / EXPORT_CONFIG).is_file() and (read_json(out / EXPORT_CONFIG) or {}).get(
            "format"
        ) == config.format
        if not (force and earlier):
            reason = "pass --force to replace it" if earlier else "choose an empty folder"
            raise UserError(f"{out} already exists and is not empty; {reason}")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        state = predictor.backbone.model.state_dict()
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in state.items()},
            str(partial / BACKBONE_WEIGHTS),
            metadata={"format": "timm", "timm_model": str(config.backbone["timm"]["model_name"])},
        )
        heads, _ = _heads(predictor)
        # clone: an ensemble member's heads view one stacked tensor (heads.stacked), and
        # safetensors refuses tensors that share memory
        tensors = {
            f"heads.{i}.{k}": v.detach().cpu().clone()
            for i, head in enumerate(heads)
            for k, v in head.state_dict().items()
        }
        if predictor.foods is not None:
            tensors["foods.mean"] = torch.from_numpy(np.ascontiguousarray(predictor.foods.mean))
            tensors["foods.precision"] = torch.from_numpy(
                np.ascontiguousarray(predictor.foods.precision)
            )
        save_file(tensors, str(partial / HEAD_WEIGHTS))
        (partial / DETECTOR_SOURCE).write_text(detector_source())
        config.files = {
            name: sha256_of(partial / name)
            for name in (BACKBONE_WEIGHTS, HEAD_WEIGHTS, DETECTOR_SOURCE)
        }
        write_json(partial / EXPORT_CONFIG, config.to_dict())
        write_json(partial / MODEL_CARD_JSON, card)
        (partial / MODEL_CARD).write_text(readme)
        for name, text in (extra or {}).items():  # the miner's files: not run by the detector
            (partial / name).parent.mkdir(parents=True, exist_ok=True)
            (partial / name).write_text(text)
        if out.exists():
            shutil.rmtree(out)
        partial.rename(out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return config


def import_detector(folder: Path) -> ModuleType:
    """An exported folder's detector.py as a module, loaded as a miner loads it."""
    path = Path(folder) / DETECTOR_SOURCE
    if not path.is_file():
        raise UserError(f"exported model {folder} is missing {DETECTOR_SOURCE}")
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    name = f"roadwork_export_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file runs
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path} cannot be loaded: {first}") from None
    return module


def sample_images(n: int, seed: int = 0) -> list[bytes]:
    """n challenge-like images: 224 x 224 JPEGs at quality 75 (as a validator sends them)
    of smooth random colour fields, different for every index."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        coarse = rng.integers(0, 256, size=(7, 7, 3), dtype=np.uint8)
        img = Image.fromarray(coarse).resize((224, 224), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=75)
        out.append(buf.getvalue())
    return out


def predict_bytes(predictor: Predictor, data: bytes) -> float:
    """One image file's bytes scored on the `roadwork predict` path (decoded as extract
    decodes, the views of every variant, `Predictor.score`)."""
    img = decode_image(data, MAX_PIXELS, draft_side(predictor.view_size))
    views = image_views(img, predictor.variants, predictor.view_size)
    return float(predictor.score(views[None]).probability[0])
