"""The Great Expectations ingest gate, on real Spark + Delta + GX.

Day partitions are written directly with ``keep.lake.spark_io.overwrite_partition`` from rows the
tests spell out (or produced by the real ingest job from generated raw files), so every
expected failure below follows from the rows themselves, not from the gate's code.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from typing import Any

import pytest
from pyspark.sql import SparkSession

from keep.core.config import Settings
from keep.core.tables import DIM_ITEMS, DIM_USERS, IMPRESSIONS, INGEST_AUDIT, TableSpec
from keep.lake import spark_io as lake
from keep.quality.lake_gates import (
    GATES,
    CheckResult,
    GateReport,
    engine_for,
    expectation_parameters,
    suites,
    validate_ingest,
)
from keep.sources import generator
from spark_jobs.ingest import run_ingest
from tests.conftest import make_settings

DS = dt.date(2026, 1, 1)
UTC = dt.UTC
DAY_START = dt.datetime(2026, 1, 1, tzinfo=UTC)
NEXT_DAY = dt.datetime(2026, 1, 2, tzinfo=UTC)
# Default allowed lateness is 60 minutes: the earliest accepted event of DS.
EARLIEST = dt.datetime(2025, 12, 31, 23, 0, tzinfo=UTC)
LAST_MICROSECOND = NEXT_DAY - dt.timedelta(microseconds=1)

IMPRESSION = "bronze.impressions"
AUDIT = "bronze.ingest_audit"


def impression(
    impression_id: str,
    *,
    event_time: dt.datetime = DAY_START + dt.timedelta(hours=12),
    click: int = 0,
    cart: int = 0,
    purchase: int = 0,
    scenario: str = "feed",
    position: int = 3,
) -> dict[str, Any]:
    return {
        "impression_id": impression_id,
        "user_id": 1,
        "item_id": 10,
        "event_time": event_time,
        "scenario": scenario,
        "position": position,
        "click": click,
        "cart": cart,
        "purchase": purchase,
    }


def clean_impressions() -> list[dict[str, Any]]:
    """Six valid impressions, two of them on the edges of the accepted event-time window."""
    return [
        impression("a", event_time=EARLIEST),  # late arrival, exactly at the limit
        impression("b", event_time=LAST_MICROSECOND, scenario="ads", position=0),
        impression("c", click=1),
        impression("d", click=1, cart=1),
        impression("e", click=1, cart=1, purchase=1, scenario="search"),
        impression("f", click=1, purchase=1, scenario="video"),
    ]


def audit_row(
    source: str, rows_in: int, stored: int, quarantined: int = 0, within: int = 0, earlier: int = 0
) -> dict[str, Any]:
    return {
        "source": source,
        "rows_in": rows_in,
        "rows_stored": stored,
        "rows_quarantined": quarantined,
        "duplicates_within_day": within,
        "duplicates_earlier_days": earlier,
        "conflicting_duplicates": 0,
        "quarantine_rate": quarantined / rows_in if rows_in else 0.0,
    }


def write(
    spark: SparkSession, settings: Settings, spec: TableSpec, ds: dt.date, rows: list[dict]
) -> None:
    with_ds = [{**row, "ds": ds.isoformat()} for row in rows]
    lake.overwrite_partition(
        spark.createDataFrame(with_ds, lake.spark_schema(spec)), settings, spec, ds
    )


def write_day(
    spark: SparkSession,
    settings: Settings,
    ds: dt.date = DS,
    *,
    impressions: list[dict] | None = None,
    audit: list[dict] | None = None,
    users: list[dict] | None = None,
    items: list[dict] | None = None,
) -> None:
    """Write every gated table's partition ``ds``; clean, balanced data unless overridden."""
    impressions = clean_impressions() if impressions is None else impressions
    users = (
        [{"user_id": u, "gender": "F", "age_level": 2, "purchase_power": 1} for u in (1, 2)]
        if users is None
        else users
    )
    items = (
        [
            {"item_id": 10, "category_id": 3, "brand_id": 7, "price": 0.0},
            {"item_id": 11, "category_id": 4, "brand_id": None, "price": 19.99},
        ]
        if items is None
        else items
    )
    audit = (
        [
            audit_row("impressions", len(impressions), len(impressions)),
            audit_row("users", len(users), len(users)),
            audit_row("items", len(items), len(items)),
        ]
        if audit is None
        else audit
    )
    write(spark, settings, IMPRESSIONS, ds, impressions)
    write(spark, settings, DIM_USERS, ds, users)
    write(spark, settings, DIM_ITEMS, ds, items)
    write(spark, settings, INGEST_AUDIT, ds, audit)


