"""What a StreetVision miner adds to the subnet's code to run an exported model.

`roadwork export` writes them under `miner/` of the exported folder: a detector class for
the subnet's `DETECTOR_REGISTRY` (copied into `base_miner/detectors/`, and imported in its
`__init__.py`) and its YAML config (into `base_miner/detectors/configs/`). The class follows
the subnet's `FeatureDetector` contract: `__init__(model_name, config_name, device)` reads
the YAML's keys as attributes and calls `load_model()`; the miner then calls
`detector(PIL.Image) -> float`.
"""

from __future__ import annotations

MINER_FOLDER = "miner"
MINER_DETECTOR = "roadwork_dinov3_detector.py"
MINER_CONFIG = "roadwork_dinov3.yaml"
REGISTRY_NAME = "ROADWORK_DINOV3"

DETECTOR_TEMPLATE = '''"""A model exported by `roadwork export`, as a StreetVision miner's detector.

Copy this file into base_miner/detectors/, add
    from .roadwork_dinov3_detector import RoadworkDinoV3Detector
to base_miner/detectors/__init__.py, copy roadwork_dinov3.yaml into
base_miner/detectors/configs/, and set in miner.env:
    IMAGE_DETECTOR=ROADWORK_DINOV3
    IMAGE_DETECTOR_CONFIG=roadwork_dinov3.yaml
    IMAGE_DETECTOR_DEVICE=cuda
"""

import importlib.util
import sys
from pathlib import Path

import torch

from base_miner.detectors.feature_detector import FeatureDetector
from base_miner.registry import DETECTOR_REGISTRY


@DETECTOR_REGISTRY.register_module(module_name="ROADWORK_DINOV3")
class RoadworkDinoV3Detector(FeatureDetector):
    """P(roadwork) from the exported folder named by the YAML's hf_repo (a Hugging Face
    repository, or a local folder); optional YAML keys: revision, tta, max_variants."""

    def __init__(self, model_name="ROADWORK_DINOV3", config_name="roadwork_dinov3.yaml",
                 device="cpu"):
        # FeatureDetector keeps CUDA only when given the string "cuda" (a torch.device, as
        # the CAMO detector passes, falls back to the CPU): decide here, whatever the form.
        wanted = str(device)
        cuda = wanted.startswith("cuda") and torch.cuda.is_available()
        self.roadwork_device = wanted if cuda else "cpu"
        super().__init__(model_name, config_name, device)  # reads the YAML, calls load_model()

    def load_model(self):
        folder = Path(str(self.hf_repo)).expanduser()
        if not folder.is_dir():
            from huggingface_hub import snapshot_download

            revision = getattr(self, "revision", None)
            folder = Path(snapshot_download(str(self.hf_repo), revision=revision))
        path = folder / "detector.py"
        spec = importlib.util.spec_from_file_location("roadwork_dinov3_export", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # its dataclasses look their module up
        spec.loader.exec_module(module)
        self.detector = module.RoadworkDetector(
            folder,
            device=self.roadwork_device,
            tta=getattr(self, "tta", None),
            max_variants=getattr(self, "max_variants", None),
        )

    def __call__(self, image):
        return self.detector(image)
'''

CONFIG_TEMPLATE = """# The exported model for RoadworkDinoV3Detector (roadwork_dinov3_detector.py).
hf_repo: '{repo}'  # the Hugging Face repository you uploaded the export to, or a local folder
# revision: 'main'
# tta: false          # true scores the TTA variants too (slower); default: the export's
# max_variants: 3     # with tta: the first N variants only
"""


def miner_config(repo: str | None) -> str:
    return CONFIG_TEMPLATE.format(repo=repo or "<hf-user>/<repo-name>")
