"""roadwork-cache: frozen-DINOv3 feature cache and light heads for roadwork classification."""

__version__ = "0.1.0"
