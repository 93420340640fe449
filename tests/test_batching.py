"""One DataLoader serves every variant of a shard: batches never mix variants, rows keep
their order, and workers give exactly the views of a single-variant, in-process loader."""

import numpy as np
import pytest

from roadwork_cache.readers.sources import open_source
from roadwork_cache.synth.dataset import write_synthetic
from roadwork_cache.views.batching import variant_batches, view_loader


def test_variant_batches_cover_every_index_once_without_mixing_variants():
    n_rows, n_variants, size = 10, 3, 4
    batches = variant_batches(n_rows, n_variants, size)
    flat = [i for batch in batches for i in batch]
    assert flat == list(range(n_rows * n_variants))  # every index once, in order
    for batch in batches:
        assert 1 <= len(batch) <= size
        assert len({i // n_rows for i in batch}) == 1
    assert len(batches) == n_variants * 3  # 4 + 4 + 2 rows per variant
    assert variant_batches(0, 3, 4) == []


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synth")
    write_synthetic(folder, 7, seed=3, sizes=[(160, 96)])
    return list(open_source(f"{folder}/*.parquet").iter_samples())


def gather(loader) -> dict[str, np.ndarray]:
    out: dict[str, list] = {}
    for batch in loader:
        assert {item.variant for item in batch.items} == {batch.variant}
        out.setdefault(batch.variant, []).append((batch.indices, batch.views.numpy()))
    merged = {}
    for variant, parts in out.items():
        indices = [i for idx, _ in parts for i in idx]
        assert indices == sorted(indices)  # each variant's rows in order
        merged[variant] = np.concatenate([views for _, views in parts])
    return merged


def test_one_loader_with_workers_equals_one_loader_per_variant(samples):
    variants = ["clean", "aug-0", "natix-1", "tta-2"]
    together = gather(view_loader(samples, 32, 3, workers=2, pin=False, variants=variants))
    assert list(together) == variants
    for variant in variants:
        alone = gather(view_loader(samples, 32, 3, workers=0, pin=False, variants=[variant]))
        assert np.array_equal(together[variant], alone[variant]), variant
    assert not np.array_equal(together["clean"], together["aug-0"])
