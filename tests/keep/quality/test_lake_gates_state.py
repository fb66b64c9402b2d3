"""The state gate (silver) and the samples gate (gold), on real Spark + Delta + GX.

Three small generated days through the real jobs (ingest, aggregate, samples: the test
session's shared lake, ``spark_lake``), and both gates must pass on the last day. Each failure case then copies that
silver and gold lake into a separate home, rewrites one partition with a few rows
tampered in Spark (the rest of the day is real), and checks that exactly the expected
checks fail, named by (table, expectation, column), and nothing else.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from keep.core.config import Settings
from keep.core.tables import (
    COUNTERS,
    DOWNSTREAM_SAMPLES,
    PRETRAIN_SAMPLES,
    USER_BEHAVIOR,
    TableSpec,
    sample_specs,
    stats_spec,
)
from keep.lake import spark_io as lake
from keep.quality.lake_gates import (
    COUNTER_CHECKS,
    CUSTOM_ROW_COUNT,
    CheckResult,
    GateReport,
    counter_checks,
    samples_gates,
    samples_parameters,
    state_gates,
    state_parameters,
    stats_expectations,
    suites,
    validate_samples,
    validate_state,
)
from tests.conftest import SPARK_LAKE_DAYS, make_settings

UTC = dt.UTC
DAYS = SPARK_LAKE_DAYS
FIRST = DAYS[0]
DS = DAYS[-1]
DS_START = dt.datetime(2026, 1, 3, tzinfo=UTC)  # end of the samples' state (2026-01-02)
DS_END = dt.datetime(2026, 1, 4, tzinfo=UTC)  # end of the state of DS

BEHAVIOR_TABLE = "silver.user_behavior"
USER_STATS = "silver.user_stats"
ITEM_STATS = "silver.item_stats"
CATEGORY_STATS = "silver.user_category_stats"
PAIR = "expect_column_pair_values_a_to_be_greater_than_b"
IN_SET = "expect_column_values_to_be_in_set"
BETWEEN = "expect_column_values_to_be_between"
NULL = "expect_column_values_to_be_null"

Check = tuple[str, str, str | None]


def failed(report: GateReport) -> set[Check]:
    return {(c.table, c.expectation, c.column) for c in report.checks if not c.success}


def check(report: GateReport, key: Check) -> CheckResult:
    [found] = [c for c in report.checks if (c.table, c.expectation, c.column) == key]
    return found


def run_counting_jobs(
    spark: SparkSession, gate: Callable[[], GateReport]
) -> tuple[GateReport, int]:
    """``gate()``'s report and how many Spark jobs it ran (those of a job group of its own)."""
    context = spark.sparkContext
    group = f"gate-{uuid.uuid4().hex}"
    context.setJobGroup(group, group)
    try:
        report = gate()
    finally:
        context.setLocalProperty("spark.jobGroup.id", None)  # type: ignore[arg-type]
    return report, len(context.statusTracker().getJobIdsForGroup(group))


def gx_config_files(settings: Settings) -> dict[Path, int]:
    """The GX project's stored configuration (suites, definitions, checkpoints), by mtime."""
    gx_dir = settings.validation.ge_root / "gx"
    folders = ("expectations", "validation_definitions", "checkpoints")
    files = [p for f in folders for p in (gx_dir / f).glob("*.json")]
    files.append(gx_dir / "great_expectations.yml")
    return {p: p.stat().st_mtime_ns for p in files}


# --------------------------------------------------------------------------------------
# Suites and parameters (no Spark)
# --------------------------------------------------------------------------------------


def test_parameters_follow_the_day_and_the_settings(settings: Settings) -> None:
    settings.aggregate.sequence_length = 7
    settings.downstream.scenario = "video"

    assert state_parameters(settings, DS) == {
        "sequence_length": 7,
        "state_end": DS_END,
        "state_event_timestamps": [DS_END],
    }
    assert samples_parameters(settings, DS) == {
        "sequence_length": 7,
        "state_days": ["2026-01-02"],
        "state_end": DS_START,
        "downstream_scenarios": ["video"],
    }
    # Every parameter a gate's suites refer to is supplied, and nothing else.
    for gates, params in (
        (state_gates(settings), state_parameters(settings, DS)),
        (samples_gates(settings), samples_parameters(settings, DS)),
    ):
        referenced = {
            value["$PARAMETER"]
            for suite in suites(gates).values()
            for expectation in suite.expectations
            for value in expectation.configuration.kwargs.values()
            if isinstance(value, dict) and "$PARAMETER" in value
        }
        assert referenced == set(params)


