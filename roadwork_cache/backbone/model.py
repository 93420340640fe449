"""FrozenBackbone: uint8 views in, one feature per view out (CLS after the final norm)."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from roadwork_cache.backbone.presets import NORMALISATIONS, POOLS, Preset, check_normalisation
from roadwork_cache.runtime.errors import UserError


class FrozenBackbone(nn.Module):
    """uint8 views [B, S, S, 3] -> per-view features [B, D] (or [B, 2D] with cls+mean)."""

    def __init__(
        self,
        model: nn.Module,
        kind: str,
        preset: Preset,
        pool: str,
        info: dict,
        normalisation: str = "lvd",
    ):
        super().__init__()
        if pool not in POOLS:
            raise UserError(f"unknown pooling {pool!r}; choose one of {', '.join(POOLS)}")
        self.model = model.eval().requires_grad_(False)
        self.kind = kind  # the weights' format: random, transformers, timm or meta
        self.preset = preset
        self.pool = pool
        self.info = info
        # the pixel statistics the weights were trained with (lvd: ImageNet's; sat: SAT-493M)
        mean, std = NORMALISATIONS[check_normalisation(normalisation)]
        self.normalisation = normalisation
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255)

    @property
    def feature_dim(self) -> int:
        return self.preset.embed_dim * (2 if self.pool == "cls+mean" else 1)

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def compile_features(self) -> FrozenBackbone:
        """Run the model's forward_features under torch.compile from the next call (which
        pays the compile); the features stay within float16 rounding of eager
        (bench/extract.py --compile measures both)."""
        self.model.forward_features = torch.compile(self.model.forward_features)
        return self

    def tokens(self, pixels: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Normalised pixels [B, 3, S, S] -> final-norm tokens [B, T, D] and prefix count
        (CLS and registers come first)."""
        return self.model.forward_features(pixels), self.model.num_prefix_tokens

    @torch.inference_mode()
    def forward(self, views: torch.Tensor) -> torch.Tensor:
        x = views.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        x = (x - self.mean) / self.std
        cuda = x.device.type == "cuda"
        bf16 = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
        with bf16, sdpa_backends(cuda):
            tokens, n_prefix = self.tokens(x)
        cls = tokens[:, 0]
        if self.pool == "cls+mean":
            cls = torch.cat([cls, tokens[:, n_prefix:].mean(dim=1)], dim=-1)
        return cls.float()


def sdpa_backends(cuda: bool) -> contextlib.AbstractContextManager:
    """On CUDA prefer the flash kernel (bf16), falling back to memory-efficient attention."""
    if not cuda:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION])
