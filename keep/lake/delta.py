"""Lake paths and Delta log reads without a JVM (delta-rs + pyarrow).

Where a table lives (``<lake root>/<layer>/<table>``), whether it has been written, and
partition row counts from the Delta log's file statistics. Used by Spark jobs and by every
JVM-free reader alike (training, export, gates, the Feast offline store).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa

from keep.core.config import Settings
from keep.core.tables import TableSpec


def table_path(settings: Settings, spec: TableSpec) -> Path:
    return settings.lake.root / spec.layer / spec.table


def table_exists(settings: Settings, spec: TableSpec) -> bool:
    return (table_path(settings, spec) / "_delta_log").is_dir()


def partition_rows(settings: Settings, spec: TableSpec, ds: dt.date) -> int:
    """Row count of partition ``ds`` from the Delta log's file statistics (no JVM, no scan)."""
    from deltalake import DeltaTable

    if not table_exists(settings, spec):
        return 0
    actions = pa.table(DeltaTable(str(table_path(settings, spec))).get_add_actions(flatten=True))
    day = ds.isoformat()
    return sum(
        int(n)
        for n, part in zip(
            actions.column("num_records").to_pylist(),
            actions.column("partition.ds").to_pylist(),
            strict=True,
        )
        if part == day
    )


def partition_days(settings: Settings, spec: TableSpec) -> set[str]:
    """The ``ds`` values of the table's live files, from the Delta log (no JVM, no scan)."""
    from deltalake import DeltaTable

    if not table_exists(settings, spec):
        return set()
    actions = pa.table(DeltaTable(str(table_path(settings, spec))).get_add_actions(flatten=True))
    return {d for d in actions.column("partition.ds").to_pylist() if d is not None}
