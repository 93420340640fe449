"""Frozen DINOv3 backbones: presets, local-only weight loading and the per-view feature.

Two weight formats load from local paths (never a hub):
- a transformers checkpoint folder (config.json + safetensors) -> `DINOv3ViTModel` with
  SDPA attention;
- a timm or Meta checkpoint file (.pth / .pt / .safetensors) -> timm
  `vit_*_patch16_dinov3`, whose checkpoint filter converts Meta's key names.
The `tiny` preset is a small random-initialised model for tests and the demo, built from a
fixed seed so every process (and a later `predict`) gets the same weights.

The per-view feature is the CLS token after the final norm; `cls+mean` appends the mean of
the patch tokens (CLS and register tokens excluded).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from roadwork_cache.backbone.model import FrozenBackbone
from roadwork_cache.backbone.presets import TINY_SEED, Preset, get_preset
from roadwork_cache.runtime.errors import UserError


def state_dict_sha256(module: nn.Module) -> str:
    """A digest of the weights themselves, so a cache and a later predict can be matched."""
    digest = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for item in files:
        with open(item, "rb") as handle:
            for block in iter(lambda h=handle: h.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


def _quiet_transformers() -> None:
    from transformers.utils import logging

    logging.disable_progress_bar()  # our own bar is the one the user watches
    logging.set_verbosity_error()


def random_model(preset: Preset, attn_implementation: str = "sdpa") -> nn.Module:
    """A transformers DINOv3 of the preset's shape with weights from the fixed seed.

    The tiny preset's weights; for the real sizes, a stand-in for speed measurements.
    """
    from transformers import DINOv3ViTModel

    # fork_rng: the fixed seed must not disturb the caller's random stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        config = preset.hf_config()
        config._attn_implementation = attn_implementation
        return DINOv3ViTModel(config).eval()


def _load_transformers(folder: Path, preset: Preset) -> nn.Module:
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    try:
        config = DINOv3ViTConfig.from_pretrained(folder, local_files_only=True)
    except Exception as exc:
        raise UserError(f"{folder} has no readable DINOv3 config.json: {exc}") from None
    if config.hidden_size != preset.embed_dim:
        raise UserError(
            f"weights in {folder} are a {config.hidden_size}-d model but preset "
            f"{preset.name} is {preset.embed_dim}-d; pass the matching --backbone"
        )
    try:
        model = DINOv3ViTModel.from_pretrained(
            folder, local_files_only=True, attn_implementation="sdpa", dtype=torch.float32
        )
    except Exception as exc:
        raise UserError(f"cannot load the transformers checkpoint in {folder}: {exc}") from None
    return model


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(path)
        # weights_only: a checkpoint is data; never unpickle code from a downloaded file.
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"cannot read weights file {path}: {exc}") from None


def _load_timm(path: Path, preset: Preset, view_size: int) -> nn.Module:
    import timm
    from timm.models.eva import checkpoint_filter_fn

    model = timm.create_model(
        preset.timm_name,
        pretrained=False,
        num_classes=0,
        global_pool="token",
        img_size=view_size,
        **preset.timm_kwargs,
    )
    state = checkpoint_filter_fn(_read_state_dict(path), model)
    expected = model.state_dict()
    wrong = [k for k, v in state.items() if k in expected and expected[k].shape != v.shape]
    missing = [k for k in expected if k not in state and "rope" not in k]
    if wrong:
        k = wrong[0]
        raise UserError(
            f"weights in {path.name} do not fit preset {preset.name}: {len(wrong)} tensors "
            f"have the wrong shape (e.g. {k}: {tuple(state[k].shape)} in the file, "
            f"{tuple(expected[k].shape)} in the model)"
        )
    if missing:
        raise UserError(
            f"weights in {path.name} do not fit preset {preset.name}: {len(missing)} tensors "
            f"are missing (e.g. {missing[0]})"
        )
    model.load_state_dict(state, strict=False)
    return model.eval()


def load_backbone(
    preset_name: str,
    weights: str | Path | None = None,
    *,
    pool: str = "cls",
    view_size: int | None = None,
    device: str | torch.device = "cpu",
    hash_weights: bool = True,
) -> FrozenBackbone:
    """Build a frozen backbone from a preset and local weights (or the seeded tiny model)."""
    preset = get_preset(preset_name)
    _quiet_transformers()
    view_size = view_size or preset.view_size
    if view_size % preset.patch_size:
        raise UserError(
            f"view size {view_size} is not a multiple of the {preset.patch_size} px patch"
        )
    info: dict[str, Any] = {"preset": preset.name, "embed_dim": preset.embed_dim}
    if weights is None:
        if preset.name != "tiny":
            raise UserError(
                f"preset {preset.name} needs --weights: a transformers DINOv3 folder or a "
                "timm / Meta checkpoint file (only the tiny preset has built-in random weights)"
            )
        model, kind = random_model(preset), "transformers"
        info.update(weights=None, random_init=True, seed=TINY_SEED)
    else:
        path = Path(weights)
        if not path.exists():
            raise UserError(f"weights {path} do not exist")
        if path.is_dir():
            model, kind = _load_transformers(path, preset), "transformers"
        elif path.suffix in {".pth", ".pt", ".bin", ".safetensors"}:
            model, kind = _load_timm(path, preset, view_size), "timm"
        else:
            raise UserError(
                f"weights {path} are neither a transformers folder nor a .pth/.pt/.safetensors file"
            )
        info.update(weights=str(path.resolve()), random_init=False)
        if hash_weights:
            info["weights_sha256"] = file_sha256(path)
    backbone = FrozenBackbone(model, kind, preset, pool, info)
    info.update(
        format=kind,
        pool=pool,
        view_size=view_size,
        feature_dim=backbone.feature_dim,
        patch_size=preset.patch_size,
        state_sha256=state_dict_sha256(backbone.model),
    )
    return backbone.to(device)
