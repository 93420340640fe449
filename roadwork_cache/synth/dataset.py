"""The synthetic dataset in the exact NATIX roadwork parquet format: demo and test data.

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
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from roadwork_cache.readers.schema import NATIX_COLUMNS
from roadwork_cache.runtime.errors import UserError
from roadwork_cache.synth.layout import ALTERATIONS, random_tags, sample_layout
from roadwork_cache.synth.scene import draw
from roadwork_cache.synth.things import pick, uniform

# Share of roadwork rows per split, as in the real dataset (docs/design.md §1).
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
        return int(pick(rng, (6, 7, 18, 19)))
    return int(pick(rng, (20, 21, 22, 23, 0, 1, 2, 4, 5)))


def _video_rows(
    v: _Video, seed: int, sizes: Sequence[tuple[int, int]], size_p: Sequence[float] | None
) -> Iterator[dict[str, Any]]:
    rng = np.random.default_rng([seed, v.index])
    weights = np.array([c[3] if v.split == "train" else c[4] for c in CITIES])
    city, clat, clon, _, _ = CITIES[int(rng.choice(len(CITIES), p=weights / weights.sum()))]
    lat, lon = clat + float(rng.normal(0, 0.04)), clon + float(rng.normal(0, 0.05))
    heading = uniform(rng, 0, 2 * math.pi)
    gps_null = rng.random() < 0.03  # a phone without a fix: the whole video lacks GPS
    width, height = sizes[int(rng.choice(len(sizes), p=size_p))]

    daytime, env, weather = random_tags(rng)
    if "Snowy" in weather:
        day = int(pick(rng, (*range(0, 60), *range(334, 366))))
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
    frame0, fstep = int(rng.integers(0, 900)), int(pick(rng, (5, 10, 15, 30)))
    speed = uniform(rng, 1.0, 3.0)  # metres the camera moves between kept frames
    layout = sample_layout(rng, roadwork, daytime, env, weather, speed * (v.frames - 1))
    step_deg = speed / 111_000.0
    for k in range(v.frames):
        img, text = draw(layout, width, height, k * speed, rng)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        frame_id = frame0 + k * fstep
        if gps_null:
            gps = None
        elif rng.random() < 0.01:
            gps = pick(rng, _MALFORMED_GPS)
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
