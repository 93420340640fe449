"""Scene descriptions through the bundled all-MiniLM-L6-v2, offline."""

import json

import numpy as np

from helpers import shared_real
from roadwork_cache.backbone.text import TEXT_DIM, TextEncoder

REAL = shared_real() / "descriptions.json"


def test_embeddings_are_normalised_and_masked():
    texts = [
        "Line of cones on the right side of the road.",
        "",
        "Traffic cones next to work vehicles on the right side of road.",
        "A sunny beach with palm trees.",
    ]
    assert REAL.is_file(), f"{REAL} is missing (tests/data/real holds it)"
    texts += list(json.loads(REAL.read_text()).values())  # real human descriptions
    emb, mask = TextEncoder().encode(texts)
    assert emb.shape == (len(texts), TEXT_DIM) and emb.dtype == np.float32
    assert mask.tolist()[:4] == [True, False, True, True]
    assert np.all(emb[1] == 0)
    np.testing.assert_allclose(np.linalg.norm(emb[mask], axis=1), 1.0, atol=1e-5)
    # the model carries meaning: the two roadwork sentences are closer than the beach
    assert emb[0] @ emb[2] > emb[0] @ emb[3] + 0.2
