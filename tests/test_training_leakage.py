"""Leakage audit of metadata fields."""

import numpy as np
from rich.console import Console

from roadwork_cache.training.leakage import (
    FieldAudit,
    audit,
    format_audit_table,
    leaky_fields,
)


def _table(n=600, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.uniform(size=n) < 0.8).astype(int)
    # Like scene_description: set only for roadwork.
    description = [f"cones on lane {i}" if lab == 1 else "" for i, lab in enumerate(y)]
    city = list(rng.choice(["Boston", "Phoenix", "Denver"], n))
    daytime = [None if rng.uniform() < 0.3 else str(rng.choice(["Light", "Dark"])) for _ in y]
    # Weather lists: "Rain" appears only on non-roadwork rows (a value-level leak).
    weather = []
    for lab in y:
        tags = [str(t) for t in rng.choice(["Sunny", "Cloudy"], rng.integers(1, 3))]
        if lab == 0 and rng.uniform() < 0.7:
            tags.append("Rain")
        weather.append(tags)
    return {"description": description, "city": city, "daytime": daytime, "weather": weather}, y


def test_planted_presence_leak_flagged_and_random_field_not():
    table, y = _table()
    audits = {a.field: a for a in audit(table, y)}
    desc = audits["description"]
    assert desc.leaky and desc.mcc_present == 1.0
    assert desc.best_value is None  # every description is unique: no value has 1 % support
    for name in ("city", "daytime"):
        assert not audits[name].leaky, audits[name]
        assert abs(audits[name].mcc_value) < 0.2
    assert 0.6 < audits["daytime"].present_rate < 0.8


def test_list_valued_field_with_leaking_value_flagged():
    table, y = _table()
    weather = next(a for a in audit(table, y) if a.field == "weather")
    assert weather.present_rate == 1.0 and weather.mcc_present == 0.0
    assert weather.best_value == "Rain"
    assert weather.mcc_value < -0.3  # negative: Rain marks the non-roadwork rows
    assert weather.leaky


def test_bound_min_support_and_outputs():
    table, y = _table()
    audits = audit(table, y, bound=0.99)
    assert leaky_fields(audits) == ["description"]  # |MCC| of 1.0 still beats 0.99
    d = audits[0].to_dict()
    assert set(d) == {"field", "present_rate", "mcc_present", "best_value", "mcc_value", "leaky"}
    # Values below min_support are not candidates (each city has about a third of the rows).
    assert audit({"city": table["city"]}, y, min_support=0.5)[0].best_value is None
    assert audit({"city": table["city"]}, y, min_support=0.2)[0].best_value is not None
    console = Console(record=True, width=120)
    console.print(format_audit_table(audits, bound=0.99))
    text = console.export_text()
    assert "description" in text and "LEAKY" in text and "Rain" in text
    assert isinstance(audits[0], FieldAudit)
