"""Frozen DINOv3 backbones from local weights (never a hub), all run as timm's DINOv3.

Three weight formats load, each mapped strictly onto timm's layout (`backbone.convert`):
- a transformers checkpoint folder (config.json + model.safetensors, sharded or not);
- a timm checkpoint file (.pth / .pt / .bin / .safetensors);
- a Meta checkpoint file (`storage_tokens`, `ls1.gamma`, fused `qkv.bias`).
Every tensor must find its place and every place its tensor: a file that does not fit is
refused in one sentence naming what is missing and what is unexpected. Weights with query /
value biases load into the timm variant that has them. The `tiny` preset is a small
random-initialised model for tests and the demo, built from a fixed seed so every process
(and a later `predict`) gets the same weights.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import pickle
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from roadwork_cache.backbone import convert
from roadwork_cache.backbone.model import FrozenBackbone
from roadwork_cache.backbone.presets import TINY_SEED, Preset, check_normalisation, get_preset
from roadwork_cache.runtime.errors import UserError
from roadwork_cache.runtime.files import files_sha256

WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
FOLDER_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def state_dict_sha256(module: nn.Module) -> str:
    """A digest of the weights themselves, so a cache and a later predict can be matched."""
    digest = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 of a weights file, or of a folder's files in sorted order."""
    return files_sha256(
        sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    )


def timm_model(preset: Preset, view_size: int, **kwargs: Any) -> nn.Module:
    """timm's DINOv3 of the preset's shape, giving the CLS token after the final norm."""
    import timm

    args = {
        "model_name": preset.timm_name,
        "num_classes": 0,
        "global_pool": "token",
        "img_size": view_size,
        **preset.timm_kwargs,
        **kwargs,
    }
    model = timm.create_model(pretrained=False, **args)
    # What built it: an exported model rebuilds the same architecture (inference/export).
    model.timm_create_args = args
    return model


