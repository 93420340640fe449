"""The cost of roadwork masks in stage one: SAM 3 images/s beside the backbone's, and the
CPU cost of carrying a mask through the variants into the views' coverage grids.

    python bench/masks.py                                # CPU: tiny SAM 3, tiny backbone
    python bench/masks.py --full --device cuda           # GPU: SAM 3's default architecture
                                                         # (1008 px, random weights) beside
                                                         # vith16plus at 512 px
    python bench/masks.py --segmenter /models/sam3 --device cuda   # real SAM 3 weights

Figures:
- SAM 3 `Segmenter.segment` (one vision pass, one batched detector pass over the prompts,
  instance post-processing) on a 1920 x 1080 photo, images/s, at the model's own input
  resolution, for the default score threshold and for 0 (every query kept: the worst case
  of the post-processing);
- the backbone as `extract` runs it (12 views of an image in one forward), images/s;
- the mask geometry per image and variant kind (clean, aug, natix, tta), ms, on the CPU;
- `shard_masks` (decode + mask + every variant's coverage) over a few images, images/s.
Weights are random: speed does not depend on their values.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from roadwork_cache.backbone.loading import random_model
from roadwork_cache.backbone.mask_targets import MaskSpec, shard_masks
from roadwork_cache.backbone.model import FrozenBackbone
from roadwork_cache.backbone.presets import get_preset
from roadwork_cache.backbone.sam3_tiny import (
    sam3_processor,
    tiny_clip_tokenizer,
    write_tiny_sam3,
)
from roadwork_cache.backbone.segmenter import DEFAULT_PROMPTS, Segmenter, load_segmenter
from roadwork_cache.readers.images import decode_image
from roadwork_cache.readers.schema import Sample
from roadwork_cache.runtime.devices import autocast
from roadwork_cache.synth.scene import render_scene
from roadwork_cache.views.batching import draft_side
from roadwork_cache.views.masks import mask_coverages
from roadwork_cache.views.variants import parse_variants

from common import sync


def median_seconds(fn, device: torch.device, iters: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def full_size_segmenter(device: torch.device, score: float) -> Segmenter:
    """SAM 3's default architecture (Sam3Config()) with random weights and a small
    tokenizer: the real model's shapes and cost, nothing downloaded."""
    from transformers import Sam3Config, Sam3Model

    config = Sam3Config()
    tokenizer = tiny_clip_tokenizer(sorted({w for p in DEFAULT_PROMPTS for w in p.split()}))
    side = config.vision_config.backbone_config.image_size
    mask_side = (side // 14) * 4
    with torch.device(device):
        model = Sam3Model(config)
    info = {"path": "random Sam3Config()", "model_type": "sam3", "weights_sha256": None}
    return Segmenter(model, sam3_processor(tokenizer, side, mask_side), device, score, 0.5, info)


def photo(width: int = 1920, height: int = 1080) -> bytes:
    img = render_scene(np.random.default_rng(0), width, height, True)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--full", action="store_true", help="SAM 3's default architecture")
    parser.add_argument("--segmenter", help="a local SAM 3 folder (real weights)")
    parser.add_argument("--preset", help="backbone preset (default: vith16plus with --full)")
    parser.add_argument("--view-size", type=int)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--images", type=int, default=8, help="images for the shard pass")
    parser.add_argument("--variants", default="clean,aug:1,natix:4,tta:8")
    parser.add_argument("--threads", type=int, help="torch threads and mask threads")
    args = parser.parse_args()
    device = torch.device(args.device)
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    big = args.full or args.segmenter is not None
    preset = get_preset(args.preset or ("vith16plus" if big else "tiny"))
    view_size = args.view_size or preset.view_size
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPU cores, device {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
    )

    data = photo()
    full = decode_image(data)
    small = decode_image(data, draft_side=draft_side(view_size))
    print(f"photo 1920x1080 JPEG; decoded for views of {view_size} px at {small.size}")

    # ---- SAM 3 ------------------------------------------------------------------------
    with tempfile.TemporaryDirectory() as tmp:
        segmenters = {}
        for score in (0.5, 0.0):
            if args.segmenter:
                segmenters[score] = load_segmenter(args.segmenter, device, score)
            elif args.full:
                segmenters[score] = segmenters.get(0.5) or full_size_segmenter(device, score)
            else:
                folder = write_tiny_sam3(Path(tmp) / "tiny-sam3")
                segmenters[score] = load_segmenter(folder, device, score)
        seg = segmenters[0.5]
        n_params = sum(p.numel() for p in seg.model.parameters())
        print(
            f"SAM 3: {n_params / 1e6:.1f} M parameters, input {seg.info['image_size']} px, "
            f"{len(DEFAULT_PROMPTS)} prompts"
        )
        for score, s in segmenters.items():
            s.score_threshold = score
            t = median_seconds(
                lambda s=s: s.segment(full, DEFAULT_PROMPTS, small.size), device, args.iters
            )
            kept = s.segment(full, DEFAULT_PROMPTS, small.size).mean()
            print(
                f"  segment, score threshold {score}: {1 / t:.2f} images/s "
                f"({t * 1000:.1f} ms; mask covers {kept:.1%})"
            )
        seg.score_threshold = 0.5  # --full shares one model between both thresholds
        sam_s = median_seconds(
            lambda: seg.segment(full, DEFAULT_PROMPTS, small.size), device, args.iters
        )

        # ---- the backbone, as extract runs it ---------------------------------------------
        backbone = FrozenBackbone(random_model(preset, view_size), "random", preset, "cls", {})
        backbone = backbone.to(device)
        views = torch.randint(0, 256, (12, view_size, view_size, 3), dtype=torch.uint8)
        views = views.to(device)

        def forward() -> None:
            with torch.inference_mode(), autocast(device):
                backbone(views)

        bb_s = median_seconds(forward, device, args.iters)
        print(
            f"backbone {preset.name} at {view_size} px: {1 / bb_s:.2f} images/s "
            f"({bb_s * 1000:.1f} ms per image of 12 views)"
        )
        print(f"SAM 3 / backbone time per image: {sam_s / bb_s:.2f}x")

        # ---- mask geometry, CPU -------------------------------------------------------------
        mask = seg.segment(full, DEFAULT_PROMPTS, small.size)
        for name in ("clean", "aug-0", "natix-1", "tta-2"):
            t = median_seconds(
                lambda n=name: mask_coverages(small, mask, [n], "id"),
                torch.device("cpu"),
                args.iters,
            )
            print(f"  mask geometry + coverage, {name}: {t * 1000:.1f} ms")

        # ---- the shard pass -------------------------------------------------------------------
        variants = parse_variants(args.variants)
        samples = [Sample(id=str(i), image_bytes=data, source="bench") for i in range(args.images)]
        spec = MaskSpec("sam3", segmenter="bench")
        start = time.perf_counter()
        shard_masks(samples, variants, view_size, spec, seg, threads)
        t = time.perf_counter() - start
        print(
            f"shard_masks, {len(variants)} variants, {threads} threads: "
            f"{len(samples) / t:.2f} images/s ({t / len(samples) * 1000:.0f} ms per image)"
        )


if __name__ == "__main__":
    main()
