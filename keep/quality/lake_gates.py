"""The Great Expectations gates of the daily pipeline.

Three gates, each checking day ``ds`` of the tables one job writes and returning a
:class:`GateReport`; failed expectations never raise (``keep.flows.pipeline`` turns a failed
report into :class:`keep.core.errors.GateFailed`):

* ``validate_ingest(spark, settings, ds)``: ``bronze.impressions``, ``dim.users``,
  ``dim.items``, ``bronze.ingest_audit`` (after ``ingest``);
* ``validate_state(spark, settings, ds)``: ``silver.user_behavior`` and
  ``silver.<entity>_stats`` for every entity (after ``aggregate``): unique keys, sequences
  of the right length, time-ordered and older than the end of ``ds``, counters >= 0,
  nested windows (a shorter window never counts more than a longer one), a consistent
  funnel (clicks <= impressions, carts and purchases <= clicks), rates in [0, 1], and
  ``event_timestamp`` = end of ``ds``;
* ``validate_samples(spark, settings, ds)``: ``gold.pretrain_samples`` and
  ``gold.downstream_samples`` (after ``samples``): unique impressions, 0/1 labels,
  weights >= 1, and no leakage: every sample's state is that of ``ds - 1`` and holds no
  behaviour at or after ``ds`` 00:00 UTC.

Arrays have no expectations in GX: columns derived in Spark stand in for them (``seq_len_actual``
= the sequence's size, ``time_ordered`` = its event times are non-decreasing,
``max_event_time`` = its latest event time...), computed in the one ``select`` that reads the
day's partition. One check GX cannot express, because it spans two tables
(``gold.downstream_samples`` has no more rows than ``gold.pretrain_samples``), is computed
from the Delta log's row counts and added to the report as a ``custom_*`` check; it does not
appear in Data Docs.

One pass per table. GX's Spark engine turns every expectation into queries of its own (the
unexpected count, a few unexpected values, a window per uniqueness check): 60-120 Spark
jobs and thousands of JVM calls per gate, even on a cached frame. So a table's day of at
most ``validation.pandas_max_rows`` rows (its files and row count read from the Delta log
with delta-rs: no JVM, no job) is read once -- the ``select`` above over those Parquet
files, collected through Arrow: one Spark job, where reading through Delta would first
spend four on the table's snapshot in a fresh session -- and validated by GX's pandas
engine in memory. A larger day (days of 5-20 M impressions) is cached in Spark (memory and disk)
and validated by GX's Spark engine, in bounded driver memory. Both engines run the same
suites with the same parameters and give the same checks, failing examples included
(``tests/keep/quality``).

Great Expectations (1.x API) objects, all kept in a File Data Context rooted at
``settings.validation.ge_root`` and re-created idempotently on every call:

* two data sources over in-memory frames, with the same assets: ``keep_lake`` (Spark
  DataFrames) and ``keep_lake_pandas`` (pandas ones): one DataFrame asset and one
  whole-frame batch definition per table; the frame is the day's partition, read with
  :func:`keep.lake.spark_io.read_files`, and passed at run time;
* one expectation suite per table, named after it (``bronze_impressions``, ``dim_users``,
  ``silver_user_stats``, ``gold_pretrain_samples``...), defined in code below. Everything
  that depends on the day or on the settings (event-time window, known scenarios, maximum
  quarantine rate, sequence length, end of the state's day...) is a suite parameter
  (``{"$PARAMETER": name}``) supplied at run time, so the stored suites do not change from
  day to day and concurrent runs of different days never rewrite them with different
  content. Only the counter windows (``aggregate.windows``) shape the silver and gold
  suites, since they name the columns;
* one validation definition and one checkpoint per table and engine (``<gate>_gate_<suite>``
  on Spark, ``<gate>_gate_<suite>_pandas`` on pandas, e.g. ``ingest_gate_dim_users``,
  ``state_gate_silver_user_stats_pandas``): a checkpoint passes one set of batch parameters
  (one DataFrame) to all its definitions, so each table needs its own. The checkpoints
  carry no action: once all its tables are validated, the gate updates the Data Docs site
  with the pages ``UpdateDataDocsAction`` would (each validation's, each suite's, the index),
  in one build instead of one per checkpoint. The index
  (``<ge_root>/gx/uncommitted/data_docs/local_site/index.html``) is returned in the report.
  Runs are named after the gate and the day (``state_gate_2026-01-03``), so Data Docs list
  them by ``ds``.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from itertools import pairwise
from pathlib import Path
from typing import Any, TypeAlias

import great_expectations as gx
import great_expectations.expectations as gxe
import pandas as pd
from great_expectations.expectations.row_conditions import Column as RowColumn
from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from keep.core.config import Settings
from keep.core.tables import (
    COUNTERS,
    DIM_ITEMS,
    DIM_USERS,
    DOWNSTREAM_SAMPLES,
    ENTITIES,
    IMPRESSIONS,
    INGEST_AUDIT,
    LABELS,
    PRETRAIN_SAMPLES,
    RAW_FIELDS,
    STAT_PREFIX,
    USER_BEHAVIOR,
    TableSpec,
    sample_specs,
    stats_spec,
)
from keep.core.time import end_of_day
from keep.lake import delta
from keep.lake import spark_io as lake
from keep.quality.ge import (
    DATA_SOURCE,
    INGEST,
    PANDAS,
    SPARK,
    CheckResult,
    GateReport,
    batch_definition,
    data_docs_index,
    data_docs_pages,
    ensure_checkpoint,
    get_context,
    param,
    run_identifier,
    suite_checks,
    update_data_docs,
)

log = logging.getLogger(__name__)

UTC = dt.UTC

# The gates; checkpoints are named ``<gate>_gate_<suite>``, runs ``<gate>_gate_<ds>``.
STATE = "state"
SAMPLES = "samples"
# Funnel pairs (A, B) of counters: A >= B in every window.
FUNNEL = (("impressions", "clicks"), ("clicks", "carts"), ("clicks", "purchases"))
# The one check spanning two tables, computed from the Delta log (not a GX expectation).
CUSTOM_ROW_COUNT = "custom_row_count_at_most_pretrain"
# The pandas engine's data source (the Spark one is ge.DATA_SOURCE): same assets, same suites.
PANDAS_SOURCE = "keep_lake_pandas"


# --------------------------------------------------------------------------------------
# Suites (defined once, in code)
# --------------------------------------------------------------------------------------


def impressions_expectations() -> list[gxe.Expectation]:
    """The day's bronze impressions: complete, unique, in range, and a consistent funnel."""
    return [
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
        *[gxe.ExpectColumnValuesToNotBeNull(column=c) for c in RAW_FIELDS["impressions"]],
        gxe.ExpectColumnValuesToBeUnique(column="impression_id"),
        *[gxe.ExpectColumnValuesToBeInSet(column=c, value_set=[0, 1]) for c in LABELS],
        gxe.ExpectColumnValuesToBeInSet(column="scenario", value_set=param("scenarios")),
        gxe.ExpectColumnValuesToBeBetween(column="position", min_value=0),
        # Day ds is [ds 00:00, ds+1 00:00) UTC; events may arrive up to the allowed lateness
        # after the end of their day, so they can sit in the next day's log.
        gxe.ExpectColumnValuesToBeBetween(
            column="event_time",
            min_value=param("event_time_min"),
            max_value=param("event_time_end"),
            strict_max=True,
        ),
        # Funnel: no add-to-cart or purchase without a click.
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="click", column_B="cart", or_equal=True
        ),
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="click", column_B="purchase", or_equal=True
        ),
    ]


