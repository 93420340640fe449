"""`roadwork extract`: run the frozen backbone once over the 12 views of every image.

Read top to bottom: open the source, load the backbone, open or create the cache, then for
every shard not yet done: decode and cut views in DataLoader workers, run the backbone on
all views of a batch of images in one forward, embed the scene descriptions, and write the
whole shard. A shard already marked done is skipped, so a re-run resumes. With roadwork
masks (`--masks`, or a manifest's `mask` column), a second pass per shard writes each
variant's per-view mask coverage; masks added to an existing cache are all it computes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from roadwork_cache.backbone.loading import load_backbone
from roadwork_cache.backbone.mask_targets import SAM3, MaskSpec, shard_masks
from roadwork_cache.backbone.model import FrozenBackbone
from roadwork_cache.backbone.pipeline import backbone_features
from roadwork_cache.backbone.presets import POOLS, check_normalisation, get_preset
from roadwork_cache.readers.schema import Sample
from roadwork_cache.readers.sources import open_source
from roadwork_cache.reports.tables import ExtractSummary
from roadwork_cache.runtime.devices import default_workers, keeps_torch_threads, resolve_device
from roadwork_cache.runtime.distributed import close_ranks, init_ranks
from roadwork_cache.runtime.errors import UserError
from roadwork_cache.runtime.progress import console, progress_bar
from roadwork_cache.runtime.version import __version__
from roadwork_cache.store.cache import Cache, ShardRange
from roadwork_cache.store.lock import check_cache_path, refuse_if_locked, writer_lock
from roadwork_cache.store.samples import sample_row
from roadwork_cache.views.batching import view_loader
from roadwork_cache.views.geometry import LAYOUT, N_VIEWS, VIEW_NAMES
from roadwork_cache.views.variants import check_variant, recipe


@dataclass
class ExtractConfig:
    source: str
    cache: Path
    backbone: str = "tiny"
    weights: str | None = None
    manifest: str | None = None
    view_size: int | None = None
    pool: str = "cls"
    normalisation: str = "lvd"  # lvd (ImageNet's statistics) or sat (the SAT-493M weights)
    batch_size: int = 8  # images per forward; x12 views
    workers: int | None = None
    device: str = "auto"
    shard_rows: int = 1024
    chunk_rows: int = 16
    limit: int | None = None
    splits: list[str] | None = None
    variants: list[str] = field(default_factory=lambda: ["clean"])
    text: bool = True
    progress: bool = True
    # roadwork masks: 'sam3' or 'column:NAME' (a manifest's `mask` column needs neither)
    masks: str | None = None
    segmenter: str | None = None
    prompts: list[str] | None = None
    mask_grid: int = 4
    mask_dtype: str = "uint8"
    mask_classes: tuple[int, ...] | None = None
    mask_score_threshold: float = 0.5
    compile: bool = False  # the backbone under torch.compile (bench/extract.py measures it)


def cache_attrs(cfg: ExtractConfig, backbone: FrozenBackbone, source: str) -> dict[str, Any]:
    return {
        "backbone": backbone.info,
        "views": {
            "layout": LAYOUT,
            "n_views": N_VIEWS,
            "names": list(VIEW_NAMES),
            "view_size": backbone.info["view_size"],
        },
        "variants": {},
        "text_model": "all-MiniLM-L6-v2" if cfg.text else None,
        "source": source,
        "tool_version": __version__,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def check_resumable(cache: Cache, backbone: FrozenBackbone, n_rows: int) -> None:
    """A resumed cache must have been started with the same backbone and the same rows."""
    have = cache.meta
    recorded = {"normalisation": "lvd", **have.backbone}  # older caches: ImageNet's
    mine = backbone.info
    for key in ("preset", "pool", "view_size", "normalisation", "state_sha256"):
        if recorded.get(key) != mine.get(key):
            raise UserError(
                f"cache {cache.root} was made with backbone {key} = {recorded.get(key)}, "
                f"not {mine.get(key)}; use a new --cache folder"
            )
    if have.n_rows != n_rows:
        raise UserError(
            f"cache {cache.root} holds {have.n_rows} rows but the source gives {n_rows}; "
            "use a new --cache folder"
        )


def extract_variants(
    samples: list[Sample],
    variants: list[str],
    backbone: FrozenBackbone,
    batch_size: int,
    workers: int,
    advance: Callable[[int], None],
) -> Iterator[tuple[str, np.ndarray, list[dict]]]:
    """(variant, features float32 [n, V, D] with zeros for error rows, samples.parquet rows)
    for each variant in turn, yielded as soon as its last batch is done. One loader serves
    them all, so the decoding workers start once."""
    if not variants:
        return
    loader = view_loader(
        samples,
        backbone.info["view_size"],
        batch_size,
        workers,
        backbone.device.type == "cuda",
        variants,
    )
    batches = backbone_features(loader, backbone)
    for variant, group in itertools.groupby(batches, key=lambda pair: pair[0].variant):
        feats = np.zeros((len(samples), N_VIEWS, backbone.feature_dim), dtype=np.float32)
        rows: list[dict | None] = [None] * len(samples)
        for batch, out in group:
            if out is not None:
                feats[batch.indices] = out
            for item in batch.items:
                rows[item.index] = sample_row(
                    samples[item.index], item.width, item.height, item.error
                )
            advance(len(batch.items))
        yield variant, feats, rows  # type: ignore[misc]


def open_or_create(cfg: ExtractConfig, backbone: FrozenBackbone, n_rows: int, source: str) -> Cache:
    """Rank 0's job: the cache exists, matches this run, and has an array per variant."""
    if (cfg.cache / "zarr.json").is_file():
        cache = Cache.open(cfg.cache, mode="a")
        check_resumable(cache, backbone, n_rows)
    else:
        cache = Cache.create(
            cfg.cache,
            n_rows=n_rows,
            n_views=N_VIEWS,
            feature_dim=backbone.feature_dim,
            attrs=cache_attrs(cfg, backbone, source),
            shard_rows=cfg.shard_rows,
            chunk_rows=cfg.chunk_rows,
        )
    recipes = dict(cache.meta.variants)
    for name in cfg.variants:
        new = recipe(name)
        old = recipes.get(name)
        if old is not None and old.get("version") != new["version"]:
            raise UserError(
                f"cache {cfg.cache} holds {name} from recipe version {old.get('version')}, "
                f"this tool makes version {new['version']}; use a new --cache folder"
            )
        recipes[name] = new
        cache.ensure_variant(name)
    cache.update_attrs(variants=recipes)
    return cache


