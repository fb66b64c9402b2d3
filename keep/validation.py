"""The Great Expectations gate of the daily ingest.

``validate_ingest(spark, settings, ds)`` checks day ``ds`` of the tables the ingest job
writes (``bronze.impressions``, ``dim.users``, ``dim.items``, ``bronze.ingest_audit``) and
returns a :class:`GateReport`; failed expectations never raise (``keep.pipeline.validate``
turns a failed report into :class:`keep.errors.GateFailed`).

Great Expectations (1.x API) objects, all kept in a File Data Context rooted at
``settings.validation.ge_root`` and re-created idempotently on every call:

* one Spark data source ``keep_lake`` over in-memory DataFrames: one DataFrame asset and one
  whole-frame batch definition per table; the frame is the day's partition, read with
  :func:`keep.lake.read_partition` and passed at run time;
* one expectation suite per table (``bronze_impressions``, ``dim_users``, ``dim_items``,
  ``bronze_ingest_audit``), defined in :func:`suites` below. Everything that depends on the
  day or on the settings (event-time window, known scenarios, maximum quarantine rate) is a
  suite parameter (``{"$PARAMETER": name}``) supplied at run time, so the stored suites do
  not change from day to day and concurrent runs of different days never rewrite them with
  different content;
* one validation definition and one checkpoint per table (``ingest_gate_<suite>``): a
  checkpoint passes one set of batch parameters (one DataFrame) to all its definitions, so
  each table needs its own. Each checkpoint updates the Data Docs site, whose index
  (``<ge_root>/gx/uncommitted/data_docs/local_site/index.html``) is returned in the report.
  Runs are named after the day, so Data Docs list them by ``ds``.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import great_expectations as gx
import great_expectations.expectations as gxe
from great_expectations.checkpoint import UpdateDataDocsAction
from great_expectations.core.run_identifier import RunIdentifier
from great_expectations.data_context.types.base import ProgressBarsConfig
from great_expectations.exceptions import DataContextError
from great_expectations.expectations.row_conditions import Column as RowColumn
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from keep import lake
from keep.config import Settings
from keep.schemas import DIM_ITEMS, DIM_USERS, IMPRESSIONS, INGEST_AUDIT, TableSpec

log = logging.getLogger(__name__)

UTC = dt.UTC

DATA_SOURCE = "keep_lake"
BATCH_DEFINITION = "day"
DOCS_SITE = "local_site"
# BASIC: counts and a few unexpected values per expectation (the summary's examples).
RESULT_FORMAT: dict[str, Any] = {"result_format": "BASIC", "partial_unexpected_count": 5}
SOURCES = ("impressions", "users", "items")
FLAGS = ("click", "cart", "purchase")
IMPRESSION_REQUIRED = (
    "impression_id",
    "user_id",
    "item_id",
    "event_time",
    "scenario",
    "position",
    *FLAGS,
)


def _param(name: str) -> dict[str, str]:
    return {"$PARAMETER": name}


# --------------------------------------------------------------------------------------
# Suites (defined once, in code)
# --------------------------------------------------------------------------------------


def impressions_expectations() -> list[gxe.Expectation]:
    """The day's bronze impressions: complete, unique, in range, and a consistent funnel."""
    return [
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
        *[gxe.ExpectColumnValuesToNotBeNull(column=c) for c in IMPRESSION_REQUIRED],
        gxe.ExpectColumnValuesToBeUnique(column="impression_id"),
        *[gxe.ExpectColumnValuesToBeInSet(column=c, value_set=[0, 1]) for c in FLAGS],
        gxe.ExpectColumnValuesToBeInSet(column="scenario", value_set=_param("scenarios")),
        gxe.ExpectColumnValuesToBeBetween(column="position", min_value=0),
        # Day ds is [ds 00:00, ds+1 00:00) UTC; events may arrive up to the allowed lateness
        # after the end of their day, so they can sit in the next day's log.
        gxe.ExpectColumnValuesToBeBetween(
            column="event_time",
            min_value=_param("event_time_min"),
            max_value=_param("event_time_end"),
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
        gxe.ExpectColumnDistinctValuesToContainSet(column="source", value_set=list(SOURCES)),
        gxe.ExpectColumnValuesToBeUnique(column="source"),
        # balance_gap = rows_in - (stored + quarantined + duplicates): derived in Spark.
        gxe.ExpectColumnValuesToBeInSet(column="balance_gap", value_set=[0]),
        gxe.ExpectColumnValuesToBeBetween(
            column="quarantine_rate",
            min_value=0,
            max_value=_param("max_quarantine_rate"),
            row_condition=RowColumn("source") == "impressions",
            condition_parser="spark",
        ),
    ]


# --------------------------------------------------------------------------------------
# The day's frames
# --------------------------------------------------------------------------------------


def audit_frame(spark: SparkSession, settings: Settings, ds: dt.date) -> DataFrame:
    """Day ``ds`` of bronze.ingest_audit with the derived ``balance_gap`` column."""
    accounted = (
        F.col("rows_stored")
        + F.col("rows_quarantined")
        + F.col("duplicates_within_day")
        + F.col("duplicates_earlier_days")
    )
    return lake.read_partition(spark, settings, INGEST_AUDIT, ds).withColumn(
        "balance_gap", F.col("rows_in") - accounted
    )


def _partition(spec: TableSpec) -> Callable[[SparkSession, Settings, dt.date], DataFrame]:
    def read(spark: SparkSession, settings: Settings, ds: dt.date) -> DataFrame:
        return lake.read_partition(spark, settings, spec, ds)

    return read


@dataclass(frozen=True)
class TableGate:
    """One gated table: its suite and how to read its day."""

    spec: TableSpec
    suite: str
    expectations: Callable[[], list[gxe.Expectation]]
    frame: Callable[[SparkSession, Settings, dt.date], DataFrame]

    @property
    def checkpoint(self) -> str:
        return f"ingest_gate_{self.suite}"


GATES: tuple[TableGate, ...] = (
    TableGate(IMPRESSIONS, "bronze_impressions", impressions_expectations, _partition(IMPRESSIONS)),
    TableGate(DIM_USERS, "dim_users", users_expectations, _partition(DIM_USERS)),
    TableGate(DIM_ITEMS, "dim_items", items_expectations, _partition(DIM_ITEMS)),
    TableGate(INGEST_AUDIT, "bronze_ingest_audit", audit_expectations, audit_frame),
)


def suites() -> dict[str, gx.ExpectationSuite]:
    """Every suite of the gate, by name (fresh objects, not yet added to a context)."""
    return {
        g.suite: gx.ExpectationSuite(name=g.suite, expectations=g.expectations()) for g in GATES
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
# Report
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckResult:
    """One expectation on one table: whether it held, and what was observed."""

    table: str
    expectation: str
    column: str | None
    success: bool
    observed: str

    def line(self) -> str:
        on = f" on {self.column}" if self.column else ""
        return f"{self.table}: {self.expectation}{on}: {self.observed}"


@dataclass
class GateReport:
    """Outcome of the ingest gate for one day."""

    ds: dt.date
    success: bool
    checks: list[CheckResult] = field(default_factory=list)
    quarantine_rate: float = float("nan")
    data_docs_index: Path | None = None

    @property
    def failed(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.success]

    def summary(self) -> str:
        docs = f"Data Docs: {self.data_docs_index}" if self.data_docs_index else "no Data Docs"
        rate = f"impression quarantine rate {self.quarantine_rate:.2%}"
        if self.success:
            tables = len({c.table for c in self.checks})
            return (
                f"Gate OK for {self.ds}: {len(self.checks)} checks on {tables} tables passed, "
                f"{rate}. {docs}"
            )
        failed = self.failed
        lines = [
            f"Gate FAILED for {self.ds}: {len(failed)} of {len(self.checks)} checks failed "
            f"({rate})."
        ]
        lines += [f"  - {c.line()}" for c in failed]
        lines.append(docs)
        return "\n".join(lines)


def _examples(values: list[Any]) -> str:
    def show(v: Any) -> Any:
        if isinstance(v, dt.datetime):
            return v.isoformat(sep=" ")
        if isinstance(v, (tuple, list)):
            return tuple(show(x) for x in v)
        return v

    return repr([show(v) for v in values])


def _observed(result: Any) -> str:
    """Short human text for one ExpectationValidationResult."""
    info = result.exception_info or {}
    if info.get("raised_exception"):
        message = str(info.get("exception_message") or "unknown error").strip().splitlines()
        return f"error: {message[0] if message else 'unknown error'}"
    res = result.result or {}
    if "unexpected_count" in res:
        count = res.get("unexpected_count") or 0
        if not count:
            return f"all {res.get('element_count', 0)} values as expected"
        examples = res.get("partial_unexpected_list") or []
        noun = "value" if count == 1 else "values"
        text = f"{count} unexpected {noun}"
        return f"{text}, e.g. {_examples(examples)}" if examples else text
    if res.get("missing_count"):
        # expect_column_distinct_values_to_contain_set: expected values that never occur.
        return f"missing {_examples(res.get('partial_missing_list') or [])}"
    if "observed_value" in res and res["observed_value"] is not None:
        observed = res["observed_value"]
        if isinstance(observed, list):
            observed = sorted(observed, key=str)
        return f"observed {observed}"
    return "passed" if result.success else "failed"


def _column(kwargs: dict[str, Any]) -> str | None:
    if kwargs.get("column"):
        return str(kwargs["column"])
    if kwargs.get("column_A"):
        return f"{kwargs['column_A']},{kwargs['column_B']}"
    if kwargs.get("column_list"):
        return ",".join(kwargs["column_list"])
    return None


def _checks(table: str, suite_result: Any) -> list[CheckResult]:
    checks = []
    for result in suite_result.results:
        config = result.expectation_config
        checks.append(
            CheckResult(
                table=table,
                expectation=config.type,
                column=_column(config.kwargs),
                success=bool(result.success),
                observed=_observed(result),
            )
        )
    return checks


# --------------------------------------------------------------------------------------
# Great Expectations context
# --------------------------------------------------------------------------------------


def _quiet_logging() -> None:
    """GX logs freely at INFO; keep it to warnings unless someone configured it."""
    logger = logging.getLogger("great_expectations")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.WARNING)


def get_context(settings: Settings) -> Any:
    """The File Data Context at ``settings.validation.ge_root`` (created when missing)."""
    _quiet_logging()
    root = settings.validation.ge_root
    root.mkdir(parents=True, exist_ok=True)
    context = gx.get_context(mode="file", project_root_dir=str(root))
    bars = context.variables.progress_bars
    if bars is None or bars.get("globally", True) or bars.get("metric_calculations", True):
        # tqdm bars on every metric computation: unreadable in Airflow and CLI logs.
        context.variables.progress_bars = ProgressBarsConfig(
            globally=False, metric_calculations=False
        )
        context.variables.save()
    return context


def _batch_definition(context: Any, asset_name: str) -> Any:
    """Get-or-add the data source, the asset and its whole-frame batch definition."""
    try:
        source = context.data_sources.get(DATA_SOURCE)
    except KeyError:
        # persist=False: we cache the day's frames ourselves and release them afterwards
        # (GX would persist every frame it is given and never unpersist it).
        source = context.data_sources.add_spark(name=DATA_SOURCE, persist=False)
    try:
        asset = source.get_asset(asset_name)
    except LookupError:
        asset = source.add_dataframe_asset(name=asset_name)
    try:
        return asset.get_batch_definition(BATCH_DEFINITION)
    except KeyError:
        return asset.add_batch_definition_whole_dataframe(BATCH_DEFINITION)


def _without_ids(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_ids(v) for k, v in value.items() if k != "id"}
    if isinstance(value, list):
        return [_without_ids(v) for v in value]
    return value


def _checkpoint_config(checkpoint: gx.Checkpoint) -> Any:
    """What a checkpoint is made of, without ids (``dict()`` requires a saved checkpoint)."""
    result_format = checkpoint.result_format
    return {
        "actions": [_without_ids(action.dict()) for action in checkpoint.actions],
        "result_format": dict(result_format) if isinstance(result_format, dict) else result_format,
        "validation_definitions": [vd.name for vd in checkpoint.validation_definitions],
    }


def _stored_if_current(context: Any, wanted: gx.Checkpoint) -> gx.Checkpoint | None:
    """The stored checkpoint when it (and its definitions and suites) already match ``wanted``."""
    try:
        stored = context.checkpoints.get(wanted.name)
    except DataContextError:
        return None
    if _checkpoint_config(stored) != _checkpoint_config(wanted):
        return None
    for have, want in zip(
        stored.validation_definitions, wanted.validation_definitions, strict=True
    ):
        same_data = (have.data.data_asset.name, have.data.name) == (
            want.data.data_asset.name,
            want.data.name,
        )
        same_suite = _without_ids(have.suite.to_json_dict()) == _without_ids(
            want.suite.to_json_dict()
        )
        if not (same_data and same_suite):
            return None
    return stored


def ensure_checkpoints(context: Any) -> dict[str, gx.Checkpoint]:
    """Every gate's checkpoint (with its definition and suite), added or updated as needed.

    Nothing is written when the stored objects already match the code, so steady-state runs
    (and concurrent runs of different days) only read the project's configuration.
    """
    checkpoints = {}
    for gate, suite in zip(GATES, suites().values(), strict=True):
        definition = gx.ValidationDefinition(
            name=gate.checkpoint, data=_batch_definition(context, gate.suite), suite=suite
        )
        wanted = gx.Checkpoint(
            name=gate.checkpoint,
            validation_definitions=[definition],
            actions=[UpdateDataDocsAction(name="update_data_docs", site_names=[DOCS_SITE])],
            result_format=RESULT_FORMAT,
        )
        stored = _stored_if_current(context, wanted)
        # add_or_update cascades: it adds or updates the suite and the definition too.
        checkpoints[gate.suite] = stored or context.checkpoints.add_or_update(wanted)
    return checkpoints


def data_docs_index(context: Any) -> Path | None:
    """Path of the local Data Docs site's index.html, if it is on the file system."""
    for site in context.get_docs_sites_urls(site_name=DOCS_SITE):
        url = site.get("site_url")
        if url and url.startswith("file://"):
            return Path(unquote(urlparse(url).path))
    return None


# --------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------


def _impressions_quarantine_rate(audit: DataFrame) -> float:
    row = audit.where(F.col("source") == "impressions").select("quarantine_rate").first()
    return float(row[0]) if row is not None and row[0] is not None else float("nan")


def validate_ingest(spark: SparkSession, settings: Settings, ds: dt.date) -> GateReport:
    """Run the ingest gate on day ``ds``; never raises because an expectation failed."""
    context = get_context(settings)
    checkpoints = ensure_checkpoints(context)
    params = expectation_parameters(settings, ds)
    run_id = RunIdentifier(run_name=f"ingest_gate_{ds.isoformat()}", run_time=dt.datetime.now(UTC))
    checks: list[CheckResult] = []
    quarantine_rate = float("nan")
    for gate in GATES:
        frame = gate.frame(spark, settings, ds).persist(StorageLevel.MEMORY_AND_DISK)
        try:
            if gate.spec is INGEST_AUDIT:
                quarantine_rate = _impressions_quarantine_rate(frame)
            result = checkpoints[gate.suite].run(
                batch_parameters={"dataframe": frame},
                expectation_parameters=params,
                run_id=run_id,
            )
        finally:
            frame.unpersist()
        for suite_result in result.run_results.values():
            checks += _checks(gate.spec.name, suite_result)
    report = GateReport(
        ds=ds,
        success=bool(checks) and all(c.success for c in checks),
        checks=checks,
        quarantine_rate=quarantine_rate,
        data_docs_index=data_docs_index(context),
    )
    log.info("%s", report.summary())
    return report
