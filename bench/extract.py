"""Stage-one throughput: backbone views/s and images/s, and the whole extract path.

    python bench/extract.py --preset tiny --view-size 224
    python bench/extract.py --preset vith16plus --view-size 512 --batch 8   # on a GPU box

Figures are ratios inside one run where possible:
- the backbone as `extract` runs it (bf16 autocast + SDPA flash on CUDA) against the same
  model in fp32 with eager attention: the speed-up;
- on CUDA, achieved TFLOP/s (counted by torch's FlopCounterMode) against a bf16 matmul
  measured in the same run: the share of the reachable rate;
- decode + views + backbone (DataLoader workers) against the backbone alone: whether
  decoding keeps up.
Weights are random from the preset's shape: speed does not depend on their values.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from roadwork_cache.backbone.loading import random_model
from roadwork_cache.backbone.model import FrozenBackbone
from roadwork_cache.backbone.presets import get_preset
from roadwork_cache.readers.sources import open_source
from roadwork_cache.runtime.devices import default_workers
from roadwork_cache.stages.extract import extract_variants
from roadwork_cache.synth.dataset import write_synthetic
from roadwork_cache.views.batching import view_loader
from roadwork_cache.views.geometry import N_VIEWS


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, iters: int, warmup: int = 2) -> float:
    """Seconds per call, after warm-up."""
    for _ in range(warmup):
        fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    sync(device)
    return (time.perf_counter() - start) / iters


def matmul_tflops(device: torch.device, n: int = 8192, iters: int = 20) -> float:
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    return 2 * n**3 / timed(lambda: a @ b, device, iters) / 1e12


def forward_flops(backbone: FrozenBackbone, views: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter:
        backbone(views[:1])
    return counter.get_total_flops()


def stand_in(preset: str, view_size: int, attn: str) -> torch.nn.Module:
    """The preset's backbone with random weights; attn 'eager' computes attention with plain
    matmuls and softmax instead of SDPA (timm's fused_attn off)."""
    model = random_model(get_preset(preset), view_size)
    for block in model.blocks:
        block.attn.fused_attn = attn != "eager"
    return model


def make_backbone(preset: str, view_size: int, attn: str, device: torch.device) -> FrozenBackbone:
    p = get_preset(preset)
    info = {"preset": p.name, "view_size": view_size, "feature_dim": p.embed_dim}
    return FrozenBackbone(stand_in(preset, view_size, attn), "random", p, "cls", info).to(device)


class Fp32Eager(FrozenBackbone):
    """The baseline: no autocast, eager attention; otherwise the same forward."""

    @torch.inference_mode()
    def forward(self, views: torch.Tensor) -> torch.Tensor:
        x = views.to(self.device).permute(0, 3, 1, 2).float()
        x = (x - self.mean) / self.std
        return self.tokens(x)[0][:, 0].float()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--view-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8, help="images per forward (x12 views)")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rows", type=int, default=64, help="synthetic images for end to end")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument(
        "--variants",
        default="clean,aug-0,natix-0,tta-0",
        help="variants timed end to end (clean first: the others are compared with it)",
    )
    parser.add_argument(
        "--baseline",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="time fp32 eager and a bf16 matmul too (minutes for vith16plus)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also time the extract path under torch.compile (a candidate)",
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    workers = default_workers(device) if args.workers is None else args.workers
    if device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) - workers))

    n_views = args.batch * N_VIEWS
    views = torch.randint(0, 256, (n_views, args.view_size, args.view_size, 3), dtype=torch.uint8)
    if device.type == "cuda":
        views = views.pin_memory()
    fast = make_backbone(args.preset, args.view_size, "sdpa", device)
    base = (
        Fp32Eager(
            stand_in(args.preset, args.view_size, "eager"),
            "random",
            fast.preset,
            "cls",
            fast.info,
        ).to(device)
        if args.baseline
        else None
    )

    flops_per_view = forward_flops(fast, views) / 1
    candidates = [("extract path (bf16 + SDPA on CUDA)", fast)]
    if args.baseline:
        candidates.append(("fp32 eager", base))
    if args.compile:
        compiled = FrozenBackbone(
            torch.compile(fast.model), "transformers", fast.preset, "cls", fast.info
        ).to(device)
        start = time.perf_counter()
        compiled(views)
        sync(device)
        print(f"torch.compile: first call (compiling) {time.perf_counter() - start:.1f} s")
        candidates.append(("extract path + torch.compile", compiled))
    rows = []
    for name, model in candidates:
        seconds = timed(lambda m=model: m(views), device, args.iters)
        rows.append(
            (
                name,
                n_views / seconds,
                args.batch / seconds,
                flops_per_view * n_views / seconds / 1e12,
            )
        )

    print(
        f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}"
        f" ({os.cpu_count()} cores), torch {torch.__version__}"
    )
    print(
        f"preset {args.preset}, view {args.view_size} px, {args.batch} images x 12 views per "
        f"forward, {flops_per_view / 1e9:.2f} GFLOP per view"
    )
    peak = matmul_tflops(device) if device.type == "cuda" and args.baseline else None
    print(f"{'backbone':38s} {'views/s':>10s} {'images/s':>10s} {'TFLOP/s':>9s} {'vs matmul':>9s}")
    for name, vps, ips, tflops in rows:
        share = f"{tflops / peak:9.1%}" if peak else f"{'-':>9s}"
        print(f"{name:38s} {vps:10.1f} {ips:10.2f} {tflops:9.3f} {share}")
    if peak:
        print(f"bf16 matmul 8192^3 in the same run: {peak:.1f} TFLOP/s")
    if args.baseline:
        print(f"speed-up of the extract path over fp32 eager: {rows[0][1] / rows[1][1]:.2f}x")

    # End to end: parquet -> decode -> variant -> 12 views -> backbone -> host, through the
    # functions `extract` runs. Startup (worker processes, the first batch) is timed apart
    # from the steady rate: `extract` pays it once per shard of ~1024 rows, this bench once
    # per 64-256 rows, so its steady rate is the figure that carries over.
    with tempfile.TemporaryDirectory() as tmp:
        write_synthetic(Path(tmp), args.rows, seed=0, sizes=[(1920, 1080)])
        samples = list(open_source(f"{tmp}/*.parquet").iter_samples())
        pin = device.type == "cuda"
        rates = {}
        for variant in args.variants.split(","):
            decode = Clock()
            for batch in view_loader(samples, args.view_size, args.batch, workers, pin, [variant]):
                decode.tick(len(batch.items))
            e2e = Clock()
            for _ in extract_variants(samples, [variant], fast, args.batch, workers, e2e.tick):
                pass
            rates[variant] = (decode, e2e)
        shard = Clock()
        for _ in extract_variants(samples, list(rates), fast, args.batch, workers, shard.tick):
            pass
    print(
        f"end to end on {args.rows} synthetic 1920x1080 JPEGs, {workers} decode workers, "
        "steady rates (after the first batch):"
    )
    print(
        f"{'variant':10s} {'decode+views img/s':>19s} {'extract img/s':>14s} "
        f"{'startup s':>10s} {'vs clean':>9s} {'vs backbone alone':>18s}"
    )
    clean = rates["clean"][1].steady
    for variant, (decode, e2e) in rates.items():
        print(
            f"{variant:10s} {decode.steady:19.2f} {e2e.steady:14.2f} {e2e.startup:10.2f} "
            f"{e2e.steady / clean:9.0%} {e2e.steady / rows[0][2]:18.0%}"
        )
    print(
        f"the {len(rates)} variants through one loader (as `extract` runs a shard): "
        f"{shard.steady:.2f} img/s steady, {shard.overall:.2f} overall, startup "
        f"{shard.startup:.2f} s"
    )
    if "aug-0" in rates:
        met = rates["aug-0"][1].steady >= 0.9 * clean
        print(f"goal: aug images/s at least 90 % of clean ({'MET' if met else 'NOT MET'} here)")


class Clock:
    """Counts rows as they finish: startup = time to the first batch; steady = the rate of
    the rows after it."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.stamps: list[tuple[float, int]] = []

    def tick(self, n: int) -> None:
        self.stamps.append((time.perf_counter(), n))

    @property
    def startup(self) -> float:
        return self.stamps[0][0] - self.start

    @property
    def steady(self) -> float:
        rows = sum(n for _, n in self.stamps[1:])
        return rows / max(self.stamps[-1][0] - self.stamps[0][0], 1e-9)

    @property
    def overall(self) -> float:
        return sum(n for _, n in self.stamps) / (self.stamps[-1][0] - self.start)


if __name__ == "__main__":
    sys.exit(main())
