"""SAM 3 (transformers' `Sam3Model`) from a local folder: text prompts in, one binary
roadwork mask per image out, the union of every instance any prompt finds.

Per image: one vision pass, then one detector and mask pass with all prompts as the batch
(the vision features expanded, not copied); the prompts' text features are computed once.
transformers is imported here only, lazily: the detector never imports this module.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from PIL import Image

from roadwork_cache.runtime.devices import autocast
from roadwork_cache.runtime.errors import UserError
from roadwork_cache.runtime.files import files_sha256

# Work-zone objects: cones, drums, barriers, barricades, road-work signs, workers, vehicles.
DEFAULT_PROMPTS: tuple[str, ...] = (
    "traffic cone",
    "construction barrel",
    "jersey barrier",
    "road barricade",
    "road work sign",
    "construction worker",
    "work vehicle",
)
# Sam3Processor pads text to 32 tokens and never truncates: a longer prompt would crash
# the text encoder, so it is refused up front.
TEXT_MAX_TOKENS = 32
WEIGHT_SUFFIX = ".safetensors"


def sam3_model_type(folder: Path) -> str | None:
    """'sam3' for an image checkpoint, 'sam3_video' for the image + video one whose
    `detector_config` is a SAM 3 (Sam3Model loads its detector); None otherwise."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    kind = config.get("model_type")
    if kind == "sam3":
        return kind
    detector = config.get("detector_config") or {}
    if kind == "sam3_video" and detector.get("model_type", "sam3") == "sam3":
        return kind
    return None


def weights_sha256(folder: Path) -> str:
    """A digest of the weight files alone (not the tokenizer or configs)."""
    return files_sha256(sorted(folder.glob(f"*{WEIGHT_SUFFIX}")))


def load_segmenter(
    folder: str | Path,
    device: str | torch.device = "cpu",
    score_threshold: float = 0.5,
    mask_threshold: float = 0.5,
) -> Segmenter:
    """SAM 3 from a local transformers folder; any other folder is one sentence."""
    folder = Path(folder)
    kind = sam3_model_type(folder)
    if kind is None:
        raise UserError(
            f"--segmenter {folder} is not a SAM 3 folder (its config.json must have "
            "model_type 'sam3', or 'sam3_video' with a SAM 3 detector_config)"
        )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import Sam3Model, Sam3Processor
    from transformers.utils import logging

    logging.disable_progress_bar()
    try:
        model = Sam3Model.from_pretrained(folder)
        processor = Sam3Processor.from_pretrained(folder)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load SAM 3 from {folder}: {exc}") from None
    info = {
        "path": str(folder.resolve()),
        "model_type": kind,
        "weights_sha256": weights_sha256(folder),
    }
    return Segmenter(model, processor, device, score_threshold, mask_threshold, info)


