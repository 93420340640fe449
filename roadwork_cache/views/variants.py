"""Named, versioned image recipes applied before the views are cut (DESIGN.md section 3).

Three kinds, each `kind-K` for K = 0, 1, ...:
- `aug-K`: training augmentation from albumentations: geometry (flip, rotation, zoom,
  perspective), photometry (brightness, contrast, saturation, hue), weather (rain, fog,
  shadow, sun glare), noise and blur, on the whole image.
- `natix-K`: the validator's challenge pipeline at level K % 4, down to the 224 px JPEG a
  miner is sent (quality 75). Levels: 0 centre square + resize; 1 rotation of up to 20
  degrees then a random square resized crop of 20-100 % of the area; 2 adds colour
  saturation, colour contrast and JPEG down/up-sampling at severity 0-1; 3 adds Gaussian
  colour noise and Gaussian blur and severity 0-2. No library has these exact distortions,
  so they are written here from the parameter tables of the public subnet code.
- `tta-K`: deterministic test-time views of the image (flip, zoom 0.9 / 1.1, corners).
`clean` is the image itself.

Randomness comes from a generator seeded by (image id, kind, K), never from global state:
the same image and variant give the same pixels in any process, in any order.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from roadwork_cache.runtime.errors import UserError

CHALLENGE_SIZE = 224  # the validator's TARGET_IMAGE_SIZE
CHALLENGE_JPEG_QUALITY = 75  # PIL's default, what the challenge is encoded with
N_TTA = 8

# Severity tables of the validator's distortions (level 1 and 2 of each; 0 = off).
SATURATION = (0.4, 0.3)  # chroma multiplier
CONTRAST = (0.85, 0.725)  # intensity multiplier
JPEG_FACTOR = (2, 3)  # down/up-sampling factor
NOISE_VAR = (0.001, 0.002)  # variance of the YCbCr noise on a [0, 1] scale
BLUR_KERNEL = (7, 9)  # Gaussian kernel size, sigma = size / 6

RECIPES: dict[str, dict[str, Any]] = {
    "clean": {"version": 1, "ops": []},
    "aug": {
        "version": 1,
        "library": "albumentations",
        "ops": [
            "HorizontalFlip(p=0.5)",
            "Affine(rotate=±10, scale=0.9-1.25, p=0.7)",
            "Perspective(scale=0.02-0.06, p=0.3)",
            "ColorJitter(0.3, 0.3, 0.3, 0.05, p=0.8)",
            "weather p=0.4: one of RandomRain, haze (fog), RandomShadow, RandomSunFlare",
            "GaussNoise(std 0.02-0.08, p=0.2)",
            "OneOf(MotionBlur, GaussianBlur; p=0.2)",
        ],
    },
    "natix": {
        "version": 1,
        "ops": [
            "level = K % 4",
            "0: centre square, resize 224",
            "1-3: rotate U(-20, 20) nearest, RandomResizedCrop(224, 0.2-1.0, ratio 1)",
            "2: saturation {1, 0.4}, contrast {1, 0.85}, jpeg {1, 2}",
            "3: saturation {1, .4, .3}, contrast {1, .85, .725}, jpeg {1, 2, 3}, "
            "noise var {0, .001, .002}, blur {0, 7, 9}",
            "JPEG quality 75",
        ],
    },
    "tta": {
        "version": 1,
        "ops": [
            "0 hflip",
            "1 zoom in 0.9",
            "2 zoom out 1.1 (reflect)",
            "3 top-left 0.85",
            "4 top-right 0.85",
            "5 bottom-left 0.85",
            "6 bottom-right 0.85",
            "7 hflip + zoom in 0.9",
        ],
    },
}


def parse_variants(spec: str) -> list[str]:
    """'clean,aug:8,natix:4,tta:8' -> ['clean', 'aug-0', ..., 'tta-7'] (order kept)."""
    out: list[str] = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        kind, _, count = item.partition(":")
        if kind == "clean" and not count:
            names = ["clean"]
        elif kind in ("aug", "natix", "tta") and count:
            try:
                n = int(count)
            except ValueError:
                raise UserError(f"variant count in {item!r} is not a whole number") from None
            if n < 1 or (kind == "tta" and n > N_TTA):
                limit = f"1 to {N_TTA}" if kind == "tta" else "at least 1"
                raise UserError(f"variant count in {item!r} must be {limit}")
            names = [f"{kind}-{k}" for k in range(n)]
        elif kind in ("aug", "natix", "tta", "clean") and not count:
            names = [check_variant(kind + "-0" if kind != "clean" else kind)]
            if kind != "clean":
                raise UserError(f"{item!r} needs a count, e.g. {kind}:4")
        else:
            names = [check_variant(item)]
        out.extend(n for n in names if n not in out)
    if not out:
        raise UserError("no variants given; e.g. --variants clean,aug:8,natix:4,tta:8")
    return out


def split_name(name: str) -> tuple[str, int]:
    if name == "clean":
        return "clean", 0
    kind, _, k = name.rpartition("-")
    if kind not in ("aug", "natix", "tta") or not k.isdigit():
        raise UserError(
            f"unknown variant {name!r}; use clean, aug-K, natix-K or tta-K "
            "(or counts: clean,aug:8,natix:4,tta:8)"
        )
    if kind == "tta" and int(k) >= N_TTA:
        raise UserError(f"there are {N_TTA} TTA recipes: tta-0 to tta-{N_TTA - 1}")
    return kind, int(k)


def check_variant(name: str) -> str:
    split_name(name)
    return name


def recipe(name: str) -> dict[str, Any]:
    """The recipe stored in the cache attributes for one variant."""
    kind, k = split_name(name)
    out = {"name": name, "kind": kind, "index": k, **RECIPES[kind]}
    if kind == "natix":
        out["level"] = k % 4
    return out


def rng_for(sample_id: str, name: str) -> np.random.Generator:
    """A generator seeded by (image id, variant): stable across processes and runs."""
    digest = hashlib.sha256(f"{sample_id}\x00{name}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


def apply_variant(img: Image.Image, name: str, sample_id: str) -> Image.Image:
    """The RGB image of `variant` for this sample (a new image; `img` is not changed)."""
    kind, k = split_name(name)
    if kind == "clean":
        return img
    if kind == "tta":
        return tta_image(img, k)
    rng = rng_for(sample_id, name)
    if kind == "aug":
        return augment(img, rng)
    return natix_challenge(img, k % 4, rng)


# ---- aug: albumentations ---------------------------------------------------------------------


WEATHER = ("rain", "fog", "shadow", "glare")
WEATHER_P = 0.4


def prepare_variants(names: Sequence[str]) -> None:
    """Build what the recipes of `names` need now, in this process: DataLoader workers forked
    afterwards share it instead of each importing albumentations on its first image."""
    if any(split_name(name)[0] == "aug" for name in names):
        _aug_stages()


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


def augment(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    stages = _aug_stages()
    arr = np.asarray(img)

    def run(stage: str, arr: np.ndarray) -> np.ndarray:
        # albumentations draws from its own generators: reseed them per (image, variant).
        stages[stage].set_random_seed(int(rng.integers(0, 2**31 - 1)))
        return stages[stage](image=arr)["image"]

    arr = run("geometry_colour", arr)
    if rng.random() < WEATHER_P:
        weather = WEATHER[int(rng.integers(0, len(WEATHER)))]
        arr = haze(arr, rng) if weather == "fog" else run(weather, arr)
    return Image.fromarray(run("noise_blur", arr))


# ---- natix: the validator's challenge --------------------------------------------------------


def _centre_square(img: Image.Image) -> Image.Image:
    w, h = img.size
    s = min(w, h)
    left, top = round((w - s) / 2.0), round((h - s) / 2.0)
    return img.crop((left, top, left + s, top + s))


def resized_crop_params(
    width: int, height: int, rng: np.random.Generator, scale=(0.2, 1.0)
) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop.get_params with ratio 1: (top, left, h, w)."""
    area = width * height
    for _ in range(10):
        side = int(round(math.sqrt(area * rng.uniform(*scale))))
        if 0 < side <= width and 0 < side <= height:
            top = int(rng.integers(0, height - side + 1))
            left = int(rng.integers(0, width - side + 1))
            return top, left, side, side
    side = min(width, height)  # the fallback: a centre crop
    return (height - side) // 2, (width - side) // 2, side, side