def missing_work(cache: Cache, variants: list[str]) -> list[tuple[ShardRange, list[str]]]:
    """(shard, variants still to compute) for every shard with anything left to do.

    A shard's text and sample rows count as done only with all their markers; the samples
    marker is written last, so it alone says the shard's rows are final.
    """
    done = {v: cache.done_shards(f"features/{v}") for v in variants}
    rows_done = cache.done_shards("text") & cache.done_shards("samples")
    work = []
    for shard in cache.shards():
        todo = [v for v in variants if shard.index not in done[v]]
        if todo or shard.index not in rows_done:
            work.append((shard, todo))
    return work


def mask_spec(cfg: ExtractConfig, column: str | None = None) -> MaskSpec | None:
    """The masks this run makes: from the flags, else from the reader's mask `column`."""
    source = cfg.masks or (f"column:{column}" if column else None)
    if source is None:
        return None
    extra = {"prompts": tuple(cfg.prompts)} if cfg.prompts else {}
    return MaskSpec(
        source,
        grid=cfg.mask_grid,
        dtype=cfg.mask_dtype,
        classes=cfg.mask_classes,
        segmenter=cfg.segmenter,
        score_threshold=cfg.mask_score_threshold,
        **extra,
    )


def missing_mask_work(cache: Cache, variants: list[str]) -> list[tuple[ShardRange, list[str]]]:
    """(shard, variants whose masks are still to compute) for every shard with mask work."""
    done = {v: cache.done_shards(f"masks/{v}") for v in variants}
    present = cache.done_shards("mask_present")
    work = []
    for shard in cache.shards():
        todo = [v for v in variants if shard.index not in done[v]]
        if todo or shard.index not in present:
            work.append((shard, todo))
    return work


