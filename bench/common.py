"""What every bench script shares: waiting for the device, and naming it in the output.

Imported as `common`: a script's own folder is first on `sys.path` when it runs.
"""

from __future__ import annotations

import os
import platform

import torch


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so a timer reads finished work (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    """The device as a benchmark table records it: the GPU's name, or the CPU and threads."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA)"
    return (
        f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{torch.get_num_threads()} torch threads"
    )
