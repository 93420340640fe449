"""From a decoded image to the probability a StreetVision miner returns.

One path serves `roadwork predict` (files, batched, DataLoader workers) and the
`RoadworkDetector` a miner registers (one PIL image at a time, from many threads):
`image_views` turns an RGB image into uint8 views [T, 12, S, S, 3] (T = the clean image and
its TTA variants), and `Predictor.score` runs the frozen backbone, the head or ensemble and
the TTA combination on a batch of those. The threshold tuned on validation is folded in by
the bundle, so 0.5 is the cut, as the validator applies it.

The backbone comes from the model's own record of its cache (preset, pooling, view size);
weights that are not the ones the cache was made with are refused in one sentence, because
a head fed features of another backbone answers with confident noise.

The object a miner registers is `RoadworkDetector` (`inference/detector.py`).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from roadwork_cache.backbone.loading import load_backbone
from roadwork_cache.backbone.model import FrozenBackbone
from roadwork_cache.inference.bundles import Bundle, load_bundle
from roadwork_cache.inference.foods import (
    STATS_FILE,
    FoodsStats,
    foods_weights,
    load_stats,
    model_digest,
    uniform_weights,
    weighted_probability,
)
from roadwork_cache.readers.images import prepare_image
from roadwork_cache.runtime.errors import UserError
from roadwork_cache.views.batching import image_views
from roadwork_cache.views.geometry import LAYOUT, N_VIEWS
from roadwork_cache.views.variants import N_TTA, check_variant

log = logging.getLogger(__name__)

DEFAULT_TTA = ("clean", *(f"tta-{k}" for k in range(N_TTA)))
# Views per backbone forward: one 224 px challenge with 9 variants is 108 views, one pass.
MAX_VIEWS_PER_FORWARD = 256


# ---- the model and the backbone must agree -------------------------------------------------


def check_backbone(config: dict[str, Any], info: dict[str, Any], model: str | Path) -> None:
    """Refuse, in one sentence, a backbone whose features are not those the model was
    trained on: another preset, pooling, view size or feature size, other weights, or
    another view layout."""
    want = config.get("backbone") or {}
    for key in ("preset", "pool", "view_size", "feature_dim", "normalisation"):
        if want.get(key) is not None and want[key] != info.get(key):
            raise UserError(
                f"model {model} was trained on features with backbone {key} = {want[key]}, "
                f"but the backbone given has {key} = {info.get(key)}; pass the --backbone / "
                "--weights its cache was made with"
            )
    in_dim = (config.get("head") or {}).get("in_dim")
    if in_dim is not None and in_dim != info.get("feature_dim"):
        raise UserError(
            f"model {model} has a head for {in_dim}-d features, but the backbone gives "
            f"{info.get('feature_dim')}-d ones; pass the --backbone its cache was made with"
        )
    same_state = want.get("state_sha256") is not None and (
        want["state_sha256"] == info.get("state_sha256")
    )
    same_file = want.get("weights_sha256") is not None and (
        want["weights_sha256"] == info.get("weights_sha256")
    )
    checkable = want.get("state_sha256") or want.get("weights_sha256")
    if checkable and not (same_state or same_file):
        recorded = want.get("weights") or f"of sha256 {want.get('weights_sha256')}"
        made = (
            "the randomly initialised tiny weights"
            if want.get("random_init")
            else f"weights {recorded}"
        )
        given = (
            "the randomly initialised tiny weights"
            if info.get("random_init")
            else f"weights {info.get('weights')}"
        )
        raise UserError(
            f"model {model} was trained on features of {made}, not of {given}; pass the "
            "--weights its cache was made with"
        )
    views = config.get("views") or {}
    layout, n_views = views.get("layout"), views.get("n_views")
    if (layout is not None and layout != LAYOUT) or (n_views is not None and n_views != N_VIEWS):
        raise UserError(
            f"model {model} was trained on the view layout {layout} with {n_views} views, but "
            f"this tool cuts {LAYOUT} with {N_VIEWS}; retrain it on a cache made by this version"
        )


# ---- views -> probability --------------------------------------------------------------------


@dataclass
class Scores:
    probability: np.ndarray  # [B] the answer (TTA-combined, threshold folded)
    variant_probs: np.ndarray  # [B, T]
    weights: np.ndarray  # [B, T] how much each variant counted


@dataclass
class Predictor:
    """A loaded model + backbone + TTA plan; `score` is thread-safe."""

    bundle: Bundle
    backbone: FrozenBackbone
    variants: tuple[str, ...]
    foods: FoodsStats | None = None
    model: str = ""
    notes: list[str] = field(default_factory=list)  # what a user should know about the setup
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def view_size(self) -> int:
        return int(self.backbone.info["view_size"])

    @property
    def device(self) -> torch.device:
        return self.backbone.device

    @property
    def combine(self) -> str:
        if len(self.variants) == 1:
            return "none"
        return "foods" if self.foods is not None else "mean"

    @classmethod
    def load(
        cls,
        model: str | Path,
        weights: str | Path | None = None,
        backbone: str | None = None,
        device: str | torch.device = "auto",
        tta: bool = False,
        tta_variants: list[str] | None = None,
    ) -> Predictor:
        from roadwork_cache.runtime.devices import resolve_device

        dev = resolve_device(str(device))
        bundle = load_bundle(model, dev)
        record = bundle.config.get("backbone") or {}
        preset = backbone or record.get("preset")
        if not preset:
            raise UserError(f"model {model} does not record its backbone preset; pass --backbone")
        notes: list[str] = []
        recorded = record.get("weights")
        if weights is None and preset != "tiny" and recorded and Path(recorded).exists():
            weights = recorded  # the file its cache was made with, found on this machine
            notes.append(f"backbone weights: {weights} (recorded by the model's cache)")
        view_size = record.get("view_size") or (bundle.config.get("views") or {}).get("view_size")
        frozen = load_backbone(
            preset,
            weights,
            pool=record.get("pool", "cls"),
            view_size=view_size,
            device=dev,
            normalisation=record.get("normalisation", "lvd"),  # as its cache was made
        )
        check_backbone(bundle.config, frozen.info, model)
        if frozen.info.get("random_init"):
            notes.append(
                "the backbone has random weights (tiny preset): the probabilities "
                "demonstrate the machinery, not quality"
            )

        foods = None
        variants: tuple[str, ...] = ("clean",)
        if tta:
            foods = cls._foods_for(Path(model), bundle.config, notes)
            chosen = tta_variants or (foods.variants if foods else None) or list(DEFAULT_TTA)
            variants = tuple(check_variant(v) for v in chosen)
            if any(not (v == "clean" or v.startswith("tta-")) for v in variants):
                raise UserError(
                    "on-the-fly TTA takes clean and tta-K variants only "
                    "(aug-K and natix-K are random training recipes)"
                )
            notes.append(
                f"TTA: {len(variants)} variants ({', '.join(variants)}), combined by "
                + ("FOODS" if foods and len(variants) > 1 else "their mean")
            )
        return cls(bundle, frozen, variants, foods, str(model), notes)

    @staticmethod
    def _foods_for(folder: Path, config: dict[str, Any], notes: list[str]) -> FoodsStats | None:
        path = folder / STATS_FILE
        if not path.is_file():
            notes.append(
                f"no {STATS_FILE} in {folder} (run `roadwork tta` to fit one): "
                "TTA variants are averaged"
            )
            return None
        stats = load_stats(path)
        if stats.model_digest and stats.model_digest != model_digest(config):
            notes.append(
                f"{path} was fitted for another version of this model: ignored, "
                "TTA variants are averaged (re-run `roadwork tta`)"
            )
            return None
        return stats

    @torch.inference_mode()
    def features(self, views: torch.Tensor) -> np.ndarray:
        """uint8 views [B, T, V, S, S, 3] -> features float32 [B * T, V, D]."""
        b, t, v, s = views.shape[:4]
        flat = views.reshape(b * t * v, s, s, 3)
        out = [
            self.backbone(flat[i : i + MAX_VIEWS_PER_FORWARD])
            for i in range(0, len(flat), MAX_VIEWS_PER_FORWARD)
        ]
        # Round through float16 as the cache stores them: the head sees what it trained on.
        return torch.cat(out).half().float().view(b * t, v, -1).cpu().numpy()

    def score(self, views: torch.Tensor | np.ndarray) -> Scores:
        """uint8 views [B, T, V, S, S, 3] -> the probability of each image (and its parts)."""
        views = torch.as_tensor(views)
        b, t = views.shape[:2]
        if t != len(self.variants):
            raise ValueError(f"expected {len(self.variants)} variants per image, got {t}")
        with self._lock:  # one forward at a time: models and CUDA streams are shared state
            feats = self.features(views)
            probs = self.bundle.predict(feats).reshape(b, t)
            if t > 1 and self.foods is not None:
                dist = self.foods.distances(self.bundle.embed(feats).reshape(b, t, -1))
                settings = self.foods.settings
                weights = foods_weights(dist, settings.keep, settings.temperature)
            else:
                weights = uniform_weights(b, t)
        return Scores(weighted_probability(probs, weights), probs, weights)

    def views(self, img: Image.Image, sample_id: str = "") -> np.ndarray:
        return image_views(img, self.variants, self.view_size, sample_id)

    def __call__(self, img: Image.Image) -> float:
        """One PIL image -> probability in [0, 1] (0.5 is the cut)."""
        rgb = prepare_image(img)
        return float(self.score(self.views(rgb)[None]).probability[0])


# ---- the miner's object ----------------------------------------------------------------------


@dataclass
class Answer:
    path: str
    probability: float | None = None
    error: str | None = None

    @property
    def roadwork(self) -> bool | None:
        return None if self.probability is None else self.probability > 0.5

    def to_dict(self) -> dict:
        return {**asdict(self), "roadwork": self.roadwork}
