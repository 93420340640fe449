"""Runtime helpers beside every layer: errors, progress and output, devices, torchrun ranks."""
