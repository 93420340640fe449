"""The exported model's detector: `StandaloneDetector`, the hand-written part of detector.py.

`roadwork export` writes this module, amalgamated with the package modules it imports (the
head, its combination maps, the views, the image checks, the FOODS weights, the export
format), as the folder's `detector.py`, where it is subclassed as `RoadworkDetector`
(inference/amalgamate). So it imports from outside the package only torch, timm,
safetensors, numpy and pillow: never transformers or scikit-learn, which the subnet's
environment lacks or should not need.

It computes what `roadwork predict --model M [--tta]` computes (inference/predictor.py):
decode as `extract` does (a JPEG not yet loaded is draft-decoded to the same scale), the
TTA variants of the image, their 12 views, the backbone's CLS features rounded through
float16 (as the cache stores them), every head, the member normalisation, combination and
calibration or the folded threshold, then FOODS or the mean over the variants.
"""

from __future__ import annotations

import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file

from roadwork_cache.backbone.presets import NORMALISATIONS, check_normalisation
from roadwork_cache.heads.combine import Calibration, Combination, LogitNorm, fold_threshold
from roadwork_cache.heads.config import HeadConfig
from roadwork_cache.heads.head import RoadworkHead
from roadwork_cache.heads.probe import LinearProbe, ProbeConfig
from roadwork_cache.heads.stacked import StackedHeads
from roadwork_cache.inference.export_format import (
    BACKBONE_WEIGHTS,
    EXPORT_CONFIG,
    HEAD_WEIGHTS,
    ExportConfig,
    read_export_config,
    verify_files,
)
from roadwork_cache.inference.foods import foods_weights, uniform_weights, weighted_probability
from roadwork_cache.readers.images import MAX_PIXELS, decode_image, prepare_image
from roadwork_cache.runtime.errors import UserError
from roadwork_cache.views.geometry import TILE_FRACTION, render_views
from roadwork_cache.views.variants import tta_image

VIEWS_PER_FORWARD = 256  # as `Predictor`: one 224 px challenge with 9 variants is one pass
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def pick_device(device: str | torch.device | None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device} was asked for but torch sees no CUDA device")
    return dev


def compute_dtype(device: torch.device) -> torch.dtype:
    """bf16 on GPUs of compute capability 8 or more, fp16 on older ones, fp32 on the CPU.

    `torch.cuda.is_bf16_supported()` answers True on a GTX 1660 too (through emulation, at a
    fraction of the speed), so the capability decides.
    """
    if device.type != "cuda":
        return torch.float32
    major, _ = torch.cuda.get_device_capability(device)
    return torch.bfloat16 if major >= 8 else torch.float16


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file (never a pickle), or one sentence saying why not."""
    if not path.is_file():
        raise UserError(f"exported model {path.parent} is missing {path.name}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"cannot read {path}: it is not a whole safetensors file ({exc})") from None


def load_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Every tensor into its place, or one sentence naming what does not fit."""
    expected = model.state_dict()
    wrong = [k for k, v in state.items() if k in expected and expected[k].shape != v.shape]
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if wrong or missing or unexpected:
        example = (wrong or missing or unexpected)[0]
        raise UserError(
            f"the weights of {what} do not fit the architecture {EXPORT_CONFIG} describes: "
            f"{len(wrong)} of the wrong shape, {len(missing)} missing, {len(unexpected)} "
            f"unexpected (e.g. {example})"
        )
    model.load_state_dict(state, strict=True)


