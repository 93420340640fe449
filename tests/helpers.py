"""Small builders shared by the tests: NATIX rows and a CLI runner that keeps exit codes."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from roadwork_cache.readers.schema import NATIX_COLUMNS
from roadwork_cache.stages.demo import DEMO_HEAD


def jpeg(colour=(90, 90, 90), size=(32, 24)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "JPEG")
    return buf.getvalue()


def natix_row(i: int, **over) -> dict:
    row = {c: None for c in NATIX_COLUMNS}
    row.update(
        {
            "image": {"bytes": jpeg((20 * (i % 10), 90, 90)), "path": f"{i}.jpg"},
            "id": i,
            "width": 32,
            "height": 24,
            "gps": "[39.77, -86.18]",
            "city_name": "Indianapolis",
            "scene_description": "Cones on the right." if i % 2 else "",
            "video_info.vid_id": f"vid{i // 3}",
            "scene_level_tags.daytime": "Light",
            "scene_level_tags.scene_environment": "Urban",
            "scene_level_tags.travel_alteration": "['Lane shift']" if i % 2 else None,
            "scene_level_tags.weather": "['Sunny', 'Cloudy']",
            "label": i % 2,
        }
    )
    row.update(over)
    return row


def write_shard(path, rows, row_group_size=4) -> None:
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=row_group_size)


def shared_real() -> Path:
    """The real photographs and descriptions in tests/data/real (with their licences in its
    README.md); ROADWORK_SHARED names another shared/ folder holding a `real/`."""
    if "ROADWORK_SHARED" in os.environ:
        return Path(os.environ["ROADWORK_SHARED"]) / "real"
    return Path(__file__).resolve().parent / "data" / "real"


def run_cli(monkeypatch, *args: str) -> int:
    """Run `roadwork ARGS` in-process through the real entry point; return the exit code."""
    from roadwork_cache.cli import main

    monkeypatch.setattr(sys, "argv", ["roadwork", *map(str, args)])
    try:
        main()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def planted_cache(
    root,
    n: int = 600,
    dim: int = 32,
    seed: int = 0,
    signal: float = 3.0,
    leaky_text: bool = True,
    test_fraction: float = 0.25,
    cities: tuple = ((39.77, -86.16), (42.36, -71.06), (33.45, -112.07)),
    leaky_daytime: bool = False,
    masks: bool = False,
):
    """A finished cache whose features carry a known signal.

    Positives get `signal * u` (a fixed random unit direction) added to 1-2 random tiles
    (views 1-9) and nowhere else: the global view (0) holds no signal, so a global-view
    baseline is near chance while a head that looks at tiles can find it. `description` is
    set only on positives (the real data's leak); `leaky_daytime` makes daytime the label too.
    With `masks`, the cache also holds masks of `clean` that mark the signal: a planted view's
    coverage is 1 in a random 2 x 2 block of its 4 x 4 grid, every other view's is 0. Returns
    (cache path, planted view mask
    [n, 12] bool, labels).
    """
    import numpy as np

    from roadwork_cache.store.cache import Cache

    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.5).astype(int)
    feats = rng.normal(size=(n, 12, dim)).astype(np.float32)
    u = rng.normal(size=dim)
    u /= np.linalg.norm(u)
    planted = np.zeros((n, 12), bool)
    for i in np.flatnonzero(labels):
        views = rng.choice(np.arange(1, 10), size=rng.integers(1, 3), replace=False)
        planted[i, views] = True
        feats[i, views] += signal * u
    vids = [f"v{i // 3}" for i in range(n)]  # videos of 3 frames; labels vary inside them
    n_test_vids = int(n / 3 * test_fraction)
    split = ["test" if int(v[1:]) < n_test_vids else "train" for v in vids]
    cache = Cache.create(
        root,
        n_rows=n,
        n_views=12,
        feature_dim=dim,
        attrs={
            "backbone": {"preset": "planted", "random_init": False, "feature_dim": dim},
            "views": {"layout": "grid3x3-v1", "n_views": 12},
        },
        shard_rows=256,
        chunk_rows=16,
    )
    cache.ensure_variant("clean")
    coverage = np.zeros((n, 12, 16), np.float32)
    if masks:
        record = {"source": "column:planted", "grid": 4, "dtype": "uint8", "prompts": None}
        cache.record_masks({**record, "classes": None, "segmenter": None}, ["clean"])
        for i, v in zip(*np.nonzero(planted), strict=True):
            r, c = rng.integers(0, 3, size=2)
            cells = coverage[i, v].reshape(4, 4)
            cells[r : r + 2, c : c + 2] = 1.0
    city = rng.integers(0, len(cities), size=n // 3 + 1)
    for shard in cache.shards():
        rows = []
        for i in range(shard.start, shard.stop):
            lat, lon = cities[city[i // 3]]
            rows.append(
                {
                    "id": str(i),
                    "split": split[i],
                    "label": int(labels[i]),
                    "vid_id": vids[i],
                    "gps_lat": lat + rng.normal(0, 0.05),
                    "gps_lon": lon + rng.normal(0, 0.05),
                    "city": None,
                    "weather": [["Sunny"], ["Rainy"], []][i % 3],
                    # leaky: daytime says the label (a field the head reads by default)
                    "daytime": ["Dark", "Light"][labels[i]]
                    if leaky_daytime
                    else ["Light", "Dark"][i % 2],
                    "scene": "Urban",
                    "description": "Cones ahead." if (labels[i] and leaky_text) else "",
                    "status": "ok",
                }
            )
        cache.write_features("clean", shard, feats[shard.start : shard.stop])
        mask = np.array([bool(r["description"]) for r in rows])
        text = np.zeros((len(rows), 384), np.float32)
        text[mask, 0] = 1.0
        cache.write_text(shard, text, mask)
        cache.write_samples(shard, rows)
        if masks:
            cache.write_masks("clean", shard, coverage[shard.start : shard.stop])
            cache.write_mask_present(shard, np.ones(len(shard), bool))
    cache.finalize()
    return root, planted, labels


SMALL_HEAD = {
    "dim": 32,
    "layers": 1,
    "heads": 4,
    "pyramid_dims": [32, 16],
    "fusion_dim": 32,
    "classifier_dim": 16,
    "gate_dim": 16,
}
# Heads the stage tests train in seconds: 32 wide with 2 heads, and the demo's (64 wide),
# dropout off where a test compares two paths of one model.
HEAD_32 = {**SMALL_HEAD, "heads": 2}
HEAD_64 = {**DEMO_HEAD, "dropout": 0.0}


def tiny_models(
    root: Path, view_size: int = 64, preset: str = "tiny", weights: Path | None = None
) -> tuple[Path, Path]:
    """A train-head run folder and a three-member ensemble folder (a member of two fold
    heads, one of a single head, and a linear probe) over the tiny backbone (or
    `preset` with `weights`), with seeded untrained heads, written through the format owners
    (no training: what a loader does must not depend on what the heads learned)."""
    import torch

    from roadwork_cache.backbone.loading import load_backbone
    from roadwork_cache.heads import HeadConfig, RoadworkHead
    from roadwork_cache.heads.combine import Calibration, Combination, LogitNorm
    from roadwork_cache.inference.ensemble_folder import (
        EnsembleManifest,
        MemberEntry,
        fold_folder,
        write_manifest,
    )
    from roadwork_cache.inference.head_folder import HeadRecord, write_head

    info = load_backbone(preset, weights, view_size=view_size).info
    views = {"layout": "grid3x3-v1", "n_views": 12, "view_size": view_size}
    config = HeadConfig.from_dict({"in_dim": info["feature_dim"], **SMALL_HEAD})

    def head(seed: int) -> RoadworkHead:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return RoadworkHead(config)

    def record(kind: str, **extra) -> HeadRecord:
        return HeadRecord(
            kind=kind,
            head=config.to_dict(),
            backbone=info,
            views=views,
            cache=str(root / "cache"),
            **extra,
        )

    run = root / "run"
    write_head(run, head(1), record("train-head", threshold=0.4))
    ensemble = root / "ensemble"
    members = []
    # member a has two fold heads (one config: they run stacked), member b one
    for m, (name, folds) in enumerate((("a", 2), ("b", 1))):
        rels = [fold_folder(name, k) for k in range(1, folds + 1)]
        for k, rel in enumerate(rels):
            norm = LogitNorm(0.1 + 0.2 * k, 2.0 - 0.5 * k).to_dict()
            write_head(
                ensemble / rel,
                head(10 + m + 5 * k),
                record("ensemble-member", member=name, fold=k + 1, logit_norm=norm),
            )
        members.append(MemberEntry(name, rels))
    # and a linear probe member (12 views concatenated), with seeded random weights
    from roadwork_cache.heads.probe import LinearProbe, ProbeConfig

    probe = LinearProbe(ProbeConfig(in_dim=info["feature_dim"]))
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(20)
        probe.weight.normal_(0, 0.05)
        probe.mean.normal_(0, 0.1)
    rel = fold_folder("p", 1)
    write_head(
        ensemble / rel,
        probe,
        HeadRecord(
            kind="ensemble-member",
            architecture="probe",
            head=probe.config.to_dict(),
            backbone=info,
            views=views,
            cache=str(root / "cache"),
            member="p",
            fold=1,
            logit_norm=LogitNorm(0.0, 1.5).to_dict(),
        ),
    )
    members.append(MemberEntry("p", [rel]))
    manifest = EnsembleManifest(
        members=members,
        method="mean",
        combination=Combination("mean", ["a", "b", "p"], [1 / 3, 1 / 3, 1 / 3]).to_dict(),
        calibration=Calibration(1.3, 0.45).to_dict(),
        cache=str(root / "cache"),
        backbone=info,
        views=views,
        temperature=1.3,
        threshold=0.45,
    )
    write_manifest(ensemble, manifest, {"method": "mean"})
    return run, ensemble


FOODS_CANDIDATES = ("clean", "tta-0", "tta-1", "tta-3", "tta-6")


def add_foods(folder: Path, seed: int = 0) -> None:
    """foods.safetensors for the model in `folder`, fitted on random head-sized embeddings."""
    import numpy as np

    from roadwork_cache.inference.bundles import load_bundle
    from roadwork_cache.inference.foods import FoodsSettings, FoodsStats, model_digest, save_stats

    bundle = load_bundle(folder)
    dim = bundle.embed(np.zeros((1, 12, bundle.config["head"]["in_dim"]), np.float32)).shape[1]
    rng = np.random.default_rng(seed)
    stats = FoodsStats.fit(
        rng.normal(size=(64, dim)) * 0.5,
        variants=list(FOODS_CANDIDATES),
        settings=FoodsSettings(keep=0.6),
        model_digest=model_digest(bundle.config),
    )
    save_stats(folder / "foods.safetensors", stats)


def write_transformers(folder: Path, seed: int, preset: str = "vits16") -> Path:
    """A random DINOv3 of the preset's shape, saved as transformers saves it; layer scales of
    1 so that its features depend on the image."""
    import torch
    from transformers import DINOv3ViTModel

    from roadwork_cache.backbone.presets import get_preset

    config = get_preset(preset).hf_config()
    config.layerscale_value = 1.0
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = DINOv3ViTModel(config).eval()
    model.save_pretrained(folder)
    return folder
