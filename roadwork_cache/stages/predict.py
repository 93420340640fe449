"""`roadwork predict`: image files in, the probability a miner would return out.

Read top to bottom: expand the inputs (files, folders, globs) into a list of images, load
the model with the backbone its cache was made with (refusing any other), decode and cut
the views of each image and its TTA variants in DataLoader workers, score batches with the
same `Predictor.score` the miner's `RoadworkDetector` uses, and answer one line per image:
a probability, or the one-line reason the image could not be read. One bad file never
stops the others.
"""

from __future__ import annotations

import contextlib
import glob
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from roadwork_cache.inference.predictor import Answer, Predictor
from roadwork_cache.readers.images import MAX_PIXELS, ImageError, decode_image
from roadwork_cache.runtime.devices import default_workers, keeps_torch_threads
from roadwork_cache.runtime.errors import UserError
from roadwork_cache.runtime.processes import worker_init_fn
from roadwork_cache.runtime.progress import console, progress_bar
from roadwork_cache.views.batching import DecodedItem, collate, draft_side, image_views

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


@dataclass
class PredictOptions:
    inputs: list[str]
    model: Path
    weights: str | None = None
    backbone: str | None = None
    tta: bool = False
    tta_variants: list[str] | None = None  # default: the FOODS candidates, else clean + tta:8
    batch_size: int = 8  # images per forward (x variants x 12 views)
    workers: int | None = None
    device: str = "auto"
    progress: bool = True


def _folder_images(folder: Path) -> list[str]:
    return sorted(
        str(p) for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )


def collect_inputs(inputs: list[str]) -> list[Answer]:
    """Every image the inputs name, in order; a name that matches nothing is an answer with
    an error. Files named one by one are tried whatever their suffix; folders (recursively)
    and globs contribute JPEG, PNG and WebP files."""
    if not inputs:
        raise UserError("no images given: name files, folders or globs")
    out: list[Answer] = []
    empty: list[str] = []
    for spec in inputs:
        path = Path(spec)
        if path.is_dir():
            found = _folder_images(path)
            if not found:
                empty.append(spec)
            out.extend(Answer(p) for p in found)
        elif path.exists():
            out.append(Answer(spec))
        elif any(c in spec for c in "*?["):  # a glob the shell did not expand
            matches = sorted(glob.glob(spec, recursive=True))
            files = [
                m for m in matches if Path(m).is_file() and Path(m).suffix.lower() in IMAGE_SUFFIXES
            ]
            files += [f for m in matches if Path(m).is_dir() for f in _folder_images(Path(m))]
            if not files:
                empty.append(spec)
            out.extend(Answer(p) for p in files)
        else:
            out.append(Answer(spec, error=f"no such file or folder: {spec}"))
    if not out:
        raise UserError(f"no JPEG, PNG or WebP images in {', '.join(inputs)}")
    for spec in empty:
        console.print(f"[yellow]warning: {spec} holds no JPEG, PNG or WebP images")
    return out


class FileViews(Dataset):
    """Image paths -> views [T, 12, S, S, 3] of each TTA variant (decoded in a worker)."""

    def __init__(self, paths: list[str], variants: tuple[str, ...], view_size: int):
        self.paths = paths
        self.variants = variants
        self.view_size = view_size
        self.draft_side = draft_side(view_size)  # as extract decodes: same pixels, same features

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> DecodedItem:
        path = self.paths[index]
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except OSError as exc:
            return DecodedItem(index, None, None, None, f"cannot read: {exc.strerror or exc}")
        try:
            img = decode_image(data, MAX_PIXELS, self.draft_side)
        except ImageError as exc:
            return DecodedItem(index, None, None, None, str(exc))
        width, height = img.info.get("full_size", img.size)
        views = image_views(img, self.variants, self.view_size, sample_id=path)
        return DecodedItem(index, views, width, height, None)


@keeps_torch_threads
def run_predict(
    opts: PredictOptions, predictor: Predictor | None = None
) -> tuple[list[Answer], Predictor]:
    """Answers in input order; `predictor` reuses a loaded model (benchmarks, tests)."""
    if opts.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    if opts.workers is not None and opts.workers < 0:
        raise UserError("--workers must be at least 0")
    answers = collect_inputs(opts.inputs)
    if predictor is None:
        # stdout carries the answers alone (`--json`): whatever a library prints while the
        # model and backbone load goes to stderr
        with contextlib.redirect_stdout(sys.stderr):
            predictor = Predictor.load(
                opts.model, opts.weights, opts.backbone, opts.device, opts.tta, opts.tta_variants
            )
    todo = [i for i, a in enumerate(answers) if a.error is None]
    device = predictor.device
    workers = default_workers(device) if opts.workers is None else opts.workers
    if len(todo) <= opts.batch_size:
        workers = 0  # starting a worker costs more than decoding one batch
    if device.type == "cpu" and workers:
        # Decoding workers and intra-op threads on the same cores oversubscribe them.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) - workers))
    dataset = FileViews([answers[i].path for i in todo], predictor.variants, predictor.view_size)
    loader = DataLoader(
        dataset,
        batch_size=opts.batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if workers else None,
        worker_init_fn=worker_init_fn() if workers else None,  # die with the run
    )
    with progress_bar(disable=not opts.progress) as bar:
        task = bar.add_task("predict", total=len(todo), rate="")
        for batch in loader:
            if batch.indices:
                scores = predictor.score(batch.views)
                for j, index in enumerate(batch.indices):
                    answers[todo[index]].probability = float(scores.probability[j])
            for item in batch.items:
                if item.error:
                    answers[todo[item.index]].error = item.error
            bar.update(task, advance=len(batch.items))
    return answers, predictor
