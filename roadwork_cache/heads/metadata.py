"""Metadata of a row as tensors (MetadataBatch) and its encoder (MetadataEncoder, 704-d).

Every field can be NULL, and in deployment every field is: the miner is sent one image
and nothing else. Each categorical field has a learnable NULL embedding, the text a zero
vector, and field dropout makes NULL common in training.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
from torch import Tensor, nn

from roadwork_cache.heads.config import HeadConfig


@dataclass
class MetadataBatch:
    """Metadata of B rows. A NULL field: gps_mask False, an all-zero weather row, daytime or
    scene -1, text_mask False. Values under a False mask are ignored, whatever they are."""

    gps: Tensor  # [B, 2] float, (lat, lon) in degrees
    gps_mask: Tensor  # [B] bool
    weather: Tensor  # [B, n_weather] float multi-hot
    daytime: Tensor  # [B] long, index into daytime_vocab, -1 = NULL
    scene: Tensor  # [B] long, index into scene_vocab, -1 = NULL
    text: Tensor  # [B, text_dim] float, sentence embedding of the scene description
    text_mask: Tensor  # [B] bool

    def __len__(self) -> int:
        return self.gps.shape[0]

    @classmethod
    def null(
        cls,
        batch_size: int,
        n_weather: int,
        text_dim: int = 384,
        device: torch.device | str | None = None,
    ) -> MetadataBatch:
        """All fields NULL: what the head sees in deployment."""
        B = batch_size
        return cls(
            gps=torch.zeros(B, 2, device=device),
            gps_mask=torch.zeros(B, dtype=torch.bool, device=device),
            weather=torch.zeros(B, n_weather, device=device),
            daytime=torch.full((B,), -1, dtype=torch.long, device=device),
            scene=torch.full((B,), -1, dtype=torch.long, device=device),
            text=torch.zeros(B, text_dim, device=device),
            text_mask=torch.zeros(B, dtype=torch.bool, device=device),
        )

    @classmethod
    def from_values(
        cls,
        config: HeadConfig,
        gps: Sequence[tuple[float, float] | None],
        weather: Sequence[Sequence[str]],
        daytime: Sequence[str | None],
        scene: Sequence[str | None],
        text: Tensor | None = None,
        text_mask: Tensor | None = None,
    ) -> MetadataBatch:
        """Parsed values (as in the cache's samples table) -> tensors. A value outside the
        config's vocabulary becomes NULL, as does a missing or non-finite GPS fix."""
        B = len(gps)
        out = cls.null(B, config.n_weather, config.text_dim)
        weather_index = {v: i for i, v in enumerate(config.weather_vocab)}
        daytime_index = {v: i for i, v in enumerate(config.daytime_vocab)}
        scene_index = {v: i for i, v in enumerate(config.scene_vocab)}
        for row in range(B):
            fix = gps[row]
            if fix is not None and all(math.isfinite(c) for c in fix):
                out.gps[row] = torch.tensor(fix, dtype=torch.float32)
                out.gps_mask[row] = True
            for value in weather[row]:
                if value in weather_index:
                    out.weather[row, weather_index[value]] = 1.0
            out.daytime[row] = daytime_index.get(daytime[row], -1)
            out.scene[row] = scene_index.get(scene[row], -1)
        if text is not None:
            out.text = text.float()
            out.text_mask = (
                text_mask.bool() if text_mask is not None else torch.ones(B, dtype=torch.bool)
            )
        return out

    def to(self, device: torch.device | str) -> MetadataBatch:
        return MetadataBatch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def select(self, index: Tensor | slice) -> MetadataBatch:
        """Rows `index` of every field (for mini-batches)."""
        return MetadataBatch(**{f.name: getattr(self, f.name)[index] for f in fields(self)})


class MetadataEncoder(nn.Module):
    """MetadataBatch -> [B, meta_dim] (128 gps + 64 weather + 64 daytime + 64 scene + 384 text).

    A field is NULL when missing, when disabled in the config, or (training only) when
    field dropout drops it, independently per field and row with probability field_dropout.
    """

    def __init__(self, config: HeadConfig) -> None:
        super().__init__()
        self.fields = frozenset(config.meta_fields)
        self.field_dropout = config.field_dropout
        self.record_dropout = config.record_dropout
        # GPS: sin/cos of lat and lon (radians) at octave frequencies, then a Linear.
        self.register_buffer(
            "gps_freqs",
            2.0 ** torch.arange(config.gps_freqs, dtype=torch.float32),
            persistent=False,
        )
        self.gps_proj = nn.Linear(4 * config.gps_freqs, config.gps_dim)
        self.gps_null = nn.Parameter(torch.randn(config.gps_dim) * 0.02)
        # Weather is multi-label: the mean of the embeddings of the listed values.
        self.weather_embed = nn.Parameter(torch.randn(config.n_weather, config.tag_dim) * 0.02)
        self.weather_null = nn.Parameter(torch.randn(config.tag_dim) * 0.02)
        # Daytime / scene: row 0 is the NULL embedding, value i is row i + 1.
        self.daytime_embed = nn.Embedding(len(config.daytime_vocab) + 1, config.tag_dim)
        self.scene_embed = nn.Embedding(len(config.scene_vocab) + 1, config.tag_dim)
        nn.init.normal_(self.daytime_embed.weight, std=0.02)
        nn.init.normal_(self.scene_embed.weight, std=0.02)
        self.text_proj = nn.Linear(config.text_dim, config.text_dim)
        self.out_dim = config.meta_dim

    def _present(self, name: str, present: Tensor, kept: Tensor | None) -> Tensor:
        """[B] bool: the field is used for this row (enabled, present, its record kept, the
        field not dropped)."""
        if name not in self.fields:
            return torch.zeros_like(present)
        if kept is not None:
            present = present & kept
        if self.training and self.field_dropout > 0:
            present = present & (
                torch.rand(present.shape, device=present.device) >= self.field_dropout
            )
        return present

    def encode_gps(self, gps: Tensor) -> Tensor:
        """[B, 2] degrees -> [B, 4 * gps_freqs]."""
        angles = torch.deg2rad(gps).unsqueeze(-1) * self.gps_freqs  # [B, 2, F]
        return torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(1)

    def forward(self, meta: MetadataBatch) -> Tensor:
        B = len(meta)
        kept = None  # [B] bool: the row's record survives whole-record dropout
        if self.training and self.record_dropout > 0:
            kept = torch.rand(B, device=meta.gps.device) >= self.record_dropout
        # Masked slots may hold anything (NaN included): zero them before any arithmetic,
        # or a NaN would reach the gradients through the unused branch of torch.where.
        gps_on = self._present("gps", meta.gps_mask.bool() & meta.gps.isfinite().all(-1), kept)
        gps = torch.where(gps_on[:, None], meta.gps.float(), 0.0)
        gps = torch.where(gps_on[:, None], self.gps_proj(self.encode_gps(gps)), self.gps_null)

        weather = meta.weather.float().nan_to_num(0.0).clamp_min(0.0)
        count = weather.sum(-1, keepdim=True)  # [B, 1]
        weather_on = self._present("weather", count.squeeze(-1) > 0, kept)
        mean = weather @ self.weather_embed / count.clamp_min(1.0)  # [B, tag_dim]
        weather = torch.where(weather_on[:, None], mean, self.weather_null)

        daytime_on = self._present("daytime", meta.daytime >= 0, kept)
        daytime = self.daytime_embed(torch.where(daytime_on, meta.daytime + 1, 0))
        scene_on = self._present("scene", meta.scene >= 0, kept)
        scene = self.scene_embed(torch.where(scene_on, meta.scene + 1, 0))

        text_on = self._present("text", meta.text_mask.bool() & meta.text.isfinite().all(-1), kept)
        text = torch.where(text_on[:, None], meta.text.float(), 0.0)
        text = torch.where(text_on[:, None], self.text_proj(text), 0.0)  # zeros when absent

        out = torch.cat([gps, weather, daytime, scene, text], dim=-1)  # [B, meta_dim]
        assert out.shape == (B, self.out_dim)
        return out
