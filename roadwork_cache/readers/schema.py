"""The NATIX roadwork column set and the sample record every reader yields."""

from __future__ import annotations

from dataclasses import dataclass, field

# Exact column names of the natix-network-org/roadwork parquet shards (docs/design.md §1).
# Nested fields are flattened with dots in the published shards.
NATIX_COLUMNS: tuple[str, ...] = (
    "image",  # struct<bytes: binary, path: string>
    "id",
    "width",
    "height",
    "license",
    "flickr_url",
    "coco_url",
    "date_captured",
    "gps",  # string such as "[39.77, -86.18]"
    "city_name",
    "scene_description",
    "video_info.frame_id",
    "video_info.seq_id",
    "video_info.vid_id",
    "scene_level_tags.daytime",
    "scene_level_tags.scene_environment",
    "scene_level_tags.travel_alteration",
    "scene_level_tags.weather",  # list-like string such as "['Sunny']"
    "label",
)

# Columns without which a row cannot become a sample at all.
REQUIRED_COLUMNS: tuple[str, ...] = ("image", "label")


@dataclass
class Sample:
    """One image as a reader hands it to stage one: raw bytes plus parsed metadata.

    Metadata fields are None when absent or malformed; `error` is set when the row itself
    is unusable (missing columns, no image bytes), and the row is then stored with status
    `error` instead of being skipped.
    """

    id: str
    image_bytes: bytes | None
    source: str  # "file.parquet:row" or the manifest file name
    split: str | None = None
    label: int | None = None
    vid_id: str | None = None
    gps_lat: float | None = None
    gps_lon: float | None = None
    city: str | None = None
    weather: list[str] = field(default_factory=list)
    daytime: str | None = None
    scene: str | None = None
    alteration: str | None = None
    description: str = ""
    width: int | None = None
    height: int | None = None
    error: str | None = None
    # A supplied roadwork mask (PNG bytes); None when the row has none. `mask_error` says
    # why a mask the row names could not be read (the row keeps its image).
    mask: bytes | None = None
    mask_error: str | None = None