def users_expectations() -> list[gxe.Expectation]:
    """The day's user changes (may be empty): one row per user."""
    return [
        gxe.ExpectColumnValuesToNotBeNull(column="user_id"),
        gxe.ExpectColumnValuesToBeUnique(column="user_id"),
    ]


def items_expectations() -> list[gxe.Expectation]:
    """The day's item changes (may be empty): one row per item, a category, a price >= 0."""
    return [
        gxe.ExpectColumnValuesToNotBeNull(column="item_id"),
        gxe.ExpectColumnValuesToBeUnique(column="item_id"),
        gxe.ExpectColumnValuesToNotBeNull(column="category_id"),
        gxe.ExpectColumnValuesToBeBetween(column="price", min_value=0),
    ]


def audit_expectations() -> list[gxe.Expectation]:
    """The day's ingest counts: every source accounted for, every row accounted for."""
    return [
        gxe.ExpectColumnDistinctValuesToContainSet(column="source", value_set=list(RAW_FIELDS)),
        gxe.ExpectColumnValuesToBeUnique(column="source"),
        # balance_gap = rows_in - (stored + quarantined + duplicates): derived in Spark.
        gxe.ExpectColumnValuesToBeInSet(column="balance_gap", value_set=[0]),
        gxe.ExpectColumnValuesToBeBetween(
            column="quarantine_rate",
            min_value=0,
            max_value=param("max_quarantine_rate"),
            row_condition=RowColumn("source") == "impressions",
            condition_parser="spark",
        ),
    ]