def failed(report: GateReport) -> set[tuple[str, str, str | None]]:
    return {(c.table, c.expectation, c.column) for c in report.checks if not c.success}


def check(report: GateReport, table: str, expectation: str, column: str | None):
    [found] = [
        c
        for c in report.checks
        if (c.table, c.expectation, c.column) == (table, expectation, column)
    ]
    return found


def spark_jobs(spark: SparkSession, group: str, gate: Callable[[], Any]) -> int:
    """How many Spark jobs ``gate()`` runs (every job of the calling thread joins ``group``)."""
    context = spark.sparkContext
    context.setJobGroup(group, group)
    try:
        gate()
    finally:
        context.setLocalProperty("spark.jobGroup.id", None)  # type: ignore[arg-type]
    return len(context.statusTracker().getJobIdsForGroup(group))


def stored_checkpoints(settings: Settings) -> set[str]:
    """The checkpoints stored in the GX project (one per table and engine used)."""
    return {p.stem for p in (settings.validation.ge_root / "gx" / "checkpoints").glob("*.json")}


def assert_docs(report: GateReport, settings: Settings) -> None:
    index = report.data_docs_index
    assert index is not None and index.is_file()
    assert index.name == "index.html"
    assert settings.validation.ge_root in index.parents
    assert f"ingest_gate_{report.ds.isoformat()}" in index.read_text()


def test_summary_names_each_failed_check_and_the_docs(tmp_path) -> None:
    index = tmp_path / "index.html"
    checks = [
        CheckResult(IMPRESSION, "expect_column_values_to_not_be_null", "user_id", True, "ok"),
        CheckResult(IMPRESSION, "expect_column_values_to_be_in_set", "click", False, "1 bad"),
        CheckResult(AUDIT, "expect_column_values_to_be_in_set", "balance_gap", False, "2 bad"),
    ]
    failing = GateReport(DS, False, checks, quarantine_rate=0.05, data_docs_index=index)
    assert failing.summary().splitlines() == [
        "Gate FAILED for 2026-01-01: 2 of 3 checks failed (impression quarantine rate 5.00%).",
        "  - bronze.impressions: expect_column_values_to_be_in_set on click: 1 bad",
        "  - bronze.ingest_audit: expect_column_values_to_be_in_set on balance_gap: 2 bad",
        f"Data Docs: {index}",
    ]
    passing = GateReport(DS, True, checks[:1], quarantine_rate=0.0, data_docs_index=index)
    assert passing.summary() == (
        "Gate OK for 2026-01-01: 1 checks on 1 tables passed, "
        f"impression quarantine rate 0.00%. Data Docs: {index}"
    )


def test_parameters_follow_the_day_and_the_settings(settings: Settings) -> None:
    settings.ingest.allowed_lateness_minutes = 90
    settings.ingest.scenarios = ["search", "ads"]
    settings.validation.max_quarantine_rate = 0.3

    params = expectation_parameters(settings, DS)

    assert params == {
        "scenarios": ["search", "ads"],
        "event_time_min": dt.datetime(2025, 12, 31, 22, 30, tzinfo=UTC),
        "event_time_end": NEXT_DAY,
        "max_quarantine_rate": 0.3,
    }
    # Every parameter a suite refers to is supplied.
    referenced = {
        value["$PARAMETER"]
        for suite in suites().values()
        for expectation in suite.expectations
        for value in expectation.configuration.kwargs.values()
        if isinstance(value, dict) and "$PARAMETER" in value
    }
    assert referenced == set(params)
    assert set(suites()) == {"bronze_impressions", "dim_users", "dim_items", "bronze_ingest_audit"}


def test_small_days_are_validated_in_pandas(settings: Settings) -> None:
    assert settings.validation.pandas_max_rows >= 1_000_000  # a 1 M-impression day qualifies
    settings.validation.pandas_max_rows = 10
    assert [engine_for(settings, rows) for rows in (0, 10, 11)] == ["pandas", "pandas", "spark"]
    settings.validation.pandas_max_rows = 0  # off: always Spark
    assert [engine_for(settings, rows) for rows in (0, 10)] == ["spark", "spark"]


@pytest.mark.slow
def test_clean_generated_day_passes(spark: SparkSession, settings: Settings) -> None:
    generator.write_day(settings, DS)
    counts = run_ingest(spark, settings, DS)

    report = validate_ingest(spark, settings, DS)

    assert report.success, report.summary()
    assert report.ds == DS
    assert failed(report) == set()
    tables = {c.table for c in report.checks}
    assert tables == {IMPRESSION, "dim.users", "dim.items", AUDIT}
    assert math.isclose(report.quarantine_rate, counts["impressions"].quarantine_rate)
    row_count = check(report, IMPRESSION, "expect_table_row_count_to_be_between", None)
    assert row_count.observed == f"observed {counts['impressions'].rows_stored}"
    assert_docs(report, settings)
    assert report.summary().startswith(f"Gate OK for {DS}")
    assert "\n" not in report.summary()