def test_one_suite_and_checkpoint_per_table(settings: Settings) -> None:
    state = state_gates(settings)
    samples = samples_gates(settings)

    assert [g.spec.name for g in state] == [BEHAVIOR_TABLE, USER_STATS, ITEM_STATS, CATEGORY_STATS]
    assert [g.suite for g in state] == [
        "silver_user_behavior",
        "silver_user_stats",
        "silver_item_stats",
        "silver_user_category_stats",
    ]
    assert [g.checkpoint for g in samples] == [
        "samples_gate_gold_pretrain_samples",
        "samples_gate_gold_downstream_samples",
    ]
    assert [g.spec for g in samples] == list(sample_specs(settings.aggregate.windows))
    assert state[1].checkpoint == "state_gate_silver_user_stats"
    # Days validated in pandas have their own checkpoints (same suites, a pandas data source).
    assert state[1].checkpoint_for("pandas") == "state_gate_silver_user_stats_pandas"
    assert state[1].checkpoint_for("spark") == state[1].checkpoint
    assert state[1].spec == stats_spec("user", settings.aggregate.windows)


def test_counter_checks_name_each_violated_relation(spark: SparkSession) -> None:
    """Windows are compared shortest to longest whatever their order in the settings, and
    each violated relation is named in its row's check column."""
    windows = [30, 1, 7]
    good = {f"{c}_{w}d": n for w in windows for c, n in zip(COUNTERS, (9, 4, 2, 1), strict=True)}
    rows = [
        ("ok", good),
        ("not_nested", {**good, "clicks_1d": 5, "impressions_1d": 6, "impressions_7d": 9}),
        ("funnel", {**good, "carts_30d": 5, "clicks_7d": 4}),
        ("negative", {**good, "purchases_1d": -1}),
    ]
    frame = spark.createDataFrame([{"case": name, **values} for name, values in rows]).select(
        "case", *counter_checks(windows).values()
    )
    got = {r["case"]: tuple(r)[1:] for r in frame.collect()}
    assert COUNTER_CHECKS == ("negative_counters", "windows_not_nested", "funnel_violations")
    assert got == {
        "ok": (None, None, None),
        # clicks: 1d = 5 > 7d = 4 (7d <= 30d still holds); impressions 1d = 6 <= 7d = 9.
        "not_nested": (None, "clicks_1d > clicks_7d", None),
        # carts_30d = 5 > clicks_30d = 4.
        "funnel": (None, None, "carts_30d > clicks_30d"),
        # purchases_1d = -1 < 0 (and so no funnel or nesting violation).
        "negative": ("purchases_1d < 0", None, None),
    }
    expectations = stats_expectations("user_category", windows)
    assert (
        "expect_compound_columns_to_be_unique",
        {"column_list": ["user_id", "category_id"]},
    ) in [
        (
            e.configuration.type,
            {k: v for k, v in e.configuration.kwargs.items() if k == "column_list"},
        )
        for e in expectations
    ]
    nulls = [e.configuration.kwargs["column"] for e in expectations if e.configuration.type == NULL]
    assert nulls == list(COUNTER_CHECKS)


def test_summary_of_a_state_report_names_the_gate(tmp_path: Path) -> None:
    index = tmp_path / "index.html"
    checks = [
        CheckResult(USER_STATS, "expect_column_values_to_not_be_null", "user_id", True, "ok"),
        CheckResult(USER_STATS, PAIR, "clicks_7d,clicks_1d", False, "1 unexpected value"),
    ]
    failing = GateReport(DS, False, checks, data_docs_index=index, gate="state")
    assert failing.summary().splitlines() == [
        "State gate FAILED for 2026-01-03: 1 of 2 checks failed.",
        f"  - {USER_STATS}: {PAIR} on clicks_7d,clicks_1d: 1 unexpected value",
        f"Data Docs: {index}",
    ]
    passing = GateReport(DS, True, checks[:1], data_docs_index=index, gate="samples")
    assert passing.summary() == (
        f"Samples gate OK for 2026-01-03: 1 checks on 1 tables passed. Data Docs: {index}"
    )
    assert json.loads(json.dumps(failing.to_dict())) == {
        "ds": "2026-01-03",
        "gate": "state",
        "success": False,
        "checks": 2,
        "failed": [f"{USER_STATS}: {PAIR} on clicks_7d,clicks_1d: 1 unexpected value"],
        "summary": failing.summary(),
        "data_docs": str(index),
    }
    ingest = GateReport(DS, True, checks[:1], quarantine_rate=0.25).to_dict()
    assert (ingest["gate"], ingest["quarantine_rate"], ingest["data_docs"]) == (
        "ingest",
        0.25,
        None,
    )