# --------------------------------------------------------------------------------------
# The day's frames
# --------------------------------------------------------------------------------------


def audit_frame(day: DataFrame, settings: Settings) -> DataFrame:
    """A day of bronze.ingest_audit with the derived ``balance_gap`` column."""
    accounted = (
        F.col("rows_stored")
        + F.col("rows_quarantined")
        + F.col("duplicates_within_day")
        + F.col("duplicates_earlier_days")
    )
    return day.withColumn("balance_gap", F.col("rows_in") - accounted)


def whole_day(day: DataFrame, settings: Settings) -> DataFrame:
    """A day of a table gated as it is stored."""
    return day


@dataclass(frozen=True)
class TableGate:
    """One gated table: its suite, the frame it validates (a transform of the table's day
    partition: the gated columns and the derived ones), and the gate it belongs to."""

    spec: TableSpec
    suite: str
    expectations: Callable[[], list[gxe.Expectation]]
    frame: Callable[[DataFrame, Settings], DataFrame]
    gate: str = INGEST

    @property
    def checkpoint(self) -> str:
        """The checkpoint validating the table with GX's Spark engine."""
        return self.checkpoint_for(SPARK)

    def checkpoint_for(self, engine: str) -> str:
        """``<gate>_gate_<suite>`` (Spark engine) or ``<gate>_gate_<suite>_pandas``."""
        name = f"{self.gate}_gate_{self.suite}"
        return name if engine == SPARK else f"{name}_{engine}"


GATES: tuple[TableGate, ...] = (
    TableGate(IMPRESSIONS, "bronze_impressions", impressions_expectations, whole_day),
    TableGate(DIM_USERS, "dim_users", users_expectations, whole_day),
    TableGate(DIM_ITEMS, "dim_items", items_expectations, whole_day),
    TableGate(INGEST_AUDIT, "bronze_ingest_audit", audit_expectations, audit_frame),
)


def suites(gates: Sequence[TableGate] = GATES) -> dict[str, gx.ExpectationSuite]:
    """Every suite of a gate (the ingest gate by default), by name (fresh objects, not yet
    added to a context)."""
    return {
        g.suite: gx.ExpectationSuite(name=g.suite, expectations=g.expectations()) for g in gates
    }


def expectation_parameters(settings: Settings, ds: dt.date) -> dict[str, Any]:
    """The run-time values of the suites' ``$PARAMETER``s for day ``ds``."""
    start = dt.datetime(ds.year, ds.month, ds.day, tzinfo=UTC)
    lateness = dt.timedelta(minutes=settings.ingest.allowed_lateness_minutes)
    return {
        "scenarios": list(settings.ingest.scenarios),
        # tz-aware: PySpark turns naive datetimes into instants in the *process's* time zone.
        "event_time_min": start - lateness,
        "event_time_end": start + dt.timedelta(days=1),
        "max_quarantine_rate": float(settings.validation.max_quarantine_rate),
    }


# --------------------------------------------------------------------------------------
# State gate: silver.user_behavior and silver.<entity>_stats of day ds
# --------------------------------------------------------------------------------------


def _event_times(behaviors: str = "behaviors") -> Column:
    """The event times of an array of BEHAVIOR structs, in array order. A field of the
    array, not a ``transform``: Spark then reads only that field of the Parquet column (the
    samples' sequences are most of their bytes)."""
    return F.col(behaviors)["event_time"]


def _suite_name(spec: TableSpec) -> str:
    return spec.name.replace(".", "_")


def _before_state_end(column: str) -> gxe.Expectation:
    """``column`` (a time) is strictly before the end of the state's day."""
    return gxe.ExpectColumnValuesToBeBetween(
        column=column, max_value=param("state_end"), strict_max=True
    )


def _sequence_length() -> gxe.Expectation:
    """``seq_len`` within [0, the configured sequence length]."""
    return gxe.ExpectColumnValuesToBeBetween(
        column="seq_len", min_value=0, max_value=param("sequence_length")
    )


