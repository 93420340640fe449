"""Parsing of NATIX metadata strings: GPS pairs and list-like tag strings.

The published shards store GPS as a string such as "[39.77, -86.18]" and multi-valued tags
as Python-list-like strings such as "['Sunny', 'Rainy']". They are parsed with a small
grammar (JSON after quote normalisation, then a literal-only fallback), never `eval`;
anything malformed becomes NULL so one bad row cannot stop a run.
"""

from __future__ import annotations

import ast
import json
import math
from typing import Any


def _is_null(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip().lower() in {"", "none", "null", "nan", "[]"}


def _literal(text: str) -> Any:
    """Parse a JSON or Python literal; `ast.literal_eval` only admits literals, no code."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None


def parse_gps(value: Any) -> tuple[float, float] | None:
    """ "[lat, lon]" (string, list or tuple) -> (lat, lon), or None when missing or invalid."""
    if _is_null(value):
        return None
    parsed = _literal(value) if isinstance(value, str) else value
    if not isinstance(parsed, list | tuple) or len(parsed) != 2:
        return None
    try:
        lat, lon = float(parsed[0]), float(parsed[1])
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(lat) and math.isfinite(lon)):
        return None
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        return None
    # (0, 0) is what a missing fix is written as by many cameras, not a place on a road.
    if lat == 0.0 and lon == 0.0:
        return None
    return lat, lon


def parse_tags(value: Any) -> list[str]:
    """ "['Sunny', 'Rainy']", a plain "Sunny", or a list -> ['Sunny', 'Rainy']; NULL -> []."""
    if _is_null(value):
        return []
    if isinstance(value, list | tuple):
        items = list(value)
    else:
        text = str(value).strip()
        if text.startswith("["):
            parsed = _literal(text)
            if not isinstance(parsed, list | tuple):
                return []
            items = list(parsed)
        else:
            items = [text]
    return [str(item).strip() for item in items if not _is_null(item) and str(item).strip()]


def parse_tag(value: Any) -> str | None:
    """A single-valued tag (daytime, scene environment): the first value, or None."""
    tags = parse_tags(value)
    return tags[0] if tags else None


def parse_text(value: Any) -> str:
    """A free-text field; NULL becomes the empty string."""
    if _is_null(value):
        return ""
    return str(value).strip()


def parse_label(value: Any) -> int | None:
    """0/1 (int, bool, float or string) -> int; anything else -> None."""
    if _is_null(value):
        return None
    if isinstance(value, bool):
        return int(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if number in (0.0, 1.0) else None


def parse_int(value: Any) -> int | None:
    if _is_null(value):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def parse_id(value: Any) -> str | None:
    """Ids are kept as strings: video ids are strings in the real data, row ids ints."""
    if _is_null(value):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


# Split names as datasets spell them; anything else is kept, lower-cased, and reported.
SPLIT_SYNONYMS = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
}


def normalise_split(value: Any) -> str | None:
    """'Test', 'testing' -> 'test'; 'Validation' -> 'val'; other names lower-cased; NULL -> None.
    Applied once, when a reader reads a row: everything downstream matches exact names."""
    text = parse_text(value).lower()
    return SPLIT_SYNONYMS.get(text, text) or None
