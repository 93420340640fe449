"""`RoadworkDetector`: the object a StreetVision miner registers (`__call__(PIL.Image) ->
float`), on top of `Predictor`.

Registering it in a miner (`base_miner/detectors/`; the miner calls
`DETECTOR_REGISTRY[name](config_name=..., device=...)`, whose `__init__` calls
`load_model()`, then `detector(PIL.Image) -> float` per challenge)::

    from base_miner.detectors import FeatureDetector
    from base_miner.registry import DETECTOR_REGISTRY
    from roadwork_cache import RoadworkDetector

    @DETECTOR_REGISTRY.register_module(module_name="DINOV3_ROADWORK")
    class DinoV3Roadwork(FeatureDetector):
        def __init__(self, model_name="DINOV3_ROADWORK", config_name=None, device="cuda"):
            super().__init__(model_name, config_name, device)

        def load_model(self):
            self.detector = RoadworkDetector.load(
                "/models/ens-v1", weights="/models/dinov3-vith16plus",
                device=str(self.device), tta=True)

        def __call__(self, image):
            return self.detector(image)
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from PIL import Image

from roadwork_cache.inference.predictor import Predictor

log = logging.getLogger(__name__)


class RoadworkDetector:
    """`detector(PIL.Image) -> float in [0, 1]`, threshold folded so 0.5 is the cut.

    Loaded once (`load_model()` is idempotent), safe to call from several threads (the
    forward is serialised; decoding and view cutting run in parallel). Unusable input raises
    `ImageError`, a `ValueError` subclass with a one-line reason, which a miner can catch.
    """

    def __init__(
        self,
        model: str | Path,
        weights: str | Path | None = None,
        backbone: str | None = None,
        device: str = "auto",
        tta: bool = False,
        tta_variants: list[str] | None = None,
    ):
        self.model = model
        self.weights = weights
        self.backbone = backbone
        self.device = device
        self.tta = tta
        self.tta_variants = tta_variants
        self.predictor: Predictor | None = None
        self._load_lock = threading.Lock()

    @classmethod
    def load(
        cls,
        model: str | Path,
        weights: str | Path | None = None,
        backbone: str | None = None,
        device: str = "auto",
        tta: bool = False,
        tta_variants: list[str] | None = None,
    ) -> RoadworkDetector:
        detector = cls(model, weights, backbone, device, tta, tta_variants)
        detector.load_model()
        return detector

    def load_model(self) -> None:
        with self._load_lock:
            if self.predictor is not None:
                return
            self.predictor = Predictor.load(
                self.model, self.weights, self.backbone, self.device, self.tta, self.tta_variants
            )
            for note in self.predictor.notes:
                log.info("RoadworkDetector: %s", note)

    def __call__(self, image: Image.Image) -> float:
        if self.predictor is None:
            self.load_model()
        assert self.predictor is not None
        return self.predictor(image)