def user_behavior_expectations() -> list[gxe.Expectation]:
    """One sequence per user, of the declared length, time-ordered, as of the end of ds."""
    return [
        gxe.ExpectColumnValuesToNotBeNull(column="user_id"),
        gxe.ExpectColumnValuesToBeUnique(column="user_id"),
        _sequence_length(),
        # seq_len_actual = size(behaviors): derived in Spark.
        gxe.ExpectColumnPairValuesToBeEqual(column_A="seq_len", column_B="seq_len_actual"),
        # time_ordered = the behaviours' event times are non-decreasing (oldest first).
        gxe.ExpectColumnValuesToBeInSet(column="time_ordered", value_set=[True]),
        # untimed_behaviors = behaviours without an event time (they cannot be ordered).
        gxe.ExpectColumnValuesToBeInSet(column="untimed_behaviors", value_set=[0]),
        # max_event_time = the latest behaviour: the state of ds knows nothing after ds.
        _before_state_end("max_event_time"),
        gxe.ExpectColumnValuesToBeInSet(
            column="event_timestamp", value_set=param("state_event_timestamps")
        ),
    ]


def user_behavior_frame(day: DataFrame, settings: Settings) -> DataFrame:
    """A day of silver.user_behavior: scalar columns and the sequences' derived columns."""
    times = _event_times()
    return day.select(
        "user_id",
        "seq_len",
        "event_timestamp",
        F.size("behaviors").alias("seq_len_actual"),
        (F.array_sort(times) == times).alias("time_ordered"),
        F.size(F.filter(times, lambda t: t.isNull())).alias("untimed_behaviors"),
        F.array_max(times).alias("max_event_time"),
    )


# Counter invariants are checked on derived columns: one column per kind of invariant,
# holding the names of the rows' violated relations ("clicks_1d > clicks_7d") or null.
# Four expectations instead of one per column pair keep the gate cheap (on GX's Spark
# engine each expectation costs hundreds of JVM calls and a query or two; in pandas, a few
# narrow columns instead of dozens), and a failure still names the relation.
COUNTER_CHECKS = ("negative_counters", "windows_not_nested", "funnel_violations")


def _violations(conditions: list[str]) -> Column:
    """The conditions (Spark SQL that names itself: ``clicks_1d > clicks_7d``) that hold,
    joined by ", "; null when none does. One SQL expression per column: built with the
    Column API, the hundred-odd conditions of a table cost a JVM call per node."""
    cases = ", ".join(f"CASE WHEN {c} THEN '{c}' END" for c in conditions)
    return F.expr(f"nullif(concat_ws(', ', {cases}), '')")


def counter_checks(windows: Sequence[int], prefix: str = "") -> dict[str, Column]:
    """Derived violation columns over counters ``<prefix><counter>_<w>d``."""
    windows = sorted(set(windows))

    def col(counter: str, w: int) -> str:
        return f"{prefix}{counter}_{w}d"

    negative = [f"{col(c, w)} < 0" for w in windows for c in COUNTERS]
    # Nested windows: a window never counts more than the next longer one.
    nested = [f"{col(c, a)} > {col(c, b)}" for a, b in pairwise(windows) for c in COUNTERS]
    funnel = [f"{col(b, w)} > {col(a, w)}" for w in windows for a, b in FUNNEL]
    return {
        "negative_counters": _violations(negative),
        "windows_not_nested": _violations(nested),
        "funnel_violations": _violations(funnel),
    }


def _no_violations() -> list[gxe.Expectation]:
    return [gxe.ExpectColumnValuesToBeNull(column=c) for c in COUNTER_CHECKS]


def stats_expectations(entity: str, windows: Sequence[int]) -> list[gxe.Expectation]:
    """One row per key (and at least one), counters >= 0, windows nested, funnel consistent,
    smoothed rates in [0, 1], as of the end of ds."""
    keys = ENTITIES[entity]
    windows = sorted(set(windows))
    expectations: list[gxe.Expectation] = [
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
        *[gxe.ExpectColumnValuesToNotBeNull(column=k) for k in keys],
        gxe.ExpectColumnValuesToBeUnique(column=keys[0])
        if len(keys) == 1
        else gxe.ExpectCompoundColumnsToBeUnique(column_list=list(keys)),
        *_no_violations(),
        # rate_range = (min, max) of the row's smoothed rates: derived in Spark.
        gxe.ExpectColumnValuesToBeBetween(column="min_rate", min_value=0, max_value=1),
        gxe.ExpectColumnValuesToBeBetween(column="max_rate", min_value=0, max_value=1),
    ]
    expectations.append(
        gxe.ExpectColumnValuesToBeInSet(
            column="event_timestamp", value_set=param("state_event_timestamps")
        )
    )
    return expectations


