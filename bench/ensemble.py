"""Stage-two ensemble speed: wall time of `roadwork ensemble` with the default members
(K grouped folds each) plus DoRA folds, on a cache of N rows; or, with --compare-sequential,
the members' fold training one fold at a time against folds trained together (batched).

    python bench/ensemble.py                         # N = 8,549, full settings, default device
    python bench/ensemble.py --rows 400 --epochs 1 --dora-epochs 1    # a quick run on a CPU
    python bench/ensemble.py --compare-sequential --rows 1500 --dim 64 --head-dim 128 \
        --layers 2 --epochs 2 --folds 5                                # the CPU ratio

The cache is written to a temporary folder: random float16 features [N, 12, D] with a planted
signal (speed does not depend on their values), NATIX-like metadata, a test split of the
real share (2,298 / 8,549) that serves as the DoRA target. Early stopping is switched off
(patience = epochs) so the figure is the full budget, not a lucky early stop. The goal is
under 10 minutes on one H100 for N = 8,549, 30 epochs, 5 folds and 5 DoRA folds of 20 epochs.
When a reduced run is timed, the full-size figure is printed as an extrapolation (training
time scales with rows x epochs), labelled as such.

--compare-sequential plans the run once (same cache, folds, members, seeds) and times
`run_folds` over the head members' fold jobs twice, in one process: one job at a time, then
batched (`training.fold_runs`: a member's folds, and members with the same settings,
trained together). Both include what each fold job does after training (saving weights,
logits on every row). Probe members (scikit-learn fits, never batched) are left out of both.
It then prints the kernel ceiling: per batch group, a training step of K fold models on B
rows each against one model on K x B rows, the same arithmetic in bigger kernels and no
vmap. Batching can at best close the gap between the two, so a ceiling below 2x bounds the
ratio below 2x on that device, however the folds are batched. Beside them, the K models in
one vmapped step (the batched trainer's way) show how much of the ceiling vmap reaches.
`--head-dim` / `--layers` set the head width and depth under every member (a member's own
setting wins: `wide` stays 768 wide, `deep` 6 layers deep).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import tempfile
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.func import functional_call, stack_module_state, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from roadwork_cache.heads import HeadConfig, RoadworkHead
from roadwork_cache.runtime.devices import autocast
from roadwork_cache.stages.ensemble import run_ensemble
from roadwork_cache.store.cache import Cache
from roadwork_cache.training.dora import DoraSettings
from roadwork_cache.training.fold_runs import batch_groups, run_folds
from roadwork_cache.training.loop import TrainConfig
from roadwork_cache.training.plan import EnsembleOptions, context, plan_ensemble, plan_members
from roadwork_cache.views.geometry import N_VIEWS

from common import device_name, sync

FULL_ROWS, FULL_EPOCHS, FULL_DORA_EPOCHS = 8549, 30, 20
MATH = SDPBackend.MATH  # the CPU flash kernel has no vmap rule (training/batched.py)
TEST_SHARE = 2298 / 8549


def write_cache(
    root: Path, rows: int, dim: int, seed: int = 0, variants: tuple[str, ...] = ("clean",)
) -> Path:
    """A cache of `rows` random rows with a planted signal; every variant beyond `clean`
    is the clean features plus a little noise of its own (the ensemble reads them as the
    aug / natix renders: speed does not depend on their values)."""
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
    for name in variants:
        cache.ensure_variant(name)
    cities = ((39.77, -86.16), (42.36, -71.06), (33.45, -112.07))
    for shard in cache.shards():
        clean = feats[shard.start : shard.stop]
        for k, name in enumerate(variants):
            noise = 0.0 if name == "clean" else 0.1 * (k + 1)
            cache.write_features(name, shard, (clean + noise).astype(np.float16))
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


def options(args, tmp: Path, cache: Path) -> EnsembleOptions:
    head = {k: v for k, v in (("dim", args.head_dim), ("layers", args.layers)) if v is not None}
    return EnsembleOptions(
        cache=cache,
        out=tmp / "ens",
        members="default",
        folds=args.folds,
        head=head,
        train=TrainConfig(epochs=args.epochs, batch_size=args.batch_size, patience=args.epochs),
        dora_folds=args.dora_folds,
        target="test" if args.dora_folds else None,  # the DoRA folds adapt to the test split
        dora=DoraSettings(epochs=args.dora_epochs, patience=args.dora_epochs),
        jobs=args.jobs,
        batch_folds=args.batch_folds,
        device=args.device,
        progress=False,
    )


def compare_sequential(opts: EnsembleOptions, device: torch.device, repeat: int) -> None:
    """The head members' fold jobs one at a time, then batched: same plan, same process."""
    p = plan_ensemble(opts)
    ctx = context(p, device)
    _, jobs, _ = plan_members(
        opts, p, ctx, lambda *_: None, lambda name, k: str(opts.out / name / str(k))
    )
    jobs = [j for j in jobs if j.kind == "head"]
    groups = batch_groups(jobs)
    print(
        f"{len(jobs)} head fold jobs ({len({j.member for j in jobs})} members x {len(p.folds)} "
        f"folds), batched as {len(groups)} groups of {sorted(len(g) for g in groups)}; "
        f"fold training rows {sorted({len(j.train_rows) for j in jobs})}"
    )
    # The training features are stacked once per process for every fold job (before, each
    # job stacked its own copy): timed here, outside both timings below.
    sync(device)
    start = time.perf_counter()
    stacked = [ctx.train_features(v) for v in {tuple(j.variants) for j in jobs}]
    sync(device)
    print(
        f"training features stacked once: {sum(t.nbytes for t in stacked) / 1e9:.2f} GB in "
        f"{time.perf_counter() - start:.2f} s (a fold job stacking its own would pay it "
        f"{len(jobs)} times)"
    )
    # warm-up: both paths once on two short jobs (imports, allocator, kernel caches)
    warm = [
        replace(
            j,
            train={**j.train, "epochs": 1},
            train_rows=j.train_rows[:64],
            weights=None if j.weights is None else j.weights[:64],
        )
        for j in jobs[:2]
    ]
    for batch in (False, True):
        run_folds(ctx, warm, 1, batch_folds=batch)
    seconds: dict[str, list[float]] = {"sequential": [], "batched": []}
    for _ in range(repeat):
        for name in seconds:
            sync(device)
            start = time.perf_counter()
            run_folds(ctx, jobs, 1, batch_folds=name == "batched")
            sync(device)
            seconds[name].append(time.perf_counter() - start)
            print(f"  {name}: {seconds[name][-1]:.2f} s (load {os.getloadavg()[0]:.1f})")
    seq, bat = min(seconds["sequential"]), min(seconds["batched"])
    print(f"device: {device_name(device)}, torch {torch.__version__}")
    print(f"sequential: {seq:.2f} s; batched: {bat:.2f} s (best of {repeat})")
    print(f"batched vs sequential: {seq / bat:.2f}x")
    kernel_ceiling(ctx, groups, device, opts.train.batch_size)


