"""The daily pipeline's steps, as plain functions.

Both the Airflow DAG (``dags/keep_daily_refresh.py``) and ``keep run`` call exactly
these functions, so a day run by hand and a day run by Airflow are the same thing.
Each step takes the settings and the logical day ``ds`` and is idempotent per day.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from pathlib import Path

from keep import generator
from keep.config import Settings
from keep.errors import GateFailed
from keep.spark import get_spark
from keep.validation import GateReport, validate_ingest
from spark_jobs.ingest import SourceCounts, run_ingest

log = logging.getLogger(__name__)

STEPS = ("land_raw", "ingest", "validate")


def land_raw(settings: Settings, ds: dt.date) -> dict[str, Path]:
    """Demo mode: write the day's raw files with the synthetic generator."""
    return generator.write_day(settings, ds)


def ingest(settings: Settings, ds: dt.date) -> dict[str, SourceCounts]:
    """Raw files of ``ds`` -> bronze / dim Delta partitions of ``ds`` (+ quarantine, audit)."""
    return run_ingest(get_spark(settings), settings, ds)


def validate(settings: Settings, ds: dt.date) -> GateReport:
    """Great Expectations gate on the day's bronze partition and dimensions.

    Raises :class:`GateFailed` with a readable summary when any expectation fails.
    """
    report = validate_ingest(get_spark(settings), settings, ds)
    if not report.success:
        raise GateFailed(report.summary())
    return report


@dataclass
class DayResult:
    """What one day's run did (the rows of ``keep run``'s summary table)."""

    ds: dt.date
    counts: dict[str, SourceCounts] = field(default_factory=dict)
    gate_passed: bool = False
    gate_summary: str = ""

    @property
    def ok(self) -> bool:
        return self.gate_passed


def run_day(settings: Settings, ds: dt.date, *, land: bool | None = None) -> DayResult:
    """Run every step for ``ds`` in this process, in order (what the DAG's tasks do)."""
    if land if land is not None else settings.airflow.demo_mode:
        land_raw(settings, ds)
    counts = ingest(settings, ds)
    report = validate_ingest(get_spark(settings), settings, ds)
    return DayResult(ds=ds, counts=counts, gate_passed=report.success, gate_summary=report.summary())


def run_day_airflow(settings: Settings, ds: dt.date) -> DayResult:
    """Run ``ds`` through the real DAG (``airflow dags test``), then read back its audit."""
    from keep.airflow_env import AirflowCommandError, dags_test, task_states

    try:
        dags_test(settings, ds, fail_fast=True)
    except AirflowCommandError as exc:
        return DayResult(ds=ds, counts=audit_counts(settings, ds), gate_summary=str(exc))
    states = task_states(settings, ds)
    passed = states.get("validate") == "success"
    return DayResult(
        ds=ds,
        counts=audit_counts(settings, ds),
        gate_passed=passed,
        gate_summary=f"Airflow task states for {ds}: {states}",
    )


def audit_counts(settings: Settings, ds: dt.date) -> dict[str, SourceCounts]:
    """The day's rows of bronze.ingest_audit, read with delta-rs (no JVM)."""
    from deltalake import DeltaTable

    from keep import lake
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