def stats_frame(entity: str, windows: Sequence[int]) -> Callable[[DataFrame, Settings], DataFrame]:
    """A day of silver.<entity>_stats: keys, event_timestamp and the derived checks."""

    def derive(day: DataFrame, settings: Settings) -> DataFrame:
        rates = [F.col(f"ctr_{w}d") for w in sorted(set(windows))]
        return day.select(
            *ENTITIES[entity],
            "event_timestamp",
            *[c.alias(name) for name, c in counter_checks(windows).items()],
            (F.least(*rates) if len(rates) > 1 else rates[0]).alias("min_rate"),
            (F.greatest(*rates) if len(rates) > 1 else rates[0]).alias("max_rate"),
        )

    return derive


def state_gates(settings: Settings) -> tuple[TableGate, ...]:
    """The state gate's tables: silver.user_behavior, then every entity's stats."""
    windows = settings.aggregate.windows
    gates = [
        TableGate(
            USER_BEHAVIOR,
            _suite_name(USER_BEHAVIOR),
            user_behavior_expectations,
            user_behavior_frame,
            STATE,
        )
    ]
    for entity in ENTITIES:
        spec = stats_spec(entity, windows)
        gates.append(
            TableGate(
                spec,
                _suite_name(spec),
                partial(stats_expectations, entity, windows),
                stats_frame(entity, windows),
                STATE,
            )
        )
    return tuple(gates)


def state_parameters(settings: Settings, ds: dt.date) -> dict[str, Any]:
    """The state gate's ``$PARAMETER`` values for day ``ds``: state as of the end of ds."""
    end = end_of_day(ds)
    return {
        "sequence_length": settings.aggregate.sequence_length,
        "state_end": end,
        "state_event_timestamps": [end],
    }


# --------------------------------------------------------------------------------------
# Samples gate: gold.pretrain_samples and gold.downstream_samples of day ds
# --------------------------------------------------------------------------------------


def sample_counter_columns(windows: Sequence[int]) -> list[str]:
    """Every counter column of the samples, e.g. u_clicks_7d, i_impressions_1d, uc_carts_30d."""
    return [f"{p}{c}_{w}d" for p in STAT_PREFIX.values() for w in windows for c in COUNTERS]


def pretrain_expectations(windows: Sequence[int]) -> list[gxe.Expectation]:
    """Every impression once, 0/1 labels, weights >= 1, and state strictly older than ds."""
    return [
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
        gxe.ExpectColumnValuesToNotBeNull(column="impression_id"),
        gxe.ExpectColumnValuesToBeUnique(column="impression_id"),
        *[gxe.ExpectColumnValuesToBeInSet(column=c, value_set=[0, 1]) for c in LABELS],
        # Negative down-sampling keeps a fraction r <= 1 of the negatives, with weight 1/r.
        gxe.ExpectColumnValuesToBeBetween(column="weight", min_value=1),
        # Point-in-time: the state is that of ds - 1 ...
        gxe.ExpectColumnValuesToBeInSet(column="state_ds", value_set=param("state_days")),
        # ... and holds no behaviour at or after ds 00:00 (max_event_time: derived in Spark).
        _before_state_end("max_event_time"),
        _sequence_length(),
        # The joined counters keep their invariants (derived per prefix u_, i_, uc_).
        *[
            gxe.ExpectColumnValuesToBeNull(column=f"{p}{c}")
            for p in STAT_PREFIX.values()
            for c in COUNTER_CHECKS
        ],
    ]


def pretrain_frame(day: DataFrame, settings: Settings) -> DataFrame:
    """A day of gold.pretrain_samples: the gated columns and ``max_event_time``."""
    return day.select(
        "impression_id",
        *LABELS,
        "weight",
        "state_ds",
        "seq_len",
        *[
            check.alias(f"{p}{name}")
            for p in STAT_PREFIX.values()
            for name, check in counter_checks(settings.aggregate.windows, p).items()
        ],
        F.array_max(_event_times()).alias("max_event_time"),
    )