@pytest.mark.slow
def test_bad_impressions_fail_exactly_their_checks(spark: SparkSession, settings: Settings) -> None:
    rows = clean_impressions() + [
        impression("c", click=1),  # duplicate impression_id
        impression("g", click=2),  # not a 0/1 flag
        impression("h", click=0, cart=1),  # add-to-cart without a click
        impression("i", event_time=NEXT_DAY),  # belongs to the next day
        impression("j", event_time=EARLIEST - dt.timedelta(microseconds=1)),  # too late
    ]
    write_day(spark, settings, impressions=rows)

    report = validate_ingest(spark, settings, DS)

    assert not report.success
    assert failed(report) == {
        (IMPRESSION, "expect_column_values_to_be_unique", "impression_id"),
        (IMPRESSION, "expect_column_values_to_be_in_set", "click"),
        (IMPRESSION, "expect_column_pair_values_a_to_be_greater_than_b", "click,cart"),
        (IMPRESSION, "expect_column_values_to_be_between", "event_time"),
    }
    unique = check(report, IMPRESSION, "expect_column_values_to_be_unique", "impression_id")
    assert unique.observed == "2 unexpected values, e.g. ['c', 'c']"
    flag = check(report, IMPRESSION, "expect_column_values_to_be_in_set", "click")
    assert flag.observed == "1 unexpected value, e.g. [2]"
    funnel = check(
        report, IMPRESSION, "expect_column_pair_values_a_to_be_greater_than_b", "click,cart"
    )
    assert funnel.observed == "1 unexpected value, e.g. [(0, 1)]"
    window = check(report, IMPRESSION, "expect_column_values_to_be_between", "event_time")
    assert window.observed.startswith("2 unexpected values")
    assert "2026-01-02 00:00:00" in window.observed
    assert "2025-12-31 22:59:59.999999" in window.observed

    summary = report.summary()
    assert summary.startswith(f"Gate FAILED for {DS}: 4 of {len(report.checks)} checks failed")
    assert "bronze.impressions: expect_column_values_to_be_unique on impression_id" in summary
    assert "expect_column_pair_values_a_to_be_greater_than_b on click,cart" in summary
    assert str(report.data_docs_index) in summary
    assert_docs(report, settings)


@pytest.mark.slow
def test_quarantine_rate_above_threshold_fails(spark: SparkSession, settings: Settings) -> None:
    settings.validation.max_quarantine_rate = 0.2
    impressions = clean_impressions()  # 6 stored; 2 more quarantined: 2 / 8 = 0.25 > 0.2
    audit = [
        audit_row("impressions", 8, 6, quarantined=2),
        audit_row("users", 0, 0),
        audit_row("items", 0, 0),
    ]
    # Days without dimension changes are normal: empty dim partitions pass.
    write_day(spark, settings, impressions=impressions, audit=audit, users=[], items=[])

    report = validate_ingest(spark, settings, DS)

    assert not report.success
    assert failed(report) == {(AUDIT, "expect_column_values_to_be_between", "quarantine_rate")}
    assert report.quarantine_rate == 0.25
    assert "quarantine rate 25.00%" in report.summary()


@pytest.mark.slow
def test_unbalanced_audit_fails(spark: SparkSession, settings: Settings) -> None:
    impressions = clean_impressions()
    audit = [
        # 12 in = 6 stored + 1 quarantined + 3 within-day + 2 earlier-day duplicates: balanced.
        audit_row("impressions", 12, 6, quarantined=1, within=3, earlier=2),
        audit_row("users", 5, 2, quarantined=1),  # 2 rows unaccounted for
        audit_row("items", 2, 2),
    ]
    write_day(spark, settings, impressions=impressions, audit=audit)

    report = validate_ingest(spark, settings, DS)

    assert not report.success
    assert failed(report) == {(AUDIT, "expect_column_values_to_be_in_set", "balance_gap")}
    gap = check(report, AUDIT, "expect_column_values_to_be_in_set", "balance_gap")
    assert gap.observed == "1 unexpected value, e.g. [2]"
    assert math.isclose(report.quarantine_rate, 1 / 12)


