"""`roadwork export`: a trained model in, a complete Hugging Face model repository out (with
the miner's detector class and YAML under miner/); and `roadwork export --check DIR`, which
loads such a folder back the way a miner does.

Export, top to bottom: load the model with the backbone its cache was made with (other
weights are refused in one sentence, as `predict` refuses them) and its TTA plan; plan the
folder's config (timm architecture, heads and how they combine, folded threshold, TTA and
FOODS, views); fill the subnet's model_card.json fields; write the README model card from
the model's own record and metrics; write the folder (backbone converted to timm's layout,
heads, generated detector.py); then load the written detector.py and check that it answers
what `roadwork predict` answers on sample challenge images.

Check: verify every file against its sha256, load detector.py as a module, and time it on
challenge-like 224 px JPEGs: p50 and p95 latency, device, dtype.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from roadwork_cache.inference.ensemble_folder import METRICS_FILE as ENSEMBLE_METRICS
from roadwork_cache.inference.ensemble_folder import is_ensemble
from roadwork_cache.inference.export import (
    export_plan,
    import_detector,
    model_card_fields,
    predict_bytes,
    sample_images,
    write_export,
)
from roadwork_cache.inference.export_format import (
    CARD_FIELDS,
    MODEL_CARD_JSON,
    read_export_config,
    verify_files,
)
from roadwork_cache.inference.miner_files import (
    DETECTOR_TEMPLATE,
    MINER_CONFIG,
    MINER_DETECTOR,
    MINER_FOLDER,
    miner_config,
)
from roadwork_cache.inference.predictor import Predictor
from roadwork_cache.inference.run_folder import METRICS_FILE as RUN_METRICS
from roadwork_cache.reports.model_card import model_card
from roadwork_cache.reports.tables import CheckSummary, ExportSummary
from roadwork_cache.runtime.errors import UserError
from roadwork_cache.runtime.files import read_json
from roadwork_cache.runtime.progress import progress_bar

SUBNET_TIMEOUT_S = 9.0  # an answer later than this scores nothing (docs/design.md §1)


@dataclass
class ExportOptions:
    model: Path
    out: Path
    weights: str | None = None
    backbone: str | None = None
    tta: bool = False  # the detector's default
    tta_variants: list[str] | None = None  # default: those FOODS was fitted on, else clean+tta:8
    name: str | None = None
    description: str | None = None
    version: str = "1.0.0"
    hotkey: str | None = None
    hf_repo: str | None = None  # written into the miner's YAML
    device: str = "auto"  # where the model is loaded to be verified
    verify: bool = True
    force: bool = False
    progress: bool = True


@dataclass
class CheckOptions:
    folder: Path
    runs: int = 20
    device: str = "auto"
    tta: bool | None = None  # None: the export's default
    max_variants: int | None = None


def model_metrics(folder: Path) -> dict | None:
    """The model folder's metrics.json (a run's or an ensemble's), None when it has none."""
    path = folder / (ENSEMBLE_METRICS if is_ensemble(folder) else RUN_METRICS)
    metrics = read_json(path) if path.is_file() else None
    return metrics if isinstance(metrics, dict) else None


def verify_export(out: Path, predictor: Predictor, tta: bool, n_images: int = 2) -> float:
    """The largest difference between the written detector.py and the `predict` path on
    sample challenge images: clean, and with the TTA variants when they are the default."""
    module = import_detector(out)
    plans = [("clean",)]
    if tta and len(predictor.variants) > 1:
        plans.append(predictor.variants)
    worst = 0.0
    for variants in plans:
        reference = replace(predictor, variants=variants)
        detector = module.RoadworkDetector(out, device=predictor.device, tta=len(variants) > 1)
        for data in sample_images(n_images):
            got = detector(Image.open(io.BytesIO(data)))
            worst = max(worst, abs(got - predict_bytes(reference, data)))
    bound = 1e-4 if predictor.device.type == "cpu" else 5e-2
    if not worst <= bound:
        raise RuntimeError(
            f"the exported detector in {out} does not reproduce `roadwork predict` "
            f"(max difference {worst:.2e} > {bound:g})"
        )
    return worst


