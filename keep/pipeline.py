"""The daily pipeline's steps, as plain functions.

Both the Airflow DAG (``dags/keep_daily_refresh.py``) and ``keep run`` call exactly
these functions, so a day run by hand and a day run by Airflow are the same thing.
Each step takes the settings and the logical day ``ds`` and is idempotent per day.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from keep import generator, lake, raw_format
from keep import validation as gates
from keep.config import Settings
from keep.errors import GateFailed, InputError
from keep.spark import get_spark
from keep.validation import GateReport, validate_ingest
from spark_jobs.aggregate import run_aggregate, state_days
from spark_jobs.ingest import SourceCounts, run_ingest
from spark_jobs.samples import PRETRAIN, run_samples, sample_specs

log = logging.getLogger(__name__)

# The daily DAG's tasks, in order. Each gate stops everything downstream of it.
STEPS = (
    "land_raw",
    "ingest",
    "validate",
    "aggregate",
    "validate_state",
    "samples",
    "validate_samples",
)


def land_raw(settings: Settings, ds: dt.date) -> dict[str, Path]:
    """Demo mode (``airflow.demo_mode``): write the day's raw files with the generator.

    Otherwise the files come from the logging systems: check that they have landed.
    """
    if settings.airflow.demo_mode:
        return generator.write_day(settings, ds)
    landed = raw_format.day_files(settings, "impressions", ds)
    if not landed:
        raise InputError(
            f"No raw impression files for {ds} in "
            f"{raw_format.day_dir(settings, 'impressions', ds)} (demo_mode is off)."
        )
    return {f"impressions/{p.name}": p for p in landed}


def ingest(settings: Settings, ds: dt.date) -> dict[str, SourceCounts]:
    """Raw files of ``ds`` -> bronze / dim Delta partitions of ``ds`` (+ quarantine, audit)."""
    return run_ingest(get_spark(settings), settings, ds)


def _gate(report: GateReport) -> GateReport:
    if not report.success:
        raise GateFailed(report.summary())
    return report


def validate(settings: Settings, ds: dt.date) -> GateReport:
    """Gate on the day's bronze partition and dimensions; raises GateFailed with a summary."""
    return _gate(validate_ingest(get_spark(settings), settings, ds))


def aggregate(settings: Settings, ds: dt.date) -> dict[str, int]:
    """Silver state as of the end of ``ds`` from the state of ``ds - 1`` plus bronze ``ds``."""
    return run_aggregate(get_spark(settings), settings, ds)


def validate_state(settings: Settings, ds: dt.date) -> GateReport:
    """Gate on the silver state of ``ds``; raises GateFailed with a summary."""
    return _gate(gates.validate_state(get_spark(settings), settings, ds))


def samples(settings: Settings, ds: dt.date) -> dict[str, int]:
    """Gold samples of ``ds``: its impressions with the state as of the end of ``ds - 1``."""
    return run_samples(get_spark(settings), settings, ds)


def validate_samples(settings: Settings, ds: dt.date) -> GateReport:
    """Gate on the gold samples of ``ds``; raises GateFailed with a summary."""
    return _gate(gates.validate_samples(get_spark(settings), settings, ds))


def backfill(
    settings: Settings,
    start: dt.date,
    end: dt.date,
    on_day: Callable[[dt.date], None] | None = None,
    *,
    gates_on: bool = True,
) -> list[dt.date]:
    """Recompute state and samples from ``start`` through ``end`` and every later day that
    depends on them (up to the last day that has state), in order, gates included.

    Use it after re-ingesting past days: ``keep ingest --ds D`` then
    ``keep backfill --start D --end D``. ``gates_on=False`` skips the gates (tests of the
    recomputation itself; the gates have their own tests).
    """
    last = max([end, *state_days(settings)])
    span = days(start, last)
    for ds in span:
        if on_day is not None:
            on_day(ds)
        aggregate(settings, ds)
        if gates_on:
            validate_state(settings, ds)
        samples(settings, ds)
        if gates_on:
            validate_samples(settings, ds)
    return span


@dataclass
class DayResult:
    """What one day's run did (the rows of ``keep run``'s summary table)."""

    ds: dt.date
    counts: dict[str, SourceCounts] = field(default_factory=dict)
    samples: int | None = None
    gate_passed: bool = False
    gate_summary: str = ""

    @property
    def ok(self) -> bool:
        return self.gate_passed


def run_day(settings: Settings, ds: dt.date, *, land: bool | None = None) -> DayResult:
    """Run every step for ``ds`` in this process, in order (what the DAG's tasks do)."""
    result = DayResult(ds=ds)
    if land if land is not None else settings.airflow.demo_mode:
        generator.write_day(settings, ds)
    try:
        result.counts = ingest(settings, ds)
        validate(settings, ds)
        aggregate(settings, ds)
        validate_state(settings, ds)
        result.samples = samples(settings, ds)[PRETRAIN]
        validate_samples(settings, ds)
    except GateFailed as failed:
        result.gate_summary = str(failed)
        return result
    result.gate_passed = True
    result.gate_summary = f"all gates passed for {ds}"
    return result


def run_day_airflow(settings: Settings, ds: dt.date) -> DayResult:
    """Run ``ds`` through the real DAG (``airflow dags test``), then read back its audit."""
    from keep.airflow_env import AirflowCommandError, dags_test, task_states

    try:
        dags_test(settings, ds, fail_fast=True)
    except AirflowCommandError as exc:
        return DayResult(ds=ds, counts=audit_counts(settings, ds), gate_summary=str(exc))
    states = task_states(settings, ds)
    passed = all(states.get(step) == "success" for step in STEPS)
    return DayResult(
        ds=ds,
        counts=audit_counts(settings, ds),
        samples=lake.partition_rows(settings, sample_specs(settings)[0], ds),
        gate_passed=passed,
        gate_summary=f"Airflow task states for {ds}: {states}",
    )


def audit_counts(settings: Settings, ds: dt.date) -> dict[str, SourceCounts]:
    """The day's rows of bronze.ingest_audit, read with delta-rs (no JVM)."""
    from deltalake import DeltaTable

    from keep.schemas import INGEST_AUDIT

    if not lake.table_exists(settings, INGEST_AUDIT):
        return {}
    table = DeltaTable(str(lake.table_path(settings, INGEST_AUDIT)))
    rows = table.to_pyarrow_table(filters=[("ds", "=", ds.isoformat())]).to_pylist()
    names = SourceCounts.__dataclass_fields__
    return {r["source"]: SourceCounts(**{k: r[k] for k in names}) for r in rows}


def days(start: dt.date, end: dt.date) -> list[dt.date]:
    if end < start:
        raise ValueError(f"end {end} is before start {start}")
    return [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]
