"""The roadwork of a synthetic roadwork video: groups of cones, drums, barriers and signs,
and dug-up patches, each group with the sentence that describes it."""

from __future__ import annotations

import numpy as np

from roadwork_cache.synth.things import (
    ORANGES,
    Layout,
    Thing,
    jitter,
    log_uniform,
    pick,
    uniform,
)


def add_roadwork(rng: np.random.Generator, lay: Layout, travel: float) -> None:
    kinds = ("cone_line", "drum_line", "barrier", "sign", "work_area")
    n_groups = int(rng.choice([1, 2, 3], p=[0.45, 0.35, 0.20]))
    # Candidate lateral lines: road edges and lane dividers.
    dividers = [lay.road_l + i * 3.5 for i in range(1, lay.lanes)]
    for g in range(n_groups):
        kind = pick(rng, kinds, p=[0.35, 0.15, 0.2, 0.15, 0.15])
        right = rng.random() < 0.6
        side = "right" if right else "left"
        edge = (lay.road_r - 0.4) if right else (lay.road_l + 0.4)
        items: list[Thing] = []
        z0 = log_uniform(rng, 4, 60)
        color = pick(rng, ORANGES)
        if kind in ("cone_line", "drum_line"):
            cone = kind == "cone_line"
            x0 = edge
            sentence = (
                f"Line of cones on {side} side of road."
                if cone
                else f"Drums along {side} side of road."
            )
            if dividers and rng.random() < 0.3:
                x0 = pick(rng, dividers)
                sentence = (
                    "Cones along the lane divider." if cone else "Drums separating traffic lanes."
                )
            # A taper drifts into the lane, as at the start of a lane closure.
            taper = uniform(rng, -2.5, 2.5) if rng.random() < 0.35 else 0.0
            if taper:
                sentence = f"{'Cones' if cone else 'Drums'} tapering into the {side} lane."
                taper = -abs(taper) if right else abs(taper)
            count = int(rng.integers(5, 17) if cone else rng.integers(3, 11))
            spacing = uniform(rng, 2.5, 6) if cone else uniform(rng, 4, 8)
            h = uniform(rng, 0.45, 0.9) if cone else uniform(rng, 0.9, 1.1)
            w = h * 0.55 if cone else uniform(rng, 0.55, 0.65)
            for i in range(count):
                x = x0 + taper * min(1.0, i / 4.0)
                items.append(
                    Thing("cone" if cone else "drum", x, z0 + i * spacing, w, h, color=color)
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
                    Thing(
                        "barrier",
                        lane_l + (i + 0.5) * bw + 0.15,
                        z0,
                        bw * 0.9,
                        uniform(rng, 1.0, 1.4),
                        color=color,
                    )
                )
            lay.patches.append(
                Thing(
                    "patch",
                    lane_l + 1.75,
                    z0 + 1.0,
                    3.2,
                    0,
                    uniform(rng, 6, 25),
                    jitter(rng, (118, 92, 66), 10),
                    group=g,
                )
            )
        elif kind == "sign":
            k = int(rng.integers(1, 3))
            x = (lay.road_r + lay.shoulder + 0.8) if right else (lay.road_l - lay.shoulder - 0.8)
            sentence = f"Roadwork ahead sign on {side} side of road."
            for i in range(k):
                items.append(
                    Thing(
                        "sign",
                        x,
                        z0 + i * uniform(rng, 20, 40),
                        uniform(rng, 0.8, 1.2),
                        uniform(rng, 1.8, 2.4),
                        color=color,
                    )
                )
        else:  # work area: a dug-up patch ringed by cones and a drum or two
            length = uniform(rng, 5, 15)
            xc = edge - 1.6 if right else edge + 1.6
            sentence = f"Cones around work area on {side} side of road."
            lay.patches.append(
                Thing("patch", xc, z0, 2.6, 0, length, jitter(rng, (118, 92, 66), 10), group=g)
            )
            for i in range(int(rng.integers(4, 9))):
                t = i / 3.0
                x = xc + (1.6 if i % 2 else -1.6)
                items.append(
                    Thing("cone", x, z0 + t * length / 2, 0.35, uniform(rng, 0.5, 0.8), color=color)
                )
            if rng.random() < 0.5:
                items.append(Thing("drum", xc, z0 + length + 0.5, 0.6, 1.0, color=color))
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
