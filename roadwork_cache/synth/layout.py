"""What a synthetic video shows, fixed over its frames: daytime, environment, weather,
road geometry, colours, and every object with its place in metres (roadwork only on
roadwork videos, from specks near the horizon to large ones near the camera)."""

from __future__ import annotations

import numpy as np

from roadwork_cache.synth.roadwork import add_roadwork
from roadwork_cache.synth.things import (
    BUILDING_COLORS,
    CAR_COLORS,
    Layout,
    Thing,
    jitter,
    log_uniform,
    mix,
    pick,
    uniform,
)

DAYTIMES = ("Light", "Dark", "Twilight")


ENVIRONMENTS = ("Urban", "Suburban", "Rural", "Highway")


ALTERATIONS = ("Lane shift", "Lane closure", "Road closure", "Shoulder closure", "Detour")


WEATHERS = ("Sunny", "Cloudy", "Rainy", "Foggy", "Snowy")


def sample_layout(
    rng: np.random.Generator,
    roadwork: bool,
    daytime: str,
    env: str,
    weather: list[str],
    travel: float,
) -> Layout:
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
    shoulder = {"Highway": uniform(rng, 1.5, 3.0), "Rural": uniform(rng, 0.3, 1.0)}.get(env, 0.3)
    sidewalk = {"Urban": uniform(rng, 2.5, 4.0), "Suburban": uniform(rng, 1.5, 2.5)}.get(env, 0.0)

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
        top, bottom = mix(top, (60, 60, 110), 0.6), mix(bottom, (215, 160, 140), 0.6)
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
    lay = Layout(
        daytime=daytime,
        env=env,
        weather=weather,
        horizon=uniform(rng, 0.36, 0.5),
        vp=uniform(rng, 0.42, 0.58),
        road_l=road_l,
        road_r=road_r,
        lanes=lanes,
        shoulder=shoulder,
        sidewalk=sidewalk,
        sky_top=jitter(rng, top, 8),
        sky_bottom=jitter(rng, bottom, 8),
        ground=jitter(rng, ground, 10),
        road=jitter(rng, road, 6),
        walk=jitter(rng, (160, 158, 150), 10),
        light=light,
        fog_dist=fog_dist,
    )
    if "Cloudy" in weather and daytime != "Dark":  # (x, y, rx, ry) as image fractions
        lay.clouds = [
            (
                uniform(rng, 0, 1),
                uniform(rng, 0, 0.7),
                uniform(rng, 0.05, 0.15),
                uniform(rng, 0.03, 0.08),
            )
            for _ in range(int(rng.integers(2, 6)))
        ]
    zmax = 170.0 + travel
    _add_scenery(rng, lay, zmax)
    _add_cars(rng, lay)
    if roadwork:
        add_roadwork(rng, lay, travel)
    return lay