def _rgb_to_ycc(rgb: np.ndarray) -> np.ndarray:
    """Float RGB -> (Y, Cr, Cb) with chroma offset 0.5, as OpenCV does for float images."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    return np.stack([y, (r - y) * 0.713 + 0.5, (b - y) * 0.564 + 0.5], axis=-1)


def _ycc_to_rgb(ycc: np.ndarray) -> np.ndarray:
    y, cr, cb = ycc[..., 0], ycc[..., 1] - 0.5, ycc[..., 2] - 0.5
    return np.stack([y + 1.403 * cr, y - 0.714 * cr - 0.344 * cb, y + 1.773 * cb], axis=-1)


def _to_studio(ycc: np.ndarray, scale: float) -> np.ndarray:
    """The subnet's YCbCr rescaling to studio range (Y 16-235, C 16-240) over 255."""
    out = ycc.copy()
    out[..., 0] = (out[..., 0] * 219 + 16) / scale
    out[..., 1:] = (out[..., 1:] * 224 + 16) / scale
    return out


def _from_studio(ycc: np.ndarray) -> np.ndarray:
    out = ycc.copy()
    out[..., 0] = (out[..., 0] * 255.0 - 16) / 219
    out[..., 1:] = (out[..., 1:] * 255.0 - 16) / 224
    return out


