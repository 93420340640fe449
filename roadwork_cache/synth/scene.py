"""Synthetic dataset in the exact NATIX roadwork parquet format: the demo and test data source.

`write_synthetic` writes shards named like the real Hugging Face ones
(`train-00000-of-00002.parquet`, `test-00000-of-00001.parquet`) with exactly the columns of
`NATIX_COLUMNS`, the same types (the image is a struct of JPEG bytes and a file name, `gps`
is a string, the tags are list-like strings) and the same quirks the readers must survive:
NULL tags, NULL and malformed GPS strings, `scene_description` and `travel_alteration` set
only on roadwork rows, and several consecutive frames per video.

Images are road scenes drawn with PIL in a pinhole perspective: sky, road to a vanishing
point, lane markings, sidewalks, buildings, trees, poles and cars, tinted by daytime and
weather. Roadwork rows add cones, drums, barriers, diamond signs and dug-up patches, from
specks near the horizon to large ones near the camera; negatives carry none, though a rare
orange car or awning keeps colour alone from being a perfect cue.

Everything is a function of (rows, seed): the plan (video lengths, split, label) comes from
one generator, and each video draws from its own generator seeded by (seed, video index), so
two calls give equal tables and no global random state is touched.
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from roadwork_cache.readers.schema import NATIX_COLUMNS
from roadwork_cache.runtime.errors import UserError

__all__ = ["render_scene", "write_synthetic"]

# Share of roadwork rows per split, as in the real dataset (DESIGN.md section 1).
ROADWORK_RATE = {"train": 0.8, "test": 0.9}

# (name, lat, lon, train weight, test weight): the test split favours Indianapolis and
# Pittsburgh so GPS-weighted sampling has a target distribution to move towards.
CITIES: tuple[tuple[str, float, float, float, float], ...] = (
    ("Indianapolis", 39.77, -86.16, 1.0, 3.0),
    ("Columbus", 39.96, -83.00, 1.0, 1.0),
    ("Boston", 42.36, -71.06, 1.0, 0.5),
    ("Phoenix", 33.45, -112.07, 1.0, 0.5),
    ("Pittsburgh", 40.44, -79.99, 1.0, 2.5),
    ("Chicago", 41.88, -87.63, 1.0, 1.0),
)

# Landscape sizes dominate as in dash-cam / phone footage; 4:3 and portrait appear too.
DEFAULT_SIZES: tuple[tuple[int, int], ...] = (
    (640, 360),
    (480, 270),
    (800, 450),
    (640, 480),
    (360, 640),
)
_DEFAULT_SIZE_P = (0.30, 0.15, 0.20, 0.20, 0.15)

DAYTIMES = ("Light", "Dark", "Twilight")
ENVIRONMENTS = ("Urban", "Suburban", "Rural", "Highway")
ALTERATIONS = ("Lane shift", "Lane closure", "Road closure", "Shoulder closure", "Detour")
WEATHERS = ("Sunny", "Cloudy", "Rainy", "Foggy", "Snowy")

# Readers must cope with these; about 1 % of rows carry one (plus a few % NULL).
_MALFORMED_GPS = ("[nan, ]", "", "[]", "[39.77]", "None", "[nan, nan]")
_MIN_SIDE = 32  # smaller images cannot show a scene (and stage one's views need pixels)
_ROW_GROUP = 64  # lets readers stream a shard by row group
_SHARD_RE = re.compile(r"^(train|test)-\d{5}-of-\d{5}\.parquet$")

_IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
_TYPES: dict[str, pa.DataType] = {
    "image": _IMAGE_TYPE,
    "id": pa.int64(),
    "width": pa.int64(),
    "height": pa.int64(),
    "label": pa.int64(),
    "video_info.frame_id": pa.int64(),
}


SYNTH_MARK = "roadwork_cache.synth"  # schema metadata key: this shard is ours to replace


def _is_synthetic(path: Path) -> bool:
    try:
        meta = pq.read_schema(path).metadata or {}
    except Exception:
        return False
    return SYNTH_MARK.encode() in meta


def _schema() -> pa.Schema:
    # Column order comes from NATIX_COLUMNS so the two cannot drift apart.
    types = {c: _TYPES.get(c, pa.string()) for c in NATIX_COLUMNS}
    # Hugging Face `datasets` reads this to decode `image` as an Image feature.
    features: dict[str, Any] = {}
    for name, typ in types.items():
        if name == "image":
            features[name] = {"_type": "Image"}
        else:
            features[name] = {"dtype": "int64" if typ == pa.int64() else "string", "_type": "Value"}
    meta = {"huggingface": json.dumps({"info": {"features": features}}), SYNTH_MARK: "1"}
    return pa.schema([pa.field(c, t) for c, t in types.items()], metadata=meta)


SCHEMA = _schema()

Color = tuple[int, int, int]


# ---------------------------------------------------------------------------------------------
# Scene description (fixed for a video) and drawing (one frame)
# ---------------------------------------------------------------------------------------------


@dataclass
class _Thing:
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
class _Layout:
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
    things: list[_Thing] = field(default_factory=list)
    patches: list[_Thing] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    clouds: list[tuple[float, float, float, float]] = field(default_factory=list)


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _logu(rng: np.random.Generator, lo: float, hi: float) -> float:
    # Log-uniform depth: as many objects between 5 and 10 m as between 40 and 80 m.
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _pick(rng: np.random.Generator, items: Sequence[Any], p: Sequence[float] | None = None) -> Any:
    return items[int(rng.choice(len(items), p=p))]


def _jit(rng: np.random.Generator, c: Color, a: int = 14) -> Color:
    d = rng.integers(-a, a + 1, size=3)
    return (
        min(255, max(0, c[0] + int(d[0]))),
        min(255, max(0, c[1] + int(d[1]))),
        min(255, max(0, c[2] + int(d[2]))),
    )


def _mix(a: Color, b: Color, t: float) -> Color:
    return (
        int(a[0] + (b[0] - a[0]) * t),
        int(a[1] + (b[1] - a[1]) * t),
        int(a[2] + (b[2] - a[2]) * t),
    )


_ORANGES: tuple[Color, ...] = ((255, 100, 0), (250, 120, 20), (240, 85, 10), (255, 135, 25))
_WHITE: Color = (240, 240, 235)
_CAR_COLORS: tuple[Color, ...] = (
    (235, 235, 235),
    (25, 25, 28),
    (160, 162, 168),
    (95, 97, 102),
    (150, 20, 25),
    (30, 55, 120),
    (35, 70, 45),
    (200, 190, 160),
)
_BUILDING_COLORS: tuple[Color, ...] = (
    (200, 190, 170),
    (140, 140, 145),
    (125, 80, 68),
    (218, 218, 212),
    (100, 110, 125),
    (110, 92, 75),
    (175, 160, 140),
)


def _side_word(x: float) -> str:
    return "right" if x > 0 else "left"


def _sample_layout(
    rng: np.random.Generator,
    roadwork: bool,
    daytime: str,
    env: str,
    weather: list[str],
    travel: float,
) -> _Layout:
    """Everything that stays fixed over a video's frames; `travel` is the distance it covers."""
    lane_w = 3.5
    lanes = (
        int(rng.integers(3, 6))
        if env == "Highway"
        else (int(rng.integers(2, 5)) if env == "Urban" else 2)
    )
    cam_lane = int(rng.integers(0, lanes))
    road_l = -(cam_lane + 0.5) * lane_w + float(rng.normal(0, 0.3))
    road_r = road_l + lanes * lane_w
    shoulder = {"Highway": _u(rng, 1.5, 3.0), "Rural": _u(rng, 0.3, 1.0)}.get(env, 0.3)
    sidewalk = {"Urban": _u(rng, 2.5, 4.0), "Suburban": _u(rng, 1.5, 2.5)}.get(env, 0.0)

    # The worst weather decides the sky: fog over snow over rain over cloud over sun.
    worst = max(weather, key=WEATHERS.index) if weather else "Sunny"
    skies = {
        "Sunny": ((70, 130, 210), (170, 200, 235)),
        "Cloudy": ((150, 155, 165), (200, 202, 208)),
        "Rainy": ((100, 105, 115), (150, 152, 158)),
        "Foggy": ((195, 197, 200), (215, 216, 218)),
        "Snowy": ((180, 185, 195), (222, 224, 230)),
    }
    top, bottom = skies[worst]
    light = {"Sunny": 1.0, "Cloudy": 0.9, "Rainy": 0.78, "Foggy": 0.85, "Snowy": 0.92}[worst]
    if daytime == "Twilight":
        top, bottom = _mix(top, (60, 60, 110), 0.6), _mix(bottom, (215, 160, 140), 0.6)
        light *= 0.62
    elif daytime == "Dark":
        top, bottom = (8, 10, 22), (30, 32, 50) if worst != "Foggy" else (55, 56, 62)
        light = 0.28
    fog_dist = {"Foggy": 55.0, "Rainy": 220.0, "Snowy": 180.0}.get(worst, 900.0)

    ground = {
        "Urban": (125, 123, 118),
        "Suburban": (95, 130, 70),
        "Rural": (120, 130, 72),
        "Highway": (105, 122, 75),
    }[env]
    if "Snowy" in weather:
        ground = (228, 230, 236)
    road = (62, 62, 66) if worst == "Rainy" else (78, 78, 80)
    lay = _Layout(
        daytime=daytime,
        env=env,
        weather=weather,
        horizon=_u(rng, 0.36, 0.5),
        vp=_u(rng, 0.42, 0.58),
        road_l=road_l,
        road_r=road_r,
        lanes=lanes,
        shoulder=shoulder,
        sidewalk=sidewalk,
        sky_top=_jit(rng, top, 8),
        sky_bottom=_jit(rng, bottom, 8),
        ground=_jit(rng, ground, 10),
        road=_jit(rng, road, 6),
        walk=_jit(rng, (160, 158, 150), 10),
        light=light,
        fog_dist=fog_dist,
    )
    if "Cloudy" in weather and daytime != "Dark":  # (x, y, rx, ry) as image fractions
        lay.clouds = [
            (_u(rng, 0, 1), _u(rng, 0, 0.7), _u(rng, 0.05, 0.15), _u(rng, 0.03, 0.08))
            for _ in range(int(rng.integers(2, 6)))
        ]
    zmax = 170.0 + travel
    _add_scenery(rng, lay, zmax)
    _add_cars(rng, lay)
    if roadwork:
        _add_roadwork(rng, lay, travel)
    return lay


