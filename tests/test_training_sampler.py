"""GPS-weighted sampling: haversine, brackets, and the effect on what is actually drawn."""

import numpy as np
import pytest
from geopy.distance import great_circle

from roadwork_cache.runtime.errors import UserError
from roadwork_cache.training.sampler import (
    EARTH_RADIUS_KM,
    gps_weights,
    haversine_km,
    make_sampler,
    share_within,
    target_centres,
)

CITIES = {
    "boston": (42.36, -71.06),
    "phoenix": (33.45, -112.07),
    "chicago": (41.88, -87.63),
    "denver": (39.74, -104.99),
    "seattle": (47.61, -122.33),
    "miami": (25.76, -80.19),
}


def _around(cities, n_per_city, seed):
    """Points jittered by up to ~20 km around each named city."""
    rng = np.random.default_rng(seed)
    lat = np.concatenate([np.full(n_per_city, CITIES[c][0]) for c in cities])
    lon = np.concatenate([np.full(n_per_city, CITIES[c][1]) for c in cities])
    return lat + rng.uniform(-0.15, 0.15, lat.size), lon + rng.uniform(-0.15, 0.15, lon.size)


def test_haversine_boston_phoenix_matches_geopy():
    b, p = CITIES["boston"], CITIES["phoenix"]
    d = float(haversine_km(b[0], b[1], p[0], p[1]))
    assert 3600 < d < 3800
    assert d == pytest.approx(great_circle(b, p).km, rel=0.005)


def test_haversine_broadcasts_and_edge_cases():
    lat = np.array([0.0, 10.0, 20.0])
    lon = np.array([0.0, 10.0, 20.0])
    d = haversine_km(lat[:, None], lon[:, None], lat[None, :], lon[None, :])
    assert d.shape == (3, 3)
    assert np.allclose(np.diag(d), 0.0) and np.allclose(d, d.T)
    assert float(haversine_km(0, 0, 0, 180)) == pytest.approx(np.pi * EARTH_RADIUS_KM)
    assert np.isnan(haversine_km(np.nan, 0, 0, 0))


def test_weights_bracketed():
    km_per_deg = np.pi * EARTH_RADIUS_KM / 180
    dist = np.array([0.0, 49.0, 51.0, 199.0, 201.0, 499.0, 501.0, 3000.0])
    lon = dist / km_per_deg  # along the equator from the centre (0, 0)
    w = gps_weights(np.zeros_like(lon), lon, np.array([[0.0, 0.0]]))
    assert list(w) == [5.0, 5.0, 2.5, 2.5, 1.0, 1.0, 0.3, 0.3]
    # No GPS -> neutral weight 1.0; the nearest of several centres counts.
    w2 = gps_weights([np.nan, 0.0], [np.nan, 10.0], [[0.0, 0.0], [0.0, 10.1]])
    assert list(w2) == [1.0, 5.0]
    with pytest.raises(UserError):
        gps_weights([0.0], [0.0], [[0.0, 0.0]], brackets=((200, 1.0), (50, 5.0)))


def test_centres_on_the_sphere_across_the_date_line():
    # Two points straddling the antimeridian: a lat/lon k-means would put the centre near
    # longitude 0, on the other side of the Earth.
    c = target_centres([10.0, 10.2], [179.9, -179.9], k=1)
    assert abs(abs(c[0, 1]) - 180.0) < 0.2
    assert abs(c[0, 0] - 10.1) < 0.1


def _sampled_share(train_lat, train_lon, target_cities, measure_cities, seed=0):
    t_lat, t_lon = _around(target_cities, 40, seed=7)
    centres = target_centres(t_lat, t_lon, k=5, seed=0)
    w = gps_weights(train_lat, train_lon, centres)
    idx = np.array(list(make_sampler(w, num_samples=4000, seed=seed)))
    measure = np.array([CITIES[c] for c in measure_cities])
    before = share_within(train_lat, train_lon, measure, km=100)
    after = share_within(train_lat[idx], train_lon[idx], measure, km=100)
    return before, after


def test_sampler_raises_share_near_target():
    lat, lon = _around(CITIES, 100, seed=1)  # 6 cities, 100 rows each
    before, after = _sampled_share(lat, lon, ["boston", "chicago"], ["boston", "chicago"])
    assert before == pytest.approx(1 / 3, abs=0.02)
    assert after > 0.6


def test_shifting_target_moves_the_draw():
    lat, lon = _around(CITIES, 100, seed=1)
    east = ["boston", "chicago"]
    west = ["seattle", "phoenix"]
    _, east_when_east = _sampled_share(lat, lon, east, east)
    _, east_when_west = _sampled_share(lat, lon, west, east)
    _, west_when_west = _sampled_share(lat, lon, west, west)
    assert west_when_west > 0.6
    assert east_when_west < 0.15 < 0.6 < east_when_east


def test_sampler_is_seeded_and_validates():
    w = np.array([1.0, 2.0, 3.0, 0.0])
    a = list(make_sampler(w, 50, seed=3))
    b = list(make_sampler(w, 50, seed=3))
    assert a == b and 3 not in a
    assert list(make_sampler(w, 50, seed=4)) != a
    with pytest.raises(UserError):
        make_sampler([0.0, 0.0], 5)
