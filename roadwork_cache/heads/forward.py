"""A head run over many rows at inference: batched, without gradients, in the device's
precision. Shared by validation in training and by the bundles a miner loads."""

from __future__ import annotations

import numpy as np
import torch

from roadwork_cache.heads.head import RoadworkHead
from roadwork_cache.heads.metadata import MetadataBatch
from roadwork_cache.heads.stacked import StackedHeads
from roadwork_cache.runtime.devices import autocast


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
    feats = torch.as_tensor(features)
    out = []
    for start in range(0, len(feats), batch_size):
        x = feats[start : start + batch_size].to(device).float()
        m = meta.select(slice(start, start + batch_size)).to(device) if meta else None
        with autocast(device):
            logits = model(x, m).logits.float()
        out.append((logits[:, 1] - logits[:, 0]).cpu())
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
    feats = torch.as_tensor(features)
    out = []
    for start in range(0, len(feats), batch_size):
        x = feats[start : start + batch_size].to(device).float()
        m = meta.select(slice(start, start + batch_size)).to(device) if meta else None
        with autocast(device):
            logits = stack(x, m)[0].float()  # [K, b, 2]
        out.append((logits[..., 1] - logits[..., 0]).cpu())
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
    feats = torch.as_tensor(features)
    probs, embeds = [], []
    for start in range(0, len(feats), batch_size):
        x = feats[start : start + batch_size].to(device).float()
        m = meta.select(slice(start, start + batch_size)).to(device) if meta else None
        with autocast(device):
            out = model(x, m)
        probs.append(torch.softmax(out.logits.float(), dim=-1)[:, 1].cpu())
        embeds.append(out.embedding.float().cpu())
    return torch.cat(probs).numpy(), torch.cat(embeds).numpy()