def _add_scenery(rng: np.random.Generator, lay: Layout, zmax: float) -> None:
    env, things = lay.env, lay.things
    left_edge = lay.road_l - lay.shoulder - lay.sidewalk
    right_edge = lay.road_r + lay.shoulder + lay.sidewalk
    for sign, edge in ((-1.0, left_edge), (1.0, right_edge)):
        z = uniform(rng, 0.0, 10.0)
        if env == "Urban":  # continuous street walls of mid-rise buildings
            while z < zmax:
                d = uniform(rng, 8, 30)
                if rng.random() < 0.85:
                    c = jitter(rng, pick(rng, BUILDING_COLORS))
                    h = uniform(rng, 8, 40)
                    things.append(
                        Thing(
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
                z += d + uniform(rng, 0, 4)
        elif env == "Suburban":  # set-back houses with trees in front
            while z < zmax:
                d = uniform(rng, 8, 15)
                c = jitter(rng, pick(rng, BUILDING_COLORS))
                things.append(
                    Thing(
                        "facade",
                        edge + sign * uniform(rng, 5, 12),
                        z,
                        0,
                        uniform(rng, 4.5, 8),
                        d,
                        c,
                    )
                )
                z += d + uniform(rng, 5, 15)
        elif env == "Rural" and rng.random() < 0.35:  # the odd barn
            things.append(
                Thing(
                    "facade",
                    edge + sign * uniform(rng, 8, 25),
                    uniform(rng, 15, 120),
                    0,
                    uniform(rng, 5, 9),
                    uniform(rng, 10, 20),
                    jitter(rng, pick(rng, ((120, 45, 40), (150, 150, 145)))),
                )
            )
        elif env == "Highway" and rng.random() < 0.4:  # sound wall
            things.append(
                Thing(
                    "facade",
                    edge + sign * uniform(rng, 2, 4),
                    uniform(rng, 0, 30),
                    0,
                    uniform(rng, 3, 5),
                    zmax,
                    jitter(rng, (150, 148, 140)),
                    extra=-1.0,
                )
            )
        # Trees: density by environment; snow whitens the canopies.
        n_trees = {"Urban": 3, "Suburban": 9, "Rural": 12, "Highway": 5}[env]
        for _ in range(int(rng.integers(n_trees // 2, n_trees + 1))):
            off = uniform(rng, 0.5, 2.0) if env == "Urban" else uniform(rng, 2.0, 20.0)
            r = uniform(rng, 1.3, 3.2)
            green = jitter(rng, (55, 95, 45), 18)
            if "Snowy" in lay.weather:
                green = mix(green, (235, 238, 242), 0.6)
            things.append(
                Thing(
                    "tree",
                    edge + sign * off,
                    uniform(rng, 3, zmax),
                    r,
                    uniform(rng, 1.8, 3.5),
                    color=green,
                )
            )
        # Street lights / utility poles at a regular spacing.
        if env != "Highway" or sign < 0:
            step = uniform(rng, 25, 45)
            z = uniform(rng, 2, step)
            while z < zmax:
                things.append(
                    Thing(
                        "pole",
                        edge + sign * 0.5 if env != "Highway" else lay.road_l - lay.shoulder - 0.8,
                        z,
                        0.2,
                        uniform(rng, 7, 9),
                        color=(90, 90, 92),
                        extra=-sign,
                    )
                )
                z += step


def _add_cars(rng: np.random.Generator, lay: Layout) -> None:
    n = int(
        rng.integers(
            *{"Urban": (2, 8), "Suburban": (0, 4), "Rural": (0, 3), "Highway": (2, 7)}[lay.env]
        )
    )
    for _ in range(n):
        lane = int(rng.integers(0, lay.lanes))
        x = lay.road_l + (lane + 0.5) * 3.5 + float(rng.normal(0, 0.2))
        z = log_uniform(rng, 6 if abs(x) > 2 else 12, 150)
        # Orange cars are rare, so orange alone is not a perfect roadwork cue.
        c = jitter(rng, (235, 120, 25) if rng.random() < 0.06 else pick(rng, CAR_COLORS), 10)
        truck = rng.random() < 0.15
        lay.things.append(
            Thing(
                "car",
                x,
                z,
                2.4 if truck else uniform(rng, 1.7, 1.95),
                3.2 if truck else uniform(rng, 1.35, 1.8),
                color=c,
                moving=True,
                extra=1.0 if truck else 0.0,
            )
        )


def random_tags(rng: np.random.Generator) -> tuple[str, str, list[str]]:
    daytime = pick(rng, DAYTIMES, p=[0.65, 0.2, 0.15])
    env = pick(rng, ENVIRONMENTS, p=[0.35, 0.3, 0.15, 0.2])
    primary = pick(rng, WEATHERS, p=[0.4, 0.3, 0.15, 0.08, 0.07])
    weather = [primary]
    if primary in ("Rainy", "Foggy", "Snowy") and rng.random() < 0.5:
        weather = ["Cloudy", primary]
    elif primary == "Sunny" and rng.random() < 0.1:
        weather = ["Sunny", "Cloudy"]
    return daytime, env, weather