def colour_saturation(img: np.ndarray, factor: float) -> np.ndarray:
    ycc = _to_studio(_rgb_to_ycc(img.astype(np.float32)), 255.0)
    ycc[..., 1:] = 0.5 + (ycc[..., 1:] - 0.5) * factor
    return _ycc_to_rgb(_from_studio(ycc)).astype(np.uint8)  # truncation, as the subnet does


def colour_contrast(img: np.ndarray, factor: float) -> np.ndarray:
    return (img.astype(np.float32) * factor).astype(np.uint8)


def jpeg_resample(img: np.ndarray, factor: int) -> np.ndarray:
    import cv2

    h, w = img.shape[:2]
    small = cv2.resize(img, (w // factor, h // factor))
    return cv2.resize(small, (w, h))


def gaussian_noise_colour(img: np.ndarray, var: float, rng: np.random.Generator) -> np.ndarray:
    ycc = _to_studio(_rgb_to_ycc(img.astype(np.float32)), 255.0) / 255.0
    noisy = (ycc + math.sqrt(var) * rng.standard_normal(ycc.shape)) * 255.0
    return np.clip(_ycc_to_rgb(_from_studio(noisy)), 0, 255).astype(np.uint8)


def gaussian_blur(img: np.ndarray, kernel: int) -> np.ndarray:
    import cv2

    return cv2.GaussianBlur(img, (kernel, kernel), kernel / 6.0)


def natix_params(level: int, width: int, height: int, rng: np.random.Generator) -> dict:
    """Every random choice of one challenge, drawn in the subnet's order.

    `severity` maps each distortion to 0 (off), 1 or 2: level 2 draws saturation, contrast
    and jpeg in 0-1; level 3 draws those and noise and blur in 0-2."""
    if level not in (0, 1, 2, 3):
        raise ValueError(f"natix level must be 0-3, got {level}")
    params: dict[str, Any] = {"level": level, "angle": 0.0, "crop": None, "severity": {}}
    if level == 0:
        return params
    params["angle"] = float(rng.uniform(-20.0, 20.0))
    params["crop"] = resized_crop_params(width, height, rng)  # rotation keeps the size
    names = {
        2: ("saturation", "contrast", "jpeg"),
        3: ("saturation", "contrast", "jpeg", "noise", "blur"),
    }.get(level, ())
    top = 1 if level == 2 else 2
    params["severity"] = {name: int(rng.integers(0, top + 1)) for name in names}
    params["noise_seed"] = int(rng.integers(0, 2**31 - 1))
    return params


def natix_challenge(img: Image.Image, level: int, rng: np.random.Generator) -> Image.Image:
    """One validator challenge at `level`, returned as the decoded 224 px JPEG."""
    return render_challenge(img, natix_params(level, *img.size, rng))


def render_challenge(img: Image.Image, params: dict) -> Image.Image:
    import torchvision.transforms.functional as TF

    if params["level"] == 0:
        out = _centre_square(img).resize(
            (CHALLENGE_SIZE, CHALLENGE_SIZE), Image.Resampling.BILINEAR
        )
        return jpeg_round_trip(out)
    x = TF.to_tensor(img)
    # The subnet rotates with torchvision's default (nearest) and no expansion.
    x = TF.rotate(x, params["angle"])
    top, left, h, w = params["crop"]
    x = TF.resized_crop(x, top, left, h, w, [CHALLENGE_SIZE, CHALLENGE_SIZE], antialias=True)
    arr = (x.permute(1, 2, 0).clamp(0, 1).numpy() * 255).astype(np.uint8)
    sev = params["severity"]
    if sev.get("saturation"):
        arr = colour_saturation(arr, SATURATION[sev["saturation"] - 1])
    if sev.get("contrast"):
        arr = colour_contrast(arr, CONTRAST[sev["contrast"] - 1])
    if sev.get("jpeg"):
        arr = jpeg_resample(arr, JPEG_FACTOR[sev["jpeg"] - 1])
    if sev.get("noise"):
        noise_rng = np.random.default_rng(params["noise_seed"])
        arr = gaussian_noise_colour(arr, NOISE_VAR[sev["noise"] - 1], noise_rng)
    if sev.get("blur"):
        arr = gaussian_blur(arr, BLUR_KERNEL[sev["blur"] - 1])
    return jpeg_round_trip(Image.fromarray(arr))


def jpeg_round_trip(img: Image.Image, quality: int = CHALLENGE_JPEG_QUALITY) -> Image.Image:
    """Encode and decode as the miner receives it."""
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    buf.seek(0)
    out = Image.open(buf)
    out.load()
    return out.convert("RGB")


# ---- tta: deterministic ----------------------------------------------------------------------


def _crop_fraction(img: Image.Image, fraction: float, anchor: tuple[float, float]) -> Image.Image:
    """A crop of `fraction` of each side placed at anchor (0 = left/top, 1 = right/bottom)."""
    w, h = img.size
    cw, ch = w * fraction, h * fraction
    left, top = (w - cw) * anchor[0], (h - ch) * anchor[1]
    return img.crop((round(left), round(top), round(left + cw), round(top + ch)))


def _zoom_out(img: Image.Image, factor: float) -> Image.Image:
    w, h = img.size
    pad_x, pad_y = round(w * (factor - 1) / 2), round(h * (factor - 1) / 2)
    arr = np.pad(np.asarray(img), ((pad_y, pad_y), (pad_x, pad_x), (0, 0)), mode="reflect")
    return Image.fromarray(arr)


def tta_image(img: Image.Image, k: int) -> Image.Image:
    if k == 0:
        return ImageOps.mirror(img)
    if k == 1:
        return _crop_fraction(img, 0.9, (0.5, 0.5))
    if k == 2:
        return _zoom_out(img, 1.1)
    if 3 <= k <= 6:
        anchors = ((0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0))
        return _crop_fraction(img, 0.85, anchors[k - 3])
    if k == 7:
        return ImageOps.mirror(_crop_fraction(img, 0.9, (0.5, 0.5)))
    raise UserError(f"there are {N_TTA} TTA recipes: tta-0 to tta-{N_TTA - 1}")
