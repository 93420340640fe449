"""DINOv3 presets: the real sizes (and a tiny random one), with the matching timm model.

The per-image normalisation constants live here too: the LVD-1689M weights use ImageNet's,
the SAT-493M (satellite) weights their own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from roadwork_cache.runtime.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)


IMAGENET_STD = (0.229, 0.224, 0.225)


# name -> (mean, std) of the pixels in [0, 1]; recorded with every cache and model.
NORMALISATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "lvd": (IMAGENET_MEAN, IMAGENET_STD),
    "sat": ((0.430, 0.411, 0.296), (0.213, 0.156, 0.143)),
}


def check_normalisation(name: str) -> str:
    if name not in NORMALISATIONS:
        raise UserError(
            f"unknown normalisation {name!r}; choose {' or '.join(NORMALISATIONS)} (lvd: "
            "ImageNet's, for the LVD-1689M weights; sat: the SAT-493M satellite weights)"
        )
    return name


POOLS = ("cls", "cls+mean")


TINY_SEED = 20250814  # fixed: the tiny preset's weights are part of its definition


@dataclass(frozen=True)
class Preset:
    """A DINOv3 size: its transformers config and the timm model that has the same shape."""

    name: str
    embed_dim: int
    depth: int
    heads: int
    ffn_dim: int
    gated_mlp: bool
    timm_name: str
    timm_kwargs: dict[str, Any] = field(default_factory=dict)
    registers: int = 4
    patch_size: int = 16
    view_size: int = 512

    def hf_config(self) -> Any:
        """The transformers config of this shape (tests write transformers folders with it)."""
        from transformers import DINOv3ViTConfig

        return DINOv3ViTConfig(
            hidden_size=self.embed_dim,
            num_hidden_layers=self.depth,
            num_attention_heads=self.heads,
            intermediate_size=self.ffn_dim,
            use_gated_mlp=self.gated_mlp,
            hidden_act="silu" if self.gated_mlp else "gelu",
            num_register_tokens=self.registers,
            patch_size=self.patch_size,
            image_size=self.view_size,
            layerscale_value=1e-5,
            key_bias=False,
        )


PRESETS: dict[str, Preset] = {
    "vith16plus": Preset("vith16plus", 1280, 32, 20, 5120, True, "vit_huge_plus_patch16_dinov3"),
    "vitl16": Preset("vitl16", 1024, 24, 16, 4096, False, "vit_large_patch16_dinov3"),
    "vitb16": Preset("vitb16", 768, 12, 12, 3072, False, "vit_base_patch16_dinov3"),
    "vits16": Preset("vits16", 384, 12, 6, 1536, False, "vit_small_patch16_dinov3"),
    "tiny": Preset(
        "tiny",
        64,
        2,
        4,
        128,
        False,
        "vit_small_patch16_dinov3",
        timm_kwargs={"embed_dim": 64, "depth": 2, "num_heads": 4, "mlp_ratio": 2.0},
        view_size=224,
    ),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise UserError(f"unknown backbone preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]