# --------------------------------------------------------------------------------------
# Real state: three generated days through ingest -> aggregate -> samples
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lake_settings(spark_lake: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The session's shared lake (three days through the Spark steps); the gates' GX files
    (the only thing the gates write) go to a folder of this worker's."""
    return make_settings(
        spark_lake, validation={"ge_root": tmp_path_factory.mktemp("state-gate-gx")}
    )


@pytest.mark.slow
def test_real_state_and_samples_pass(spark: SparkSession, lake_settings: Settings) -> None:
    state, state_jobs = run_counting_jobs(spark, lambda: validate_state(spark, lake_settings, DS))
    samples, samples_jobs = run_counting_jobs(
        spark, lambda: validate_samples(spark, lake_settings, DS)
    )

    # One Spark job per table, the collect of its day to pandas, not a query or two per
    # expectation (GX's Spark engine runs 60-80 jobs per gate here).
    assert 1 <= state_jobs <= len(state_gates(lake_settings))
    assert 1 <= samples_jobs <= len(samples_gates(lake_settings))

    for report in (state, samples):
        assert report.success, report.summary()
        assert report.ds == DS
        assert failed(report) == set()
        index = report.data_docs_index
        assert index is not None and index.is_file()
        assert f"{report.gate}_gate_{DS.isoformat()}" in index.read_text()
    assert state.summary().startswith(f"State gate OK for {DS}: {len(state.checks)} checks on 4")
    assert samples.summary().startswith(f"Samples gate OK for {DS}")
    assert "quarantine" not in state.summary() + samples.summary()

    # Every expectation of every suite is reported, under its table.
    for report, gates in (
        (state, state_gates(lake_settings)),
        (samples, samples_gates(lake_settings)),
    ):
        for gate in gates:
            reported = [c for c in report.checks if c.table == gate.spec.name]
            assert len(reported) == len(gate.expectations()) + (
                gate.spec.name == DOWNSTREAM_SAMPLES
            )
    # Non-empty stats, as many rows as the lake holds.
    for gate in state_gates(lake_settings)[1:]:
        row_count = check(state, (gate.spec.name, "expect_table_row_count_to_be_between", None))
        n_rows = lake.read_partition(spark, lake_settings, gate.spec, DS).count()
        assert row_count.observed == f"observed {n_rows}" and n_rows > 0
    pretrain_spec, downstream_spec = sample_specs(lake_settings.aggregate.windows)
    n_pretrain = lake.read_partition(spark, lake_settings, pretrain_spec, DS).count()
    n_downstream = lake.read_partition(spark, lake_settings, downstream_spec, DS).count()
    assert 0 < n_downstream < n_pretrain
    rows = check(samples, (DOWNSTREAM_SAMPLES, CUSTOM_ROW_COUNT, None))
    assert rows.observed == f"{n_downstream} rows, {n_pretrain} in {PRETRAIN_SAMPLES}"
    # The point-in-time checks did look at real sequences.
    n_sequences = lake.read_partition(spark, lake_settings, USER_BEHAVIOR, DS).count()
    ordered = check(state, (BEHAVIOR_TABLE, IN_SET, "time_ordered"))
    assert ordered.observed == f"all {n_sequences} values as expected"

    # Validating again stores nothing new in the GX project and reports the same checks.
    stored = gx_config_files(lake_settings)
    again = validate_samples(spark, lake_settings, DS)
    assert again.checks == samples.checks
    assert gx_config_files(lake_settings) == stored

    # The first day's samples have no state at all (cold start): they pass too.
    first = validate_samples(spark, lake_settings, FIRST)
    assert first.success, first.summary()


# --------------------------------------------------------------------------------------
# Tampered copies
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tamper:
    """Rewrite one partition of DS with some rows changed; these checks must fail."""

    spec: Callable[[Settings], TableSpec]
    change: Callable[[DataFrame, Settings], DataFrame]
    expected: Callable[[Settings], set[Check]]


def _where(frame: DataFrame, condition: Column | str, keys: list[str]) -> Column:
    """A condition matching exactly the first row (by ``keys``) that satisfies ``condition``."""
    row = frame.where(condition).orderBy(*keys).first()
    assert row is not None, f"no row where {condition}"
    match = F.lit(True)
    for k in keys:
        match = match & (F.col(k) == row[k])
    return match


def _set(frame: DataFrame, target: Column, **columns: Column) -> DataFrame:
    for name, value in columns.items():
        frame = frame.withColumn(name, F.when(target, value).otherwise(F.col(name)))
    return frame


def _windows(settings: Settings) -> list[int]:
    return sorted(settings.aggregate.windows)


def _times(behaviors: str = "behaviors") -> Column:
    return F.transform(behaviors, lambda b: b["event_time"])


def _last_event_at(moment: dt.datetime) -> Column:
    """The behaviours with the last one's event time moved to ``moment``."""
    last = F.size("behaviors") - 1
    return F.transform(
        "behaviors",
        lambda b, i: F.when(i == last, b.withField("event_time", F.lit(moment))).otherwise(b),
    )


def window_not_nested(frame: DataFrame, settings: Settings) -> DataFrame:
    """One user counts more clicks in the shortest window than in the next one."""
    short, longer = _windows(settings)[:2]
    # Still no more clicks than impressions in the short window: only the nesting breaks.
    target = _where(frame, F.col(f"impressions_{short}d") > F.col(f"clicks_{longer}d"), ["user_id"])
    return _set(frame, target, **{f"clicks_{short}d": F.col(f"clicks_{longer}d") + 1})


def clicks_above_impressions(frame: DataFrame, settings: Settings) -> DataFrame:
    """One item has more clicks than impressions in the longest window (still nested)."""
    longest = _windows(settings)[-1]
    target = _where(frame, F.lit(True), ["item_id"])
    return _set(frame, target, **{f"clicks_{longest}d": F.col(f"impressions_{longest}d") + 1})


def unordered_and_late_sequences(frame: DataFrame, settings: Settings) -> DataFrame:
    """One user's sequence newest first; another's last behaviour at the end of DS."""
    times = _times()
    reversed_user = _where(frame, F.array_min(times) < F.array_max(times), ["user_id"])
    late_user = _where(frame, ~reversed_user & (F.size("behaviors") > 0), ["user_id"])
    frame = _set(frame, reversed_user, behaviors=F.reverse("behaviors"))
    return _set(frame, late_user, behaviors=_last_event_at(DS_END))


def state_from_the_sample_day(frame: DataFrame, settings: Settings) -> DataFrame:
    """One sample claims the state of its own day; another sees a behaviour of DS 00:00."""
    own_day = _where(frame, F.lit(True), ["impression_id"])
    leaked = _where(frame, ~own_day & (F.col("seq_len") > 0), ["impression_id"])
    frame = _set(frame, own_day, state_ds=F.lit(DS.isoformat()))
    return _set(frame, leaked, behaviors=_last_event_at(DS_START))


def foreign_scenario_downstream(frame: DataFrame, settings: Settings) -> DataFrame:
    """One downstream sample of another subsystem."""
    target = _where(frame, F.lit(True), ["impression_id"])
    return _set(frame, target, scenario=F.lit("feed"))


def fewer_pretrain_than_downstream(frame: DataFrame, settings: Settings) -> DataFrame:
    """The pretrain samples cut down to 5 rows: fewer than the downstream ones."""
    return frame.orderBy("impression_id").limit(5)


TAMPERS = {
    "window_not_nested": Tamper(
        lambda s: stats_spec("user", s.aggregate.windows),
        window_not_nested,
        lambda s: {(USER_STATS, NULL, "windows_not_nested")},
    ),
    "clicks_above_impressions": Tamper(
        lambda s: stats_spec("item", s.aggregate.windows),
        clicks_above_impressions,
        lambda s: {(ITEM_STATS, NULL, "funnel_violations")},
    ),
    "unordered_and_late_sequences": Tamper(
        lambda s: USER_BEHAVIOR,
        unordered_and_late_sequences,
        lambda s: {
            (BEHAVIOR_TABLE, IN_SET, "time_ordered"),
            (BEHAVIOR_TABLE, BETWEEN, "max_event_time"),
        },
    ),
    "state_from_the_sample_day": Tamper(
        lambda s: sample_specs(s.aggregate.windows)[0],
        state_from_the_sample_day,
        lambda s: {
            (PRETRAIN_SAMPLES, IN_SET, "state_ds"),
            (PRETRAIN_SAMPLES, BETWEEN, "max_event_time"),
        },
    ),
    "foreign_scenario_downstream": Tamper(
        lambda s: sample_specs(s.aggregate.windows)[1],
        foreign_scenario_downstream,
        lambda s: {(DOWNSTREAM_SAMPLES, IN_SET, "scenario")},
    ),
    "fewer_pretrain_than_downstream": Tamper(
        lambda s: sample_specs(s.aggregate.windows)[0],
        fewer_pretrain_than_downstream,
        lambda s: {(DOWNSTREAM_SAMPLES, CUSTOM_ROW_COUNT, None)},
    ),
}

# What each failed check must report (the tampered rows), by (case, column).
OBSERVED = {
    ("window_not_nested", "windows_not_nested"): (
        "1 unexpected value, e.g. ['clicks_1d > clicks_7d']"
    ),
    ("clicks_above_impressions", "funnel_violations"): (
        "1 unexpected value, e.g. ['clicks_365d > impressions_365d']"
    ),
    ("unordered_and_late_sequences", "time_ordered"): "1 unexpected value, e.g. [False]",
    ("unordered_and_late_sequences", "max_event_time"): (
        "1 unexpected value, e.g. ['2026-01-04 00:00:00']"
    ),
    ("state_from_the_sample_day", "state_ds"): "1 unexpected value, e.g. ['2026-01-03']",
    ("state_from_the_sample_day", "max_event_time"): (
        "1 unexpected value, e.g. ['2026-01-03 00:00:00']"
    ),
    ("foreign_scenario_downstream", "scenario"): "1 unexpected value, e.g. ['feed']",
    ("fewer_pretrain_than_downstream", None): "rows, 5 in gold.pretrain_samples",
}


@pytest.fixture
def copied_lake(lake_settings: Settings, tmp_path: Path) -> Settings:
    """A separate home holding a copy of the real silver and gold tables (same GX project)."""
    settings = make_settings(tmp_path, validation={"ge_root": lake_settings.validation.ge_root})
    for layer in ("silver", "gold"):
        shutil.copytree(lake_settings.lake.root / layer, settings.lake.root / layer)
    return settings


def apply_tamper(spark: SparkSession, settings: Settings, case: str) -> TableSpec:
    """Rewrite the partition DS of the table ``case`` tampers with; that table."""
    tamper = TAMPERS[case]
    spec = tamper.spec(settings)
    original = lake.read_partition(spark, settings, spec, DS)
    # Materialised before its own files are replaced.
    changed = tamper.change(original, settings).localCheckpoint()
    lake.overwrite_partition(changed, settings, spec, DS)
    return spec


@pytest.mark.slow
@pytest.mark.parametrize("case", list(TAMPERS))
def test_tampered_partition_fails_exactly_its_checks(
    spark: SparkSession, copied_lake: Settings, case: str
) -> None:
    tamper = TAMPERS[case]
    spec = apply_tamper(spark, copied_lake, case)

    validate = validate_state if spec.layer == "silver" else validate_samples
    report = validate(spark, copied_lake, DS)

    expected = tamper.expected(copied_lake)
    assert not report.success
    assert failed(report) == expected, report.summary()
    for key in expected:
        observed = check(report, key).observed
        wanted = OBSERVED[(case, key[2])]
        assert wanted in observed, observed
        assert f"{key[0]}: {key[1]}" in report.summary()
    assert report.summary().startswith(
        f"{report.title} FAILED for {DS}: {len(expected)} of {len(report.checks)} checks failed."
    )


# One tamper per table (they touch different partitions), so both gates fail on every table
# they can, in one lake.
ONE_PER_TABLE = [
    "unordered_and_late_sequences",
    "window_not_nested",
    "clicks_above_impressions",
    "state_from_the_sample_day",
    "foreign_scenario_downstream",
]


@pytest.mark.slow
def test_spark_and_pandas_engines_give_the_same_reports(
    spark: SparkSession, copied_lake: Settings
) -> None:
    """The same tampered day validated in pandas (small days) and in Spark (large days):
    the same failed checks, observations and failing examples."""
    for case in ONE_PER_TABLE:
        apply_tamper(spark, copied_lake, case)
    in_spark = copied_lake.model_copy(deep=True)
    in_spark.validation.pandas_max_rows = 0

    for validate, tables in (
        (validate_state, state_gates(copied_lake)),
        (validate_samples, samples_gates(copied_lake)),
    ):
        pandas_report = validate(spark, copied_lake, DS)
        spark_report, spark_jobs = run_counting_jobs(
            spark,
            lambda: validate(spark, in_spark, DS),  # noqa: B023 (called at once)
        )

        assert spark_report.checks == pandas_report.checks
        assert spark_report.summary() == pandas_report.summary()
        expected = {
            key
            for case in ONE_PER_TABLE
            for key in TAMPERS[case].expected(copied_lake)
            if (key[0].startswith("silver")) == (validate is validate_state)
        }
        assert failed(pandas_report) == expected, pandas_report.summary()
        for key in expected:
            [case] = [c for c in ONE_PER_TABLE if key in TAMPERS[c].expected(copied_lake)]
            assert OBSERVED[(case, key[2])] in check(pandas_report, key).observed
        # The Spark engine did run: a query per expectation or so, far more than the one
        # job per table of the pandas path.
        assert spark_jobs > 5 * len(tables)
