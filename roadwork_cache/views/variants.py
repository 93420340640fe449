"""Named, versioned image recipes applied before the views are cut (docs/design.md §3).

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
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from roadwork_cache.runtime.errors import UserError
from roadwork_cache.views import augment as aug
from roadwork_cache.views.challenge import natix_challenge

N_TTA = 8


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
    """'clean,aug:8,natix:4,tta:8' -> ['clean', 'aug-0', ..., 'tta-7'] (order kept).

    'natix:4+tta:4' composes: every natix-L challenge with every tta-K transform applied to
    the 224 px JPEG, named natix-L+tta-K (what `predict --tta` does to a challenge).
    """
    out: list[str] = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        if "+" in item:
            challenge, _, transform = item.partition("+")
            names = [
                f"{a}+{b}" for a in parse_variants(challenge) for b in parse_variants(transform)
            ]
            for name in names:
                check_variant(name)
            out.extend(n for n in names if n not in out)
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
    """'natix-3' -> ('natix', 3); a composed 'natix-3+tta-1' -> ('natix+tta', 3), its
    challenge's index (`composed_parts` gives both halves)."""
    if name == "clean":
        return "clean", 0
    if "+" in name:
        challenge, transform = composed_parts(name)
        return "natix+tta", split_name(challenge)[1]
    kind, _, k = name.rpartition("-")
    if kind not in ("aug", "natix", "tta") or not k.isdigit():
        raise UserError(
            f"unknown variant {name!r}; use clean, aug-K, natix-K or tta-K "
            "(or counts: clean,aug:8,natix:4,tta:8)"
        )
    if kind == "tta" and int(k) >= N_TTA:
        raise UserError(f"there are {N_TTA} TTA recipes: tta-0 to tta-{N_TTA - 1}")
    return kind, int(k)


def composed_parts(name: str) -> tuple[str, str]:
    """'natix-3+tta-1' -> ('natix-3', 'tta-1'); one sentence for any other composition."""
    parts = name.split("+")
    ok = len(parts) == 2 and parts[0].startswith("natix-") and parts[1].startswith("tta-")
    if not ok:
        raise UserError(
            f"unknown variant {name!r}: a composed variant is a natix challenge then a TTA "
            "transform, e.g. natix-2+tta-1 (or natix:4+tta:4)"
        )
    for part in parts:
        split_name(part)
    return parts[0], parts[1]


def check_variant(name: str) -> str:
    split_name(name)
    return name


def recipe(name: str) -> dict[str, Any]:
    """The recipe stored in the cache attributes for one variant."""
    kind, k = split_name(name)
    if kind == "natix+tta":
        challenge, transform = composed_parts(name)
        return {
            "name": name,
            "kind": kind,
            "index": k,
            "level": k % 4,
            "version": RECIPES["natix"]["version"] * 100 + RECIPES["tta"]["version"],
            "ops": [f"{challenge} (the challenge JPEG)", f"then {transform} on it"],
        }
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
    if kind == "natix+tta":  # the same challenge as natix-L alone, then the TTA transform
        challenge, transform = composed_parts(name)
        return apply_variant(apply_variant(img, challenge, sample_id), transform, sample_id)
    if kind == "tta":
        return tta_image(img, k)
    rng = rng_for(sample_id, name)
    if kind == "aug":
        return aug.augment(img, rng)
    return natix_challenge(img, k % 4, rng)


# ---- aug: albumentations ---------------------------------------------------------------------


def full_resolution(name: str) -> bool:
    """Whether a variant must be rendered from the full-resolution decode: the validator
    renders its challenge from the full image, and TTA transforms crop into it."""
    return split_name(name)[0] in ("natix", "tta", "natix+tta")


def prepare_variants(names: Sequence[str]) -> None:
    """Build what the recipes of `names` need now, in this process: DataLoader workers forked
    afterwards share it instead of each importing albumentations on its first image."""
    if any(split_name(name)[0] == "aug" for name in names):
        aug.prepare()


# ---- natix: the validator's challenge --------------------------------------------------------


# ---- tta: deterministic ----------------------------------------------------------------------


# Each TTA recipe as data, read by `tta_image` here and by `views.masks` for the masks, so
# an image and its mask can never follow two different geometries.
TTA_OPS: dict[int, tuple[tuple, ...]] = {
    0: (("mirror",),),
    1: (("crop", 0.9, (0.5, 0.5)),),
    2: (("zoom_out", 1.1),),
    3: (("crop", 0.85, (0.0, 0.0)),),
    4: (("crop", 0.85, (1.0, 0.0)),),
    5: (("crop", 0.85, (0.0, 1.0)),),
    6: (("crop", 0.85, (1.0, 1.0)),),
    7: (("crop", 0.9, (0.5, 0.5)), ("mirror",)),
}


def tta_ops(k: int) -> tuple[tuple, ...]:
    """The operations of recipe tta-k, in order."""
    if k not in TTA_OPS:
        raise UserError(f"there are {N_TTA} TTA recipes: tta-0 to tta-{N_TTA - 1}")
    return TTA_OPS[k]


def fraction_box(
    width: int, height: int, fraction: float, anchor: tuple[float, float]
) -> tuple[int, int, int, int]:
    """The whole-pixel box (left, top, right, bottom) of a crop of `fraction` of each side
    placed at anchor (0 = left/top, 1 = right/bottom)."""
    cw, ch = width * fraction, height * fraction
    left, top = (width - cw) * anchor[0], (height - ch) * anchor[1]
    return round(left), round(top), round(left + cw), round(top + ch)


def zoom_out_pads(width: int, height: int, factor: float) -> tuple[int, int]:
    """Reflected border (x, y) on each side of a zoom out by `factor`."""
    return round(width * (factor - 1) / 2), round(height * (factor - 1) / 2)


def _zoom_out(img: Image.Image, factor: float) -> Image.Image:
    pad_x, pad_y = zoom_out_pads(*img.size, factor)
    arr = np.pad(np.asarray(img), ((pad_y, pad_y), (pad_x, pad_x), (0, 0)), mode="reflect")
    return Image.fromarray(arr)


def tta_image(img: Image.Image, k: int) -> Image.Image:
    for op in tta_ops(k):
        if op[0] == "mirror":
            img = ImageOps.mirror(img)
        elif op[0] == "crop":
            img = img.crop(fraction_box(*img.size, op[1], op[2]))
        else:
            img = _zoom_out(img, op[1])
    return img