class StandaloneDetector:
    """`detector(PIL.Image) -> float in [0, 1]`: P(roadwork), with 0.5 as the cut.

    `tta`: None takes the export's default; False scores the clean image only (fastest);
    True adds the TTA variants. `max_variants` keeps the first N variants (clean first), a
    middle ground between accuracy and latency. `dtype`: None picks bf16 / fp16 / fp32 by
    device (`compute_dtype`). `verify`: check every weights file against its sha256 first.
    Safe to call from several threads (the forward is serialised).
    """

    def __init__(
        self,
        model_dir: str | Path,
        device: str | torch.device | None = None,
        tta: bool | None = None,
        max_variants: int | None = None,
        dtype: str | None = None,
        verify: bool = True,
    ):
        self.folder = Path(model_dir)
        self.config: ExportConfig = read_export_config(self.folder)
        if verify:
            verify_files(self.folder, self.config, (BACKBONE_WEIGHTS, HEAD_WEIGHTS))
        self.device = pick_device(device)
        if dtype is not None and dtype not in DTYPES:
            raise UserError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
        self.dtype = DTYPES[dtype] if dtype else compute_dtype(self.device)
        b = self.config.backbone
        self.pool = str(b["pool"])
        self.view_size = int(b["view_size"])
        self.draft_side = int(np.ceil(self.view_size / TILE_FRACTION))  # as extract decodes
        self.backbone = self._load_backbone()
        self.heads, self.foods = self._load_heads()
        self.groups = self._head_groups()
        tta = bool(self.config.tta.get("enabled")) if tta is None else tta
        variants = list(self.config.tta["variants"]) if tta else ["clean"]
        if max_variants is not None:
            if max_variants < 1:
                raise UserError(f"max_variants must be at least 1, got {max_variants}")
            variants = variants[:max_variants]
        self.variants = tuple(variants)
        # the pixel statistics the backbone's cache was made with (lvd: ImageNet's; sat)
        mean, std = NORMALISATIONS[check_normalisation(self.config.normalisation)]
        self.mean = (torch.tensor(mean).view(1, 3, 1, 1) * 255).to(self.device)
        self.std = (torch.tensor(std).view(1, 3, 1, 1) * 255).to(self.device)
        self._lock = threading.Lock()
        self._pool: tuple[int, ThreadPoolExecutor] | None = None

    # ---- loading ------------------------------------------------------------------------

    def _load_backbone(self) -> torch.nn.Module:
        model = timm.create_model(pretrained=False, **self.config.backbone["timm"])
        load_strict(model, read_tensors(self.folder / BACKBONE_WEIGHTS), BACKBONE_WEIGHTS)
        # The weights stay fp32 and autocast computes in low precision: casting the model
        # would also cast timm's RoPE periods.
        return model.eval().requires_grad_(False).to(self.device)

    def _load_heads(self) -> tuple[list[RoadworkHead], tuple[np.ndarray, np.ndarray] | None]:
        tensors = read_tensors(self.folder / HEAD_WEIGHTS)
        heads = []
        for i, entry in enumerate(self.config.heads):
            prefix = f"heads.{i}."
            if entry.get("architecture", "head") == "probe":
                head = LinearProbe(ProbeConfig.from_dict(entry["config"]))
            else:
                head = RoadworkHead(HeadConfig.from_dict(entry["config"]))
            state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            load_strict(head, state, f"head {i} in {HEAD_WEIGHTS}")
            heads.append(head.eval().requires_grad_(False).to(self.device))
        foods = None
        if self.config.tta.get("combine") == "foods":
            if "foods.mean" not in tensors or "foods.precision" not in tensors:
                raise UserError(f"{HEAD_WEIGHTS} has no FOODS statistics, which TTA needs")
            foods = (tensors["foods.mean"].double().numpy(), tensors["foods.precision"].numpy())
        return heads, foods

    def _head_groups(self) -> list[tuple[list[int], StackedHeads | None]]:
        """Head indices in the order they run: an ensemble member's heads of one config (its
        folds) as one stacked computation, any other head alone."""
        members = (
            [m["heads"] for m in self.config.members] if self.config.kind == "ensemble" else []
        )
        grouped = {i for m in members for i in m}
        groups: list[tuple[list[int], StackedHeads | None]] = []
        for indices in members:
            stack = StackedHeads.of([self.heads[i] for i in indices])
            if stack is not None:
                groups.append((list(indices), stack))
            else:
                groups.extend(([i], None) for i in indices)
        groups.extend(([i], None) for i in range(len(self.heads)) if i not in grouped)
        return groups

    # ---- image -> views -----------------------------------------------------------------

    def decode(self, image: Any) -> Image.Image:
        """A PIL image (or image bytes, or a path) -> upright 8-bit RGB, or ImageError."""
        if isinstance(image, str | os.PathLike):
            with open(image, "rb") as handle:
                image = handle.read()
        if isinstance(image, bytes | bytearray):
            return decode_image(bytes(image), MAX_PIXELS, self.draft_side)
        if isinstance(image, Image.Image) and image.format == "JPEG":
            w, h = image.size
            if w * h <= MAX_PIXELS:  # a bigger one is refused by prepare_image, undecoded
                # A JPEG not decoded yet decodes at the reduced DCT scale extract and predict
                # use (a no-op once it is loaded), so the head sees the pixels it trained on.
                image.draft("RGB", (self.draft_side, self.draft_side))
        return prepare_image(image)

    def _variant_views(self, img: Image.Image, name: str) -> np.ndarray:
        variant = img if name == "clean" else tta_image(img, int(name.split("-")[1]))
        return np.stack([np.asarray(v) for v in render_views(variant, self.view_size)])

    def views(self, img: Image.Image) -> np.ndarray:
        """RGB image -> uint8 [T, 12, S, S, 3]: the views of every variant, in order."""
        if len(self.variants) == 1:
            return self._variant_views(img, self.variants[0])[None]
        if self._pool is None or self._pool[0] != os.getpid():  # a fork has no threads
            self._pool = (os.getpid(), ThreadPoolExecutor(min(16, os.cpu_count() or 1)))
        # PIL releases the GIL while it resizes: the variants are cut in parallel.
        pool = self._pool[1]
        return np.stack(list(pool.map(lambda n: self._variant_views(img, n), self.variants)))

    # ---- views -> probability -----------------------------------------------------------

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def features(self, views: torch.Tensor) -> torch.Tensor:
        """uint8 views [N, S, S, 3] -> features [N, D] on the device, rounded through
        float16 as the cache stores them (the heads see what they trained on)."""
        out = []
        for start in range(0, len(views), VIEWS_PER_FORWARD):
            x = views[start : start + VIEWS_PER_FORWARD].to(self.device).permute(0, 3, 1, 2)
            x = (x.float() - self.mean) / self.std
            with self._autocast():
                tokens = self.backbone.forward_features(x)
            feature = tokens[:, 0]
            if self.pool == "cls+mean":  # registers excluded
                n_prefix = self.backbone.num_prefix_tokens
                feature = torch.cat([feature, tokens[:, n_prefix:].mean(dim=1)], dim=-1)
            out.append(feature.float())
        return torch.cat(out).half().float()

    def head_outputs(self, feats: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Features [n, V, D] -> folded probability [n] and FOODS embedding [n, E]."""
        by_head: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for indices, stack in self.groups:
            with self._autocast():
                if stack is None:
                    out = self.heads[indices[0]](feats, None)
                    logits, embeddings = out.logits[None], out.embedding[None]
                else:
                    logits, embeddings = stack(feats)  # [K, n, 2], [K, n, E]
            for k, i in enumerate(indices):
                by_head[i] = (logits[k].float(), embeddings[k].float())
        outs = [by_head[i] for i in range(len(self.heads))]
        # One fixed embedding space is all FOODS needs: the first head's (a probe has none).
        first = next((i for i, h in enumerate(self.heads) if isinstance(h, RoadworkHead)), 0)
        embedding = outs[first][1].cpu().numpy()
        c = self.config
        if c.kind == "train-head":
            prob = torch.softmax(outs[0][0], dim=-1)[:, 1].cpu().numpy()
            return fold_threshold(prob, c.threshold), embedding
        # A member's logit is the mean of its heads' normalised logits (bundles.py).
        logits = [(z[:, 1] - z[:, 0]).cpu().double().numpy() for z, _ in outs]
        norms = [LogitNorm.from_dict(h.get("logit_norm")) for h in c.heads]
        members = [
            np.mean([norms[i].apply(logits[i]) for i in m["heads"]], axis=0) for m in c.members
        ]
        z = Combination.from_dict(c.combination).apply(np.stack(members, axis=1))
        cal = Calibration(float(c.calibration["temperature"]), float(c.calibration["threshold"]))
        return cal.folded(z), embedding

    def distances(self, embeddings: np.ndarray) -> np.ndarray:
        """FOODS distance of every embedding [..., E] to the training embeddings (as
        `FoodsStats.distances`)."""
        assert self.foods is not None
        mean, precision = self.foods
        diff = np.asarray(embeddings, dtype=np.float64) - mean
        if self.config.tta["foods"].get("distance", "mahalanobis") == "euclidean":
            return np.linalg.norm(diff, axis=-1)
        squared = np.einsum("...i,ij,...j->...", diff, precision, diff)
        return np.sqrt(np.maximum(squared, 0.0))

    @torch.inference_mode()
    def score(self, views: np.ndarray | torch.Tensor) -> np.ndarray:
        """uint8 views [B, T, V, S, S, 3] -> the probability of each of the B images."""
        views = torch.as_tensor(views)
        b, t, v, s = views.shape[:4]
        if t != len(self.variants):
            raise ValueError(f"expected {len(self.variants)} variants per image, got {t}")
        with self._lock:  # one forward at a time: the models are shared state
            feats = self.features(views.reshape(b * t * v, s, s, 3)).view(b * t, v, -1)
            probs, embedding = self.head_outputs(feats)
        probs = probs.reshape(b, t)
        if t > 1 and self.foods is not None:
            settings = self.config.tta["foods"]
            weights = foods_weights(
                self.distances(embedding.reshape(b, t, -1)),
                float(settings["keep"]),
                float(settings["temperature"]),
            )
        else:
            weights = uniform_weights(b, t)
        return weighted_probability(probs, weights)

    def __call__(self, image: Image.Image) -> float:
        """One image (as the miner receives it) -> P(roadwork) in [0, 1]; 0.5 is the cut."""
        rgb = self.decode(image)
        return float(self.score(self.views(rgb)[None])[0])

    def describe(self) -> dict[str, Any]:
        """Device, precision and plan: what `roadwork export --check` prints."""
        return {
            "device": str(self.device),
            "gpu": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "",
            "dtype": str(self.dtype).replace("torch.", ""),
            "variants": list(self.variants),
            "combine": "none"
            if len(self.variants) == 1
            else ("foods" if self.foods is not None else "mean"),
            "heads": len(self.heads),
            "kind": self.config.kind,
        }
