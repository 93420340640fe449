"""HeadConfig: every size and switch of the stage-two head, as one JSON-able dataclass."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from roadwork_cache.runtime.errors import UserError

META_FIELDS: tuple[str, ...] = ("gps", "weather", "daytime", "scene", "text")

# Default vocabularies follow the capitalised tag values of the NATIX shards (docs/design.md
# §1). The trainer should replace them with the values seen in its cache; a value
# outside the vocabulary is encoded as NULL.
WEATHER_VOCAB: tuple[str, ...] = ("Sunny", "Cloudy", "Overcast", "Rainy", "Snowy", "Foggy")
DAYTIME_VOCAB: tuple[str, ...] = ("Light", "Dark", "Dawn", "Dusk")
SCENE_VOCAB: tuple[str, ...] = ("Urban", "Suburban", "Rural", "Highway")


@dataclass
class HeadConfig:
    in_dim: int  # backbone feature size D (1280 for vith16plus, plus D again with cls+mean)
    n_views: int = 12
    keep: int | None = 8  # views kept by token pruning; None (or >= n_views) keeps all
    dim: int = 512
    layers: int = 4
    heads: int = 8
    mlp_ratio: float = 8 / 3  # SwiGLU has three matrices: 8/3 matches a 4x GELU MLP in size
    dropout: float = 0.1
    attn_dropout: float = 0.0
    pyramid_dims: tuple[int, ...] = (512, 256, 128)
    gate_dim: int = 128  # hidden size of the GAFM view gate
    # metadata encoder
    gps_dim: int = 128
    gps_freqs: int = 10  # sin/cos at 2^0 .. 2^9 cycles per radian: finest ~80 km wavelength
    tag_dim: int = 64
    text_dim: int = 384
    weather_vocab: tuple[str, ...] = WEATHER_VOCAB
    daytime_vocab: tuple[str, ...] = DAYTIME_VOCAB
    scene_vocab: tuple[str, ...] = SCENE_VOCAB
    # Text is off by default: the validator only accepts a non-empty scene_description
    # with label 1, so its presence alone is the label (docs/design.md §1).
    meta_fields: tuple[str, ...] = ("gps", "weather", "daytime", "scene")
    field_dropout: float = 0.3  # per field and row, in training
    # Deployment sends no metadata at all: the whole record of a row is dropped this often in
    # training, on top of field dropout (which alone leaves a row all-NULL < 1 % of the time).
    record_dropout: float = 0.5
    # fusion and classifier
    fusion_dim: int = 512
    classifier_dim: int = 256
    n_classes: int = 2
    # auxiliary roadwork coverage: G of the cache's G x G mask grid; 0 = no coverage head
    mask_grid: int = 0

    def __post_init__(self) -> None:
        # JSON gives lists; the dataclass keeps tuples so configs compare and hash as values.
        for name in (
            "pyramid_dims",
            "weather_vocab",
            "daytime_vocab",
            "scene_vocab",
            "meta_fields",
        ):
            setattr(self, name, tuple(getattr(self, name)))
        self.validate()

    @property
    def n_weather(self) -> int:
        return len(self.weather_vocab)

    @property
    def meta_dim(self) -> int:
        """Width of the metadata encoding: gps + weather + daytime + scene + text (704)."""
        return self.gps_dim + 3 * self.tag_dim + self.text_dim

    @property
    def pruning(self) -> bool:
        return self.keep is not None and self.keep < self.n_views

    @property
    def kept_views(self) -> int:
        return self.keep if self.pruning else self.n_views

    def validate(self) -> None:
        problems = []
        for name in (
            "in_dim",
            "n_views",
            "dim",
            "layers",
            "heads",
            "gate_dim",
            "gps_dim",
            "gps_freqs",
            "tag_dim",
            "text_dim",
            "fusion_dim",
            "classifier_dim",
        ):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1")
        if self.dim % self.heads:
            problems.append(f"dim {self.dim} must be divisible by heads {self.heads}")
        if self.keep is not None and self.keep < 1:
            problems.append("keep must be at least 1 or null")
        for name in ("dropout", "attn_dropout", "field_dropout", "record_dropout"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name} must lie in [0, 1]")
        if not self.pyramid_dims:
            problems.append("pyramid_dims must not be empty")
        for name in ("weather_vocab", "daytime_vocab", "scene_vocab"):
            if not getattr(self, name):
                problems.append(f"{name} must not be empty")
        unknown = sorted(set(self.meta_fields) - set(META_FIELDS))
        if unknown:
            problems.append(f"unknown meta_fields {unknown} (known: {list(META_FIELDS)})")
        if self.mask_grid < 0:
            problems.append("mask_grid must be 0 (none) or the cache's mask grid")
        if self.n_classes != 2:
            problems.append("n_classes must be 2 (roadwork / no roadwork)")
        if problems:
            raise UserError("Invalid head config: " + "; ".join(problems) + ".")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)  # JSON has no tuples
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HeadConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"Unknown head config keys: {', '.join(unknown)}.")
        if "in_dim" not in data:
            raise UserError("The head config has no in_dim (the backbone feature size).")
        try:
            return cls(**data)
        except TypeError as error:  # e.g. a string where a number belongs
            raise UserError(f"Invalid head config value: {error}.") from error
