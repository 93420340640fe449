"""Inference speed: latency of one 224 px challenge end to end, and images/s in batch.

    python bench/predict.py --preset tiny                         # CPU, seconds
    python bench/predict.py --preset vith16plus --device cuda     # the deployment figure
    python bench/predict.py --preset vith16plus --device cpu --repeats 1 --batch-images 0 \
        --no-tta                                                  # one image, minutes

A challenge is what a miner is sent: a 224 px JPEG (quality 75) of a synthetic road scene.
Latency is from its bytes to the float: `PIL.Image.open`, then the detector's own path
(`Predictor.__call__`: RGB, 12 views per variant, backbone, heads, FOODS), measured with
and without TTA (the clean image plus 8 tta-K variants). Batch throughput runs
`roadwork predict`'s path (`run_predict`: DataLoader decoding, batched forwards) over a
folder of challenges.

The model is a stand-in of the deployed one, built from random weights (speed does not
depend on their values): the preset's backbone via `random_model`, an ensemble of
`--members` default-size heads (dim 512, 4 gated-attention blocks) averaged, and FOODS
statistics fitted on random embeddings. The device is printed with every figure.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from roadwork_cache.backbone.loading import random_model
from roadwork_cache.backbone.model import FrozenBackbone
from roadwork_cache.backbone.presets import get_preset
from roadwork_cache.heads import HeadConfig, RoadworkHead
from roadwork_cache.heads.forward import head_outputs as head_predict
from roadwork_cache.inference.foods import FoodsStats
from roadwork_cache.inference.predictor import DEFAULT_TTA, Predictor
from roadwork_cache.stages.predict import PredictOptions, run_predict
from roadwork_cache.synth.scene import render_scene
from roadwork_cache.views.challenge import CHALLENGE_SIZE, jpeg_round_trip


class MeanEnsemble:
    """The Bundle protocol over several heads: the cost of an ensemble's forward."""

    def __init__(self, heads: list[RoadworkHead], config: dict[str, Any], device: torch.device):
        self.heads, self.config, self.device = heads, config, device

    def predict(self, features: np.ndarray, meta=None) -> np.ndarray:
        return np.mean(
            [head_predict(h, features, None, self.device)[0] for h in self.heads], axis=0
        )

    def embed(self, features: np.ndarray) -> np.ndarray:
        return head_predict(self.heads[0], features, None, self.device)[1]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA)"
    return (
        f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{torch.get_num_threads()} torch threads"
    )


def challenge_jpeg(seed: int) -> bytes:
    """A validator-like challenge: a road scene, centre square, 224 px, JPEG quality 75."""
    rng = np.random.default_rng(seed)
    scene = render_scene(rng, 640, 360, roadwork=bool(seed % 2))
    side = min(scene.size)
    left = (scene.size[0] - side) // 2
    square = scene.crop((left, 0, left + side, side)).resize((CHALLENGE_SIZE,) * 2)
    buf = io.BytesIO()
    jpeg_round_trip(square).save(buf, "JPEG", quality=75)
    return buf.getvalue()


def build(
    preset_name: str, view_size: int | None, members: int, device: torch.device, tta: bool
) -> Predictor:
    preset = get_preset(preset_name)
    view_size = view_size or preset.view_size
    info = {
        "preset": preset.name,
        "pool": "cls",
        "view_size": view_size,
        "feature_dim": preset.embed_dim,
        "random_init": True,
    }
    t0 = time.perf_counter()
    backbone = FrozenBackbone(random_model(preset), "random", preset, "cls", info)
    backbone = backbone.to(device)
    torch.manual_seed(0)
    heads = [
        RoadworkHead(HeadConfig(in_dim=preset.embed_dim)).to(device).eval() for _ in range(members)
    ]
    bundle = MeanEnsemble(heads, {"backbone": info, "threshold": 0.5}, device)
    variants = DEFAULT_TTA if tta else ("clean",)
    foods = None
    if tta:
        rng = np.random.default_rng(0)
        foods = FoodsStats.fit(rng.normal(size=(600, heads[0].config.dim)), variants=list(variants))
    print(
        f"  built {preset.name} (random weights) + {members} head(s) in "
        f"{time.perf_counter() - t0:.1f} s"
    )
    return Predictor(bundle, backbone, variants, foods, model="bench")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def latency(predictor: Predictor, challenges: list[bytes], repeats: int, warmup: int) -> np.ndarray:
    for data in challenges[:warmup]:
        predictor(Image.open(io.BytesIO(data)))
    times = []
    for i in range(repeats):
        data = challenges[i % len(challenges)]
        sync(predictor.device)
        start = time.perf_counter()
        p = predictor(Image.open(io.BytesIO(data)))
        sync(predictor.device)
        times.append(time.perf_counter() - start)
        assert 0.0 <= p <= 1.0
    return np.array(times)


def throughput(
    predictor: Predictor, challenges: list[bytes], n: int, batch_size: int, workers: int | None
) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(n):
            (Path(tmp) / f"{i:05d}.jpg").write_bytes(challenges[i % len(challenges)])
        opts = PredictOptions(
            inputs=[tmp],
            model=Path("bench"),
            batch_size=batch_size,
            workers=workers,
            progress=False,
        )
        run_predict(
            PredictOptions(
                inputs=[str(Path(tmp) / "00000.jpg")], model=Path("bench"), progress=False
            ),
            predictor,
        )  # warm-up
        sync(predictor.device)
        start = time.perf_counter()
        answers, _ = run_predict(opts, predictor)
        sync(predictor.device)
        seconds = time.perf_counter() - start
    assert all(a.error is None for a in answers)
    return n / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument(
        "--view-size", type=int, default=None, help="default: the preset's (512; tiny 224)"
    )
    parser.add_argument("--members", type=int, default=5, help="heads in the ensemble")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=20, help="challenges timed per setting")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--batch-images", type=int, default=64, help="images for the batch figure (0: skip it)"
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time with on-the-fly TTA (clean + 8 variants, FOODS)",
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    print(f"device: {device_name(device)}")
    challenges = [challenge_jpeg(seed) for seed in range(8)]

    settings = [False, True] if args.tta else [False]
    for tta in settings:
        label = "TTA 9 variants (FOODS)" if tta else "no TTA"
        print(f"{args.preset}, {label}:")
        predictor = build(args.preset, args.view_size, args.members, device, tta)
        times = latency(predictor, challenges, args.repeats, args.warmup)
        print(
            f"  latency of one {CHALLENGE_SIZE} px challenge, bytes -> float, "
            f"view size {predictor.view_size}, {args.members} heads: "
            f"p50 {np.percentile(times, 50) * 1e3:.0f} ms, "
            f"p95 {np.percentile(times, 95) * 1e3:.0f} ms (n = {len(times)}) on {device}"
        )
        if args.batch_images:
            rate = throughput(
                predictor, challenges, args.batch_images, args.batch_size, args.workers
            )
            print(
                f"  batch: {rate:.2f} images/s ({args.batch_images} challenges, "
                f"batch {args.batch_size}) on {device}"
            )
        del predictor
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