def write_shard_masks(
    cache: Cache,
    shard: ShardRange,
    variants: list[str],
    reader,
    spec: MaskSpec,
    segmenter,
    view_size: int,
    threads: int,
    advance,
) -> Counter:
    """The masks of one shard, every variant written whole, the presence marker last;
    returns why rows have no mask."""
    samples = list(reader.iter_samples(shard.start, shard.stop))
    found = shard_masks(samples, variants, view_size, spec, segmenter, threads, advance=advance)
    for name, coverage in zip(variants, found.coverage, strict=True):
        cache.write_masks(name, shard, coverage)
    cache.write_mask_present(shard, found.present)
    return found.reasons


@keeps_torch_threads
def run_extract(cfg: ExtractConfig) -> ExtractSummary | None:
    """Extract every missing (shard, variant); returns the summary on rank 0, None elsewhere."""
    # Cheap checks of the flags first, so a typo costs no reading and no model loading.
    get_preset(cfg.backbone)
    if cfg.pool not in POOLS:
        raise UserError(f"unknown pooling {cfg.pool!r}; choose one of {', '.join(POOLS)}")
    check_normalisation(cfg.normalisation)
    for name in cfg.variants:
        check_variant(name)
    check_cache_path(cfg.cache)
    spec = mask_spec(cfg)
    reader = open_source(cfg.source, cfg.manifest, cfg.splits, spec.column if spec else None)
    spec = spec or mask_spec(cfg, reader.mask_column)
    n_rows = len(reader) if cfg.limit is None else min(cfg.limit, len(reader))
    if n_rows == 0:
        raise UserError(f"source {cfg.source} has no rows")
    device = resolve_device(cfg.device)
    ranks = init_ranks(device.type)
    if ranks.distributed and device.type == "cuda":
        device = torch.device("cuda", ranks.local_rank)
    workers = default_workers(device) if cfg.workers is None else cfg.workers
    if device.type == "cpu":
        # Decoding workers and intra-op threads on the same cores oversubscribe them, and
        # spinning OpenMP threads then run many times slower than one thread alone.
        cores = (os.cpu_count() or 1) // ranks.world
        torch.set_num_threads(max(1, cores - workers))
    if ranks.is_main:
        console.print(
            f"source: {reader.describe()}; extracting {n_rows} rows x "
            f"{len(cfg.variants)} variant(s) on {device}"
            + (f" with {ranks.world} ranks" if ranks.distributed else "")
        )

    if ranks.is_main:
        refuse_if_locked(cfg.cache)  # a second writer learns it before the model loads
    backbone = load_backbone(
        cfg.backbone,
        cfg.weights,
        pool=cfg.pool,
        view_size=cfg.view_size,
        device=device,
        normalisation=cfg.normalisation,
    )
    if cfg.compile:
        backbone.compile_features()
    if backbone.info.get("random_init") and ranks.is_main:
        console.print(
            "[yellow]warning: the tiny backbone has random weights: features "
            "demonstrate the machinery, not image understanding"
        )
    segmenter = None
    if spec is not None and spec.source == SAM3:
        from roadwork_cache.backbone.segmenter import load_segmenter

        segmenter = load_segmenter(spec.segmenter, device, spec.score_threshold)
        segmenter.check_prompts(spec.prompts)

    lock = writer_lock(cfg.cache) if ranks.is_main else contextlib.nullcontext()
    try:
        with lock:
            if ranks.is_main:
                made = open_or_create(cfg, backbone, n_rows, reader.describe())
                if spec is not None:
                    made.record_masks(spec.attrs(segmenter), cfg.variants)
            ranks.barrier()  # the arrays exist before any rank writes into them
            cache = Cache.open(cfg.cache, mode="a")
            work = missing_work(cache, cfg.variants)
            mine = ranks.mine(work)
            mask_work = ranks.mine(missing_mask_work(cache, cfg.variants)) if spec else []
            text_encoder = None
            if cfg.text and any(s.index not in cache.done_shards("text") for s, _ in mine):
                from roadwork_cache.backbone.text import TextEncoder

                text_encoder = TextEncoder(device=str(device))
            summary = ExtractSummary(
                cfg.cache,
                n_rows,
                len(cache.shards()),
                len(work),
                random_init=bool(backbone.info.get("random_init")),
            )
            start = time.perf_counter()
            images = 0
            total = sum(len(shard) * max(len(todo), 1) for shard, todo in mine)
            total += sum(len(shard) for shard, _ in mask_work)
            with progress_bar(disable=not cfg.progress or not ranks.is_main) as bar:
                task = bar.add_task("extract", total=total, rate="")

                def advance(n: int) -> None:
                    nonlocal images
                    images += n
                    rate = images / max(time.perf_counter() - start, 1e-9)
                    bar.update(task, advance=n, rate=f"{rate:.1f} img/s")

                for shard, todo in mine:
                    write_shard(
                        cache, shard, todo, reader, backbone, text_encoder, cfg, workers, advance
                    )
                summary.seconds = time.perf_counter() - start
                summary.images_per_s = images / summary.seconds if images else 0.0
                masks_start = time.perf_counter()
                for shard, todo in mask_work:
                    summary.mask_reasons += write_shard_masks(
                        cache,
                        shard,
                        todo,
                        reader,
                        spec,
                        segmenter,
                        backbone.info["view_size"],
                        max(1, workers),
                        lambda n: bar.update(task, advance=n, rate="masks"),
                    )
                summary.mask_seconds = time.perf_counter() - masks_start
            ranks.barrier()  # every shard is written before rank 0 merges the sample rows
            if not ranks.is_main:
                return None
            cache.finalize()
    finally:
        close_ranks(ranks)
    statuses = cache.samples().select(["status", "error"]).to_pylist()
    summary.ok = sum(r["status"] == "ok" for r in statuses)
    summary.errors = len(statuses) - summary.ok
    summary.error_reasons = Counter(r["error"] for r in statuses if r["error"])
    summary.variants = cache.variants()
    if cache.meta.masks:
        summary.masks = cache.meta.masks
        summary.mask_rows = int(cache.mask_present().sum())
    return summary


