"""The vocabulary of a synthetic scene: objects on the ground in metres, colours, and the
seeded random draws every part of the layout uses."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Color = tuple[int, int, int]


@dataclass
class Thing:
    """One object standing on (or painted on) the ground, in metres: x lateral, z ahead."""

    kind: str
    x: float
    z: float
    w: float
    h: float
    d: float = 0.0  # extent along the road (facades, patches)
    color: Color = (0, 0, 0)
    group: int = -1  # index of the roadwork group (sentence) it belongs to
    moving: bool = False  # cars keep pace with the camera: their distance stays put
    extra: float = 0.0  # kind-specific (floors of a building, taper of a cone line, ...)


@dataclass
class Layout:
    daytime: str
    env: str
    weather: list[str]
    horizon: float  # fraction of the image height
    vp: float  # fraction of the image width
    road_l: float
    road_r: float
    lanes: int
    shoulder: float
    sidewalk: float
    sky_top: Color
    sky_bottom: Color
    ground: Color
    road: Color
    walk: Color
    light: float
    fog_dist: float
    things: list[Thing] = field(default_factory=list)
    patches: list[Thing] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    clouds: list[tuple[float, float, float, float]] = field(default_factory=list)


def uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    # Log-uniform depth: as many objects between 5 and 10 m as between 40 and 80 m.
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def pick(rng: np.random.Generator, items: Sequence[Any], p: Sequence[float] | None = None) -> Any:
    return items[int(rng.choice(len(items), p=p))]


def jitter(rng: np.random.Generator, c: Color, a: int = 14) -> Color:
    d = rng.integers(-a, a + 1, size=3)
    return (
        min(255, max(0, c[0] + int(d[0]))),
        min(255, max(0, c[1] + int(d[1]))),
        min(255, max(0, c[2] + int(d[2]))),
    )


def mix(a: Color, b: Color, t: float) -> Color:
    return (
        int(a[0] + (b[0] - a[0]) * t),
        int(a[1] + (b[1] - a[1]) * t),
        int(a[2] + (b[2] - a[2]) * t),
    )


ORANGES: tuple[Color, ...] = ((255, 100, 0), (250, 120, 20), (240, 85, 10), (255, 135, 25))


WHITE: Color = (240, 240, 235)


CAR_COLORS: tuple[Color, ...] = (
    (235, 235, 235),
    (25, 25, 28),
    (160, 162, 168),
    (95, 97, 102),
    (150, 20, 25),
    (30, 55, 120),
    (35, 70, 45),
    (200, 190, 160),
)


BUILDING_COLORS: tuple[Color, ...] = (
    (200, 190, 170),
    (140, 140, 145),
    (125, 80, 68),
    (218, 218, 212),
    (100, 110, 125),
    (110, 92, 75),
    (175, 160, 140),
)
