"""roadwork-cache: frozen-DINOv3 feature cache and light heads for roadwork classification."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy: `import roadwork_cache` stays light; torch and the model code load on first use.
    if name == "RoadworkDetector":
        from roadwork_cache.inference.detector import RoadworkDetector

        return RoadworkDetector
    raise AttributeError(f"module 'roadwork_cache' has no attribute {name!r}")
