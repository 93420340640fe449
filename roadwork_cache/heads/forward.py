"""A head run over many rows at inference: batched, without gradients, in the device's
precision. Shared by validation in training and by the bundles a miner loads."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from roadwork_cache.heads.head import RoadworkHead
from roadwork_cache.heads.metadata import MetadataBatch
from roadwork_cache.heads.stacked import StackedHeads
from roadwork_cache.runtime.devices import autocast


def _chunks(
    features: np.ndarray | torch.Tensor,
    meta: MetadataBatch | None,
    device: torch.device,
    batch_size: int,
) -> Iterator[tuple[torch.Tensor, MetadataBatch | None]]:
    """The rows `batch_size` at a time on the device: features float [b, V, D], metadata."""
    feats = torch.as_tensor(features)
    for start in range(0, len(feats), batch_size):
        rows = slice(start, start + batch_size)
        yield feats[rows].to(device).float(), meta.select(rows).to(device) if meta else None


def _binary(logits: torch.Tensor) -> torch.Tensor:
    """[..., 2] -> ``logit_1 - logit_0`` [...] on the host."""
    logits = logits.float()
    return (logits[..., 1] - logits[..., 0]).cpu()


@torch.no_grad()
def head_logits(
    model: torch.nn.Module,
    features: np.ndarray,
    meta: MetadataBatch | None,
    device: torch.device,
    batch_size: int = 512,
) -> np.ndarray:
    """Binary logit ``logit_1 - logit_0`` [n] of a head (``log(p / (1 - p))`` of its softmax,
    without the precision lost by going through the probability)."""
    model.eval()
    out = []
    for x, m in _chunks(features, meta, device, batch_size):
        with autocast(device):
            out.append(_binary(model(x, m).logits))
    if not out:
        return np.zeros(0, dtype=np.float64)
    return torch.cat(out).double().numpy()


@torch.no_grad()
def stacked_logits(
    stack: StackedHeads,
    features: np.ndarray,
    meta: MetadataBatch | None,
    device: torch.device,
    batch_size: int = 512,
) -> np.ndarray:
    """`head_logits` of each of the stack's heads [K, n], computed as one."""
    out = []
    for x, m in _chunks(features, meta, device, batch_size):
        with autocast(device):
            out.append(_binary(stack(x, m)[0]))  # [K, b]
    if not out:
        return np.zeros((len(stack), 0), dtype=np.float64)
    return torch.cat(out, dim=1).double().numpy()


@torch.no_grad()
def head_outputs(
    model: RoadworkHead,
    features: np.ndarray | torch.Tensor,
    meta: MetadataBatch | None,
    device: torch.device,
    batch_size: int = 512,
) -> tuple[np.ndarray, np.ndarray]:
    """Roadwork probability [n] and pooled embedding [n, dim]; meta None = all NULL."""
    model.eval()
    probs, embeds = [], []
    for x, m in _chunks(features, meta, device, batch_size):
        with autocast(device):
            out = model(x, m)
        probs.append(torch.softmax(out.logits.float(), dim=-1)[:, 1].cpu())
        embeds.append(out.embedding.float().cpu())
    return torch.cat(probs).numpy(), torch.cat(embeds).numpy()
