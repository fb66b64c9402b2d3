"""Downstream-only counters: point in time, windows, the fitted prior (hand-computed values)."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest

from models.downstream.counters import add_downstream_counters, downstream_counter_columns

DS = dt.date(2026, 1, 10)


def _rows(*rows: tuple[str, int, int, int, float, str]) -> pa.Table:
    names = ("ds", "user_id", "item_id", "click", "weight", "scenario")
    return pa.Table.from_pylist([dict(zip(names, r, strict=True)) for r in rows])


# (ds, user, item, click, weight, scenario)
HISTORY = _rows(
    ("2026-01-09", 1, 10, 1, 1.0, "ads"),
    ("2026-01-09", 1, 11, 0, 1.0, "ads"),
    ("2026-01-09", 2, 10, 0, 2.0, "ads"),  # weight 2: a down-sampled negative
    ("2026-01-09", 1, 10, 1, 1.0, "search"),  # another subsystem: ignored
    ("2026-01-08", 1, 10, 0, 1.0, "ads"),
    ("2026-01-08", 3, 12, 1, 1.0, "ads"),
    ("2026-01-07", 2, 10, 1, 1.0, "ads"),  # older than the longest window: ignored
    ("2026-01-10", 1, 10, 1, 1.0, "ads"),  # the day itself: never seen (point in time)
    ("2026-01-11", 4, 99, 1, 1.0, "ads"),  # the future: never seen
)
DAY = pa.table({"user_id": [1, 2, 4], "item_id": [10, 12, 99], "click": [0, 1, 0]})


def test_counters_by_hand() -> None:
    out = add_downstream_counters(
        DAY, HISTORY, ds=DS, windows=[1, 2], scenario="ads", prior_strength=2.0
    )
    assert out.column_names == ["user_id", "item_id", "click", *downstream_counter_columns([1, 2])]
    # Prior: days 01-08 .. 01-09 of ads: 6 weighted impressions, 2 clicks -> 1/3.
    p, m = 1 / 3, 2.0
    expected = {
        "du_impressions_1d": [2, 2, 0],
        "du_clicks_1d": [1, 0, 0],
        "du_ctr_1d": [(1 + m * p) / (2 + m), (m * p) / (2 + m), p],
        "du_impressions_2d": [3, 2, 0],
        "du_clicks_2d": [1, 0, 0],
        "du_ctr_2d": [(1 + m * p) / (3 + m), (m * p) / (2 + m), p],
        "di_impressions_1d": [3, 0, 0],
        "di_clicks_1d": [1, 0, 0],
        "di_ctr_1d": [(1 + m * p) / (3 + m), p, p],
        "di_impressions_2d": [4, 1, 0],
        "di_clicks_2d": [1, 1, 0],
        "di_ctr_2d": [(1 + m * p) / (4 + m), (1 + m * p) / (1 + m), p],
    }
    for name, values in expected.items():
        assert out.column(name).to_pylist() == pytest.approx(values), name


def test_no_history_uses_the_fallback_prior() -> None:
    out = add_downstream_counters(
        DAY,
        HISTORY.slice(7),  # only the day itself and the future
        ds=DS,
        windows=[7],
        scenario="ads",
        prior_strength=2.0,
        fallback_prior=0.04,
    )
    assert out.column("du_impressions_7d").to_pylist() == [0, 0, 0]
    assert out.column("di_ctr_7d").to_pylist() == pytest.approx([0.04] * 3)
