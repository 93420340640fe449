"""Stage-two ensemble speed: wall time of `roadwork ensemble` with the default six members
(K grouped folds each) plus DoRA folds, on a cache of N rows.

    python bench/ensemble.py                         # N = 8,549, full settings, default device
    python bench/ensemble.py --rows 400 --epochs 1 --dora-epochs 1    # a quick run on a CPU

The cache is written to a temporary folder: random float16 features [N, 12, D] with a planted
signal (speed does not depend on their values), NATIX-like metadata, a test split of the
real share (2,298 / 8,549) that serves as the DoRA target. Early stopping is switched off
(patience = epochs) so the figure is the full budget, not a lucky early stop. The goal is
under 10 minutes on one H100 for N = 8,549, 30 epochs, 5 folds and 5 DoRA folds of 20 epochs.
When a reduced run is timed, the full-size figure is printed as an extrapolation (training
time scales with rows x epochs), labelled as such.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from roadwork_cache.stages.ensemble import run_ensemble
from roadwork_cache.store.cache import Cache
from roadwork_cache.training.dora import DoraSettings
from roadwork_cache.training.loop import TrainConfig
from roadwork_cache.training.plan import EnsembleOptions
from roadwork_cache.views.geometry import N_VIEWS

FULL_ROWS, FULL_EPOCHS, FULL_DORA_EPOCHS = 8549, 30, 20
TEST_SHARE = 2298 / 8549


def write_cache(root: Path, rows: int, dim: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    labels = (rng.random(rows) < 0.8).astype(int)
    feats = rng.standard_normal((rows, N_VIEWS, dim), dtype=np.float32)
    feats[labels == 1, 3] += 2.0
    vids = [f"v{i // 4}" for i in range(rows)]
    n_test_vids = int(rows / 4 * TEST_SHARE)
    cache = Cache.create(
        root,
        n_rows=rows,
        n_views=N_VIEWS,
        feature_dim=dim,
        attrs={
            "backbone": {"preset": "bench", "random_init": True, "feature_dim": dim},
            "views": {"layout": "grid3x3-v1", "n_views": N_VIEWS},
        },
        shard_rows=1024,
        chunk_rows=16,
    )
    cache.ensure_variant("clean")
    cities = ((39.77, -86.16), (42.36, -71.06), (33.45, -112.07))
    for shard in cache.shards():
        cache.write_features("clean", shard, feats[shard.start : shard.stop].astype(np.float16))
        n = len(shard)
        cache.write_text(shard, np.zeros((n, 384), np.float16), np.zeros(n, bool))
        samples = []
        for i in range(shard.start, shard.stop):
            lat, lon = cities[(i // 4) % 3]
            samples.append(
                {
                    "id": str(i),
                    "split": "test" if i // 4 < n_test_vids else "train",
                    "label": int(labels[i]),
                    "vid_id": vids[i],
                    "gps_lat": lat + rng.normal(0, 0.1),
                    "gps_lon": lon + rng.normal(0, 0.1),
                    "city": None,
                    "weather": [["Sunny"], ["Rainy"], []][i % 3],
                    "daytime": "Light",
                    "scene": "Urban",
                    "description": "",
                    "status": "ok",
                }
            )
        cache.write_samples(shard, samples)
    cache.finalize()
    return root


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return (
        f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{torch.get_num_threads()} torch threads)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=FULL_ROWS)
    parser.add_argument("--dim", type=int, default=1280, help="feature size D (vith16plus)")
    parser.add_argument("--epochs", type=int, default=FULL_EPOCHS)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--dora-folds", type=int, default=5)
    parser.add_argument("--dora-epochs", type=int, default=FULL_DORA_EPOCHS)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        cache = write_cache(Path(tmp) / "cache", args.rows, args.dim)
        print(f"cache written in {time.perf_counter() - start:.1f} s")
        opts = EnsembleOptions(
            cache=cache,
            out=Path(tmp) / "ens",
            members="default",
            folds=args.folds,
            train=TrainConfig(epochs=args.epochs, batch_size=args.batch_size, patience=args.epochs),
            dora_folds=args.dora_folds,
            dora=DoraSettings(epochs=args.dora_epochs, patience=args.dora_epochs),
            jobs=args.jobs,
            device=args.device,
            progress=False,
        )
        start = time.perf_counter()
        result = run_ensemble(opts)
        wall = time.perf_counter() - start
    metrics = result["metrics"]
    members = metrics["seconds"]["members"]
    dora = metrics["dora"]["seconds"] if metrics["dora"] else 0.0
    rest = wall - members - dora
    fold_seconds = [f["seconds"] for m in metrics["members"].values() for f in m["folds"]]
    print(f"device: {device_name(device)}, torch {torch.__version__}")
    print(
        f"N = {args.rows} rows x 12 views x D = {args.dim}; 6 default members x "
        f"{args.folds} folds, {args.epochs} epoch(s) each (no early stop), batch "
        f"{args.batch_size}, jobs {args.jobs}; {args.dora_folds} DoRA folds x "
        f"{args.dora_epochs} epoch(s)"
    )
    print(
        f"measured wall time: {wall / 60:.2f} min (members {members:.1f} s, DoRA {dora:.1f} s, "
        f"combination / evaluation / writing {rest:.1f} s)"
    )
    print(
        "seconds per member fold: "
        + ", ".join(
            f"{name} {np.mean([f['seconds'] for f in m['folds']]):.1f}"
            for name, m in metrics["members"].items()
        )
    )
    full = (args.rows, args.epochs, args.dora_epochs) == (FULL_ROWS, FULL_EPOCHS, FULL_DORA_EPOCHS)
    if not full:
        # Training time is rows x epochs; the fixed per-fold cost (evaluation passes) scales
        # with rows only, so this slightly overstates; the rest scales with rows.
        row_scale = FULL_ROWS / args.rows
        est = (
            members * row_scale * FULL_EPOCHS / args.epochs
            + dora * row_scale * FULL_DORA_EPOCHS / args.dora_epochs
            + rest * row_scale
        )
        print(
            f"EXTRAPOLATION (not measured) to N = {FULL_ROWS}, {FULL_EPOCHS} epochs, "
            f"{FULL_DORA_EPOCHS} DoRA epochs on this device: {est / 60:.1f} min "
            f"(scaled linearly in rows x epochs from the run above)"
        )
    print(
        f"median member fold: {np.median(fold_seconds):.1f} s; goal: the full run under "
        "10 min on one H100"
    )


if __name__ == "__main__":
    main()