def random_model(preset: Preset, view_size: int | None = None) -> nn.Module:
    """A model of the preset's shape with weights from the fixed seed: the tiny preset's
    weights; for the real sizes, a stand-in for speed measurements."""
    # fork_rng: the fixed seed must not disturb the caller's random stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        return timm_model(preset, view_size or preset.view_size, qkv_bias=True).eval()


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors or .pth file, or one sentence saying why not."""
    if path.stat().st_size == 0:
        raise UserError(f"cannot read weights file {path}: it is empty")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except (SafetensorError, OSError, ValueError) as exc:
            raise UserError(f"cannot read weights file {path}: not safetensors ({exc})") from None
    try:
        # weights_only: a checkpoint is data; code in a downloaded file is never run.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(
            f"cannot read weights file {path}: it is not a plain checkpoint of tensors (it is "
            "damaged, or it holds Python objects such as a whole model, which are never loaded)"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot read weights file {path}: {first}") from None
    for key in ("model_ema", "model", "module", "state_dict"):  # training-checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(
            f"cannot read weights file {path}: it holds a {type(state).__name__}, not a "
            "dictionary of tensors"
        )
    return state


def strict_load(model: nn.Module, state: dict[str, torch.Tensor], where: str, preset: Preset):
    """Load every tensor into its place or refuse, naming what does not fit."""
    expected = model.state_dict()
    wrong = [k for k, v in state.items() if k in expected and expected[k].shape != v.shape]
    if wrong:
        k = wrong[0]
        raise UserError(
            f"weights in {where} do not fit preset {preset.name}: {len(wrong)} tensors have the "
            f"wrong shape (e.g. {k}: {tuple(state[k].shape)} in the file, "
            f"{tuple(expected[k].shape)} in the model)"
        )
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} tensors are missing (e.g. {', '.join(missing[:2])})")
        if unexpected:
            parts.append(f"{len(unexpected)} are unexpected (e.g. {', '.join(unexpected[:2])})")
        raise UserError(
            f"weights in {where} do not fit preset {preset.name}: " + " and ".join(parts)
        )
    model.load_state_dict(state, strict=True)


def read_config(folder: Path, preset: Preset) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise UserError(
            f"{folder} is not a transformers checkpoint folder: it has no config.json (pass a "
            "folder saved with save_pretrained, or a .pth / .safetensors file)"
        )
    try:
        config = json.loads(path.read_text())
    except ValueError as exc:
        raise UserError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(config, dict) or config.get("model_type") != "dinov3_vit":
        kind = config.get("model_type") if isinstance(config, dict) else None
        raise UserError(f"{folder} holds a {kind!r} model, not a DINOv3 (model_type dinov3_vit)")
    if config.get("hidden_size") != preset.embed_dim:
        raise UserError(
            f"weights in {folder} are a {config.get('hidden_size')}-d model but preset "
            f"{preset.name} is {preset.embed_dim}-d; pass the matching --backbone"
        )
    return config


def read_folder_weights(folder: Path) -> dict[str, torch.Tensor]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():  # sharded: the index names the file of every tensor
        try:
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, AttributeError):
            raise UserError(f"{index} is not a safetensors index") from None
        state: dict[str, torch.Tensor] = {}
        for name in files:
            state.update(read_state_dict(folder / name))
        return state
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return read_state_dict(folder / name)
    raise UserError(f"{folder} has a config.json but no weights ({' or '.join(FOLDER_WEIGHTS)})")


def load_transformers_folder(folder: Path, preset: Preset, view_size: int) -> nn.Module:
    config = read_config(folder, preset)
    state = convert.transformers_to_timm(read_folder_weights(folder))
    model = timm_model(preset, view_size, **convert.timm_kwargs(config))
    strict_load(model, state, str(folder), preset)
    return model


def load_checkpoint_file(path: Path, preset: Preset, view_size: int) -> tuple[nn.Module, str]:
    """A timm or Meta checkpoint file -> (model, format)."""
    state = read_state_dict(path)
    if convert.is_transformers_layout(state):
        raise UserError(
            f"{path.name} holds transformers tensor names: pass the folder it came from (with "
            "its config.json) as --weights, not the file"
        )
    kind = "meta" if convert.is_meta_layout(state) else "timm"
    if kind == "meta":
        state = convert.meta_to_timm(state)
    model = timm_model(preset, view_size, qkv_bias=convert.has_qv_bias(state))
    strict_load(model, state, path.name, preset)
    return model, kind


def load_backbone(
    preset_name: str,
    weights: str | Path | None = None,
    *,
    pool: str = "cls",
    view_size: int | None = None,
    device: str | torch.device = "cpu",
    hash_weights: bool = True,
    normalisation: str = "lvd",
) -> FrozenBackbone:
    """Build a frozen backbone from a preset and local weights (or the seeded tiny model).

    Whatever a library prints while the weights load goes to stderr: stdout carries results
    only (`predict --json` must stay valid JSON)."""
    with contextlib.redirect_stdout(sys.stderr):
        return _load_backbone(
            preset_name, weights, pool, view_size, device, hash_weights, normalisation
        )


def _load_backbone(
    preset_name: str,
    weights: str | Path | None,
    pool: str,
    view_size: int | None,
    device: str | torch.device,
    hash_weights: bool,
    normalisation: str,
) -> FrozenBackbone:
    preset = get_preset(preset_name)
    check_normalisation(normalisation)
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
        model, kind = random_model(preset, view_size), "random"
        info.update(weights=None, random_init=True, seed=TINY_SEED)
    else:
        path = Path(weights)
        if not path.exists():
            raise UserError(f"weights {path} do not exist")
        if path.is_dir():
            model, kind = load_transformers_folder(path, preset, view_size), "transformers"
        elif path.suffix in WEIGHT_SUFFIXES:
            model, kind = load_checkpoint_file(path, preset, view_size)
        else:
            raise UserError(
                f"weights {path} are neither a transformers folder nor a "
                f"{' / '.join(WEIGHT_SUFFIXES)} file"
            )
        info.update(weights=str(path.resolve()), random_init=False)
        if hash_weights:
            info["weights_sha256"] = file_sha256(path)
    backbone = FrozenBackbone(model, kind, preset, pool, info, normalisation)
    info.update(
        format=kind,
        pool=pool,
        normalisation=normalisation,
        view_size=view_size,
        feature_dim=backbone.feature_dim,
        patch_size=preset.patch_size,
        state_sha256=state_dict_sha256(backbone.model),
    )
    return backbone.to(device)
