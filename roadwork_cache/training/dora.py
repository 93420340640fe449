"""DoRA adaptation of a trained head to a target set (docs/design.md §8).

peft has no ``DoraConfig``: DoRA is ``LoraConfig(use_dora=True)``. The adapters go on the
attention projections and the attention output gate (nn.Linear layers named q_proj, k_proj,
v_proj, out_proj, gate_proj in every block and in GAFM); everything else stays frozen. After
training the adapter is merged (``merge_and_unload``) so the result is a plain RoadworkHead:
inference needs no peft and `bundle.load_head` reads it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from roadwork_cache.heads import MetadataBatch, RoadworkHead
from roadwork_cache.heads.forward import head_logits
from roadwork_cache.training.loop import EpochLog, TrainConfig, Trainer, TrainResult
from roadwork_cache.training.selection import SelectionData

DORA_TARGETS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "out_proj", "gate_proj")


@dataclass
class DoraSettings:
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    lr: float = 1e-4  # low: the adapter nudges a trained head, it does not retrain it
    epochs: int = 20
    patience: int = 5  # early stopping on the target rows held out for stopping
    batch_size: int = 64
    weight_decay: float = 0.0
    stop_fraction: float = 0.2  # share of a fold's training rows (whole videos) for stopping

    def to_dict(self) -> dict:
        return asdict(self)

    def train_config(self, seed: int) -> TrainConfig:
        return TrainConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            weight_decay=self.weight_decay,
            warmup_epochs=0.5,
            patience=self.patience,
            seed=seed,
        )


@dataclass
class DoraResult:
    model: RoadworkHead  # merged: a plain head
    train: TrainResult
    merge_error: float  # max |logit| difference between the adapter and its merged weights


def with_dora(model: RoadworkHead, settings: DoraSettings) -> PeftModel:
    """A copy of `model` wrapped with DoRA adapters on the attention and gate layers; only
    the adapters (low-rank A, B and the DoRA magnitudes) are trainable."""
    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        use_dora=True,
        target_modules=list(DORA_TARGETS),
        bias="none",
    )
    return get_peft_model(copy.deepcopy(model), config)


def merge(adapted: PeftModel) -> RoadworkHead:
    """Fold the adapter into the base weights; the result has a plain head's state dict."""
    merged = adapted.merge_and_unload()
    assert isinstance(merged, RoadworkHead)
    return merged


def adapt(
    base: RoadworkHead,
    settings: DoraSettings,
    variants: Sequence[np.ndarray] | torch.Tensor,
    labels: np.ndarray,
    meta: MetadataBatch,
    device: torch.device,
    train_idx: np.ndarray,
    stop_idx: np.ndarray,
    seed: int,
    selection: SelectionData | None = None,
    on_epoch: Callable[[EpochLog], None] | None = None,
) -> DoraResult:
    """Train DoRA adapters on `train_idx` with early stopping on `stop_idx` (scored in the
    selection setting, as every head's training is), then merge. Rows index `variants` /
    `labels` / `meta`."""
    torch.manual_seed(seed)
    adapted = with_dora(base, settings)
    trainer = Trainer(
        adapted,
        settings.train_config(seed),
        variants,
        labels,
        meta,
        device,
        selection=selection,
    )
    result = trainer.fit(train_idx, stop_idx, None, on_epoch)
    # Check the merge on the stopping rows: the adapter and the merged head must agree.
    check = trainer.selection.features[0][stop_idx[:128]]
    before = head_logits(adapted, check, None, device)
    merged = merge(adapted).eval()
    after = head_logits(merged, check, None, device)
    error = float(np.max(np.abs(before - after))) if len(check) else 0.0
    return DoraResult(merged, result, error)
