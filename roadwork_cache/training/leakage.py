"""Metadata leakage audit (docs/design.md §1 and §6).

In the NATIX data some fields are set only for one class (``scene_description`` and
``travel_alteration`` only for roadwork), so a head that sees them learns the label from
their mere presence and collapses when deployment sends no metadata. Before training, each
field is scored by the MCC of "present" against the label and by the MCC of its most telling
single value; fields above a bound are reported as leaky (and dropped by the caller).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from rich.table import Table
from sklearn.metrics import matthews_corrcoef

from roadwork_cache.runtime.errors import UserError

DEFAULT_BOUND = 0.3
DEFAULT_MIN_SUPPORT = 0.01

_LIST_TYPES = (list, tuple, set, frozenset, np.ndarray)


@dataclass
class FieldAudit:
    """Leakage figures of one metadata field.

    ``mcc_present``: MCC of "field present" vs label. ``best_value`` / ``mcc_value``: the single
    value (for list fields, "value in list") whose indicator has the largest |MCC| with the
    label among values with enough support (None / 0.0 when none qualifies). Signs are kept:
    a negative MCC leaks as much as a positive one.
    """

    field: str
    present_rate: float
    mcc_present: float
    best_value: Any
    mcc_value: float
    leaky: bool

    @property
    def score(self) -> float:
        """The larger of |mcc_present| and |mcc_value|; compared against the bound."""
        return max(abs(self.mcc_present), abs(self.mcc_value))

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (numpy scalars become Python numbers, other odd values strings)."""
        d = asdict(self)
        v = d["best_value"]
        if isinstance(v, np.generic):
            v = v.item()
        if v is not None and not isinstance(v, str | int | float | bool):
            v = str(v)
        d["best_value"] = v
        return d


def _is_missing(value: Any) -> bool:
    """None, NaN, blank strings and empty lists count as absent."""
    if value is None:
        return True
    if isinstance(value, str):
        return value.strip() == ""
    if isinstance(value, _LIST_TYPES):
        return all(_is_missing(v) for v in value)
    if isinstance(value, float | np.floating):
        return math.isnan(value)
    try:
        return bool(value != value)  # pd.NA and friends
    except (TypeError, ValueError):
        return False


def _key(value: Any) -> Any:
    """A hashable key for one value (numpy scalars unwrapped, unhashables by repr)."""
    if isinstance(value, np.generic):
        value = value.item()
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return value


def _elements(value: Any) -> list[Any]:
    """The values a row contributes: the non-missing items of a list, else the value itself."""
    if _is_missing(value):
        return []
    if isinstance(value, _LIST_TYPES):
        return list(dict.fromkeys(_key(v) for v in value if not _is_missing(v)))
    return [_key(value)]


def _mcc(y: np.ndarray, indicator: np.ndarray) -> float:
    return float(matthews_corrcoef(y, indicator.astype(np.int64)))


def audit_field(
    name: str,
    values: Sequence[Any] | np.ndarray,
    labels: np.ndarray,
    bound: float = DEFAULT_BOUND,
    min_support: float = DEFAULT_MIN_SUPPORT,
) -> FieldAudit:
    """Audit one field; ``labels`` must already be a 0/1 int array of the same length."""
    values = list(values)
    n = len(labels)
    if len(values) != n:
        raise UserError(f"metadata field {name!r} has {len(values)} rows but there are {n} labels.")
    present = np.array([not _is_missing(v) for v in values], dtype=bool)
    mcc_present = _mcc(labels, present)

    rows_of: dict[Any, list[int]] = {}
    for i, v in enumerate(values):
        for e in _elements(v):
            rows_of.setdefault(e, []).append(i)
    # Rare values are skipped: a value seen on three frames can correlate perfectly by chance
    # (and an id column would flag itself); values on every row carry no information.
    min_count = max(1, math.ceil(min_support * n))
    best_value, mcc_value = None, 0.0
    for value, rows in sorted(rows_of.items(), key=lambda kv: (-len(kv[1]), str(kv[0]))):
        if not min_count <= len(rows) < n:
            continue
        indicator = np.zeros(n, dtype=bool)
        indicator[rows] = True
        m = _mcc(labels, indicator)
        if abs(m) > abs(mcc_value):
            best_value, mcc_value = value, m
    leaky = max(abs(mcc_present), abs(mcc_value)) > bound
    return FieldAudit(
        field=name,
        present_rate=float(present.mean()) if n else float("nan"),
        mcc_present=mcc_present,
        best_value=best_value,
        mcc_value=mcc_value,
        leaky=leaky,
    )


def audit(
    table: Mapping[str, Sequence[Any] | np.ndarray],
    labels: Sequence[Any] | np.ndarray,
    bound: float = DEFAULT_BOUND,
    min_support: float = DEFAULT_MIN_SUPPORT,
) -> list[FieldAudit]:
    """Audit every metadata field of ``table`` (field name -> one value per row) against the
    0/1 ``labels``, in the table's field order.

    A field is leaky when ``max(|mcc_present|, |mcc_value|) > bound``. Values count for the
    best-value search only with support of at least ``min_support`` of the rows. List-valued
    cells (weather tags) are matched as "value in list"; an empty list is "absent".
    """
    y = np.asarray(labels)
    if y.ndim != 1 or len(y) == 0:
        raise UserError("the leakage audit needs a non-empty 1-D array of labels.")
    try:
        yf = y.astype(np.float64)
    except (TypeError, ValueError):
        raise UserError("the leakage audit needs labels of 0 or 1 with none missing.") from None
    if not np.all((yf == 0) | (yf == 1)):
        raise UserError("the leakage audit needs labels of 0 or 1 with none missing.")
    if not 0.0 <= bound <= 1.0:
        raise UserError(f"the leakage bound must lie in [0, 1], got {bound}.")
    yi = yf.astype(np.int64)
    return [audit_field(name, vals, yi, bound, min_support) for name, vals in table.items()]


def leaky_fields(audits: Sequence[FieldAudit]) -> list[str]:
    """Names of the fields flagged leaky."""
    return [a.field for a in audits if a.leaky]


def format_audit_table(audits: Sequence[FieldAudit], bound: float | None = None) -> Table:
    """A rich table of the audit, leaky fields in red."""
    title = "Metadata leakage audit"
    if bound is not None:
        title += f" (leaky: |MCC| > {bound:g})"
    table = Table(title=title)
    table.add_column("field")
    table.add_column("present", justify="right")
    table.add_column("MCC present", justify="right")
    table.add_column("best value")
    table.add_column("MCC value", justify="right")
    table.add_column("leaky")
    for a in audits:
        value = "-" if a.best_value is None else str(a.best_value)
        if len(value) > 30:
            value = value[:29] + "…"
        table.add_row(
            a.field,
            f"{a.present_rate:.1%}",
            f"{a.mcc_present:+.3f}",
            value,
            f"{a.mcc_value:+.3f}",
            "[bold red]LEAKY[/]" if a.leaky else "no",
            style="red" if a.leaky else None,
        )
    return table
