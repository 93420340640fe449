"""Stage two training utilities: metrics, grouped splits, GPS-weighted sampling, losses and
the metadata leakage audit (docs/design.md §6).

Submodules are imported explicitly (``from roadwork_cache.training.metrics import ...``) so that
using the numpy-only helpers does not pull in torch.
"""
