"""`roadwork demo`: the whole chain on synthetic data, small enough for a CPU in minutes.

Read top to bottom: synth -> extract (tiny random-weight backbone, small views, a few
variants) -> train-head (a small head) -> ensemble -> tta (FOODS beside mean-TTA and no TTA)
-> predict (a few image files and one broken file, as a user would) -> report. Each step
prints where its output is; a table at the end lists them all. The tiny backbone has random
weights, so every score here shows that the machinery runs end to end, not how well a real
DINOv3 backbone does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from rich.table import Table

from roadwork_cache.runtime.errors import UserError
from roadwork_cache.runtime.progress import console, results

# A head small enough to train in seconds per epoch on two CPU cores.
DEMO_HEAD: dict[str, Any] = {
    "dim": 64,
    "layers": 1,
    "heads": 4,
    "pyramid_dims": [64, 32],
    "fusion_dim": 64,
    "classifier_dim": 32,
    "gate_dim": 32,
}
RANDOM_WEIGHTS = (
    "The tiny backbone has random weights: every score in this demo is a "
    "demonstration of the machinery, not of quality. Use a real DINOv3 preset "
    "with --weights for meaningful numbers."
)
N_PREDICT_IMAGES = 4


@dataclass
class DemoOptions:
    out: Path
    rows: int = 240
    view_size: int = 64
    variants: str = "clean,aug:2,natix:2,tta:4"
    epochs: int = 8
    seed: int = 0
    text: bool = True
    head: dict[str, Any] = field(default_factory=lambda: dict(DEMO_HEAD))
    device: str = "auto"
    progress: bool = True


def step(title: str) -> None:
    console.rule(f"[bold]{title}")


def write_demo_images(data: Path, folder: Path, n: int) -> list[Path]:
    """A few test-split images as files (what a user points `predict` at), plus one broken
    file to show that a bad input gets an error line and the others still get answers."""
    folder.mkdir(parents=True, exist_ok=True)
    shards = sorted(data.glob("test-*.parquet")) or sorted(data.glob("*.parquet"))
    table = pq.read_table(shards[0], columns=["image", "id", "label"]).slice(0, n)
    paths = []
    for row in table.to_pylist():
        label = "roadwork" if row["label"] == 1 else "no-roadwork"
        path = folder / f"{row['id']}-{label}.jpg"
        path.write_bytes(row["image"]["bytes"])
        paths.append(path)
    broken = folder / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    return [*paths, broken]


# Three small members on three grouped folds: an ensemble's machinery, at a demo's cost.
DEMO_MEMBERS = [
    {"name": "baseline", "seed": 1},
    {"name": "no-pruning", "seed": 2, "head": {"keep": None}},
    {"name": "gps-strong", "seed": 3, "gps_strength": 2.0},
]


def run_ensemble_step(opts: DemoOptions, cache: Path, out: Path, train) -> Path:
    """`roadwork ensemble` with small members."""
    from roadwork_cache.stages.ensemble import run_ensemble
    from roadwork_cache.training.plan import EnsembleOptions

    out.mkdir(parents=True, exist_ok=True)
    members = out.parent / "ensemble-members.json"
    members.write_text(json.dumps(DEMO_MEMBERS, indent=2))
    result = run_ensemble(
        EnsembleOptions(
            cache=cache,
            out=out,
            members=str(members),
            folds=3,
            seed=opts.seed,
            head=dict(opts.head),
            train=train,
            device=opts.device,
            progress=opts.progress,
        )
    )
    results.print(result["table"])
    return Path(result["out"])


def run_demo(opts: DemoOptions) -> dict[str, Path]:
    from roadwork_cache.reports.tables import answers_table, extract_table
    from roadwork_cache.stages.extract import ExtractConfig, run_extract
    from roadwork_cache.stages.predict import PredictOptions, run_predict
    from roadwork_cache.stages.report import write_report
    from roadwork_cache.stages.train_head import run_train_head
    from roadwork_cache.stages.tta import TtaOptions, run_tta
    from roadwork_cache.synth.dataset import write_synthetic
    from roadwork_cache.training.loop import TrainConfig
    from roadwork_cache.training.prepare import TrainHeadOptions
    from roadwork_cache.views.variants import parse_variants

    variants = parse_variants(opts.variants)
    if not any(v.startswith("tta-") for v in variants):
        raise UserError("the demo needs tta variants for its tta step, e.g. --variants clean,tta:4")
    out = Path(opts.out)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} exists and is not empty; give the demo a new folder")
    console.print(f"[yellow]{RANDOM_WEIGHTS}")
    where: dict[str, Path] = {}

    step("1. synth: synthetic NATIX-format parquet shards")
    data = out / "data"
    write_synthetic(data, opts.rows, opts.seed)
    where["synthetic data"] = data
    console.print(f"{opts.rows} rows in {data}")

    step("2. extract: tiny backbone, 12 views per image and variant, into a Zarr cache")
    cache = out / "cache"
    summary = run_extract(
        ExtractConfig(
            source=str(data),
            cache=cache,
            backbone="tiny",
            view_size=opts.view_size,
            variants=variants,
            text=opts.text,
            device=opts.device,
            progress=opts.progress,
            shard_rows=128,
        )
    )
    if summary is not None:
        results.print(extract_table(summary))
    where["feature cache"] = cache

    step("3. train-head: a small head from the cache alone")
    run = out / "runs" / "head"
    train = TrainConfig(
        epochs=opts.epochs, batch_size=32, lr=1e-3, seed=opts.seed, patience=opts.epochs
    )
    result = run_train_head(
        TrainHeadOptions(
            cache=cache,
            out=run,
            head=dict(opts.head),
            train=train,
            device=opts.device,
            progress=opts.progress,
        )
    )
    results.print(result["table"])
    where["train-head run"] = run

    step("4. ensemble: small members on grouped folds, combined and calibrated")
    model = run_ensemble_step(opts, cache, out / "ens", train)
    where["ensemble"] = model
    console.print(f"model used from here on: {model}")

    step("5. tta: FOODS beside mean-TTA and no TTA, on the test split")
    preds = out / "preds" / "test.parquet"
    tta = run_tta(
        TtaOptions(
            cache=cache,
            model=model,
            out=preds,
            split="test",
            device=opts.device,
            progress=opts.progress,
        )
    )
    if tta["table"] is not None:
        results.print(tta["table"])
    results.print(tta["variant_table"])
    where["tta predictions"] = preds
    where["tta metrics"] = tta["metrics_path"]
    if tta["stats_path"]:
        where["FOODS statistics"] = tta["stats_path"]

    step("6. predict: image files in, the miner's probability out (with on-the-fly TTA)")
    images = write_demo_images(data, out / "images", N_PREDICT_IMAGES)
    answers, predictor = run_predict(
        PredictOptions(
            inputs=[str(out / "images")], model=model, tta=True, device=opts.device, progress=False
        )
    )
    for note in predictor.notes:
        console.print(f"note: {note}")
    results.print(answers_table(answers, predictor))
    where["images for predict"] = images[0].parent

    step("7. report: one HTML page about the train-head run")
    page = write_report(run)
    where["report"] = page

    table = Table(title="demo: where everything is")
    table.add_column("what")
    table.add_column("where")
    for what, path in where.items():
        table.add_row(what, str(path))
    results.print(table)
    console.print(f"[yellow]{RANDOM_WEIGHTS}")
    return where
