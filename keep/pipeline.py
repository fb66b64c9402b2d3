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
    """What ``run_day`` did for one day (the rows of ``keep run``'s summary table)."""

    ds: dt.date
    counts: dict[str, SourceCounts] = field(default_factory=dict)
    gate: GateReport | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.gate is not None and self.gate.success


def run_day(settings: Settings, ds: dt.date, *, land: bool | None = None) -> DayResult:
    """Run every step for ``ds`` in order; stops at the first failure and records it."""
    result = DayResult(ds=ds)
    if land if land is not None else settings.airflow.demo_mode:
        land_raw(settings, ds)
    result.counts = ingest(settings, ds)
    report = validate_ingest(get_spark(settings), settings, ds)
    result.gate = report
    if not report.success:
        result.error = report.summary()
    return result


def days(start: dt.date, end: dt.date) -> list[dt.date]:
    if end < start:
        raise ValueError(f"end {end} is before start {start}")
    return [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]