def downstream_expectations() -> list[gxe.Expectation]:
    """The downstream subsystem's impressions only, each once."""
    return [
        gxe.ExpectColumnValuesToNotBeNull(column="impression_id"),
        gxe.ExpectColumnValuesToBeUnique(column="impression_id"),
        gxe.ExpectColumnValuesToBeInSet(column="scenario", value_set=param("downstream_scenarios")),
    ]


def downstream_frame(day: DataFrame, settings: Settings) -> DataFrame:
    """A day of gold.downstream_samples: the gated columns."""
    return day.select("impression_id", "scenario")


def samples_gates(settings: Settings) -> tuple[TableGate, ...]:
    """The samples gate's tables: gold.pretrain_samples, then gold.downstream_samples."""
    pretrain, downstream = sample_specs(settings.aggregate.windows)
    windows = settings.aggregate.windows
    return (
        TableGate(
            pretrain,
            _suite_name(pretrain),
            partial(pretrain_expectations, windows),
            pretrain_frame,
            SAMPLES,
        ),
        TableGate(
            downstream,
            _suite_name(downstream),
            downstream_expectations,
            downstream_frame,
            SAMPLES,
        ),
    )


def samples_parameters(settings: Settings, ds: dt.date) -> dict[str, Any]:
    """The samples gate's ``$PARAMETER`` values for day ``ds``: state as of the end of ds-1."""
    state_ds = ds - dt.timedelta(days=1)
    return {
        "sequence_length": settings.aggregate.sequence_length,
        "state_days": [state_ds.isoformat()],
        "state_end": end_of_day(state_ds),
        "downstream_scenarios": [settings.downstream.scenario],
    }


def row_count_check(rows: dict[str, int]) -> CheckResult:
    """Custom (Spark, not GX) check: the downstream samples are a subset of the pretrain ones,
    so there are no more of them."""
    down, pre = rows[DOWNSTREAM_SAMPLES], rows[PRETRAIN_SAMPLES]
    return CheckResult(
        table=DOWNSTREAM_SAMPLES,
        expectation=CUSTOM_ROW_COUNT,
        column=None,
        success=down <= pre,
        observed=f"{down} rows, {pre} in {PRETRAIN_SAMPLES}",
    )


def ensure_checkpoint_for(context: Any, gate: TableGate, engine: str = SPARK) -> gx.Checkpoint:
    """The checkpoint validating ``gate``'s table with ``engine`` (Spark or pandas): the same
    suite, a batch definition of that engine's data source."""
    source = DATA_SOURCE if engine == SPARK else PANDAS_SOURCE
    data = batch_definition(context, gate.suite, source_name=source, engine=engine)
    suite = gx.ExpectationSuite(name=gate.suite, expectations=gate.expectations())
    return ensure_checkpoint(context, gate.checkpoint_for(engine), suite, data, data_docs=False)


def ensure_checkpoints(
    context: Any, gates: Sequence[TableGate] = GATES, engine: str = SPARK
) -> dict[str, gx.Checkpoint]:
    """The ``engine`` checkpoint of every table of a gate (the ingest gate by default), by
    suite name."""
    return {gate.suite: ensure_checkpoint_for(context, gate, engine) for gate in gates}


# --------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------


def engine_for(settings: Settings, rows: int) -> str:
    """The engine a table's day of ``rows`` rows is validated with: pandas up to
    ``validation.pandas_max_rows`` rows (0: never), Spark above."""
    limit = settings.validation.pandas_max_rows
    return PANDAS if limit > 0 and rows <= limit else SPARK


def collect_to_pandas(frame: DataFrame) -> pd.DataFrame:
    """``frame`` in pandas through Arrow, in one Spark job; times stay UTC instants."""
    return frame.toArrow().to_pandas(self_destruct=True, split_blocks=True)


# A table's day as validated: collected to pandas, or a cached Spark frame.
DayFrame: TypeAlias = DataFrame | pd.DataFrame


def _impressions_quarantine_rate(audit: DayFrame) -> float:
    if isinstance(audit, pd.DataFrame):
        rates = audit.loc[audit["source"] == "impressions", "quarantine_rate"]
        value = rates.iloc[0] if len(rates) else None
    else:
        row = audit.where(F.col("source") == "impressions").select("quarantine_rate").first()
        value = None if row is None else row[0]
    return float("nan") if value is None or pd.isna(value) else float(value)


