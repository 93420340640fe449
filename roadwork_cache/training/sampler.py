"""GPS-weighted sampling toward a target region (docs/design.md §6).

The validator's images come from a few regions; training rows near them are drawn more
often. Recipe: k-means (k = 5) centres of a target set's GPS, haversine distance of every
training row to its nearest centre, and a weight per distance bracket
(5 / 2.5 / 1 / 0.3 for < 50 / < 200 / < 500 / beyond km), fed to a seeded
``WeightedRandomSampler``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from sklearn.cluster import KMeans
from torch.utils.data import WeightedRandomSampler

from roadwork_cache.runtime.errors import UserError

# Mean Earth radius, the value geopy's great_circle uses, so the two agree to rounding.
EARTH_RADIUS_KM = 6371.009

DEFAULT_BRACKETS: tuple[tuple[float, float], ...] = ((50.0, 5.0), (200.0, 2.5), (500.0, 1.0))
DEFAULT_BEYOND = 0.3
NO_GPS_WEIGHT = 1.0


def haversine_km(lat1: Any, lon1: Any, lat2: Any, lon2: Any) -> np.ndarray:
    """Great-circle distance in km between points given in degrees; numpy broadcasting applies
    (e.g. ``lat1[:, None]`` against ``lat2[None, :]`` gives the full distance matrix).
    NaN in gives NaN out."""
    p1, l1, p2, l2 = (np.radians(np.asarray(a, dtype=np.float64)) for a in (lat1, lon1, lat2, lon2))
    a = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin((l2 - l1) / 2) ** 2
    # Clip: rounding can push a a hair above 1 for antipodal points.
    return 2.0 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def _coords(lat: Any, lon: Any) -> tuple[np.ndarray, np.ndarray]:
    la = np.asarray(lat, dtype=np.float64).reshape(-1)
    lo = np.asarray(lon, dtype=np.float64).reshape(-1)
    if la.shape != lo.shape:
        raise UserError(f"latitudes ({la.size}) and longitudes ({lo.size}) differ in length.")
    ok = np.isfinite(la) & np.isfinite(lo)
    if np.any(np.abs(la[ok]) > 90.0) or np.any(np.abs(lo[ok]) > 180.0):
        raise UserError(
            "GPS coordinates must be degrees: latitude in [-90, 90], longitude in [-180, 180]."
        )
    return la, lo


def _to_unit(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    p, lam = np.radians(lat), np.radians(lon)
    return np.stack([np.cos(p) * np.cos(lam), np.cos(p) * np.sin(lam), np.sin(p)], axis=-1)


def target_centres(lat: Any, lon: Any, k: int = 5, seed: int = 0) -> np.ndarray:
    """K-means centres ``[k', 2]`` (lat, lon in degrees) of a target set's GPS.

    Clustering runs on 3-D unit-sphere coordinates, not on raw lat/lon: Euclidean distance
    there is monotone in great-circle distance, so clusters are right at any latitude and
    across the date line. Each centre (a mean inside the sphere) is projected back onto the
    sphere and converted to lat/lon. Rows without GPS are ignored; when the target has fewer
    distinct points than ``k``, ``k' `` is that number (with a warning).
    """
    la, lo = _coords(lat, lon)
    ok = np.isfinite(la) & np.isfinite(lo)
    if not ok.any():
        raise UserError("the target set has no rows with GPS, so there is nothing to centre on.")
    if k < 1:
        raise UserError(f"k must be at least 1, got {k}.")
    xyz = _to_unit(la[ok], lo[ok])
    n_distinct = len(np.unique(np.round(xyz, 9), axis=0))
    if n_distinct < k:
        warnings.warn(
            f"target has only {n_distinct} distinct GPS points; using k={n_distinct}.", stacklevel=2
        )
        k = n_distinct
    km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(xyz)
    c = km.cluster_centers_
    c = c / np.linalg.norm(c, axis=1, keepdims=True)
    lat_c = np.degrees(np.arcsin(np.clip(c[:, 2], -1.0, 1.0)))
    lon_c = np.degrees(np.arctan2(c[:, 1], c[:, 0]))
    return np.stack([lat_c, lon_c], axis=1)


def nearest_centre_km(lat: Any, lon: Any, centres: Any) -> np.ndarray:
    """Distance in km from each row to its nearest centre; NaN for rows without GPS."""
    la, lo = _coords(lat, lon)
    c = np.asarray(centres, dtype=np.float64).reshape(-1, 2)
    if len(c) == 0:
        raise UserError("no target centres given.")
    d = haversine_km(la[:, None], lo[:, None], c[None, :, 0], c[None, :, 1])
    out = np.full(len(la), np.nan)
    ok = np.isfinite(la) & np.isfinite(lo)
    out[ok] = d[ok].min(axis=1)
    return out


def gps_weights(
    lat: Any,
    lon: Any,
    centres: Any,
    brackets: Sequence[tuple[float, float]] = DEFAULT_BRACKETS,
    beyond: float = DEFAULT_BEYOND,
) -> np.ndarray:
    """Per-row sampling weight by distance to the nearest centre.

    ``brackets`` are (upper km, weight) in increasing km: a row at distance d gets the weight
    of the first bracket with ``d < km``, else ``beyond``. Rows without GPS get 1.0: nothing
    says they are near or far, so they keep the neutral weight of a "regional" row rather than
    being boosted or suppressed (deployment images carry no GPS either).
    """
    limits = np.array([b[0] for b in brackets], dtype=np.float64)
    values = np.array([b[1] for b in brackets] + [beyond], dtype=np.float64)
    if len(limits) and np.any(np.diff(limits) <= 0):
        raise UserError("distance brackets must be given in strictly increasing km.")
    if np.any(values < 0) or not np.all(np.isfinite(values)):
        raise UserError("bracket weights must be finite and non-negative.")
    d = nearest_centre_km(lat, lon, centres)
    ok = np.isfinite(d)
    w = np.full(len(d), NO_GPS_WEIGHT)
    # side="right": d == limit falls in the next bracket (the rule is d < limit).
    w[ok] = values[np.searchsorted(limits, d[ok], side="right")]
    return w


def share_within(lat: Any, lon: Any, centres: Any, km: float = 100.0, weights: Any = None) -> float:
    """(Weighted) share of the rows with GPS that lie within ``km`` of some centre.

    Rows without GPS are left out of both numerator and denominator (their place is unknown);
    NaN when no row has GPS. Pass sampled indices' coordinates, or ``weights``, to measure
    what a sampler actually draws.
    """
    d = nearest_centre_km(lat, lon, centres)
    w = np.ones(len(d)) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    if len(w) != len(d):
        raise UserError(f"weights ({len(w)}) and coordinates ({len(d)}) differ in length.")
    ok = np.isfinite(d)
    total = w[ok].sum()
    if total <= 0:
        return float("nan")
    return float(w[ok & (d <= km)].sum() / total)


def make_sampler(
    weights: Any, num_samples: int | None = None, seed: int = 0
) -> WeightedRandomSampler:
    """A ``WeightedRandomSampler`` (with replacement) driven by its own seeded generator, so an
    epoch's draw is reproducible and independent of the global torch RNG.
    ``num_samples`` defaults to the number of rows (one epoch)."""
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if len(w) == 0 or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise UserError("sampling weights must be finite, non-negative and not all zero.")
    n = len(w) if num_samples is None else int(num_samples)
    if n < 1:
        raise UserError(f"num_samples must be at least 1, got {num_samples}.")
    gen = torch.Generator().manual_seed(int(seed))
    return WeightedRandomSampler(torch.as_tensor(w), num_samples=n, replacement=True, generator=gen)
