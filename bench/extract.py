"""Stage-one throughput: backbone views/s and images/s, and the whole extract path.

    python bench/extract.py --preset tiny --view-size 224
    python bench/extract.py --preset vith16plus --view-size 512 --batch 8   # on a GPU box

Figures are ratios inside one run where possible:
- the backbone as `extract` runs it (bf16 autocast + SDPA flash on CUDA) against the same
  model in fp32 with eager attention: the speed-up;
- on CUDA, achieved TFLOP/s (counted by torch's FlopCounterMode) against a bf16 matmul
  measured in the same run: the share of the reachable rate;
- decode + views + backbone (DataLoader workers) against the backbone alone: whether
  decoding keeps up;
- the same forward under exactly one SDPA backend each (flash, cuDNN, memory-efficient, and
  math for reference): one row per backend, or one line saying it cannot run here;
- with --compile: the first call (compiling), the steady rate, the features rounded to
  float16 (as the cache stores them) against eager's, and whether the compile pays for
  itself within one shard of 1,024 images x 12 views.
Weights are random from the preset's shape: speed does not depend on their values.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
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

from common import sync


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


SHARD_VIEWS = 1024 * N_VIEWS  # one shard of `extract`: the compile is paid once per shard
BACKENDS = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "math": SDPBackend.MATH,
}


class Variant(FrozenBackbone):
    """The extract path's forward (normalisation, bf16 autocast on CUDA) over the same
    model, with its tokens computed under exactly one SDPA backend and/or by a compiled
    forward_features. `sdpa_kernel` does not nest by intersection: the innermost context
    sets the enabled backends outright, so the one entered here, inside FrozenBackbone's
    own flash+efficient context, is the one that runs. (Compiling `model` itself would not
    do: FrozenBackbone calls `model.forward_features`, which an OptimizedModule hands to
    the eager module.)"""

    def __init__(self, fast: FrozenBackbone, backend: SDPBackend | None, compile: bool):
        super().__init__(fast.model, fast.kind, fast.preset, fast.pool, fast.info)
        self.backend = backend
        features = fast.model.forward_features
        self.features = torch.compile(features) if compile else features
        self.to(fast.device)

    def tokens(self, pixels: torch.Tensor) -> tuple[torch.Tensor, int]:
        one = sdpa_kernel(self.backend) if self.backend is not None else contextlib.nullcontext()
        with one:
            return self.features(pixels), self.model.num_prefix_tokens


def fp16_fidelity(eager: torch.Tensor, other: torch.Tensor) -> tuple[float, float]:
    """Both rounded to float16 as the cache stores them: the largest |difference| and the
    share of elements that differ by more than one float16 ulp of the eager value."""
    e, o = eager.half().float(), other.half().float()
    _, exponent = torch.frexp(e)  # e = m * 2**exponent, 0.5 <= |m| < 1; 10 mantissa bits
    ulp = torch.ldexp(torch.ones_like(e), exponent - 11).clamp_min(2.0**-24)
    ulp = torch.where(e == 0, 2.0**-24, ulp)  # frexp(0) has exponent 0
    diff = (o - e).abs()
    return diff.max().item(), (diff > ulp).float().mean().item()


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
        help="time fp32 eager too (about a minute for vith16plus at 512 px on an H100)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also time the extract path under torch.compile: compile seconds, steady rate, "
        "float16 fidelity to eager, payback within one shard",
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
    unavailable = []
    for name, backend in BACKENDS.items():
        model = Variant(fast, backend, compile=False)
        try:
            model(views[:2])
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            unavailable.append(f"SDPA backend {name}: cannot run here ({first[:160]})")
            continue
        candidates.append((f"  SDPA {name} only", model))
    compiled = None
    if args.compile:
        compiled = Variant(fast, None, compile=True)
        start = time.perf_counter()
        compiled(views)
        sync(device)
        compile_s = time.perf_counter() - start
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
    peak = matmul_tflops(device) if device.type == "cuda" else None
    print(f"{'backbone':38s} {'views/s':>10s} {'images/s':>10s} {'TFLOP/s':>9s} {'vs matmul':>9s}")
    for name, vps, ips, tflops in rows:
        share = f"{tflops / peak:9.1%}" if peak else f"{'-':>9s}"
        print(f"{name:38s} {vps:10.1f} {ips:10.2f} {tflops:9.3f} {share}")
    for line in unavailable:
        print(line)
    if peak:
        print(f"bf16 matmul 8192^3 in the same run: {peak:.1f} TFLOP/s (goal: 50 % of it)")
    if args.baseline:
        print(f"speed-up of the extract path over fp32 eager: {rows[0][1] / rows[1][1]:.2f}x")
    if compiled is not None:
        report_compile(fast, compiled, views, compile_s, rows[0][1], rows[-1][1])

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


def report_compile(
    fast: FrozenBackbone,
    compiled: FrozenBackbone,
    views: torch.Tensor,
    compile_s: float,
    eager_vps: float,
    compiled_vps: float,
) -> None:
    """Compile seconds, steady rates, fidelity to eager in the cache's float16, payback."""
    worst, share = fp16_fidelity(fast(views), compiled(views))
    saved = (1 / eager_vps - 1 / compiled_vps) * SHARD_VIEWS
    print(
        f"torch.compile: first call (compiling) {compile_s:.1f} s; steady {compiled_vps:.1f} "
        f"views/s against eager {eager_vps:.1f} ({compiled_vps / eager_vps:.2f}x)"
    )
    print(
        f"torch.compile vs eager, features in float16 as cached: max |difference| {worst:.3g}, "
        f"{share:.3%} of elements differ by more than one float16 ulp of eager"
    )
    pays = compile_s < saved
    print(
        f"torch.compile pays back within one shard ({SHARD_VIEWS} views): "
        f"{'YES' if pays else 'NO'} (compile {compile_s:.1f} s vs {saved:.1f} s saved per shard)"
    )


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
