"""Feeding the backbone batches of views while the previous batch's features come back:
on CUDA the next forward is queued before the last one is waited for, so the GPU never idles
while the host collects features and fetches the next batch."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from roadwork_cache.backbone.model import FrozenBackbone
from roadwork_cache.views.batching import ViewBatch


@dataclass
class InFlight:
    """A batch whose forward is queued on the device; its features reach the host when
    `ready` fires (None off CUDA, where everything is synchronous)."""

    batch: ViewBatch
    feats: torch.Tensor | None  # [b, V, D] on the host, once ready
    ready: torch.cuda.Event | None = None

    def result(self) -> np.ndarray | None:
        if self.ready is not None:
            self.ready.synchronize()
        return None if self.feats is None else self.feats.numpy()


def launch(backbone: FrozenBackbone, batch: ViewBatch) -> InFlight:
    if not batch.indices:
        return InFlight(batch, None)
    b, v, s = batch.views.shape[:3]
    out = backbone(batch.views.view(b * v, s, s, 3)).view(b, v, -1)
    if out.device.type != "cuda":
        return InFlight(batch, out)
    # A non-blocking copy into pinned memory, and an event to wait on it alone: the next
    # batch's forward is queued before this one is waited for, so the GPU never idles
    # while the host collects features and fetches the next batch.
    host = out.to("cpu", non_blocking=True)
    ready = torch.cuda.Event()
    ready.record()
    return InFlight(batch, host, ready)


def backbone_features(
    loader: Iterable[ViewBatch], backbone: FrozenBackbone
) -> Iterator[tuple[ViewBatch, np.ndarray | None]]:
    """(batch, features float32 [b, V, D] or None when no image decoded) for every batch,
    one batch ahead on the device."""
    pending: InFlight | None = None
    for batch in loader:
        queued = launch(backbone, batch)
        if pending is not None:
            yield pending.batch, pending.result()
        pending = queued
    if pending is not None:
        yield pending.batch, pending.result()