def run_export(opts: ExportOptions) -> ExportSummary:
    # Steps of minutes for a large backbone on a CPU: the bar names the one under way.
    steps = ["loading the model", "writing the folder"]
    steps += ["verifying detector.py against predict"] if opts.verify else []
    with progress_bar(disable=not opts.progress) as bar:
        task = bar.add_task("export", total=len(steps), rate=steps[0])
        predictor = Predictor.load(
            opts.model,
            opts.weights,
            opts.backbone,
            opts.device,
            tta=True,
            tta_variants=opts.tta_variants,
        )
        config = export_plan(predictor, opts.tta)

        preset = config.backbone.get("preset")
        kind = "ensemble" if config.kind == "ensemble" else "head"
        name = opts.name or f"roadwork-dinov3-{preset}-{kind}"
        description = opts.description or (
            f"Roadwork / no-roadwork classifier for NATIX StreetVision: "
            f"{'an ensemble of heads' if kind == 'ensemble' else 'a head'} on frozen DINOv3 "
            f"{preset} features of 12 views (roadwork-cache)."
        )
        card = model_card_fields(name, description, opts.version, opts.hotkey)

        metrics = model_metrics(Path(opts.model))
        readme = model_card(config, card, predictor.bundle.config, metrics)
        miner = {
            f"{MINER_FOLDER}/{MINER_DETECTOR}": DETECTOR_TEMPLATE,
            f"{MINER_FOLDER}/{MINER_CONFIG}": miner_config(opts.hf_repo),
        }
        bar.update(task, advance=1, rate=steps[1])
        config = write_export(opts.out, predictor, config, card, readme, opts.force, miner)
        bar.update(task, advance=1, rate=steps[2] if opts.verify else "done")
        max_diff = verify_export(opts.out, predictor, opts.tta) if opts.verify else None
        if opts.verify:
            bar.update(task, advance=1, rate="done")
    return ExportSummary(
        out=Path(opts.out),
        config=config,
        card=card,
        sizes={n: (Path(opts.out) / n).stat().st_size for n in config.files},
        max_diff=max_diff,
        has_metrics=metrics is not None,
        notes=list(predictor.notes),
    )


def run_check(opts: CheckOptions) -> CheckSummary:
    folder = Path(opts.folder)
    if opts.runs < 1:
        raise UserError("--runs must be at least 1")
    config = read_export_config(folder)
    verify_files(folder, config)
    if not (folder / MODEL_CARD_JSON).is_file():
        raise UserError(f"exported model {folder} is missing {MODEL_CARD_JSON}")
    card = read_json(folder / MODEL_CARD_JSON)
    missing = [f for f in CARD_FIELDS if not isinstance(card, dict) or f not in card]
    if missing:
        raise UserError(f"{folder / MODEL_CARD_JSON} has no {', '.join(missing)}")

    module = import_detector(folder)
    device = None if opts.device == "auto" else opts.device
    try:
        detector = module.RoadworkDetector(
            folder, device=device, tta=opts.tta, max_variants=opts.max_variants
        )
    except module.UserError as exc:  # the detector's own one-sentence errors
        raise UserError(str(exc)) from None
    images = sample_images(opts.runs + 1, seed=1)
    detector(Image.open(io.BytesIO(images[0])))  # warm-up: kernels, allocator, thread pool
    seconds, probs = [], []
    for data in images[1:]:
        img = Image.open(io.BytesIO(data))  # as the miner hands it over: not decoded yet
        start = time.perf_counter()
        probs.append(detector(img))
        if detector.device.type == "cuda":
            torch.cuda.synchronize(detector.device)
        seconds.append(time.perf_counter() - start)
    if not all(0.0 <= p <= 1.0 for p in probs):
        raise RuntimeError(f"the detector in {folder} answered outside [0, 1]: {probs}")
    ms = np.array(seconds) * 1e3
    return CheckSummary(
        folder=folder,
        card=card,
        describe=detector.describe(),
        runs=len(ms),
        p50_ms=float(np.percentile(ms, 50)),
        p95_ms=float(np.percentile(ms, 95)),
        probabilities=(min(probs), max(probs)),
        within_timeout=float(np.max(ms)) / 1e3 < SUBNET_TIMEOUT_S,
        versions={"torch": torch.__version__, "timm": module.timm.__version__},
    )