def _run_gate(
    spark: SparkSession,
    settings: Settings,
    ds: dt.date,
    gate: str,
    tables: Sequence[TableGate],
    params: dict[str, Any],
    inspect: Callable[[TableGate, DayFrame], None] | None = None,
) -> tuple[list[CheckResult], dict[str, int], Path | None]:
    """Run every table's checkpoint on its day-``ds`` frame; the checks, each table's row
    count (from the Delta log) and the Data Docs index.

    The Delta log (delta-rs, no JVM) gives the day's files and rows. A day of at most
    ``validation.pandas_max_rows`` rows is read once from those files -- the table's frame
    with its derived columns, collected through Arrow: one Spark job -- and validated by
    GX's pandas engine; a larger one is cached in Spark while GX's Spark engine validates
    it. Either way ``inspect`` (optional: reads figures off the frame for the report) sees
    the frame before its checkpoint runs, and the frame is released before the next
    table's. Data Docs are built once, after the last table.
    """
    context = get_context(settings)
    run_id = run_identifier(f"{gate}_gate_{ds.isoformat()}")
    checks: list[CheckResult] = []
    rows: dict[str, int] = {}
    pages: list[Any] = []  # of Data Docs
    for table in tables:
        files = delta.partition_files(settings, table.spec, ds)
        stored = (
            lake.read_files(spark, settings, table.spec, files)
            if files.plain_parquet
            else lake.read_partition(spark, settings, table.spec, ds)
        )
        # The files' statistics also count rows deleted by deletion vectors (a table the
        # lake never writes, counted by Spark should it appear).
        rows[table.spec.name] = files.rows if files.plain_parquet else stored.count()
        engine = engine_for(settings, rows[table.spec.name])
        checkpoint = ensure_checkpoint_for(context, table, engine)
        frame = table.frame(stored, settings)
        day: DayFrame
        if engine == PANDAS:
            day = collect_to_pandas(frame)
        else:
            day = frame.persist(StorageLevel.MEMORY_AND_DISK)
        try:
            if inspect is not None:
                inspect(table, day)
            result = checkpoint.run(
                batch_parameters={"dataframe": day},
                expectation_parameters=params,
                run_id=run_id,
            )
        finally:
            if isinstance(day, DataFrame):
                day.unpersist()
            del day
        log.info(
            "%s: %d rows validated with the %s engine",
            table.spec.name,
            rows[table.spec.name],
            engine,
        )
        pages += data_docs_pages(result)
        for suite_result in result.run_results.values():
            checks += suite_checks(table.spec.name, suite_result)
    update_data_docs(context, pages)
    return checks, rows, data_docs_index(context)


def _report(
    ds: dt.date, gate: str, checks: list[CheckResult], docs: Path | None, **extra: Any
) -> GateReport:
    report = GateReport(
        ds=ds,
        success=bool(checks) and all(c.success for c in checks),
        checks=checks,
        data_docs_index=docs,
        gate=gate,
        **extra,
    )
    log.info("%s", report.summary())
    return report


def validate_ingest(spark: SparkSession, settings: Settings, ds: dt.date) -> GateReport:
    """Run the ingest gate on day ``ds``; never raises because an expectation failed."""
    quarantine_rate = float("nan")

    def inspect(table: TableGate, frame: DayFrame) -> None:
        nonlocal quarantine_rate
        if table.spec is INGEST_AUDIT:
            quarantine_rate = _impressions_quarantine_rate(frame)

    checks, _, docs = _run_gate(
        spark, settings, ds, INGEST, GATES, expectation_parameters(settings, ds), inspect
    )
    return _report(ds, INGEST, checks, docs, quarantine_rate=quarantine_rate)


def validate_state(spark: SparkSession, settings: Settings, ds: dt.date) -> GateReport:
    """Run the state gate on the silver state of day ``ds``; never raises because an
    expectation failed."""
    checks, _, docs = _run_gate(
        spark, settings, ds, STATE, state_gates(settings), state_parameters(settings, ds)
    )
    return _report(ds, STATE, checks, docs)


def validate_samples(spark: SparkSession, settings: Settings, ds: dt.date) -> GateReport:
    """Run the samples gate on the gold samples of day ``ds``; never raises because an
    expectation failed."""
    checks, rows, docs = _run_gate(
        spark, settings, ds, SAMPLES, samples_gates(settings), samples_parameters(settings, ds)
    )
    checks.append(row_count_check(rows))
    return _report(ds, SAMPLES, checks, docs)
