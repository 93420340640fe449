"""`natix-K`: the validator's challenge pipeline at level K % 4, down to the 224 px JPEG.

Levels: 0 centre square + resize; 1 rotation of up to 20 degrees then a random square
resized crop of 20-100 % of the area; 2 adds colour saturation, colour contrast and JPEG
down/up-sampling at severity 0-1; 3 adds Gaussian colour noise and Gaussian blur and
severity 0-2. No library has these exact distortions, so they are written here from the
parameter tables of the public subnet code (where its code and its prose differ, the code
wins: the rotation is nearest, "contrast" is a plain multiplication).
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
from PIL import Image

CHALLENGE_SIZE = 224  # the validator's TARGET_IMAGE_SIZE


CHALLENGE_JPEG_QUALITY = 75  # PIL's default, what the challenge is encoded with


# Severity tables of the validator's distortions (level 1 and 2 of each; 0 = off).
SATURATION = (0.4, 0.3)  # chroma multiplier


CONTRAST = (0.85, 0.725)  # intensity multiplier


JPEG_FACTOR = (2, 3)  # down/up-sampling factor


NOISE_VAR = (0.001, 0.002)  # variance of the YCbCr noise on a [0, 1] scale


BLUR_KERNEL = (7, 9)  # Gaussian kernel size, sigma = size / 6


def centre_square_box(width: int, height: int) -> tuple[int, int, int, int]:
    """Level 0's crop (left, top, right, bottom): the centre square of the short side."""
    s = min(width, height)
    left, top = round((width - s) / 2.0), round((height - s) / 2.0)
    return left, top, left + s, top + s


def _centre_square(img: Image.Image) -> Image.Image:
    return img.crop(centre_square_box(*img.size))


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
    return decode_jpeg(challenge_jpeg(img, natix_params(level, *img.size, rng)))


def challenge_jpeg(img: Image.Image, params: dict) -> bytes:
    """The 224 px JPEG (quality 75) a miner receives for these challenge parameters."""
    return encode_jpeg(render_challenge(img, params))


def render_challenge(img: Image.Image, params: dict) -> Image.Image:
    """The challenge's pixels before the JPEG encoding."""
    import torchvision.transforms.functional as TF

    if params["level"] == 0:
        out = _centre_square(img).resize(
            (CHALLENGE_SIZE, CHALLENGE_SIZE), Image.Resampling.BILINEAR
        )
        return out
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
    return Image.fromarray(arr)


def encode_jpeg(img: Image.Image, quality: int = CHALLENGE_JPEG_QUALITY) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def decode_jpeg(data: bytes) -> Image.Image:
    out = Image.open(io.BytesIO(data))
    out.load()
    return out.convert("RGB")


def jpeg_round_trip(img: Image.Image, quality: int = CHALLENGE_JPEG_QUALITY) -> Image.Image:
    """Encode and decode as the miner receives it."""
    return decode_jpeg(encode_jpeg(img, quality))
