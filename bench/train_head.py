"""Stage-two speed: seconds per epoch of the full head on N cached rows, next to what one
backbone pass over the same rows costs.

    python bench/train_head.py                      # N = 8,549, full head, the default device
    python bench/train_head.py --rows 2000 --epochs 1 --backbone-images 1   # quick on a CPU

The features are random float16 [N, 12, D] with a planted signal (speed does not depend on
their values). The backbone figure times `--backbone-images` images x 12 views of a
random-weight `--preset` at `--view-size` on the same device and scales it to N images;
on a CPU that scaling is an extrapolation and is printed as one.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from roadwork_cache.backbone.loading import random_model
from roadwork_cache.backbone.model import FrozenBackbone
from roadwork_cache.backbone.presets import get_preset
from roadwork_cache.heads import HeadConfig, MetadataBatch, RoadworkHead
from roadwork_cache.training.loop import TrainConfig, Trainer
from roadwork_cache.views.geometry import N_VIEWS


def planted(rows: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = (rng.random(rows) < 0.8).astype(np.int64)
    feats = rng.standard_normal((rows, N_VIEWS, dim), dtype=np.float32)
    feats[labels == 1, 3] += 2.0
    return feats.astype(np.float16), labels


def backbone_seconds_per_image(
    preset: str, view_size: int, images: int, device: torch.device
) -> float:
    p = get_preset(preset)
    model = random_model(p, view_size)
    info = {"preset": preset, "view_size": view_size, "feature_dim": p.embed_dim}
    backbone = FrozenBackbone(model, "random", p, "cls", info).to(device)
    views = torch.randint(0, 256, (images * N_VIEWS, view_size, view_size, 3), dtype=torch.uint8)
    backbone(views[:N_VIEWS])  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    backbone(views)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8549)
    parser.add_argument("--dim", type=int, default=1280, help="feature size D (vith16plus)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs to time")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--preset", default="vith16plus")
    parser.add_argument("--view-size", type=int, default=512)
    parser.add_argument("--backbone-images", type=int, default=1)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)

    feats, labels = planted(args.rows, args.dim)
    config = HeadConfig(in_dim=args.dim)
    model = RoadworkHead(config)
    n_params = sum(p.numel() for p in model.parameters())
    meta = MetadataBatch.null(args.rows, config.n_weather)
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, patience=args.epochs)
    trainer = Trainer(model, cfg, [feats], labels, meta, device)
    idx = np.arange(args.rows)
    val = idx[: max(args.rows // 5, 2)]
    train = idx[len(val) :]
    epoch_seconds: list[float] = []
    trainer.fit(train, val, on_epoch=lambda log: epoch_seconds.append(log.seconds))
    per_epoch = float(np.median(epoch_seconds))

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {name} ({os.cpu_count()} cores), torch {torch.__version__}")
    print(
        f"head: {n_params / 1e6:.1f} M parameters, D = {args.dim}, {args.rows} rows "
        f"({len(train)} train, {len(val)} val), batch {args.batch_size}"
    )
    print(
        f"seconds per epoch (train + validation): {per_epoch:.2f} (median of {len(epoch_seconds)})"
    )
    print(f"30 epochs: {30 * per_epoch / 60:.1f} min (goal on one H100: under 2 min)")

    per_image = backbone_seconds_per_image(
        args.preset, args.view_size, args.backbone_images, device
    )
    full_pass = per_image * args.rows
    label = (
        "measured"
        if args.backbone_images >= args.rows
        else (f"extrapolated from {args.backbone_images} image(s)")
    )
    print(
        f"one {args.preset} pass over {args.rows} images x 12 views at {args.view_size} px: "
        f"{full_pass / 60:.1f} min ({label}, clean variant only)"
    )
    print(
        f"ratio backbone pass / head epoch: {full_pass / per_epoch:.0f}x; "
        f"/ 30 head epochs: {full_pass / (30 * per_epoch):.1f}x"
    )


if __name__ == "__main__":
    main()