def write_shard(
    cache: Cache,
    shard: ShardRange,
    variants: list[str],
    reader,
    backbone: FrozenBackbone,
    text_encoder,
    cfg: ExtractConfig,
    workers: int,
    advance,
) -> None:
    """Every missing piece of one shard, each written whole."""
    samples = list(reader.iter_samples(shard.start, shard.stop))
    rows = None
    # clean first: its pass also yields the sample rows (sizes, decode errors)
    ordered = sorted(variants, key=lambda v: v != "clean")
    for variant, feats, variant_rows in extract_variants(
        samples, ordered, backbone, cfg.batch_size, workers, advance
    ):
        cache.write_features(variant, shard, feats)
        if variant == "clean":
            rows = variant_rows
    if shard.index in cache.done_shards("samples"):
        return
    if rows is None:  # the clean features exist from an earlier run: rows from a decode pass
        rows = shard_rows_only(samples, cfg)
    if text_encoder is not None:
        text, mask = text_encoder.encode([s.description for s in samples])
    else:
        text = np.zeros((len(samples), 384), np.float32)
        mask = np.zeros(len(samples), bool)
    # Text first, sample rows last: the samples marker means "this shard's rows are final".
    cache.write_text(shard, text, mask)
    cache.write_samples(shard, rows)


def shard_rows_only(samples: list[Sample], cfg: ExtractConfig) -> list[dict]:
    """samples.parquet rows from decoding alone (no backbone), for a shard whose clean
    features survived an interrupted run but whose rows were not yet written."""
    from roadwork_cache.readers.images import ImageError, decode_image

    rows = []
    for sample in samples:
        if sample.error:
            rows.append(sample_row(sample, None, None, sample.error))
            continue
        try:
            img = decode_image(sample.image_bytes)
            rows.append(sample_row(sample, *img.info.get("full_size", img.size), None))
        except ImageError as exc:
            rows.append(sample_row(sample, None, None, str(exc)))
    return rows