def _add_scenery(rng: np.random.Generator, lay: _Layout, zmax: float) -> None:
    env, things = lay.env, lay.things
    left_edge = lay.road_l - lay.shoulder - lay.sidewalk
    right_edge = lay.road_r + lay.shoulder + lay.sidewalk
    for sign, edge in ((-1.0, left_edge), (1.0, right_edge)):
        z = _u(rng, 0.0, 10.0)
        if env == "Urban":  # continuous street walls of mid-rise buildings
            while z < zmax:
                d = _u(rng, 8, 30)
                if rng.random() < 0.85:
                    c = _jit(rng, _pick(rng, _BUILDING_COLORS))
                    h = _u(rng, 8, 40)
                    things.append(
                        _Thing(
                            "facade",
                            edge + sign * 0.3,
                            z,
                            0,
                            h,
                            d,
                            c,
                            extra=1.0 if rng.random() < 0.05 else 0.0,
                        )
                    )
                z += d + _u(rng, 0, 4)
        elif env == "Suburban":  # set-back houses with trees in front
            while z < zmax:
                d = _u(rng, 8, 15)
                c = _jit(rng, _pick(rng, _BUILDING_COLORS))
                things.append(
                    _Thing("facade", edge + sign * _u(rng, 5, 12), z, 0, _u(rng, 4.5, 8), d, c)
                )
                z += d + _u(rng, 5, 15)
        elif env == "Rural" and rng.random() < 0.35:  # the odd barn
            things.append(
                _Thing(
                    "facade",
                    edge + sign * _u(rng, 8, 25),
                    _u(rng, 15, 120),
                    0,
                    _u(rng, 5, 9),
                    _u(rng, 10, 20),
                    _jit(rng, _pick(rng, ((120, 45, 40), (150, 150, 145)))),
                )
            )
        elif env == "Highway" and rng.random() < 0.4:  # sound wall
            things.append(
                _Thing(
                    "facade",
                    edge + sign * _u(rng, 2, 4),
                    _u(rng, 0, 30),
                    0,
                    _u(rng, 3, 5),
                    zmax,
                    _jit(rng, (150, 148, 140)),
                    extra=-1.0,
                )
            )
        # Trees: density by environment; snow whitens the canopies.
        n_trees = {"Urban": 3, "Suburban": 9, "Rural": 12, "Highway": 5}[env]
        for _ in range(int(rng.integers(n_trees // 2, n_trees + 1))):
            off = _u(rng, 0.5, 2.0) if env == "Urban" else _u(rng, 2.0, 20.0)
            r = _u(rng, 1.3, 3.2)
            green = _jit(rng, (55, 95, 45), 18)
            if "Snowy" in lay.weather:
                green = _mix(green, (235, 238, 242), 0.6)
            things.append(
                _Thing(
                    "tree", edge + sign * off, _u(rng, 3, zmax), r, _u(rng, 1.8, 3.5), color=green
                )
            )
        # Street lights / utility poles at a regular spacing.
        if env != "Highway" or sign < 0:
            step = _u(rng, 25, 45)
            z = _u(rng, 2, step)
            while z < zmax:
                things.append(
                    _Thing(
                        "pole",
                        edge + sign * 0.5 if env != "Highway" else lay.road_l - lay.shoulder - 0.8,
                        z,
                        0.2,
                        _u(rng, 7, 9),
                        color=(90, 90, 92),
                        extra=-sign,
                    )
                )
                z += step


def _add_cars(rng: np.random.Generator, lay: _Layout) -> None:
    n = int(
        rng.integers(
            *{"Urban": (2, 8), "Suburban": (0, 4), "Rural": (0, 3), "Highway": (2, 7)}[lay.env]
        )
    )
    for _ in range(n):
        lane = int(rng.integers(0, lay.lanes))
        x = lay.road_l + (lane + 0.5) * 3.5 + float(rng.normal(0, 0.2))
        z = _logu(rng, 6 if abs(x) > 2 else 12, 150)
        # Orange cars are rare, so orange alone is not a perfect roadwork cue.
        c = _jit(rng, (235, 120, 25) if rng.random() < 0.06 else _pick(rng, _CAR_COLORS), 10)
        truck = rng.random() < 0.15
        lay.things.append(
            _Thing(
                "car",
                x,
                z,
                2.4 if truck else _u(rng, 1.7, 1.95),
                3.2 if truck else _u(rng, 1.35, 1.8),
                color=c,
                moving=True,
                extra=1.0 if truck else 0.0,
            )
        )


def _add_roadwork(rng: np.random.Generator, lay: _Layout, travel: float) -> None:
    kinds = ("cone_line", "drum_line", "barrier", "sign", "work_area")
    n_groups = int(rng.choice([1, 2, 3], p=[0.45, 0.35, 0.20]))
    # Candidate lateral lines: road edges and lane dividers.
    dividers = [lay.road_l + i * 3.5 for i in range(1, lay.lanes)]
    for g in range(n_groups):
        kind = _pick(rng, kinds, p=[0.35, 0.15, 0.2, 0.15, 0.15])
        right = rng.random() < 0.6
        side = "right" if right else "left"
        edge = (lay.road_r - 0.4) if right else (lay.road_l + 0.4)
        items: list[_Thing] = []
        z0 = _logu(rng, 4, 60)
        color = _pick(rng, _ORANGES)
        if kind in ("cone_line", "drum_line"):
            cone = kind == "cone_line"
            x0 = edge
            sentence = (
                f"Line of cones on {side} side of road."
                if cone
                else f"Drums along {side} side of road."
            )
            if dividers and rng.random() < 0.3:
                x0 = _pick(rng, dividers)
                sentence = (
                    "Cones along the lane divider." if cone else "Drums separating traffic lanes."
                )
            # A taper drifts into the lane, as at the start of a lane closure.
            taper = _u(rng, -2.5, 2.5) if rng.random() < 0.35 else 0.0
            if taper:
                sentence = f"{'Cones' if cone else 'Drums'} tapering into the {side} lane."
                taper = -abs(taper) if right else abs(taper)
            count = int(rng.integers(5, 17) if cone else rng.integers(3, 11))
            spacing = _u(rng, 2.5, 6) if cone else _u(rng, 4, 8)
            h = _u(rng, 0.45, 0.9) if cone else _u(rng, 0.9, 1.1)
            w = h * 0.55 if cone else _u(rng, 0.55, 0.65)
            for i in range(count):
                x = x0 + taper * min(1.0, i / 4.0)
                items.append(
                    _Thing("cone" if cone else "drum", x, z0 + i * spacing, w, h, color=color)
                )
        elif kind == "barrier":
            lane_l = lay.road_l if right is False else lay.road_r - 3.5
            k = int(rng.integers(1, 4))
            bw = 3.2 / k
            sentence = (
                "Barrier in front of work zone."
                if k == 1
                else f"Barriers blocking the {side} lane."
            )
            for i in range(k):
                items.append(
                    _Thing(
                        "barrier",
                        lane_l + (i + 0.5) * bw + 0.15,
                        z0,
                        bw * 0.9,
                        _u(rng, 1.0, 1.4),
                        color=color,
                    )
                )
            lay.patches.append(
                _Thing(
                    "patch",
                    lane_l + 1.75,
                    z0 + 1.0,
                    3.2,
                    0,
                    _u(rng, 6, 25),
                    _jit(rng, (118, 92, 66), 10),
                    group=g,
                )
            )
        elif kind == "sign":
            k = int(rng.integers(1, 3))
            x = (lay.road_r + lay.shoulder + 0.8) if right else (lay.road_l - lay.shoulder - 0.8)
            sentence = f"Roadwork ahead sign on {side} side of road."
            for i in range(k):
                items.append(
                    _Thing(
                        "sign",
                        x,
                        z0 + i * _u(rng, 20, 40),
                        _u(rng, 0.8, 1.2),
                        _u(rng, 1.8, 2.4),
                        color=color,
                    )
                )
        else:  # work area: a dug-up patch ringed by cones and a drum or two
            length = _u(rng, 5, 15)
            xc = edge - 1.6 if right else edge + 1.6
            sentence = f"Cones around work area on {side} side of road."
            lay.patches.append(
                _Thing("patch", xc, z0, 2.6, 0, length, _jit(rng, (118, 92, 66), 10), group=g)
            )
            for i in range(int(rng.integers(4, 9))):
                t = i / 3.0
                x = xc + (1.6 if i % 2 else -1.6)
                items.append(
                    _Thing("cone", x, z0 + t * length / 2, 0.35, _u(rng, 0.5, 0.8), color=color)
                )
            if rng.random() < 0.5:
                items.append(_Thing("drum", xc, z0 + length + 0.5, 0.6, 1.0, color=color))
        # Keep something of every group in view until the last frame of the video.
        far = max(t.z for t in items)
        shift = max(0.0, travel + 6.0 - far)
        for t in items:
            t.z += shift
            t.group = g
        for p in lay.patches:
            if p.group == g:
                p.z += shift
        lay.things.extend(items)
        lay.groups.append(sentence)


class _Cam:
    """Pinhole camera 1.5 m above the road, looking along it."""

    def __init__(self, lay: _Layout, width: int, height: int, rng: np.random.Generator) -> None:
        self.w, self.h = width, height
        # Same sensor held either way: focal length scales with the long side.
        self.f = 0.87 * max(width, height)
        self.hy = height * (lay.horizon + float(rng.normal(0, 0.006)))
        self.vp = width * (lay.vp + float(rng.normal(0, 0.008)))
        self.ch = 1.5
        self.z_bottom = self.f * self.ch / max(1.0, height - self.hy)
        self.lay = lay

    def x(self, x: float, z: float) -> float:
        return self.vp + self.f * x / z

    def y(self, z: float, up: float = 0.0) -> float:
        return self.hy + self.f * (self.ch - up) / z

    def shade(self, c: Color, z: float, reflective: bool = False) -> Color:
        lay = self.lay
        light = lay.light
        if lay.daytime == "Dark":  # headlights light up the first ~35 m
            light += (0.75 - light) * max(0.0, 1.0 - z / 35.0)
            if reflective:
                light = max(light, 0.55)
        t = 1.0 - math.exp(-z / lay.fog_dist)
        r, g, b = c[0] * light, c[1] * light, c[2] * light
        fog = lay.sky_bottom
        return (int(r + (fog[0] - r) * t), int(g + (fog[1] - g) * t), int(b + (fog[2] - b) * t))


def _ground_quad(
    d: ImageDraw.ImageDraw, cam: _Cam, x0: float, x1: float, z0: float, z1: float, color: Color
) -> None:
    d.polygon(
        [
            (cam.x(x0, z0), cam.y(z0)),
            (cam.x(x1, z0), cam.y(z0)),
            (cam.x(x1, z1), cam.y(z1)),
            (cam.x(x0, z1), cam.y(z1)),
        ],
        fill=color,
    )


# Depth bands for ground strips, so fog and headlights fade with distance.
_BANDS = (1.0, 4.0, 6.0, 9.0, 12.0, 17.0, 24.0, 34.0, 48.0, 96.0, 200.0, 5000.0)


def _ground_strip(d: ImageDraw.ImageDraw, cam: _Cam, x0: float, x1: float, color: Color) -> None:
    for z0, z1 in zip(_BANDS[:-1], _BANDS[1:], strict=True):
        _ground_quad(d, cam, x0, x1, z0, z1, cam.shade(color, math.sqrt(z0 * min(z1, 400.0))))


def _gradient(top: Color, bottom: Color, width: int, height: int) -> Image.Image:
    t = np.linspace(0.0, 1.0, max(1, height), dtype=np.float32)[:, None]
    col = np.asarray(top, np.float32) * (1 - t) + np.asarray(bottom, np.float32) * t
    strip = Image.fromarray(col.astype(np.uint8)[:, None, :], "RGB")
    return strip.resize((width, max(1, height)), Image.Resampling.NEAREST)


def _draw(
    lay: _Layout, width: int, height: int, travelled: float, rng: np.random.Generator
) -> tuple[Image.Image, str]:
    """Render one frame after the camera has moved `travelled` metres; return it and its text."""
    cam = _Cam(lay, width, height, rng)
    img = Image.new("RGB", (width, height), cam.shade(lay.ground, 30.0))
    hy = int(round(cam.hy))
    img.paste(_gradient(lay.sky_top, lay.sky_bottom, width, hy), (0, 0))
    d = ImageDraw.Draw(img)
    for fx, fy, frx, fry in lay.clouds:
        cx, cy, rx, ry = fx * width, fy * hy, frx * width, fry * height
        d.ellipse(
            [cx - rx, cy - ry, cx + rx, cy + ry], fill=_mix(lay.sky_top, (235, 235, 238), 0.5)
        )

    # Ground: field / sidewalk / shoulder+road, then markings and dug-up patches.
    gl, gr = lay.road_l - lay.shoulder, lay.road_r + lay.shoulder
    _ground_strip(d, cam, -400.0, 400.0, lay.ground)
    if lay.sidewalk:
        _ground_strip(d, cam, gl - lay.sidewalk, gr + lay.sidewalk, lay.walk)
    _ground_strip(d, cam, gl, gr, lay.road)
    mark_far = 140.0
    line_c = (235, 235, 230)
    for xe in (lay.road_l, lay.road_r):
        _ground_quad(
            d,
            cam,
            xe - 0.08,
            xe + 0.08,
            max(1.0, cam.z_bottom * 0.8),
            mark_far,
            cam.shade(line_c, 20.0),
        )
    phase = travelled % 12.0
    for i in range(1, lay.lanes):
        xb = lay.road_l + i * 3.5
        z = max(1.0, cam.z_bottom * 0.8) - phase
        while z < mark_far:
            if z + 3.0 > 1.0:
                za = max(z, 1.0)
                _ground_quad(d, cam, xb - 0.07, xb + 0.07, za, z + 3.0, cam.shade(line_c, za))
            z += 12.0
    for p in lay.patches:
        z0 = p.z - travelled
        z1 = z0 + p.d
        if z1 > 1.0:
            _ground_quad(
                d,
                cam,
                p.x - p.w / 2,
                p.x + p.w / 2,
                max(z0, 1.0),
                z1,
                cam.shade(p.color, max(z0, 1.0)),
            )

    # Upright things, far to near (painter's algorithm).
    visible: set[int] = set()
    placed = []
    for t in lay.things:
        z = t.z if t.moving else t.z - travelled
        if z + t.d < 1.2 or z > 400:
            continue
        # Facades first: whatever stands between a building and the road is nearer to us.
        placed.append((t.kind != "facade", -z, z, t))
    placed.sort(key=lambda p: (p[0], p[1]))
    for _, _, z, t in placed:
        _DRAWERS[t.kind](d, cam, t, z)
        if t.group >= 0 and cam.z_bottom * 0.7 < z < 200 and abs(cam.x(t.x, z) - width / 2) < width:
            visible.add(t.group)

    # Weather particles over everything.
    if "Rainy" in lay.weather:
        rain = _mix(lay.sky_bottom, (220, 222, 230), 0.5)
        for _ in range(width * height // 2000):
            x, y = _u(rng, 0, width), _u(rng, 0, height)
            ln = _u(rng, 6, 16)
            d.line([(x, y), (x - ln * 0.25, y + ln)], fill=rain, width=1)
    if "Snowy" in lay.weather:
        for _ in range(width * height // 1500):
            x, y, r = _u(rng, 0, width), _u(rng, 0, height), _u(rng, 0.5, 1.8)
            d.ellipse([x - r, y - r, x + r, y + r], fill=(245, 245, 250))
    text = " ".join(s for g, s in enumerate(lay.groups) if g in visible)
    if lay.groups and not text:  # every group's objects left the frame: name the nearest
        text = lay.groups[0]
    return img, text


def _draw_facade(d: ImageDraw.ImageDraw, cam: _Cam, t: _Thing, z: float) -> None:
    z0, z1 = max(z, 1.2), z + t.d
    if z1 <= 1.2:
        return
    x = t.x
    c = cam.shade(t.color, z0 + min(t.d, 60.0) / 2)
    d.polygon(
        [
            (cam.x(x, z0), cam.y(z0)),
            (cam.x(x, z1), cam.y(z1)),
            (cam.x(x, z1), cam.y(z1, t.h)),
            (cam.x(x, z0), cam.y(z0, t.h)),
        ],
        fill=c,
    )
    if t.extra < 0:  # sound wall: no windows
        return
    # Window bands per floor (at most 8 drawn, so tall buildings stay cheap).
    floors = max(1, int(t.h / 3.3))
    win = cam.shade((50, 60, 75), z0 + 5)
    if cam.lay.daytime == "Dark":
        win = (190, 170, 110)  # lit windows
    za, zb = z0 + 0.8, z1 - 0.8
    if zb <= za:
        return
    for k in range(0, floors, max(1, floors // 8)):
        y0, y1 = k * 3.3 + 1.1, k * 3.3 + 2.3
        d.polygon(
            [
                (cam.x(x, za), cam.y(za, y0)),
                (cam.x(x, zb), cam.y(zb, y0)),
                (cam.x(x, zb), cam.y(zb, y1)),
                (cam.x(x, za), cam.y(za, y1)),
            ],
            fill=win,
        )
    if t.extra > 0:  # a rare orange shop awning on a negative or positive scene alike
        d.polygon(
            [
                (cam.x(x, za), cam.y(za, 3.2)),
                (cam.x(x, zb), cam.y(zb, 3.2)),
                (cam.x(x, zb), cam.y(zb, 2.5)),
                (cam.x(x, za), cam.y(za, 2.5)),
            ],
            fill=cam.shade((245, 115, 20), z0),
        )


def _draw_tree(d: ImageDraw.ImageDraw, cam: _Cam, t: _Thing, z: float) -> None:
    s = cam.f / z
    xc, yb = cam.x(t.x, z), cam.y(z)
    tw, th, r = max(1.0, 0.15 * s), t.h * s, t.w * s
    d.rectangle([xc - tw, yb - th, xc + tw, yb], fill=cam.shade((80, 60, 45), z))
    d.ellipse([xc - r, yb - th - 1.6 * r, xc + r, yb - th + 0.3 * r], fill=cam.shade(t.color, z))


def _draw_pole(d: ImageDraw.ImageDraw, cam: _Cam, t: _Thing, z: float) -> None:
    s = cam.f / z
    xc, yb = cam.x(t.x, z), cam.y(z)
    top = yb - t.h * s
    d.line([(xc, yb), (xc, top)], fill=cam.shade(t.color, z), width=max(1, int(0.18 * s)))
    arm = xc + t.extra * 1.8 * s
    d.line([(xc, top), (arm, top)], fill=cam.shade(t.color, z), width=max(1, int(0.1 * s)))
    if cam.lay.daytime == "Dark":  # warm-white lamp glow
        r = max(1.5, 0.5 * s)
        d.ellipse([arm - r, top - r * 0.5, arm + r, top + r * 1.2], fill=(255, 236, 190))


def _draw_car(d: ImageDraw.ImageDraw, cam: _Cam, t: _Thing, z: float) -> None:
    s = cam.f / z
    xc, yb = cam.x(t.x, z), cam.y(z)
    hw, h = t.w * s / 2, t.h * s
    body = cam.shade(t.color, z)
    if t.extra:  # box truck
        d.rectangle([xc - hw, yb - h, xc + hw, yb - 0.35 * s], fill=body)
    else:
        d.rectangle([xc - hw, yb - 0.62 * h, xc + hw, yb - 0.22 * s], fill=body)
        d.polygon(
            [
                (xc - hw * 0.85, yb - 0.62 * h),
                (xc + hw * 0.85, yb - 0.62 * h),
                (xc + hw * 0.7, yb - h),
                (xc - hw * 0.7, yb - h),
            ],
            fill=body,
        )
        d.rectangle(
            [xc - hw * 0.7, yb - 0.95 * h, xc + hw * 0.7, yb - 0.66 * h],
            fill=cam.shade((35, 40, 48), z),
        )
    wheel = (15, 15, 15)
    d.rectangle([xc - hw, yb - 0.35 * s, xc - hw * 0.6, yb], fill=wheel)
    d.rectangle([xc + hw * 0.6, yb - 0.35 * s, xc + hw, yb], fill=wheel)
    tail = (255, 30, 30) if cam.lay.daytime == "Dark" else cam.shade((170, 20, 20), z)
    ty = yb - 0.55 * h if not t.extra else yb - 0.5 * s
    d.rectangle([xc - hw, ty - 0.12 * s, xc - hw * 0.75, ty], fill=tail)
    d.rectangle([xc + hw * 0.75, ty - 0.12 * s, xc + hw, ty], fill=tail)


def _draw_cone(d: ImageDraw.ImageDraw, cam: _Cam, t: _Thing, z: float) -> None:
    s = cam.f / z
    xc, yb = cam.x(t.x, z), cam.y(z)
    h, bw = t.h * s, t.w * s / 2
    orange = cam.shade(t.color, z, reflective=True)
    if h < 3:  # a speck near the horizon
        d.rectangle([xc - max(0.5, bw), yb - max(1.0, h), xc + max(0.5, bw), yb], fill=orange)
        return
    tw = bw * 0.15
    d.polygon([(xc - bw, yb), (xc + bw, yb), (xc + tw, yb - h), (xc - tw, yb - h)], fill=orange)
    # White reflective collar between 45 % and 65 % of the height.
    f0, f1 = 0.45, 0.65
    w0, w1 = bw + (tw - bw) * f0, bw + (tw - bw) * f1
    d.polygon(
        [
            (xc - w0, yb - f0 * h),
            (xc + w0, yb - f0 * h),
            (xc + w1, yb - f1 * h),
            (xc - w1, yb - f1 * h),
        ],
        fill=cam.shade(_WHITE, z, reflective=True),
    )
    if h > 8:
        d.rectangle([xc - bw * 1.25, yb - 0.06 * s, xc + bw * 1.25, yb], fill=(25, 25, 25))


def _draw_drum(d: ImageDraw.ImageDraw, cam: _Cam, t: _Thing, z: float) -> None:
    s = cam.f / z
    xc, yb = cam.x(t.x, z), cam.y(z)
    hw, h = t.w * s / 2, t.h * s
    orange = cam.shade(t.color, z, reflective=True)
    if h < 4:
        d.rectangle([xc - max(0.5, hw), yb - h, xc + max(0.5, hw), yb], fill=orange)
        return
    white = cam.shade(_WHITE, z, reflective=True)
    for k in range(5):  # orange / white bands, orange at top and bottom
        d.rectangle(
            [xc - hw, yb - (k + 1) * h / 5, xc + hw, yb - k * h / 5],
            fill=orange if k % 2 == 0 else white,
        )
    d.ellipse([xc - hw, yb - h - hw * 0.3, xc + hw, yb - h + hw * 0.3], fill=orange)


def _draw_barrier(d: ImageDraw.ImageDraw, cam: _Cam, t: _Thing, z: float) -> None:
    s = cam.f / z
    xc, yb = cam.x(t.x, z), cam.y(z)
    hw, h = t.w * s / 2, t.h * s
    orange = cam.shade(t.color, z, reflective=True)
    white = cam.shade(_WHITE, z, reflective=True)
    leg = cam.shade((60, 60, 60), z)
    lw = max(1.0, 0.05 * s)
    for lx in (xc - hw * 0.8, xc + hw * 0.8):
        d.rectangle([lx - lw, yb - h, lx + lw, yb], fill=leg)
    boards = 2 if t.h > 1.2 else 1
    bh = 0.25 * s
    for b in range(boards):
        y1 = yb - h + b * 0.45 * s + bh
        y0 = y1 - bh
        d.rectangle([xc - hw, y0, xc + hw, y1], fill=white)
        if bh < 2:
            d.rectangle([xc - hw, y0, xc, y1], fill=orange)
            continue
        sw = bh  # diagonal orange stripes as wide as the board is high
        xs = xc - hw
        while xs < xc + hw - sw * 0.5:
            x_hi = min(xs + sw, xc + hw)
            d.polygon(
                [
                    (xs, y1),
                    (x_hi, y1),
                    (min(x_hi + sw * 0.6, xc + hw), y0),
                    (min(xs + sw * 0.6, xc + hw), y0),
                ],
                fill=orange,
            )
            xs += 2 * sw


def _draw_sign(d: ImageDraw.ImageDraw, cam: _Cam, t: _Thing, z: float) -> None:
    s = cam.f / z
    xc, yb = cam.x(t.x, z), cam.y(z)
    r, top = t.w * s / 2, yb - t.h * s
    d.line([(xc, yb), (xc, top)], fill=cam.shade((120, 120, 120), z), width=max(1, int(0.07 * s)))
    cy = top - r
    pts = [(xc, cy - r), (xc + r, cy), (xc, cy + r), (xc - r, cy)]
    orange = cam.shade(t.color, z, reflective=True)
    if r > 4:
        d.polygon(pts, fill=orange, outline=(20, 20, 20), width=max(1, int(r * 0.08)))
    else:
        d.polygon(pts, fill=orange)
    if r > 10:  # a worker pictogram: head and body
        k = r * 0.12
        d.ellipse([xc - k, cy - 4 * k, xc + k, cy - 2 * k], fill=(20, 20, 20))
        d.line([(xc, cy - 2 * k), (xc - k, cy + 3 * k)], fill=(20, 20, 20), width=max(1, int(k)))


_DRAWERS: dict[str, Callable[[ImageDraw.ImageDraw, _Cam, _Thing, float], None]] = {
    "facade": _draw_facade,
    "tree": _draw_tree,
    "pole": _draw_pole,
    "car": _draw_car,
    "cone": _draw_cone,
    "drum": _draw_drum,
    "barrier": _draw_barrier,
    "sign": _draw_sign,
}


def _random_tags(rng: np.random.Generator) -> tuple[str, str, list[str]]:
    daytime = _pick(rng, DAYTIMES, p=[0.65, 0.2, 0.15])
    env = _pick(rng, ENVIRONMENTS, p=[0.35, 0.3, 0.15, 0.2])
    primary = _pick(rng, WEATHERS, p=[0.4, 0.3, 0.15, 0.08, 0.07])
    weather = [primary]
    if primary in ("Rainy", "Foggy", "Snowy") and rng.random() < 0.5:
        weather = ["Cloudy", primary]
    elif primary == "Sunny" and rng.random() < 0.1:
        weather = ["Sunny", "Cloudy"]
    return daytime, env, weather


def render_scene(rng: np.random.Generator, width: int, height: int, roadwork: bool) -> Image.Image:
    """Draw one random road scene of `width` x `height`, with roadwork objects if `roadwork`."""
    daytime, env, weather = _random_tags(rng)
    lay = _sample_layout(rng, roadwork, daytime, env, weather, travel=0.0)
    return _draw(lay, int(width), int(height), 0.0, rng)[0]


# ---------------------------------------------------------------------------------------------
# Dataset plan and rows
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Video:
    index: int  # position in generation order; seeds the video's own generator
    frames: int
    split: str
    label: int
    first_id: int


def _plan(rows: int, seed: int, test_fraction: float) -> list[_Video]:
    rng = np.random.default_rng(seed)
    lengths: list[int] = []
    left = rows
    while left > 0:
        n = min(int(rng.integers(3, 9)), left)
        lengths.append(n)
        left -= n
    # Whole videos go to test until its share is reached; a video joins only if that
    # overshoots the target by no more than it would otherwise fall short.
    split = ["train"] * len(lengths)
    target, taken = round(test_fraction * rows), 0
    for i in rng.permutation(len(lengths)):
        n = lengths[i]
        if taken < target and n <= 2 * (target - taken):
            split[i], taken = "test", taken + n
    # Labels per video, by the same rule, so each split's roadwork share is close to its rate.
    label = [0] * len(lengths)
    for name, rate in ROADWORK_RATE.items():
        idx = np.array([i for i, s in enumerate(split) if s == name], dtype=np.int64)
        target, pos = round(rate * sum(lengths[i] for i in idx)), 0
        for i in rng.permutation(idx):
            n = lengths[i]
            if pos < target and n <= 2 * (target - pos):
                label[i], pos = 1, pos + n
    videos, first = [], 1
    for i, n in enumerate(lengths):
        videos.append(_Video(i, n, split[i], label[i], first))
        first += n
    return videos


def _hour(rng: np.random.Generator, daytime: str) -> int:
    if daytime == "Light":
        return int(rng.integers(8, 17))
    if daytime == "Twilight":
        return int(_pick(rng, (6, 7, 18, 19)))
    return int(_pick(rng, (20, 21, 22, 23, 0, 1, 2, 4, 5)))


def _video_rows(
    v: _Video, seed: int, sizes: Sequence[tuple[int, int]], size_p: Sequence[float] | None
) -> Iterator[dict[str, Any]]:
    rng = np.random.default_rng([seed, v.index])
    weights = np.array([c[3] if v.split == "train" else c[4] for c in CITIES])
    city, clat, clon, _, _ = CITIES[int(rng.choice(len(CITIES), p=weights / weights.sum()))]
    lat, lon = clat + float(rng.normal(0, 0.04)), clon + float(rng.normal(0, 0.05))
    heading = _u(rng, 0, 2 * math.pi)
    gps_null = rng.random() < 0.03  # a phone without a fix: the whole video lacks GPS
    width, height = sizes[int(rng.choice(len(sizes), p=size_p))]

    daytime, env, weather = _random_tags(rng)
    if "Snowy" in weather:
        day = int(_pick(rng, (*range(0, 60), *range(334, 366))))
    else:
        day = int(rng.integers(0, 366))
    start = datetime(2024, 1, 1) + timedelta(
        days=day,
        hours=_hour(rng, daytime),
        minutes=int(rng.integers(0, 60)),
        seconds=int(rng.integers(0, 60)),
    )
    interval = int(rng.integers(1, 4))
    roadwork = v.label == 1
    alteration = None
    if roadwork and rng.random() < 0.65:
        k = 1 if rng.random() < 0.8 else 2
        alteration = str([ALTERATIONS[i] for i in sorted(rng.choice(5, k, replace=False))])
    # Tags are missing per video at realistic rates (annotators skip fields).
    tag_daytime = None if rng.random() < 0.12 else daytime
    tag_env = None if rng.random() < 0.18 else env
    tag_weather = None if rng.random() < 0.25 else str(weather)

    vid_id = rng.bytes(16).hex()
    seq_id = f"seq_{rng.bytes(4).hex()}"
    frame0, fstep = int(rng.integers(0, 900)), int(_pick(rng, (5, 10, 15, 30)))
    speed = _u(rng, 1.0, 3.0)  # metres the camera moves between kept frames
    layout = _sample_layout(rng, roadwork, daytime, env, weather, speed * (v.frames - 1))
    step_deg = speed / 111_000.0
    for k in range(v.frames):
        img, text = _draw(layout, width, height, k * speed, rng)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        frame_id = frame0 + k * fstep
        if gps_null:
            gps = None
        elif rng.random() < 0.01:
            gps = _pick(rng, _MALFORMED_GPS)
        else:
            glat = lat + k * step_deg * math.cos(heading) + float(rng.normal(0, 2e-5))
            glon = lon + k * step_deg * math.sin(heading) + float(rng.normal(0, 2e-5))
            gps = f"[{glat:.6f}, {glon:.6f}]"
        yield {
            "image": {"bytes": buf.getvalue(), "path": f"{vid_id}_{frame_id:06d}.jpg"},
            "id": v.first_id + k,
            "width": width,
            "height": height,
            "license": "CC BY 4.0",
            "flickr_url": "",
            "coco_url": "",
            "date_captured": (start + timedelta(seconds=k * interval)).strftime(
                "%Y-%m-%d %H:%M:%S"
            ),
            "gps": gps,
            "city_name": city,
            "scene_description": text if roadwork else "",
            "video_info.frame_id": frame_id,
            "video_info.seq_id": seq_id,
            "video_info.vid_id": vid_id,
            "scene_level_tags.daytime": tag_daytime,
            "scene_level_tags.scene_environment": tag_env,
            "scene_level_tags.travel_alteration": alteration,
            "scene_level_tags.weather": tag_weather,
            "label": v.label,
        }


def _table(batch: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pydict({c: [r[c] for r in batch] for c in NATIX_COLUMNS}, schema=SCHEMA)


def _check_sizes(sizes: Sequence[tuple[int, int]] | None) -> list[tuple[int, int]]:
    if sizes is None:
        return list(DEFAULT_SIZES)
    out: list[tuple[int, int]] = []
    for s in sizes:
        try:
            w, h = (int(v) for v in s)
        except (TypeError, ValueError):
            raise UserError(f"Each size must be a (width, height) pair, got {s!r}.") from None
        if w < _MIN_SIDE or h < _MIN_SIDE:
            raise UserError(f"Image sizes must be at least {_MIN_SIDE} px a side, got {w}x{h}.")
        out.append((w, h))
    if not out:
        raise UserError("sizes must name at least one (width, height) pair.")
    return out


def write_synthetic(
    out: Path,
    rows: int,
    seed: int = 0,
    *,
    shard_rows: int = 256,
    test_fraction: float = 0.25,
    sizes: Sequence[tuple[int, int]] | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[Path]:
    """Write `rows` rows as parquet shards in `out`; return the paths.

    Shards are named like the real ones, `train-00000-of-0000K.parquet` and
    `test-00000-of-0000K.parquet`. Videos are kept whole within one split; each shard holds
    at most `shard_rows` rows in row groups of 64. Shards of an earlier synth run in `out`
    are replaced, so a folder never mixes two runs; a folder holding parquet shards that synth
    did not write (real data, say) is refused, never overwritten. `progress` is called with
    the number of rows just written.
    """
    if isinstance(rows, bool) or not isinstance(rows, int | np.integer) or rows < 1:
        raise UserError(f"rows must be a whole number of at least 1, got {rows!r}.")
    if not isinstance(test_fraction, int | float) or not 0.0 <= float(test_fraction) <= 1.0:
        raise UserError(f"test_fraction must be between 0 and 1, got {test_fraction!r}.")
    if isinstance(shard_rows, bool) or not isinstance(shard_rows, int) or shard_rows < 1:
        raise UserError(f"shard_rows must be a whole number of at least 1, got {shard_rows!r}.")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise UserError(f"seed must be a non-negative whole number, got {seed!r}.")
    size_list = _check_sizes(sizes)
    size_p = _DEFAULT_SIZE_P if sizes is None else None
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"Cannot create output directory {out}: {e.strerror}.") from None

    foreign = sorted(p.name for p in out.glob("*.parquet") if not _is_synthetic(p))
    if foreign:
        raise UserError(
            f"{out} already holds parquet files that `roadwork synth` did not write "
            f"({foreign[0]}, ...); choose an empty folder."
        )
    videos = _plan(int(rows), int(seed), float(test_fraction))
    paths: list[Path] = []
    for split in ("train", "test"):
        vids = [v for v in videos if v.split == split]
        total = sum(v.frames for v in vids)
        if total == 0:
            continue
        n_shards = math.ceil(total / shard_rows)
        stream = (r for v in vids for r in _video_rows(v, int(seed), size_list, size_p))
        for s in range(n_shards):
            path = out / f"{split}-{s:05d}-of-{n_shards:05d}.parquet"
            tmp = path.with_name(path.name + ".tmp")
            count = min(shard_rows, total - s * shard_rows)
            # Write to a temporary name first: an interrupted run leaves no half shard
            # under a name readers would pick up.
            with pq.ParquetWriter(tmp, SCHEMA) as writer:
                done = 0
                while done < count:
                    n = min(_ROW_GROUP, count - done)
                    batch = [next(stream) for _ in range(n)]
                    writer.write_table(_table(batch), row_group_size=_ROW_GROUP)
                    done += n
                    if progress is not None:
                        progress(n)
            tmp.replace(path)
            paths.append(path)
    keep = {p.name for p in paths}
    for old in out.iterdir():
        if _SHARD_RE.match(old.name) and old.name not in keep:
            old.unlink()
    return paths
