"""Stage-two speed: seconds per epoch of the full head on N cached rows, next to what one
backbone pass over the same rows costs.

    python bench/train_head.py                      # N = 8,549, full head, the default device
    python bench/train_head.py --rows 2000 --epochs 1 --backbone-images 1   # quick on a CPU

Then the training step itself, one recipe at a time (issue 15: every choice measured): the
same head, rows and loss (`total_loss`) stepped in fp32 with torch's default AdamW (what
`Trainer` does on a CPU), then under bf16 autocast (what it does on CUDA), with the fused
AdamW kernel, and with the head under `torch.compile`: the first step's seconds (the
compile), the steady milliseconds per step, the ratio to the first recipe, and for a
compiled recipe the steps it needs to pay its compile back against the same recipe eager,
beside the steps of 30 epochs at N rows. `--no-recipes` skips it.

The features are random float16 [N, 12, D] with a planted signal (speed does not depend on
their values). The backbone figure times `--backbone-images` images x 12 views of a
random-weight `--preset` at `--view-size` on the same device and scales it to N images;
on a CPU that scaling is an extrapolation and is printed as one.
"""

from __future__ import annotations

import argparse
import copy
import functools
import os
import time

import numpy as np
import torch

from roadwork_cache.backbone.loading import random_model
from roadwork_cache.backbone.model import FrozenBackbone
from roadwork_cache.backbone.presets import get_preset
from roadwork_cache.heads import HeadConfig, MetadataBatch, RoadworkHead
from roadwork_cache.training.loop import TrainConfig, Trainer
from roadwork_cache.training.losses import LossWeights, total_loss
from roadwork_cache.views.geometry import N_VIEWS

from common import sync


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


def recipe_step(run, model, optim, dtype, x, y, meta, wmask) -> None:
    """One training step: forward (`run`: the model, or it compiled), loss, backward,
    clipping, AdamW."""
    with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
        out = run(x, meta)
    total_loss(
        out.logits.float(),
        y,
        out.view_logits.float(),
        out.weather_logits.float(),
        meta.weather,
        wmask,
        LossWeights(),
    ).total.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optim.step()
    optim.zero_grad(set_to_none=True)


def step_recipes(
    config: HeadConfig,
    feats: np.ndarray,
    labels: np.ndarray,
    device: torch.device,
    batch_size: int,
    steps: int,
    steps_per_run: int,
) -> None:
    """The training step under each recipe, on the same head, rows and loss."""
    torch.manual_seed(0)
    base = RoadworkHead(config)
    rows = torch.randint(len(feats), (batch_size,))
    x = torch.from_numpy(feats[rows.numpy()]).to(device).float()
    y = torch.from_numpy(labels[rows.numpy()]).to(device)
    meta = MetadataBatch.null(batch_size, config.n_weather, device=device)
    wmask = torch.zeros(batch_size, dtype=torch.bool, device=device)
    recipes = [  # name, autocast dtype, AdamW's fused flag, compiled
        ("fp32, AdamW (torch's default)", None, None, False),
        ("bf16 autocast, AdamW (torch's default)", torch.bfloat16, None, False),
        ("bf16 autocast, fused AdamW", torch.bfloat16, True, False),
        ("bf16 autocast, fused AdamW, torch.compile", torch.bfloat16, True, True),
    ]
    print(f"training step, batch {batch_size}, {steps} steps after the first:")
    print("| recipe | first step | steady step | vs first recipe | compile paid back after |")
    print("| --- | ---: | ---: | ---: | ---: |")
    steady: dict[str, float] = {}
    for name, dtype, fused, compiled in recipes:
        torch.manual_seed(0)
        model = copy.deepcopy(base).to(device).train()
        optim = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused)
        run = torch.compile(model) if compiled else model

        step = functools.partial(recipe_step, run, model, optim, dtype, x, y, meta, wmask)

        try:
            sync(device)
            start = time.perf_counter()
            step()
            sync(device)
            first = time.perf_counter() - start
            step()  # a second warm-up (compiled graphs may recompile once)
            sync(device)
            start = time.perf_counter()
            for _ in range(steps):
                step()
            sync(device)
        except Exception as exc:  # a recipe this device or torch cannot run: say so, go on
            print(f"| {name} | failed: {type(exc).__name__}: {str(exc).splitlines()[0][:80]} |")
            continue
        ms = (time.perf_counter() - start) / steps * 1e3
        steady[name] = ms
        ratio = next(iter(steady.values())) / ms
        payback = "-"
        if compiled:
            eager = steady.get(name.rsplit(", torch.compile", 1)[0])
            if eager is not None:
                gain = (eager - ms) / 1e3
                extra = first - eager / 1e3
                payback = (
                    f"{extra / gain:,.0f} steps (a 30-epoch run: {steps_per_run:,})"
                    if gain > 0
                    else "never (no faster)"
                )
        print(f"| {name} | {first:.2f} s | {ms:.1f} ms | {ratio:.2f}x | {payback} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8549)
    parser.add_argument("--dim", type=int, default=1280, help="feature size D (vith16plus)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs to time")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--preset", default="vith16plus")
    parser.add_argument("--view-size", type=int, default=512)
    parser.add_argument(
        "--backbone-images", type=int, default=1, help="images the backbone figure times (0: none)"
    )
    parser.add_argument(
        "--recipes",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time the training step under each recipe (precision, optimizer, compile)",
    )
    parser.add_argument("--recipe-steps", type=int, default=20, help="steps timed per recipe")
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
    print(
        f"30 epochs: {30 * per_epoch:.0f} s (goals on one H100: under 2 min, issue 4; "
        "under 20 s, issue 15)"
    )

    if args.backbone_images > 0:  # 0: skip the backbone figure (no model to build)
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
    if args.recipes:
        steps_per_run = 30 * -(-len(train) // args.batch_size)
        step_recipes(
            config, feats, labels, device, args.batch_size, args.recipe_steps, steps_per_run
        )


if __name__ == "__main__":
    main()
