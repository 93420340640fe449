"""roadwork-cache: frozen-DINOv3 feature cache and light heads for roadwork classification.

The package is laid out as the data flows, each layer importing only from those before it
(docs/design.md): readers -> synth -> views -> backbone -> store -> heads -> training ->
inference -> stages -> cli, with runtime/ (errors, output, devices, ranks) beside them all.
"""

from roadwork_cache.runtime.version import __version__

__all__ = ["RoadworkDetector", "__version__"]


def __getattr__(name: str):
    # Lazy: `import roadwork_cache` stays light; torch and the model code load on first use.
    if name == "RoadworkDetector":
        from roadwork_cache.inference.detector import RoadworkDetector

        return RoadworkDetector
    raise AttributeError(f"module 'roadwork_cache' has no attribute {name!r}")
