"""A head's weights on disk: one safetensors file per head folder (never pickle)."""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import save_file
from torch import nn

WEIGHTS_FILE = "model.safetensors"


def save_weights(model: nn.Module, folder: Path) -> Path:
    """Write `folder/model.safetensors` (the folder is created); returns the file."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / WEIGHTS_FILE
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, path)
    return path