class Segmenter:
    """segment(image, prompts) -> bool [H, W]: pixels of any instance of any prompt whose
    score (detection x presence) exceeds `score_threshold`."""

    def __init__(
        self,
        model,
        processor,
        device: str | torch.device = "cpu",
        score_threshold: float = 0.5,
        mask_threshold: float = 0.5,
        info: dict[str, Any] | None = None,
        query_chunk: int = 64,
    ) -> None:
        if not 0.0 <= score_threshold < 1.0 or not 0.0 <= mask_threshold < 1.0:
            raise UserError("the SAM 3 score and mask thresholds must lie in [0, 1)")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.processor = processor
        self.score_threshold = score_threshold
        self.mask_threshold = mask_threshold
        self.query_chunk = query_chunk
        self._text: tuple[tuple[str, ...], Any, torch.Tensor] | None = None
        self.info: dict[str, Any] = {
            **(info or {}),
            "image_size": int(model.config.vision_config.backbone_config.image_size),
            "score_threshold": score_threshold,
            "mask_threshold": mask_threshold,
        }

    def check_prompts(self, prompts: Sequence[str]) -> None:
        """One sentence for an empty prompt list or a prompt too long for the text model."""
        if not prompts or any(not p.strip() for p in prompts):
            raise UserError("--prompts needs at least one non-empty prompt")
        for prompt in prompts:
            n = len(self.processor.tokenizer(prompt)["input_ids"])
            if n > TEXT_MAX_TOKENS:
                raise UserError(
                    f"prompt {prompt!r} is {n} tokens long; SAM 3 reads at most "
                    f"{TEXT_MAX_TOKENS}, so shorten it"
                )

    def _text_features(self, prompts: tuple[str, ...]):
        if self._text is None or self._text[0] != prompts:
            self.check_prompts(prompts)
            text = self.processor(text=list(prompts), return_tensors="pt").to(self.device)
            with autocast(self.device):
                embeds = self.model.get_text_features(
                    input_ids=text["input_ids"], attention_mask=text["attention_mask"]
                )
            self._text = (prompts, embeds, text["attention_mask"])
        return self._text[1], self._text[2]

    @torch.inference_mode()
    def segment(
        self,
        image: Image.Image,
        prompts: Sequence[str] = DEFAULT_PROMPTS,
        size: tuple[int, int] | None = None,
    ) -> np.ndarray:
        """bool [h, w] at `size` (width, height; default the image's): the union of every
        kept instance mask of every prompt, from the image at its full resolution.

        SAM 3 predicts masks at a quarter of its input side (288 px for 1008): they are
        upsampled at most to the input side (the library's bilinear post-processing), and
        the union is brought to `size` with nearest neighbours, which only moves borders by
        less than a pixel of that resolution and saves upsampling every kept instance to a
        12-megapixel photo."""
        from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

        out_size = size or image.size
        scale = min(1.0, self.info["image_size"] / max(out_size))
        width, height = (max(1, round(v * scale)) for v in out_size)
        prompts = tuple(prompts)
        text_embeds, text_mask = self._text_features(prompts)
        pixels = self.processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"]
        n = len(prompts)
        with autocast(self.device):
            vision = self.model.get_vision_features(
                pixel_values=pixels.to(self.device, self.model.dtype)
            )
            vision = Sam3VisionEncoderOutput(
                fpn_hidden_states=tuple(
                    t.expand(n, *t.shape[1:]) for t in vision.fpn_hidden_states
                ),
                fpn_position_encoding=tuple(
                    t.expand(n, *t.shape[1:]) for t in vision.fpn_position_encoding
                ),
            )
            out = self.model(
                vision_embeds=vision, text_embeds=text_embeds, attention_mask=text_mask
            )
        union = torch.zeros(height, width, dtype=torch.bool)
        # The library's post-processing upsamples every kept mask to the target size in
        # float32; per prompt and per chunk of queries that stays a bounded amount of memory.
        queries = out.pred_logits.shape[1]
        for i in range(n):
            for q in range(0, queries, self.query_chunk):
                part = SimpleNamespace(
                    pred_logits=out.pred_logits[i : i + 1, q : q + self.query_chunk].float(),
                    pred_boxes=out.pred_boxes[i : i + 1, q : q + self.query_chunk].float(),
                    pred_masks=out.pred_masks[i : i + 1, q : q + self.query_chunk].float(),
                    presence_logits=None
                    if out.presence_logits is None
                    else out.presence_logits[i : i + 1].float(),
                )
                found = self.processor.post_process_instance_segmentation(
                    part,
                    threshold=self.score_threshold,
                    mask_threshold=self.mask_threshold,
                    target_sizes=[(height, width)],
                )[0]
                if len(found["masks"]):
                    union |= found["masks"].bool().any(0).cpu()
        if (width, height) == tuple(out_size):
            return union.numpy()
        return np.asarray(Image.fromarray(union.numpy()).resize(out_size, Image.Resampling.NEAREST))