@pytest.mark.slow
def test_validating_again_and_another_day_is_idempotent(
    spark: SparkSession, settings: Settings
) -> None:
    next_ds = DS + dt.timedelta(days=1)
    write_day(spark, settings)
    write_day(
        spark,
        settings,
        next_ds,
        impressions=[
            impression("n1", event_time=NEXT_DAY),
            impression("n2", event_time=NEXT_DAY + dt.timedelta(hours=23), click=1),
        ],
    )

    first = validate_ingest(spark, settings, DS)
    again = validate_ingest(spark, settings, DS)
    other = validate_ingest(spark, settings, next_ds)

    for report in (first, again, other):
        assert report.success, report.summary()
        assert report.data_docs_index == first.data_docs_index
    assert again.checks == first.checks
    assert other.ds == next_ds
    assert_docs(other, settings)
    assert f"ingest_gate_{DS.isoformat()}" in other.data_docs_index.read_text()


@pytest.mark.slow
def test_a_gate_runs_a_handful_of_spark_jobs(spark: SparkSession, settings: Settings) -> None:
    """One Spark job per table, the collect of its day: not a query or two per expectation
    (GX's Spark engine runs about 25 jobs per table on the same day)."""
    write_day(spark, settings)

    jobs = spark_jobs(spark, "ingest-gate-jobs", lambda: validate_ingest(spark, settings, DS))

    assert 1 <= jobs <= len(GATES)
    assert stored_checkpoints(settings) == {f"{g.checkpoint}_pandas" for g in GATES}


@pytest.mark.slow
def test_spark_and_pandas_engines_give_the_same_report(spark: SparkSession, tmp_path) -> None:
    """Every table fails some check; the day validated in Spark (large days) and in pandas
    (small days) gives the same checks, observations and failing examples."""
    pandas = make_settings(tmp_path / "pandas")
    in_spark = make_settings(tmp_path / "spark", validation={"pandas_max_rows": 0})
    impressions = clean_impressions() + [
        impression("c", click=1),  # duplicate impression_id
        impression("h", click=0, cart=1, scenario="radio"),  # no click; unknown scenario
        impression("i", event_time=NEXT_DAY, position=-1),  # next day; negative position
    ]
    users = [{"user_id": u, "gender": "F", "age_level": 2, "purchase_power": 1} for u in (1, 1)]
    items = [
        {"item_id": 10, "category_id": 3, "brand_id": 7, "price": -1.0},
        {"item_id": 10, "category_id": 4, "brand_id": None, "price": 2.0},
    ]
    audit = [audit_row("impressions", 10, 9, quarantined=2), audit_row("users", 2, 2)]
    for settings in (pandas, in_spark):
        write_day(spark, settings, impressions=impressions, users=users, items=items, audit=audit)

    reports = {
        "pandas": validate_ingest(spark, pandas, DS),
        "spark": validate_ingest(spark, in_spark, DS),
    }

    assert stored_checkpoints(pandas) == {f"{g.checkpoint}_pandas" for g in GATES}
    assert stored_checkpoints(in_spark) == {g.checkpoint for g in GATES}
    assert reports["spark"].checks == reports["pandas"].checks
    for report in reports.values():
        assert not report.success
        assert report.quarantine_rate == 0.2
        assert failed(report) == {
            (IMPRESSION, "expect_column_values_to_be_unique", "impression_id"),
            (IMPRESSION, "expect_column_values_to_be_in_set", "scenario"),
            (IMPRESSION, "expect_column_values_to_be_between", "position"),
            (IMPRESSION, "expect_column_values_to_be_between", "event_time"),
            (IMPRESSION, "expect_column_pair_values_a_to_be_greater_than_b", "click,cart"),
            ("dim.users", "expect_column_values_to_be_unique", "user_id"),
            ("dim.items", "expect_column_values_to_be_unique", "item_id"),
            ("dim.items", "expect_column_values_to_be_between", "price"),
            (AUDIT, "expect_column_distinct_values_to_contain_set", "source"),
            (AUDIT, "expect_column_values_to_be_in_set", "balance_gap"),
            (AUDIT, "expect_column_values_to_be_between", "quarantine_rate"),
        }
        observed = {c.column: c.observed for c in report.failed if c.table == IMPRESSION}
        assert observed["event_time"] == "1 unexpected value, e.g. ['2026-01-02 00:00:00']"
        assert observed["click,cart"] == "1 unexpected value, e.g. [(0, 1)]"
        assert observed["scenario"] == "1 unexpected value, e.g. ['radio']"
        missing = check(report, AUDIT, "expect_column_distinct_values_to_contain_set", "source")
        assert missing.observed == "missing ['items']"
        assert_docs(report, pandas if report is reports["pandas"] else in_spark)
