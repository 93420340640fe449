"""GPS and tag strings are parsed by a parser; malformed values become NULL."""

import math

import pytest

from roadwork_cache.readers import metadata as md


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("[39.77, -86.18]", (39.77, -86.18)),
        ("[39.77,-86.18]", (39.77, -86.18)),
        ([42.36, -71.06], (42.36, -71.06)),
        ("(33.45, -112.07)", (33.45, -112.07)),
    ],
)
def test_gps_parses(value, expected):
    assert md.parse_gps(value) == pytest.approx(expected)


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "None",
        "[nan, ]",
        "[nan, nan]",
        "[1.0]",
        "[91, 0]",
        "[0, 200]",
        "[0, 0]",
        "abc",
        "[1, 2, 3]",
        "__import__('os').system('true')",
        float("nan"),
        "[inf, 3]",
    ],
)
def test_malformed_gps_is_null(value):
    assert md.parse_gps(value) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("['Sunny']", ["Sunny"]),
        ("['Cloudy', 'Rainy']", ["Cloudy", "Rainy"]),
        ('["Foggy"]', ["Foggy"]),
        ("Light", ["Light"]),
        (["Urban"], ["Urban"]),
        ("[]", []),
        (None, []),
        ("['Sunny', None, '']", ["Sunny"]),
        ("['unclosed", []),
        ("[__import__('os')]", []),
    ],
)
def test_tags(value, expected):
    assert md.parse_tags(value) == expected


def test_single_tag_and_text():
    assert md.parse_tag("['Light']") == "Light"
    assert md.parse_tag(None) is None
    assert md.parse_text(None) == ""
    assert md.parse_text(float("nan")) == ""
    assert md.parse_text("  Cones. ") == "Cones."


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1, 1),
        (0, 0),
        ("1", 1),
        (1.0, 1),
        (True, 1),
        (None, None),
        (2, None),
        ("x", None),
        (math.nan, None),
    ],
)
def test_label(value, expected):
    assert md.parse_label(value) == expected


def test_ids_are_strings():
    assert md.parse_id(12) == "12"
    assert md.parse_id(12.0) == "12"
    assert md.parse_id("vid_7") == "vid_7"
    assert md.parse_id(None) is None
