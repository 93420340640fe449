"""Stage-two heads: nn.Modules that classify roadwork from cached per-view features."""

from roadwork_cache.heads.config import HeadConfig
from roadwork_cache.heads.head import HeadOutput, RoadworkHead
from roadwork_cache.heads.metadata import MetadataBatch, MetadataEncoder

__all__ = ["HeadConfig", "HeadOutput", "MetadataBatch", "MetadataEncoder", "RoadworkHead"]
