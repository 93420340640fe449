"""`aug-K`: training augmentation with albumentations, plus a scattering-model haze.

Geometry (flip, rotation, zoom, perspective), photometry (brightness, contrast, saturation,
hue), weather (rain, fog, shadow, sun glare), noise and blur, on the whole image. Every
random choice comes from the generator the caller seeds per (image id, variant).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import lru_cache

import numpy as np
from PIL import Image

WEATHER = ("rain", "fog", "shadow", "glare")


WEATHER_P = 0.4


@lru_cache(maxsize=1)
def _aug_stages() -> dict[str, Callable]:
    # albumentations asks PyPI for a newer version on import (a 2 s timeout): an offline
    # GPU box would pay it once per process.
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import albumentations as A

    return {
        "geometry_colour": A.Compose(
            [
                A.HorizontalFlip(p=0.5),
                A.Affine(rotate=(-10, 10), scale=(0.9, 1.25), border_mode=1, p=0.7),
                A.Perspective(scale=(0.02, 0.06), p=0.3),
                A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05, p=0.8),
            ]
        ),
        "rain": A.Compose([A.RandomRain(rain_type="drizzle", p=1.0)]),
        "shadow": A.Compose([A.RandomShadow(shadow_roi=(0, 0.5, 1, 1), p=1.0)]),
        "glare": A.Compose([A.RandomSunFlare(flare_roi=(0, 0, 1, 0.5), src_radius=120, p=1.0)]),
        "noise_blur": A.Compose(
            [
                A.GaussNoise(std_range=(0.02, 0.08), p=0.2),
                A.OneOf(
                    [A.MotionBlur(blur_limit=(3, 7)), A.GaussianBlur(blur_limit=(3, 7))], p=0.2
                ),
            ]
        ),
    }


def prepare() -> None:
    """Build the albumentations pipelines now, in this process, so DataLoader workers forked
    afterwards share them instead of each importing albumentations on its first image."""
    _aug_stages()


def haze(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Fog by the atmospheric scattering model I = J t + A (1 - t), thicker toward the top.

    Written here because albumentations' RandomFog costs about 1.4 s per 1080p frame on this
    machine (it draws and blurs hundreds of circles), which would starve the GPU.
    """
    h = img.shape[0]
    density = rng.uniform(0.25, 0.6)
    depth = np.linspace(1.0, 0.35, h, dtype=np.float32)[:, None, None]  # far at the top
    t = np.exp(-density * 2.0 * depth)
    airlight = rng.uniform(190, 235)
    return (img.astype(np.float32) * t + airlight * (1 - t)).clip(0, 255).astype(np.uint8)


def _stage_seed(rng: np.random.Generator) -> int:
    # albumentations draws from its own generators: reseed them per (image, variant).
    return int(rng.integers(0, 2**31 - 1))


def augment(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    stages = _aug_stages()
    arr = np.asarray(img)

    def run(stage: str, arr: np.ndarray) -> np.ndarray:
        stages[stage].set_random_seed(_stage_seed(rng))
        return stages[stage](image=arr)["image"]

    arr = run(GEOMETRY_STAGE, arr)
    if rng.random() < WEATHER_P:
        weather = WEATHER[int(rng.integers(0, len(WEATHER)))]
        arr = haze(arr, rng) if weather == "fog" else run(weather, arr)
    return Image.fromarray(run("noise_blur", arr))


# The only stage that moves pixels; every later one (weather, haze, noise, blur) changes
# values in place, which tests/test_masks.py checks, so a mask is final after it.
GEOMETRY_STAGE = "geometry_colour"


def augment_mask(img: Image.Image, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`mask` [H, W] (float, the image's size) moved exactly as `augment(img, rng)` moves the
    image's pixels: the same stage with the same seed (albumentations draws the same
    parameters with or without a mask, and warps the mask with nearest neighbours)."""
    stage = _aug_stages()[GEOMETRY_STAGE]
    stage.set_random_seed(_stage_seed(rng))  # augment's first draw from rng
    return stage(image=np.asarray(img), mask=mask)["mask"]
