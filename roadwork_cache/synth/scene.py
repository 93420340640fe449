"""Drawing one frame of a synthetic road scene with PIL, in a pinhole perspective: sky, road
to a vanishing point, lane markings, sidewalks, buildings, trees, poles, cars and, on roadwork
rows, cones, drums, barriers, diamond signs and dug-up patches (`layout` decides where)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw

from roadwork_cache.synth.layout import random_tags, sample_layout
from roadwork_cache.synth.things import WHITE, Color, Layout, Thing, mix, uniform


class _Cam:
    """Pinhole camera 1.5 m above the road, looking along it."""

    def __init__(self, lay: Layout, width: int, height: int, rng: np.random.Generator) -> None:
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


def draw(
    lay: Layout, width: int, height: int, travelled: float, rng: np.random.Generator
) -> tuple[Image.Image, str]:
    """Render one frame after the camera has moved `travelled` metres; return it and its text."""
    cam = _Cam(lay, width, height, rng)
    img = Image.new("RGB", (width, height), cam.shade(lay.ground, 30.0))
    hy = int(round(cam.hy))
    img.paste(_gradient(lay.sky_top, lay.sky_bottom, width, hy), (0, 0))
    d = ImageDraw.Draw(img)
    for fx, fy, frx, fry in lay.clouds:
        cx, cy, rx, ry = fx * width, fy * hy, frx * width, fry * height
        d.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=mix(lay.sky_top, (235, 235, 238), 0.5))

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
        rain = mix(lay.sky_bottom, (220, 222, 230), 0.5)
        for _ in range(width * height // 2000):
            x, y = uniform(rng, 0, width), uniform(rng, 0, height)
            ln = uniform(rng, 6, 16)
            d.line([(x, y), (x - ln * 0.25, y + ln)], fill=rain, width=1)
    if "Snowy" in lay.weather:
        for _ in range(width * height // 1500):
            x, y, r = uniform(rng, 0, width), uniform(rng, 0, height), uniform(rng, 0.5, 1.8)
            d.ellipse([x - r, y - r, x + r, y + r], fill=(245, 245, 250))
    text = " ".join(s for g, s in enumerate(lay.groups) if g in visible)
    if lay.groups and not text:  # every group's objects left the frame: name the nearest
        text = lay.groups[0]
    return img, text


def _draw_facade(d: ImageDraw.ImageDraw, cam: _Cam, t: Thing, z: float) -> None:
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


def _draw_tree(d: ImageDraw.ImageDraw, cam: _Cam, t: Thing, z: float) -> None:
    s = cam.f / z
    xc, yb = cam.x(t.x, z), cam.y(z)
    tw, th, r = max(1.0, 0.15 * s), t.h * s, t.w * s
    d.rectangle([xc - tw, yb - th, xc + tw, yb], fill=cam.shade((80, 60, 45), z))
    d.ellipse([xc - r, yb - th - 1.6 * r, xc + r, yb - th + 0.3 * r], fill=cam.shade(t.color, z))


def _draw_pole(d: ImageDraw.ImageDraw, cam: _Cam, t: Thing, z: float) -> None:
    s = cam.f / z
    xc, yb = cam.x(t.x, z), cam.y(z)
    top = yb - t.h * s
    d.line([(xc, yb), (xc, top)], fill=cam.shade(t.color, z), width=max(1, int(0.18 * s)))
    arm = xc + t.extra * 1.8 * s
    d.line([(xc, top), (arm, top)], fill=cam.shade(t.color, z), width=max(1, int(0.1 * s)))
    if cam.lay.daytime == "Dark":  # warm-white lamp glow
        r = max(1.5, 0.5 * s)
        d.ellipse([arm - r, top - r * 0.5, arm + r, top + r * 1.2], fill=(255, 236, 190))


def _draw_car(d: ImageDraw.ImageDraw, cam: _Cam, t: Thing, z: float) -> None:
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


def _draw_cone(d: ImageDraw.ImageDraw, cam: _Cam, t: Thing, z: float) -> None:
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
        fill=cam.shade(WHITE, z, reflective=True),
    )
    if h > 8:
        d.rectangle([xc - bw * 1.25, yb - 0.06 * s, xc + bw * 1.25, yb], fill=(25, 25, 25))


def _draw_drum(d: ImageDraw.ImageDraw, cam: _Cam, t: Thing, z: float) -> None:
    s = cam.f / z
    xc, yb = cam.x(t.x, z), cam.y(z)
    hw, h = t.w * s / 2, t.h * s
    orange = cam.shade(t.color, z, reflective=True)
    if h < 4:
        d.rectangle([xc - max(0.5, hw), yb - h, xc + max(0.5, hw), yb], fill=orange)
        return
    white = cam.shade(WHITE, z, reflective=True)
    for k in range(5):  # orange / white bands, orange at top and bottom
        d.rectangle(
            [xc - hw, yb - (k + 1) * h / 5, xc + hw, yb - k * h / 5],
            fill=orange if k % 2 == 0 else white,
        )
    d.ellipse([xc - hw, yb - h - hw * 0.3, xc + hw, yb - h + hw * 0.3], fill=orange)


def _draw_barrier(d: ImageDraw.ImageDraw, cam: _Cam, t: Thing, z: float) -> None:
    s = cam.f / z
    xc, yb = cam.x(t.x, z), cam.y(z)
    hw, h = t.w * s / 2, t.h * s
    orange = cam.shade(t.color, z, reflective=True)
    white = cam.shade(WHITE, z, reflective=True)
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


def _draw_sign(d: ImageDraw.ImageDraw, cam: _Cam, t: Thing, z: float) -> None:
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


_DRAWERS: dict[str, Callable[[ImageDraw.ImageDraw, _Cam, Thing, float], None]] = {
    "facade": _draw_facade,
    "tree": _draw_tree,
    "pole": _draw_pole,
    "car": _draw_car,
    "cone": _draw_cone,
    "drum": _draw_drum,
    "barrier": _draw_barrier,
    "sign": _draw_sign,
}


def render_scene(rng: np.random.Generator, width: int, height: int, roadwork: bool) -> Image.Image:
    """Draw one random road scene of `width` x `height`, with roadwork objects if `roadwork`."""
    daytime, env, weather = random_tags(rng)
    lay = sample_layout(rng, roadwork, daytime, env, weather, travel=0.0)
    return draw(lay, int(width), int(height), 0.0, rng)[0]