def train_step(model, optim, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> None:
    with autocast(device):
        logits = model(x).logits.float()
    torch.nn.functional.cross_entropy(logits, y).backward()
    optim.step()
    optim.zero_grad(set_to_none=True)


def vmapped_steps(models, x: torch.Tensor, y: torch.Tensor, device: torch.device):
    """One training step of the K models as one vmapped computation, as the batched fold
    trainer runs it (stacked parameters, `vmap(functional_call)`, the math attention kernel
    on a CPU), with one AdamW over the stacked parameters. x [K * B, ...] -> a closure."""
    k = len(models)
    params, _ = stack_module_state(models)
    params = {n: p.detach().requires_grad_(True) for n, p in params.items()}
    optim = torch.optim.AdamW(params.values(), lr=1e-4)
    base = copy.deepcopy(models[0])
    xs, ys = x.view(k, -1, *x.shape[1:]), y.view(k, -1)

    def loss(p, xx, yy):
        return torch.nn.functional.cross_entropy(functional_call(base, p, (xx,)).logits, yy)

    fold_losses = vmap(loss, randomness="different")
    attention = contextlib.nullcontext if device.type == "cuda" else partial(sdpa_kernel, MATH)

    def step() -> None:
        with autocast(device), attention():
            fold_losses(params, xs, ys).sum().backward()
        optim.step()
        optim.zero_grad(set_to_none=True)

    return step


def kernel_ceiling(ctx, groups, device: torch.device, batch_size: int, steps: int = 8) -> None:
    """What any batching of K folds could gain on this device, vmap aside: one training step
    of K models on B rows each, one after another, against one model on K x B rows (the
    same arithmetic in kernels K times bigger). Below 1x, bigger kernels are no faster here
    than K small ones, and folding the folds into one computation cannot pay. The K models
    vmapped (the batched trainer's way) show how much of that ceiling it reaches."""
    total = {"K steps of B rows": 0.0, "one step of K x B rows": 0.0, "vmapped": 0.0}
    for jobs in groups:
        torch.manual_seed(0)
        config = HeadConfig.from_dict(jobs[0].head)
        models = [RoadworkHead(config).to(device).train() for _ in jobs]
        optims = [torch.optim.AdamW(m.parameters(), lr=1e-4) for m in models]
        feats = ctx.train_features(jobs[0].variants)[0]
        k = len(jobs)
        rows = torch.randint(len(feats), (k * batch_size,), device=feats.device)
        x = feats[rows].to(device).float()
        y = torch.randint(2, (k * batch_size,), device=device)
        runs = (
            lambda a=(models, optims, x.split(batch_size), y.split(batch_size)): [
                train_step(*fold, device) for fold in zip(*a, strict=True)
            ],
            lambda m=models[0], o=optims[0], x=x, y=y: train_step(m, o, x, y, device),
            vmapped_steps(models, x, y, device),
        )
        times = {}
        for name, fn in zip(total, runs, strict=True):
            fn()  # warm-up
            sync(device)
            start = time.perf_counter()
            for _ in range(steps):
                fn()
            sync(device)
            times[name] = (time.perf_counter() - start) / steps
            total[name] += times[name]
        print(
            f"  step of {jobs[0].member} (K = {k}): {times['K steps of B rows'] * 1e3:.1f} ms "
            f"as K steps of B = {batch_size} rows, {times['one step of K x B rows'] * 1e3:.1f} ms "
            f"as one step of K x B rows, {times['vmapped'] * 1e3:.1f} ms as one vmapped step"
        )
    small, big, vmapped = total.values()
    print(f"kernel ceiling (K models on B rows vs one on K x B rows): {small / big:.2f}x")
    print(
        f"vmapped step vs K steps (what the batched trainer's step reaches): {small / vmapped:.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=FULL_ROWS)
    parser.add_argument("--dim", type=int, default=1280, help="feature size D (vith16plus)")
    parser.add_argument("--head-dim", type=int, default=None, help="head width (default 512)")
    parser.add_argument("--layers", type=int, default=None, help="head blocks (default 4)")
    parser.add_argument(
        "--variants",
        default="clean",
        help="cached variants besides clean, e.g. aug-0,aug-1,natix-0,natix-1,natix-2,natix-3 "
        "(as `extract --variants clean,aug:2,natix:4` writes; the ensemble then selects on "
        "natix and draws from all)",
    )
    parser.add_argument("--epochs", type=int, default=FULL_EPOCHS)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--dora-folds", type=int, default=5)
    parser.add_argument("--dora-epochs", type=int, default=FULL_DORA_EPOCHS)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument(
        "--batch-folds",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="the ensemble's --batch-folds (default: off, as the ensemble's)",
    )
    parser.add_argument(
        "--compare-sequential",
        action="store_true",
        help="time the head members' folds one at a time and batched, in one run",
    )
    parser.add_argument("--repeat", type=int, default=1, help="with --compare-sequential")
    parser.add_argument("--threads", type=int, default=None, help="torch threads on the CPU")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        variants = ("clean", *(v for v in args.variants.split(",") if v and v != "clean"))
        cache = write_cache(Path(tmp) / "cache", args.rows, args.dim, variants=variants)
        print(f"cache written in {time.perf_counter() - start:.1f} s")
        opts = options(args, Path(tmp), cache)
        if args.compare_sequential:
            return compare_sequential(opts, device, args.repeat)
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
        f"N = {args.rows} rows x 12 views x D = {args.dim}; {len(metrics['members'])} default "
        f"members x {args.folds} folds, {args.epochs} epoch(s) each (no early stop), batch "
        f"{args.batch_size}, jobs {args.jobs}, folds batched: {metrics['batch_folds']}; "
        f"{args.dora_folds} DoRA folds x {args.dora_epochs} epoch(s)"
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
        "5 min on one H100 (issue 15)"
    )


if __name__ == "__main__":
    main()
